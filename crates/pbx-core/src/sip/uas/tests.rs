use super::*;
use crate::sip::message::parse_message;

const BASE_US: i64 = 1_700_000_000_000_000;

fn t(ms: i64) -> Timestamp {
    Timestamp::from_micros(BASE_US + ms * 1000)
}

fn src() -> SocketAddr {
    "192.0.2.10:5062".parse().unwrap()
}

fn uas() -> Uas {
    Uas::new(UasConfig {
        contact_host: "192.0.2.50".into(),
        contact_port: 5090,
        tls_port: Some(5091),
        user_agent: "pbx-edge-test".into(),
        tag_seed: 7,
    })
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=label:1\r\na=sendonly\r\n";

/// A request; `to_tag` makes it in-dialog.
#[allow(clippy::too_many_arguments)]
fn request(
    method: &str,
    branch: &str,
    call_id: &str,
    to_tag: Option<&str>,
    cseq: u32,
    cseq_method: &str,
    extra: &str,
    body: &str,
) -> SipMessage {
    let to = match to_tag {
        Some(tag) => format!("<sip:srs@192.0.2.50:5090>;tag={tag}"),
        None => "<sip:srs@192.0.2.50:5090>".to_string(),
    };
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_string()
    };
    let text = format!(
        "{method} sip:srs@192.0.2.50:5090 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.1.1.1:5060;branch={branch};rport\r\n\
         Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKproxy\r\n\
         Record-Route: <sip:10.1.1.1;lr>\r\n\
         From: \"SRC\" <sip:src@10.1.1.1>;tag=src-tag\r\n\
         To: {to}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {cseq_method}\r\n\
         Contact: <sip:src@10.1.1.1:5060>;+sip.src\r\n\
         Max-Forwards: 70\r\n\
         {extra}{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    parse_message(text.as_bytes()).expect("test request parses")
}

fn invite(branch: &str, call_id: &str) -> SipMessage {
    request(
        "INVITE",
        branch,
        call_id,
        None,
        1,
        "INVITE",
        "Require: siprec\r\nTimestamp: 1581564919\r\n",
        SDP,
    )
}

fn feed_tp(u: &mut Uas, at: Timestamp, msg: &SipMessage, transport: Transport) -> Vec<UasEvent> {
    u.handle(UasInput::Message {
        at,
        from: src(),
        transport,
        msg,
        raw_len: 0,
    });
    drain(u)
}

fn feed(u: &mut Uas, at: Timestamp, msg: &SipMessage) -> Vec<UasEvent> {
    feed_tp(u, at, msg, Transport::Udp)
}

fn drain(u: &mut Uas) -> Vec<UasEvent> {
    let mut v = Vec::new();
    while let Some(e) = u.poll_event() {
        v.push(e);
    }
    v
}

/// Every Send parses as SIP (rsip or tolerant path) and goes to the source.
fn sent(events: &[UasEvent]) -> Vec<SipMessage> {
    events
        .iter()
        .filter_map(|e| match e {
            UasEvent::Send { to, bytes, .. } => {
                assert_eq!(*to, src());
                Some(parse_message(bytes).expect("our output parses"))
            }
            _ => None,
        })
        .collect()
}

fn codes(events: &[UasEvent]) -> Vec<u16> {
    sent(events).iter().filter_map(|m| m.status()).collect()
}

fn new_call(events: &[UasEvent]) -> DialogId {
    events
        .iter()
        .find_map(|e| match e {
            UasEvent::NewCall { dialog, .. } => Some(dialog.clone()),
            _ => None,
        })
        .expect("NewCall")
}

fn ended(events: &[UasEvent]) -> Vec<EndCause> {
    events
        .iter()
        .filter_map(|e| match e {
            UasEvent::Ended { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn ack(branch: &str, call_id: &str, tag: &str, cseq: u32) -> SipMessage {
    request("ACK", branch, call_id, Some(tag), cseq, "ACK", "", "")
}

/// Runs timeouts until `until`, returning (time, events) per wake-up.
fn run_until(u: &mut Uas, until: Timestamp) -> Vec<(Timestamp, Vec<UasEvent>)> {
    let mut out = Vec::new();
    while let Some(next) = u.poll_timeout() {
        if next > until {
            break;
        }
        u.handle(UasInput::Timeout(next));
        out.push((next, drain(u)));
    }
    out
}

/// Times (ms after `base`) at which something was sent.
fn send_times(w: &[(Timestamp, Vec<UasEvent>)], base: Timestamp) -> Vec<i64> {
    w.iter()
        .filter(|(_, ev)| ev.iter().any(|e| matches!(e, UasEvent::Send { .. })))
        .map(|(at, _)| at.micros_since(base) / 1000)
        .collect()
}

/// INVITE → 100 + NewCall → accept → 200; returns the dialog.
fn established(u: &mut Uas, call_id: &str) -> DialogId {
    let ev = feed(u, t(0), &invite("z9hG4bKinv1", call_id));
    let d = new_call(&ev);
    assert!(u.accept(&d, "v=0\r\n", t(10)));
    drain(u);
    d
}

#[test]
fn invite_trying_then_200_retransmitted_until_ack() {
    let mut u = uas();
    let ev = feed(&mut u, t(0), &invite("z9hG4bKinv1", "call-1"));
    let msgs = sent(&ev);
    assert_eq!(msgs.len(), 1);
    let trying = &msgs[0];
    assert_eq!(trying.status(), Some(100));
    assert_eq!(trying.to.tag, None, "100 Trying carries no To-tag");
    assert_eq!(trying.header("Timestamp"), Some("1581564919"));
    assert_eq!(trying.headers_named("Via").count(), 2);
    let d = new_call(&ev);
    assert_eq!(d.call_id, "call-1");
    assert_eq!(d.remote_tag, "src-tag");

    assert!(u.accept(&d, SDP, t(10)));
    let ev = drain(&mut u);
    let ok = &sent(&ev)[0];
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.to.tag.as_deref(), Some(d.local_tag.as_str()));
    assert_eq!(ok.cseq, 1);
    assert_eq!(ok.cseq_method, Method::Invite);
    assert_eq!(ok.call_id, "call-1");
    assert_eq!(ok.from.tag.as_deref(), Some("src-tag"));
    assert_eq!(ok.header("Contact"), Some("<sip:192.0.2.50:5090>;+sip.srs"));
    assert_eq!(ok.header("Require"), Some("siprec"));
    assert_eq!(ok.header("Record-Route"), Some("<sip:10.1.1.1;lr>"));
    assert_eq!(ok.header("Server"), Some("pbx-edge-test"));
    assert_eq!(ok.media_type(), Some("application/sdp"));
    assert_eq!(ok.body, SDP.as_bytes());
    assert!(ok.header("Allow").unwrap().contains("UPDATE"));
    // Top Via: rport filled in, received added (10.1.1.1 ≠ 192.0.2.10).
    assert_eq!(
        ok.header("Via"),
        Some("SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKinv1;rport=5062;received=192.0.2.10")
    );

    // Retransmissions at 0.5, 1, 2, 4, 4 s intervals.
    let w = run_until(&mut u, t(10 + 12_000));
    assert_eq!(send_times(&w, t(10)), vec![500, 1500, 3500, 7500, 11_500]);
    for (_, ev) in &w {
        assert_eq!(codes(ev), vec![200]);
    }
    let ev = feed(
        &mut u,
        t(12_100),
        &ack("z9hG4bKack1", "call-1", &d.local_tag, 1),
    );
    assert!(ev.is_empty(), "ACK absorbed silently");
    // No more sends; the transaction expires; the dialog stays.
    let w = run_until(&mut u, t(200_000));
    assert!(send_times(&w, t(0)).is_empty());
    assert!(w.iter().all(|(_, ev)| ev.is_empty()));
    assert_eq!(u.transaction_count(), 0);
    assert_eq!(u.dialog_count(), 1);
    assert_eq!(u.poll_timeout(), None);
}

#[test]
fn retransmitted_invite_gets_the_same_response() {
    let mut u = uas();
    let inv = invite("z9hG4bKinv1", "call-2");
    let ev = feed(&mut u, t(0), &inv);
    let d = new_call(&ev);
    let first = ev
        .iter()
        .find(|e| matches!(e, UasEvent::Send { .. }))
        .cloned();
    let ev2 = feed(&mut u, t(500), &inv);
    assert_eq!(
        ev2,
        vec![first.unwrap()],
        "same 100 again, no second NewCall"
    );
    u.accept(&d, SDP, t(600));
    let ok = drain(&mut u);
    let ev3 = feed(&mut u, t(700), &inv);
    assert_eq!(ev3, ok, "retransmitted INVITE gets the 200 again");
    assert_eq!(u.dialog_count(), 1);
}

/// Once the ACK came, the INVITE's transaction keeps only what it needs
/// to absorb late copies of the INVITE (RFC 6026 Accepted state, Timer
/// L): its stored 2xx goes at once, and a late copy gets no answer.
#[test]
fn after_the_ack_the_stored_2xx_goes_and_a_late_invite_copy_is_absorbed() {
    let mut u = uas();
    let inv = invite("z9hG4bKinv1", "call-a");
    let d = new_call(&feed(&mut u, t(0), &inv));
    let before = u.state_bytes();
    assert!(u.accept(&d, SDP, t(10)));
    let ok = drain(&mut u);
    assert_eq!(codes(&ok), vec![200]);
    let answered = u.state_bytes();
    assert!(answered > before + SDP.len(), "{before} -> {answered}");
    let ev = feed(
        &mut u,
        t(40),
        &ack("z9hG4bKack1", "call-a", &d.local_tag, 1),
    );
    assert!(ev.is_empty(), "ACK absorbed silently");
    let acked = u.state_bytes();
    assert!(
        answered - acked > SDP.len(),
        "the 2xx's bytes released: {answered} -> {acked}"
    );
    assert_eq!(
        u.transaction_count(),
        1,
        "the transaction lives on (Timer L)"
    );
    assert!(
        feed(&mut u, t(60), &inv).is_empty(),
        "a late copy: absorbed"
    );
    assert_eq!(u.dialog_count(), 1);
    // Still no answer to it while the transaction absorbs, then it expires.
    let w = run_until(&mut u, t(40_000));
    assert!(send_times(&w, t(0)).is_empty());
    assert_eq!(u.transaction_count(), 0);
}

/// The same INVITE (Call-ID, From tag, CSeq) on another branch is a merged
/// request: 482, no second dialog (RFC 3261 8.2.2.2).
#[test]
fn a_merged_invite_gets_482_and_no_second_dialog() {
    let mut u = uas();
    let inv = invite("z9hG4bKinv1", "call-m");
    let d = new_call(&feed(&mut u, t(0), &inv));
    u.accept(&d, SDP, t(10));
    drain(&mut u);
    let copy = invite("z9hG4bKother", "call-m");
    let ev = feed(&mut u, t(50), &copy);
    assert!(
        ev.iter().all(|e| !matches!(e, UasEvent::NewCall { .. })),
        "{ev:?}"
    );
    assert_eq!(codes(&ev), vec![482]);
    assert_eq!(u.dialog_count(), 1);
    // After an in-dialog request (a keepalive OPTIONS, CSeq 2), a copy of
    // the first INVITE (CSeq 1) arriving late is still that INVITE's copy.
    feed(&mut u, t(60), &ack("z9hG4bKack", "call-m", &d.local_tag, 1));
    let opt = request(
        "OPTIONS",
        "z9hG4bKo2",
        "call-m",
        Some(&d.local_tag),
        2,
        "OPTIONS",
        "",
        "",
    );
    assert_eq!(codes(&feed(&mut u, t(70), &opt)), vec![200]);
    let late = invite("z9hG4bKthird", "call-m");
    let ev = feed(&mut u, t(80), &late);
    assert_eq!(codes(&ev), vec![482], "{ev:?}");
    assert_eq!(u.dialog_count(), 1);
}

/// A new INVITE (another From tag) whose Call-ID a dialog holds: 482, no
/// second dialog (a recorder keeps recordings by Call-ID: the second
/// session was recorded into the first, its own audio lost), and a
/// recorder beside the UAS is not shown it ([`Uas::takes`]).
#[test]
fn an_invite_with_a_call_id_in_use_gets_482_and_is_not_taken() {
    let mut u = uas();
    let inv = invite("z9hG4bKinv1", "call-used");
    assert!(u.takes(&inv));
    let d = new_call(&feed(&mut u, t(0), &inv));
    u.accept(&d, SDP, t(10));
    drain(&mut u);
    // Its retransmission is still taken (the recorder counts it once).
    assert!(u.takes(&inv));
    let text = String::from_utf8(format_invite("z9hG4bKinv2", "call-used")).unwrap();
    let other = parse_message(text.replace("tag=src-tag", "tag=other-tag").as_bytes()).unwrap();
    assert!(!u.takes(&other));
    let ev = feed(&mut u, t(50), &other);
    assert!(
        ev.iter().all(|e| !matches!(e, UasEvent::NewCall { .. })),
        "{ev:?}"
    );
    assert_eq!(codes(&ev), vec![482]);
    assert_eq!(u.dialog_count(), 1);
}

/// What a recorder beside the UAS may act on: not a BYE whose tags name
/// no dialog (481: it ended a recording), nor a request it cannot answer
/// (no Via: such INVITEs were calls in progress for minutes); the
/// dialog's own requests and new calls yes.
#[test]
fn takes_only_what_the_uas_takes_up() {
    let mut u = uas();
    let d = established(&mut u, "call-t");
    let bye = request(
        "BYE",
        "z9hG4bKb1",
        "call-t",
        Some(&d.local_tag),
        2,
        "BYE",
        "",
        "",
    );
    assert!(u.takes(&bye));
    let text = String::from_utf8(bye_bytes(&d.local_tag)).unwrap();
    let wrong = parse_message(text.replace("tag=src-tag", "tag=WRONG").as_bytes()).unwrap();
    assert!(!u.takes(&wrong));
    assert_eq!(codes(&feed(&mut u, t(100), &wrong)), vec![481]);
    let stray = request("BYE", "z9hG4bKb2", "call-t", None, 3, "BYE", "", "");
    assert!(!u.takes(&stray));
    let no_via = parse_message(
        b"INVITE sip:srs@192.0.2.50 SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n\
          Call-ID: novia-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert!(!u.takes(&no_via));
    assert!(!Uas::answerable(&no_via));
    assert!(Uas::answerable(&wrong));
    assert!(u.takes(&invite("z9hG4bKnew", "call-new")));
    let ok = parse_message(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.50:5090;branch=z9hG4bKx\r\n\
          From: <sip:srs@192.0.2.50>;tag=a\r\nTo: <sip:src@10.1.1.1>;tag=b\r\n\
          Call-ID: call-t\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert!(u.takes(&ok));
}

/// The text of [`invite`] on `branch`.
fn format_invite(branch: &str, call_id: &str) -> Vec<u8> {
    let m = invite(branch, call_id);
    let body = String::from_utf8_lossy(&m.body).to_string();
    format!(
        "INVITE sip:srs@192.0.2.50:5090 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.1.1.1:5060;branch={branch};rport\r\n\
         From: \"SRC\" <sip:src@10.1.1.1>;tag=src-tag\r\n\
         To: <sip:srs@192.0.2.50:5090>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:src@10.1.1.1:5060>;+sip.src\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A BYE of dialog `local_tag` of "call-t".
fn bye_bytes(local_tag: &str) -> Vec<u8> {
    format!(
        "BYE sip:srs@192.0.2.50:5090 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKb3;rport\r\n\
         From: \"SRC\" <sip:src@10.1.1.1>;tag=src-tag\r\n\
         To: <sip:srs@192.0.2.50:5090>;tag={local_tag}\r\n\
         Call-ID: call-t\r\nCSeq: 4 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn timer_h_without_ack_ends_call_and_sends_bye() {
    let mut u = uas();
    let d = established(&mut u, "call-3");
    let w = run_until(&mut u, t(10 + 32_000));
    let times = send_times(&w, t(10));
    // 0.5 1.5 3.5 7.5 11.5 15.5 ... 31.5, then the BYE at 32 s.
    assert_eq!(times.first(), Some(&500));
    assert!(
        times.contains(&31_500) && times.contains(&32_000),
        "{times:?}"
    );
    let (at, last) = w
        .iter()
        .find(|(_, ev)| !ended(ev).is_empty())
        .expect("Ended");
    assert_eq!(*at, t(10 + 32_000));
    assert_eq!(ended(last), vec![EndCause::AckTimeout]);
    let bye = sent(last)
        .into_iter()
        .find(|m| m.method() == Some(&Method::Bye))
        .expect("BYE sent");
    assert_eq!(bye.request_uri(), Some("sip:src@10.1.1.1:5060"));
    assert_eq!(bye.header("Route"), Some("<sip:10.1.1.1;lr>"));
    assert_eq!(bye.from.tag.as_deref(), Some(d.local_tag.as_str()));
    assert_eq!(bye.to.tag.as_deref(), Some("src-tag"));
    assert_eq!(bye.call_id, "call-3");
    assert_eq!(bye.cseq_method, Method::Bye);
    assert_eq!(u.dialog_count(), 0);
    // The BYE is retransmitted until answered.
    let branch = bye.via_branch.clone().unwrap();
    let w = run_until(&mut u, t(10 + 33_000));
    assert_eq!(send_times(&w, t(10 + 32_000)), vec![500]);
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.50:5090;branch={branch}\r\nFrom: <sip:srs@192.0.2.50>;tag={}\r\nTo: <sip:src@10.1.1.1>;tag=src-tag\r\nCall-ID: call-3\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        d.local_tag
    );
    let ev = feed(
        &mut u,
        t(10 + 33_100),
        &parse_message(ok.as_bytes()).unwrap(),
    );
    assert!(ev.is_empty());
    let w = run_until(&mut u, t(10 + 100_000));
    assert!(send_times(&w, t(0)).is_empty());
    assert_eq!(u.transaction_count(), 0);
}

#[test]
fn tcp_no_retransmissions() {
    let mut u = uas();
    let ev = feed_tp(
        &mut u,
        t(0),
        &invite("z9hG4bKinv1", "call-4"),
        Transport::Tcp,
    );
    let d = new_call(&ev);
    u.accept(&d, SDP, t(10));
    let ok = sent(&drain(&mut u)).remove(0);
    assert_eq!(
        ok.header("Contact"),
        Some("<sip:192.0.2.50:5090;transport=tcp>;+sip.srs")
    );
    assert_eq!(
        u.poll_timeout(),
        Some(t(10 + 32_000)),
        "only the ACK deadline"
    );
    let w = run_until(&mut u, t(10 + 31_000));
    assert!(w.is_empty());
    let ev = feed_tp(
        &mut u,
        t(20_000),
        &ack("z9hG4bKack", "call-4", &d.local_tag, 1),
        Transport::Tcp,
    );
    assert!(ev.is_empty());
    let w = run_until(&mut u, t(100_000));
    assert!(w.iter().all(|(_, e)| e.is_empty()));
    assert_eq!(u.dialog_count(), 1);
}

#[test]
fn tls_dialogs_name_the_tls_port_and_transport() {
    let mut u = uas();
    let ev = feed_tp(
        &mut u,
        t(0),
        &invite("z9hG4bKinv1", "call-tls"),
        Transport::Tls,
    );
    let d = new_call(&ev);
    u.accept(&d, SDP, t(10));
    let ok = sent(&drain(&mut u)).remove(0);
    assert_eq!(
        ok.header("Contact"),
        Some("<sip:192.0.2.50:5091;transport=tls>;+sip.srs")
    );
    feed_tp(
        &mut u,
        t(50),
        &ack("z9hG4bKack", "call-tls", &d.local_tag, 1),
        Transport::Tls,
    );
    assert!(u.hangup(&d, t(1000)));
    let ev = drain(&mut u);
    let bye = sent(&ev).remove(0);
    assert_eq!(bye.method(), Some(&Method::Bye));
    let via = bye.header("Via").unwrap();
    assert!(via.starts_with("SIP/2.0/TLS 192.0.2.50:5091;"), "{via}");
    assert!(ev.iter().any(|e| matches!(
        e,
        UasEvent::Send {
            transport: Transport::Tls,
            ..
        }
    )));
}

#[test]
fn cancel_pending_invite() {
    let mut u = uas();
    let ev = feed(&mut u, t(0), &invite("z9hG4bKinv1", "call-5"));
    let d = new_call(&ev);
    let cancel = request("CANCEL", "z9hG4bKinv1", "call-5", None, 1, "CANCEL", "", "");
    let ev = feed(&mut u, t(100), &cancel);
    let msgs = sent(&ev);
    assert_eq!(codes(&ev), vec![200, 487]);
    assert_eq!(msgs[0].cseq_method, Method::Cancel);
    assert_eq!(msgs[1].cseq_method, Method::Invite);
    assert_eq!(msgs[0].to.tag, msgs[1].to.tag);
    assert_eq!(msgs[1].to.tag.as_deref(), Some(d.local_tag.as_str()));
    assert_eq!(ended(&ev), vec![EndCause::Cancel]);
    // The shell's late decision is a no-op.
    assert!(!u.accept(&d, SDP, t(150)));
    assert!(drain(&mut u).is_empty());
    // 487 retransmitted until its ACK (same branch as the INVITE).
    let w = run_until(&mut u, t(1000));
    assert_eq!(send_times(&w, t(100)), vec![500]);
    let ev = feed(
        &mut u,
        t(1100),
        &ack("z9hG4bKinv1", "call-5", &d.local_tag, 1),
    );
    assert!(ev.is_empty());
    let w = run_until(&mut u, t(100_000));
    assert!(w.iter().all(|(_, e)| e.is_empty()));
    assert_eq!(u.transaction_count(), 0);
    // Retransmitted CANCEL meanwhile would get 200 again, not a second 487.
}

#[test]
fn cancel_race_after_accept() {
    let mut u = uas();
    let d = established(&mut u, "call-6");
    let cancel = request("CANCEL", "z9hG4bKinv1", "call-6", None, 1, "CANCEL", "", "");
    let ev = feed(&mut u, t(20), &cancel);
    assert_eq!(codes(&ev), vec![200], "CANCEL answered, INVITE stays 200");
    assert!(ended(&ev).is_empty());
    // A retransmitted CANCEL gets the same 200.
    assert_eq!(feed(&mut u, t(30), &cancel), ev);
    feed(&mut u, t(40), &ack("z9hG4bKack", "call-6", &d.local_tag, 1));
    let bye = request(
        "BYE",
        "z9hG4bKbye",
        "call-6",
        Some(&d.local_tag),
        2,
        "BYE",
        "",
        "",
    );
    let ev = feed(&mut u, t(5000), &bye);
    assert_eq!(codes(&ev), vec![200]);
    assert_eq!(ended(&ev), vec![EndCause::Bye]);
    // CANCEL for nothing known.
    let stray = request("CANCEL", "z9hG4bKnone", "call-x", None, 1, "CANCEL", "", "");
    assert_eq!(codes(&feed(&mut u, t(6000), &stray)), vec![481]);
}

#[test]
fn bye_ends_dialog_once() {
    let mut u = uas();
    let d = established(&mut u, "call-7");
    feed(&mut u, t(50), &ack("z9hG4bKack", "call-7", &d.local_tag, 1));
    let bye = request(
        "BYE",
        "z9hG4bKbye1",
        "call-7",
        Some(&d.local_tag),
        2,
        "BYE",
        "",
        "",
    );
    let ev = feed(&mut u, t(60_000), &bye);
    assert_eq!(codes(&ev), vec![200]);
    assert_eq!(sent(&ev)[0].to.tag.as_deref(), Some(d.local_tag.as_str()));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, UasEvent::Ended { dialog, .. } if *dialog == d))
            .count(),
        1
    );
    // Retransmitted BYE: the same 200, no second Ended.
    let ev2 = feed(&mut u, t(60_500), &bye);
    assert_eq!(codes(&ev2), vec![200]);
    assert!(ended(&ev2).is_empty());
    // A new BYE for the gone dialog: 481.
    let bye2 = request(
        "BYE",
        "z9hG4bKbye2",
        "call-7",
        Some(&d.local_tag),
        3,
        "BYE",
        "",
        "",
    );
    assert_eq!(codes(&feed(&mut u, t(61_000), &bye2)), vec![481]);
    assert_eq!(u.dialog_count(), 0);
    assert!(u.state_bytes() > 0);
    run_until(&mut u, t(200_000));
    assert_eq!((u.transaction_count(), u.state_bytes()), (0, 0));
}

/// With held BYEs the dialog ends at once but the 200 waits for the
/// shell; retransmissions meanwhile get nothing, afterwards the same
/// 200; a BYE the shell never answers is answered at BYE_HOLD_MAX_US.
#[test]
fn held_bye_is_answered_when_the_shell_says_or_at_the_deadline() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut u = uas();
        u.hold_byes(true);
        let d = established(&mut u, "call-h");
        feed(&mut u, t(50), &ack("z9hG4bKack", "call-h", &d.local_tag, 1));
        let bye = request(
            "BYE",
            "z9hG4bKbyeh",
            "call-h",
            Some(&d.local_tag),
            2,
            "BYE",
            "",
            "",
        );
        let ev = feed_tp(&mut u, t(1000), &bye, transport);
        assert!(codes(&ev).is_empty(), "no answer yet: {ev:?}");
        assert_eq!(ended(&ev), vec![EndCause::Bye]);
        assert_eq!(u.held_bye_count(), 1);
        // A retransmission is absorbed.
        assert!(codes(&feed_tp(&mut u, t(1500), &bye, transport)).is_empty());
        assert!(u.answer_bye(&d, t(1700)));
        let ev = drain(&mut u);
        assert_eq!(codes(&ev), vec![200]);
        assert_eq!(sent(&ev)[0].cseq_method, Method::Bye);
        assert_eq!(sent(&ev)[0].to.tag.as_deref(), Some(d.local_tag.as_str()));
        assert!(!u.answer_bye(&d, t(1800)), "answered once");
        assert_eq!(u.held_bye_count(), 0);
        if transport == Transport::Udp {
            // Retransmitted after the answer: the same 200.
            assert_eq!(codes(&feed(&mut u, t(2000), &bye)), vec![200]);
        }
        run_until(&mut u, t(200_000));
        assert_eq!((u.transaction_count(), u.state_bytes()), (0, 0));
    }
    // Never answered by the shell: 200 at the deadline, not before.
    let mut u = uas();
    u.hold_byes(true);
    let d = established(&mut u, "call-i");
    feed(&mut u, t(50), &ack("z9hG4bKack", "call-i", &d.local_tag, 1));
    let bye = request(
        "BYE",
        "z9hG4bKbyei",
        "call-i",
        Some(&d.local_tag),
        2,
        "BYE",
        "",
        "",
    );
    feed(&mut u, t(1000), &bye);
    let w = run_until(&mut u, t(1000 + BYE_HOLD_MAX_US / 1000 - 1));
    assert!(w.iter().all(|(_, e)| codes(e).is_empty()));
    let w = run_until(&mut u, t(1000 + BYE_HOLD_MAX_US / 1000));
    let all: Vec<u16> = w.iter().flat_map(|(_, e)| codes(e)).collect();
    assert_eq!(all, vec![200]);
    assert_eq!(u.held_bye_count(), 0);
    // Stopping answers whatever is held.
    let mut u = uas();
    u.hold_byes(true);
    let d = established(&mut u, "call-j");
    feed(&mut u, t(50), &ack("z9hG4bKack", "call-j", &d.local_tag, 1));
    let bye = request(
        "BYE",
        "z9hG4bKbyej",
        "call-j",
        Some(&d.local_tag),
        2,
        "BYE",
        "",
        "",
    );
    assert!(codes(&feed(&mut u, t(100), &bye)).is_empty());
    u.answer_held_byes(t(200));
    assert_eq!(codes(&drain(&mut u)), vec![200]);
}

#[test]
fn unknown_dialog_481() {
    let mut u = uas();
    let bye = request("BYE", "z9hG4bK1", "nope", Some("zzz"), 2, "BYE", "", "");
    assert_eq!(codes(&feed(&mut u, t(0), &bye)), vec![481]);
    let info = request("INFO", "z9hG4bK2", "nope", None, 2, "INFO", "", "");
    assert_eq!(codes(&feed(&mut u, t(0), &info)), vec![481]);
    let upd = request(
        "UPDATE",
        "z9hG4bK3",
        "nope",
        Some("zzz"),
        2,
        "UPDATE",
        "",
        SDP,
    );
    assert_eq!(codes(&feed(&mut u, t(0), &upd)), vec![481]);
    // A re-INVITE for an unknown dialog: 481, retransmitted until ACK.
    let reinv = request(
        "INVITE",
        "z9hG4bK4",
        "nope",
        Some("zzz"),
        2,
        "INVITE",
        "",
        SDP,
    );
    let ev = feed(&mut u, t(0), &reinv);
    assert_eq!(codes(&ev), vec![481]);
    assert!(ev.iter().all(|e| !matches!(e, UasEvent::NewCall { .. })));
    let w = run_until(&mut u, t(600));
    assert_eq!(send_times(&w, t(0)), vec![500]);
    feed(&mut u, t(700), &ack("z9hG4bK4", "nope", "zzz", 2));
    let w = run_until(&mut u, t(100_000));
    assert!(w.iter().all(|(_, e)| e.is_empty()));
    // A stray ACK is absorbed.
    assert!(feed(&mut u, t(0), &ack("z9hG4bK5", "nope", "zzz", 9)).is_empty());
}

#[test]
fn unspecified_listen_uses_the_address_the_peer_reaches() {
    let mut u = Uas::new(UasConfig {
        contact_host: "0.0.0.0".into(),
        contact_port: 5090,
        tls_port: None,
        user_agent: "pbx-edge-test".into(),
        tag_seed: 7,
    });
    assert!(u.needs_local_ip(src().ip()));
    u.learn_local_ip(src().ip(), "192.0.2.77".parse().unwrap());
    assert!(!u.needs_local_ip(src().ip()));
    let opt = request("OPTIONS", "z9hG4bKo1", "opt-1", None, 1, "OPTIONS", "", "");
    let r = sent(&feed(&mut u, t(0), &opt)).remove(0);
    assert_eq!(r.header("Contact"), Some("<sip:192.0.2.77:5090>;+sip.srs"));
    // Our BYE's Via names it too.
    let ev = feed(&mut u, t(10), &invite("z9hG4bKi1", "call-1"));
    let d = ev
        .iter()
        .find_map(|e| match e {
            UasEvent::NewCall { dialog, .. } => Some(dialog.clone()),
            _ => None,
        })
        .unwrap();
    assert!(u.accept(&d, SDP, t(20)));
    let ok = sent(&drain(&mut u)).remove(0);
    assert!(ok.header("Contact").unwrap().contains("192.0.2.77:5090"));
    assert!(u.hangup(&d, t(30)));
    let bye = sent(&drain(&mut u))
        .into_iter()
        .find(|m| m.method() == Some(&Method::Bye))
        .unwrap();
    assert!(bye.header("Via").unwrap().contains("192.0.2.77:5090"));
}

#[test]
fn options_and_other_methods() {
    let mut u = uas();
    let opt = request("OPTIONS", "z9hG4bKo1", "opt-1", None, 1, "OPTIONS", "", "");
    let ev = feed(&mut u, t(0), &opt);
    let r = sent(&ev).remove(0);
    assert_eq!(r.status(), Some(200));
    assert!(r.to.tag.is_some());
    assert!(r.header("Allow").unwrap().contains("INVITE"));
    let accept = r.header("Accept").unwrap();
    assert!(accept.contains("application/sdp"));
    assert!(accept.contains("application/rs-metadata+xml"));
    assert_eq!(r.header("Supported"), Some("siprec"));
    assert!(r.header("Contact").unwrap().contains("+sip.srs"));
    assert!(!ev.iter().any(|e| matches!(e, UasEvent::NewCall { .. })));
    let reg = request(
        "REGISTER",
        "z9hG4bKr1",
        "reg-1",
        None,
        1,
        "REGISTER",
        "",
        "",
    );
    let ev = feed(&mut u, t(0), &reg);
    let r = sent(&ev).remove(0);
    assert_eq!(r.status(), Some(405));
    assert!(r.header("Allow").is_some());
    // Unsupported Require → 420 with Unsupported.
    let inv = request(
        "INVITE",
        "z9hG4bKr2",
        "req-1",
        None,
        1,
        "INVITE",
        "Require: siprec, 100rel\r\n",
        SDP,
    );
    let ev = feed(&mut u, t(0), &inv);
    let r = sent(&ev).remove(0);
    assert_eq!(r.status(), Some(420));
    assert_eq!(r.header("Unsupported"), Some("100rel"));
    assert_eq!(u.dialog_count(), 0);
    // CSeq method mismatch → 400.
    let bad = request("OPTIONS", "z9hG4bKb", "bad-1", None, 1, "INVITE", "", "");
    assert_eq!(codes(&feed(&mut u, t(0), &bad)), vec![400]);
    // Over TCP, non-INVITE answers keep no state.
    let before = u.transaction_count();
    let opt2 = request("OPTIONS", "z9hG4bKo2", "opt-2", None, 1, "OPTIONS", "", "");
    feed_tp(&mut u, t(0), &opt2, Transport::Tcp);
    assert_eq!(u.transaction_count(), before);
}

#[test]
fn reinvite_and_update_in_dialog() {
    let mut u = uas();
    let d = established(&mut u, "call-8");
    feed(&mut u, t(50), &ack("z9hG4bKack", "call-8", &d.local_tag, 1));
    let reinv = request(
        "INVITE",
        "z9hG4bKre2",
        "call-8",
        Some(&d.local_tag),
        2,
        "INVITE",
        "",
        SDP,
    );
    let ev = feed(&mut u, t(10_000), &reinv);
    assert_eq!(codes(&ev), vec![100]);
    assert!(ev
        .iter()
        .any(|e| matches!(e, UasEvent::Reinvite { dialog, msg } if *dialog == d && msg.cseq == 2)));
    // A second offer while the first is pending: 500 + Retry-After.
    let upd = request(
        "UPDATE",
        "z9hG4bKup3",
        "call-8",
        Some(&d.local_tag),
        3,
        "UPDATE",
        "",
        SDP,
    );
    let ev = feed(&mut u, t(10_100), &upd);
    let r = sent(&ev).remove(0);
    assert_eq!(r.status(), Some(500));
    assert!(r.header("Retry-After").is_some());
    // Accept the re-INVITE: 200 retransmitted until ACK with CSeq 2.
    assert!(u.accept(&d, SDP, t(10_200)));
    let ok = sent(&drain(&mut u)).remove(0);
    assert_eq!((ok.status(), ok.cseq), (Some(200), 2));
    assert_eq!(ok.header("Record-Route"), None, "route set is fixed");
    let w = run_until(&mut u, t(11_000));
    assert_eq!(send_times(&w, t(10_200)), vec![500]);
    // An ACK with the wrong CSeq does not stop it; the right one does.
    feed(
        &mut u,
        t(11_100),
        &ack("z9hG4bKa1", "call-8", &d.local_tag, 1),
    );
    let w = run_until(&mut u, t(12_000));
    assert_eq!(send_times(&w, t(10_200)), vec![1500]);
    feed(
        &mut u,
        t(12_100),
        &ack("z9hG4bKa2", "call-8", &d.local_tag, 2),
    );
    let w = run_until(&mut u, t(60_000));
    assert!(send_times(&w, t(0)).is_empty());
    // UPDATE: event, 200 with body, no retransmissions.
    let upd = request(
        "UPDATE",
        "z9hG4bKup4",
        "call-8",
        Some(&d.local_tag),
        4,
        "UPDATE",
        "",
        SDP,
    );
    let ev = feed(&mut u, t(70_000), &upd);
    assert!(codes(&ev).is_empty(), "no 100 for non-INVITE");
    assert!(ev.iter().any(|e| matches!(e, UasEvent::Update { .. })));
    assert!(u.accept(&d, SDP, t(70_010)));
    let ok = sent(&drain(&mut u)).remove(0);
    assert_eq!(
        (ok.status(), ok.cseq_method.clone()),
        (Some(200), Method::Update)
    );
    assert_eq!(ok.body, SDP.as_bytes());
    let w = run_until(&mut u, t(75_000));
    assert!(send_times(&w, t(0)).is_empty());
    // A rejected re-INVITE leaves the dialog up.
    let reinv = request(
        "INVITE",
        "z9hG4bKre5",
        "call-8",
        Some(&d.local_tag),
        5,
        "INVITE",
        "",
        SDP,
    );
    feed(&mut u, t(80_000), &reinv);
    assert!(u.reject(&d, 488, "Not Acceptable Here", t(80_010)));
    let ev = drain(&mut u);
    assert_eq!(codes(&ev), vec![488]);
    assert!(ended(&ev).is_empty());
    assert_eq!(u.dialog_count(), 1);
    feed(
        &mut u,
        t(80_100),
        &ack("z9hG4bKre5", "call-8", &d.local_tag, 5),
    );
    // CSeq going backwards: 500.
    let old = request(
        "UPDATE",
        "z9hG4bKold",
        "call-8",
        Some(&d.local_tag),
        3,
        "UPDATE",
        "",
        "",
    );
    assert_eq!(codes(&feed(&mut u, t(81_000), &old)), vec![500]);
    // A BYE with the rejected re-INVITE's CSeq (5): not lower, so taken.
    let bye = request(
        "BYE",
        "z9hG4bKbye5",
        "call-8",
        Some(&d.local_tag),
        5,
        "BYE",
        "",
        "",
    );
    let ev = feed(&mut u, t(82_000), &bye);
    assert_eq!(codes(&ev), vec![200]);
    assert_eq!(u.dialog_count(), 0);
}

#[test]
fn reject_codes_and_ack() {
    for code in [403u16, 488, 503] {
        let mut u = uas();
        let ev = feed(&mut u, t(0), &invite("z9hG4bKinv1", "call-9"));
        let d = new_call(&ev);
        assert!(!u.reject(&d, 200, "OK", t(1)), "200 is not a rejection");
        assert!(u.reject(&d, code, "No", t(5)));
        let ev = drain(&mut u);
        let r = sent(&ev).remove(0);
        assert_eq!(r.status(), Some(code));
        assert_eq!(r.to.tag.as_deref(), Some(d.local_tag.as_str()));
        assert_eq!(ended(&ev), vec![EndCause::Rejected(code)]);
        assert!(!u.reject(&d, code, "No", t(6)));
        // Retransmitted (UDP) until the ACK.
        let w = run_until(&mut u, t(2000));
        assert_eq!(send_times(&w, t(5)), vec![500, 1500]);
        feed(
            &mut u,
            t(2100),
            &ack("z9hG4bKinv1", "call-9", &d.local_tag, 1),
        );
        let w = run_until(&mut u, t(100_000));
        assert!(send_times(&w, t(0)).is_empty());
        assert_eq!((u.dialog_count(), u.transaction_count()), (0, 0));
    }
}

#[test]
fn refused_requests_are_answered_without_state() {
    use crate::sip::message::{salvage_request, SipError, MAX_VIAS};
    let mut u = uas();
    // An INVITE with 1,000 Vias: refused by the parser, answered 400 with
    // the first 70 Vias (the top one annotated), From, To + tag, CSeq.
    let mut text = String::from("INVITE sip:srs@192.0.2.50 SIP/2.0\r\n");
    text.push_str("Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKbig;rport\r\n");
    for i in 1..1000 {
        text.push_str(&format!(
            "Via: SIP/2.0/UDP 10.2.{}.{};branch=z9hG4bK{i}\r\n",
            i / 250,
            i % 250
        ));
    }
    text.push_str("From: <sip:src@10.1.1.1>;tag=f1\r\nTo: <sip:srs@192.0.2.50>\r\nCall-ID: vias\r\nCSeq: 3 INVITE\r\nContent-Length: 0\r\n\r\n");
    let err = parse_message(text.as_bytes()).unwrap_err();
    assert_eq!(err, SipError::TooManyVias(1000));
    let refusal = Refusal::for_sip_error(&err).unwrap();
    let msg = salvage_request(text.as_bytes()).unwrap();
    assert!(u.refuse(src(), Transport::Udp, &msg, &refusal));
    let ev = drain(&mut u);
    let UasEvent::Send {
        bytes, transport, ..
    } = &ev[0]
    else {
        panic!("{ev:?}");
    };
    assert_eq!(*transport, Transport::Udp);
    assert!(
        bytes.len() < text.len() / 4,
        "no amplification: {}",
        bytes.len()
    );
    let r = sent(&ev).remove(0);
    assert_eq!(r.status(), Some(400));
    assert_eq!(
        r.start,
        crate::sip::StartLine::Response {
            code: 400,
            reason: "Too Many Via Headers".into()
        }
    );
    assert_eq!(r.call_id, "vias");
    assert_eq!((r.cseq, r.cseq_method.clone()), (3, Method::Invite));
    assert_eq!(r.headers_named("Via").count(), MAX_VIAS);
    assert_eq!(
        r.header("Via"),
        Some("SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKbig;rport=5062;received=192.0.2.10")
    );
    assert_eq!(r.from.tag.as_deref(), Some("f1"));
    let tag = r.to.tag.clone().expect("our To-tag");
    assert_eq!(
        r.header("Warning"),
        Some("399 pbx-edge \"1000 Via values, more than the 70 accepted\"")
    );
    // No state: a retransmission gets the same answer again.
    assert_eq!((u.dialog_count(), u.transaction_count()), (0, 0));
    assert!(u.refuse(src(), Transport::Udp, &msg, &refusal));
    let again = sent(&drain(&mut u)).remove(0);
    assert_eq!(again.to.tag.as_deref(), Some(tag.as_str()));
    // Over TCP the answer goes back on the connection's transport.
    assert!(u.refuse(src(), Transport::Tcp, &msg, &refusal));
    assert!(matches!(
        drain(&mut u)[0],
        UasEvent::Send {
            transport: Transport::Tcp,
            ..
        }
    ));
    // An ACK is never answered; neither is a response.
    let ack = salvage_request(
        text.replace("INVITE sip:", "ACK sip:")
            .replace("3 INVITE", "3 ACK")
            .as_bytes(),
    )
    .unwrap();
    assert!(!u.refuse(src(), Transport::Udp, &ack, &refusal));
    assert!(drain(&mut u).is_empty());
}

#[test]
fn an_offer_over_a_limit_is_rejected_488_with_a_warning() {
    use crate::sip::sdp::SdpError;
    use crate::sip::siprec::SiprecError;
    let mut u = uas();
    let ev = feed(&mut u, t(0), &invite("z9hG4bKm", "call-m"));
    let d = new_call(&ev);
    let refusal = Refusal::for_offer(&SiprecError::Sdp(SdpError::TooManyMedia));
    assert!(u.reject_refusal(&d, &refusal, t(5)));
    let ev = drain(&mut u);
    let r = sent(&ev).remove(0);
    assert_eq!(r.status(), Some(488));
    assert_eq!(
        r.header("Warning"),
        Some("399 pbx-edge \"SDP: more than 64 media sections\"")
    );
    assert_eq!(ended(&ev), vec![EndCause::Rejected(488)]);
}

#[test]
fn undecided_invite_times_out_with_503() {
    let mut u = uas();
    let ev = feed(&mut u, t(0), &invite("z9hG4bKinv1", "call-10"));
    let _d = new_call(&ev);
    let w = run_until(&mut u, t(32_000));
    let ev: Vec<UasEvent> = w.into_iter().flat_map(|(_, e)| e).collect();
    assert_eq!(codes(&ev), vec![503]);
    assert_eq!(ended(&ev), vec![EndCause::DecisionTimeout]);
    assert_eq!(u.dialog_count(), 0);
}

#[test]
fn hangup_sends_bye_and_retransmits() {
    let mut u = uas();
    let d = established(&mut u, "call-11");
    feed(
        &mut u,
        t(50),
        &ack("z9hG4bKack", "call-11", &d.local_tag, 1),
    );
    assert!(u.hangup(&d, t(1000)));
    let ev = drain(&mut u);
    assert_eq!(ended(&ev), vec![EndCause::LocalBye]);
    let bye = sent(&ev).remove(0);
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(bye.cseq, 1);
    let w = run_until(&mut u, t(1000 + 40_000));
    let times = send_times(&w, t(1000));
    assert_eq!(&times[..4], &[500, 1500, 3500, 7500]);
    assert_eq!(u.transaction_count(), 0);
    assert!(!u.hangup(&d, t(50_000)));
    // Hanging up an undecided call rejects it.
    let ev = feed(&mut u, t(60_000), &invite("z9hG4bKinv2", "call-12"));
    let d2 = new_call(&ev);
    assert!(u.hangup(&d2, t(60_001)));
    let ev = drain(&mut u);
    assert_eq!(codes(&ev), vec![480]);
    assert_eq!(ended(&ev), vec![EndCause::Rejected(480)]);
}

#[test]
fn bye_during_pending_reinvite_answers_487() {
    let mut u = uas();
    let d = established(&mut u, "call-13");
    feed(
        &mut u,
        t(50),
        &ack("z9hG4bKack", "call-13", &d.local_tag, 1),
    );
    let reinv = request(
        "INVITE",
        "z9hG4bKre2",
        "call-13",
        Some(&d.local_tag),
        2,
        "INVITE",
        "",
        SDP,
    );
    feed(&mut u, t(100), &reinv);
    let bye = request(
        "BYE",
        "z9hG4bKbye",
        "call-13",
        Some(&d.local_tag),
        3,
        "BYE",
        "",
        "",
    );
    let ev = feed(&mut u, t(200), &bye);
    assert_eq!(codes(&ev), vec![487, 200]);
    assert_eq!(ended(&ev), vec![EndCause::Bye]);
    assert!(!u.accept(&d, SDP, t(300)));
}

#[test]
fn rfc2543_branch_and_ipv6_contact() {
    let mut u = Uas::new(UasConfig {
        contact_host: "2001:db8::50".into(),
        contact_port: 5090,
        tls_port: Some(5091),
        user_agent: String::new(),
        tag_seed: 1,
    });
    let inv = invite("oldstyle1", "call-14");
    let ev = feed(&mut u, t(0), &inv);
    let d = new_call(&ev);
    // Retransmission still matched without the magic cookie.
    assert_eq!(codes(&feed(&mut u, t(100), &inv)), vec![100]);
    u.accept(&d, SDP, t(200));
    let ok = sent(&drain(&mut u)).remove(0);
    assert_eq!(
        ok.header("Contact"),
        Some("<sip:[2001:db8::50]:5090>;+sip.srs")
    );
    assert_eq!(ok.header("Server"), None);
}

#[test]
fn cisco_cube_invite_end_to_end() {
    use crate::sip::sdp::{parse_sdp, Direction};
    use crate::sip::siprec::{answer_sdp, assign_streams, siprec_parts};
    let Some(dir) = crate::sip::test_support::corpus_dir() else {
        return;
    };
    let Ok(bytes) = std::fs::read(dir.join("siprec/invite_cisco_cube_media_proxy.txt")) else {
        eprintln!("note: Cisco CUBE INVITE missing, test skipped");
        return;
    };
    let inv = parse_message(&bytes).unwrap();
    let mut u = uas();
    let ev = feed(&mut u, t(0), &inv);
    assert_eq!(codes(&ev), vec![100]);
    let (d, invite) = ev
        .iter()
        .find_map(|e| match e {
            UasEvent::NewCall { dialog, invite, .. } => Some((dialog.clone(), invite.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(d.remote_tag, "678813-6AC");
    let (offer, meta) = siprec_parts(&invite).unwrap();
    let a = assign_streams(&offer, &meta.unwrap()).unwrap();
    assert_eq!(a.len(), 2);
    let answer = answer_sdp(
        &offer,
        "192.0.2.50".parse().unwrap(),
        &[20000, 20002],
        &[],
        1,
    );
    assert!(u.accept(&d, &answer, t(20)));
    let ok = sent(&drain(&mut u)).remove(0);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.header("Require"), Some("siprec"));
    assert_eq!(ok.header("CSeq"), Some("101 INVITE"));
    assert_eq!(
        ok.call_id,
        "B0FA2851-4D4811EA-82E5D263-E98F8024@8.43.33.209"
    );
    let sdp = ok.sdp().unwrap().unwrap();
    let ports: Vec<u16> = sdp.media.iter().map(|m| m.port).collect();
    assert_eq!(ports, vec![20000, 20002]);
    assert!(sdp
        .media
        .iter()
        .all(|m| m.direction == Some(Direction::RecvOnly)));
    assert_eq!(parse_sdp(&answer).unwrap(), sdp);
    // The SRC's ACK (new branch, our tag, CSeq 101) confirms the dialog.
    let ack_text = format!(
        "ACK sip:8.43.33.203:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 8.43.33.209:5060;branch=z9hG4bKack\r\nFrom: <sip:8.43.33.209>;tag=678813-6AC\r\nTo: <sip:9876@8.43.33.203>;tag={}\r\nCall-ID: B0FA2851-4D4811EA-82E5D263-E98F8024@8.43.33.209\r\nCSeq: 101 ACK\r\nContent-Length: 0\r\n\r\n",
        d.local_tag
    );
    feed(&mut u, t(100), &parse_message(ack_text.as_bytes()).unwrap());
    let w = run_until(&mut u, t(60_000));
    assert!(send_times(&w, t(0)).is_empty());
    assert_eq!(u.dialog_count(), 1);
}

proptest::proptest! {
    /// Any interleaving of requests, shell decisions and timeouts: no
    /// panic, one Ended per NewCall at most, and everything but confirmed
    /// dialogs is gone once time runs far enough.
    #[test]
    fn random_sequences_stay_bounded(ops in proptest::collection::vec((0u8..12, 0u8..3, 0i64..3000), 1..60)) {
        let mut u = uas();
        let mut now = 0i64;
        let mut dialogs: Vec<DialogId> = Vec::new();
        let mut new_calls = 0usize;
        let mut ends: HashMap<DialogId, usize> = HashMap::new();
        let mut record = |ev: Vec<UasEvent>, dialogs: &mut Vec<DialogId>| {
            for e in ev {
                match e {
                    UasEvent::NewCall { dialog, .. } => { new_calls += 1; dialogs.push(dialog); }
                    UasEvent::Ended { dialog, .. } => { *ends.entry(dialog).or_default() += 1; }
                    UasEvent::Send { bytes, .. } => { proptest::prop_assert!(parse_message(&bytes).is_ok()); }
                    _ => {}
                }
            }
            Ok(())
        };
        for (op, which, dt) in ops {
            now += dt;
            let call = format!("c{which}");
            let tag = dialogs.iter().rev().find(|d| d.call_id == call).map(|d| d.local_tag.clone());
            let d = dialogs.iter().rev().find(|d| d.call_id == call).cloned();
            let branch = format!("z9hG4bK{which}");
            let cseq = 1 + (now as u32 % 7);
            let msg = match op {
                0 => Some(invite(&branch, &call)),
                1 => Some(request("CANCEL", &branch, &call, None, 1, "CANCEL", "", "")),
                2 => tag.as_deref().map(|tg| ack("z9hG4bKa", &call, tg, 1)),
                3 => tag.as_deref().map(|tg| request("BYE", &format!("z9hG4bKb{now}"), &call, Some(tg), cseq + 10, "BYE", "", "")),
                4 => tag.as_deref().map(|tg| request("INVITE", &format!("z9hG4bKr{now}"), &call, Some(tg), cseq + 1, "INVITE", "", SDP)),
                5 => Some(request("OPTIONS", &format!("z9hG4bKo{now}"), &call, None, 1, "OPTIONS", "", "")),
                6 => { if let Some(d) = &d { u.accept(d, SDP, t(now)); } None }
                7 => { if let Some(d) = &d { u.reject(d, 488, "No", t(now)); } None }
                8 => { if let Some(d) = &d { u.hangup(d, t(now)); } None }
                9 => tag.as_deref().map(|tg| request("UPDATE", &format!("z9hG4bKu{now}"), &call, Some(tg), cseq + 2, "UPDATE", "", SDP)),
                _ => { u.handle(UasInput::Timeout(t(now))); None }
            };
            if let Some(m) = msg {
                u.handle(UasInput::Message { at: t(now), from: src(), transport: Transport::Udp, msg: &m, raw_len: 0 });
            }
            record(drain(&mut u), &mut dialogs)?;
        }
        let w = run_until(&mut u, t(now + 1_000_000));
        for (_, ev) in w {
            record(ev, &mut dialogs)?;
        }
        proptest::prop_assert!(ends.values().all(|n| *n == 1));
        proptest::prop_assert!(ends.len() <= new_calls);
        proptest::prop_assert_eq!(u.transaction_count(), 0);
        proptest::prop_assert_eq!(u.dialog_count() + ends.len(), new_calls);
        proptest::prop_assert_eq!(u.poll_timeout(), None);
        if u.dialog_count() == 0 {
            proptest::prop_assert_eq!(u.state_bytes(), 0, "byte accounting balances");
        }
    }
}

#[test]
fn unavailable_server_answers_options_503_and_keeps_its_dialogs() {
    let mut u = uas();
    let d = established(&mut u, "call-drain");
    feed(
        &mut u,
        t(50),
        &ack("z9hG4bKack", "call-drain", &d.local_tag, 1),
    );
    u.set_unavailable(Some(30));
    assert_eq!(u.unavailable(), Some(30));
    // A dispatcher's probe: 503 with Retry-After.
    let probe = request(
        "OPTIONS",
        "z9hG4bKp1",
        "probe-1",
        None,
        1,
        "OPTIONS",
        "",
        "",
    );
    let r = sent(&feed(&mut u, t(100), &probe)).remove(0);
    assert_eq!(r.status(), Some(503));
    assert_eq!(r.header("Retry-After"), Some("30"));
    // The call in progress: in-dialog OPTIONS and re-INVITE still answered.
    let keep = request(
        "OPTIONS",
        "z9hG4bKp2",
        "call-drain",
        Some(&d.local_tag),
        2,
        "OPTIONS",
        "",
        "",
    );
    assert_eq!(codes(&feed(&mut u, t(200), &keep)), vec![200]);
    let reinv = request(
        "INVITE",
        "z9hG4bKp3",
        "call-drain",
        Some(&d.local_tag),
        3,
        "INVITE",
        "",
        SDP,
    );
    let ev = feed(&mut u, t(300), &reinv);
    assert!(ev.iter().any(|e| matches!(e, UasEvent::Reinvite { .. })));
    assert!(u.accept(&d, SDP, t(310)));
    assert_eq!(codes(&drain(&mut u)), vec![200]);
    // A new INVITE the shell refuses: 503 + Retry-After, the call ends.
    let ev = feed(&mut u, t(400), &invite("z9hG4bKp4", "call-new"));
    let n = new_call(&ev);
    assert!(u.reject_unavailable(&n, 30, t(410)));
    let ev = drain(&mut u);
    let r = sent(&ev).remove(0);
    assert_eq!(r.status(), Some(503));
    assert_eq!(r.header("Retry-After"), Some("30"));
    assert_eq!(ended(&ev), vec![EndCause::Rejected(503)]);
    // BYE of the call in progress: 200, the dialog ends.
    let bye = request(
        "BYE",
        "z9hG4bKp5",
        "call-drain",
        Some(&d.local_tag),
        4,
        "BYE",
        "",
        "",
    );
    let ev = feed(&mut u, t(500), &bye);
    assert_eq!(codes(&ev), vec![200]);
    assert_eq!(ended(&ev), vec![EndCause::Bye]);
    // Available again: 200.
    u.set_unavailable(None);
    let probe = request(
        "OPTIONS",
        "z9hG4bKp6",
        "probe-2",
        None,
        1,
        "OPTIONS",
        "",
        "",
    );
    assert_eq!(codes(&feed(&mut u, t(600), &probe)), vec![200]);
}
