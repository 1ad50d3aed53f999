use super::*;
use crate::sip::test_support::*;
use proptest::prelude::*;

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: \"Alice \\\"A\\\" Liddell\" <sip:alice:secret@atlanta.example.com;user=phone>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: Application/SDP\r\n\
Content-Length: 10\r\n\
\r\n\
v=0\r\no=x\r\n";

fn check_invite(m: &SipMessage) {
    assert!(m.is_request());
    assert_eq!(m.method(), Some(&Method::Invite));
    assert_eq!(m.request_uri(), Some("sip:bob@biloxi.example.com"));
    assert_eq!(m.status(), None);
    assert_eq!(m.call_id, "a84b4c76e66710@pc33.atlanta.example.com");
    assert_eq!(m.cseq, 314159);
    assert_eq!(m.cseq_method, Method::Invite);
    assert_eq!(m.via_branch.as_deref(), Some("z9hG4bK776asdhds"));
    assert_eq!(m.from.display_name.as_deref(), Some("Alice \"A\" Liddell"));
    assert_eq!(
        m.from.uri,
        "sip:alice:secret@atlanta.example.com;user=phone"
    );
    assert_eq!(m.from.user.as_deref(), Some("alice"));
    assert_eq!(m.from.host.as_deref(), Some("atlanta.example.com"));
    assert_eq!(m.from.tag.as_deref(), Some("1928301774"));
    assert_eq!(m.to.display_name.as_deref(), Some("Bob"));
    assert_eq!(m.to.user.as_deref(), Some("bob"));
    assert_eq!(m.to.tag, None);
    assert_eq!(m.content_type.as_deref(), Some("application/sdp"));
    assert_eq!(m.media_type(), Some("application/sdp"));
    assert_eq!(m.content_length, Some(10));
    assert_eq!(m.body, b"v=0\r\no=x\r\n");
    assert_eq!(m.header("max-forwards"), Some("70"));
    assert_eq!(
        m.header("CONTACT"),
        Some("<sip:alice@pc33.atlanta.example.com>")
    );
    assert_eq!(m.header("m"), Some("<sip:alice@pc33.atlanta.example.com>"));
    assert_eq!(m.headers.len(), 9);
}

#[test]
fn parses_a_well_formed_invite_both_paths() {
    let a = parse_message(INVITE.as_bytes()).unwrap();
    check_invite(&a);
    let b = parse_message_tolerant(INVITE.as_bytes()).unwrap();
    assert_eq!(a, b);
    assert!(
        rsip_path::split(INVITE.as_bytes()).is_some(),
        "rsip takes this one"
    );
}

#[test]
fn lf_only_line_ends() {
    let lf = INVITE.replace("\r\n", "\n");
    let m = parse_message(lf.as_bytes()).unwrap();
    assert_eq!(m.call_id, "a84b4c76e66710@pc33.atlanta.example.com");
    assert_eq!(m.from.tag.as_deref(), Some("1928301774"));
    // Content-Length 10 but the LF body is 8 bytes: keep what is there.
    assert_eq!(m.body, b"v=0\no=x\n");
}

#[test]
fn compact_lowercase_folded_and_odd_spacing() {
    let msg = "BYE sip:+15551234@10.0.0.1:5060 SIP/2.0\r\n\
v: SIP/2.0/TCP 10.0.0.2;rport;branch=z9hG4bKabc\r\n\
f:   tel:+15550000;tag=aaa\r\n\
t :<sip:+15551234@10.0.0.1>\r\n\
i:xyz@host\r\n\
cseq: 2\r\n  BYE\r\n\
X-Custom :  hello\r\n  world\r\n\
l: 0\r\n\r\n";
    let m = parse_message(msg.as_bytes()).unwrap();
    assert_eq!(m.method(), Some(&Method::Bye));
    assert_eq!(m.call_id, "xyz@host");
    assert_eq!(m.cseq, 2);
    assert_eq!(m.cseq_method, Method::Bye);
    assert_eq!(m.via_branch.as_deref(), Some("z9hG4bKabc"));
    assert_eq!(m.from.uri, "tel:+15550000");
    assert_eq!(m.from.user.as_deref(), Some("+15550000"));
    assert_eq!(m.from.host, None);
    assert_eq!(m.from.tag.as_deref(), Some("aaa"));
    assert_eq!(m.to.user.as_deref(), Some("+15551234"));
    assert_eq!(m.to.host.as_deref(), Some("10.0.0.1"));
    assert_eq!(m.header("x-custom"), Some("hello world"));
    let names: Vec<&str> = m.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Via",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "X-Custom",
            "Content-Length"
        ]
    );
    assert!(m.body.is_empty());
}

#[test]
fn response_and_unknown_method() {
    let msg = "SIP/2.0 183 Session Progress\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 7 INVITE\r\n\r\n";
    let m = parse_message(msg.as_bytes()).unwrap();
    assert_eq!(m.status(), Some(183));
    assert!(matches!(&m.start, StartLine::Response { reason, .. } if reason == "Session Progress"));
    assert_eq!(m.to.tag.as_deref(), Some("2"));

    let msg = "FOO sip:x@y SIP/2.0\r\nFrom: <sip:a@h>\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 7 FOO\r\n\r\n";
    let m = parse_message(msg.as_bytes()).unwrap();
    assert_eq!(m.method(), Some(&Method::Other("FOO".into())));
    assert_eq!(m.cseq_method, Method::Other("FOO".into()));
    assert_eq!(m.via_branch, None);

    let msg =
        "SIP/2.0 200\r\nFrom: <sip:a@h>\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 7 INVITE\r\n\r\n";
    let m = parse_message(msg.as_bytes()).unwrap();
    assert!(matches!(&m.start, StartLine::Response { code: 200, reason } if reason.is_empty()));
}

#[test]
fn content_length_rules() {
    let head = "MESSAGE sip:a@b SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n";
    // Padding beyond Content-Length is cut.
    let m =
        parse_message(format!("{head}Content-Length: 5\r\n\r\nhello\r\n\0\0").as_bytes()).unwrap();
    assert_eq!(m.body, b"hello");
    // Stated length larger than what arrived: keep what arrived.
    let m = parse_message(format!("{head}Content-Length: 500\r\n\r\nhello").as_bytes()).unwrap();
    assert_eq!(m.body, b"hello");
    // Stated length smaller but the rest is data: keep it all.
    let m = parse_message(format!("{head}Content-Length: 2\r\n\r\nhello").as_bytes()).unwrap();
    assert_eq!(m.body, b"hello");
    // No blank line at all: headers only.
    let m = parse_message(head.as_bytes()).unwrap();
    assert!(m.body.is_empty());
}

#[test]
fn content_type_normalised() {
    let msg = "INVITE sip:a@b SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
Content-Type: Multipart/Mixed ; boundary=\"Unique\" ;x=1\r\n\r\n";
    let m = parse_message(msg.as_bytes()).unwrap();
    assert_eq!(
        m.content_type.as_deref(),
        Some("multipart/mixed;boundary=\"Unique\";x=1")
    );
    assert_eq!(m.media_type(), Some("multipart/mixed"));
}

#[test]
fn refusals() {
    assert_eq!(parse_message(b""), Err(SipError::Empty));
    assert_eq!(parse_message(b"\r\n\r\n"), Err(SipError::Empty));
    assert_eq!(
        parse_message(b"hello world\r\n\r\n"),
        Err(SipError::BadStartLine)
    );
    assert_eq!(
        parse_message(b"SIP/2.0 99 Bad\r\nCall-ID: x\r\n\r\n"),
        Err(SipError::BadStartLine)
    );
    let no_call_id =
        "OPTIONS sip:a@b SIP/2.0\r\nFrom: <sip:a@h>\r\nTo: <sip:b@h>\r\nCSeq: 1 OPTIONS\r\n\r\n";
    assert_eq!(
        parse_message(no_call_id.as_bytes()),
        Err(SipError::MissingHeader("Call-ID"))
    );
    let bad_cseq = "OPTIONS sip:a@b SIP/2.0\r\nFrom: <sip:a@h>\r\nTo: <sip:b@h>\r\nCall-ID: x\r\nCSeq: one OPTIONS\r\n\r\n";
    assert_eq!(
        parse_message(bad_cseq.as_bytes()),
        Err(SipError::BadHeader("CSeq"))
    );
    let big = vec![b'a'; MAX_MESSAGE_LEN + 1];
    assert_eq!(
        parse_message(&big),
        Err(SipError::TooLarge(MAX_MESSAGE_LEN + 1))
    );
    let mut many = String::from("OPTIONS sip:a@b SIP/2.0\r\nFrom: <sip:a@h>\r\nTo: <sip:b@h>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n");
    for i in 0..MAX_HEADERS {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(
        parse_message(many.as_bytes()),
        Err(SipError::TooManyHeaders)
    );
}

#[test]
fn name_addr_forms() {
    let n = parse_name_addr("sip:alice@example.com;tag=99").unwrap();
    assert_eq!(n.uri, "sip:alice@example.com");
    assert_eq!(n.tag.as_deref(), Some("99"));
    let n = parse_name_addr("Anonymous <sip:[2001:db8::1]:5060;transport=tcp>").unwrap();
    assert_eq!(n.display_name.as_deref(), Some("Anonymous"));
    assert_eq!(n.host.as_deref(), Some("2001:db8::1"));
    assert_eq!(n.user, None);
    let n = parse_name_addr("\"a <b>\" <sip:x@y>;TAG=t").unwrap();
    assert_eq!(n.display_name.as_deref(), Some("a <b>"));
    assert_eq!(n.uri, "sip:x@y");
    assert_eq!(n.tag.as_deref(), Some("t"));
    let n = parse_name_addr("\"\" <sip:x@y>").unwrap();
    assert_eq!(n.display_name, None);
    assert!(parse_name_addr("   ").is_none());
    assert!(parse_name_addr("<>").is_none());
}

#[test]
fn looks_like_sip_classifies() {
    assert!(looks_like_sip(b"INVITE sip:a@b SIP/2.0\r\n"));
    assert!(looks_like_sip(
        b"\r\nOPTIONS sip:a@b;transport=tcp SIP/2.0\nVia: x"
    ));
    assert!(looks_like_sip(b"SIP/2.0 200 OK\r\n"));
    assert!(looks_like_sip(b"SIP/2.0 180\r\n"));
    assert!(looks_like_sip(b"NEWTHING sips:x@y SIP/2.0"));
    assert!(!looks_like_sip(b"SIP/2.0 OK\r\n"));
    assert!(!looks_like_sip(b"GET / HTTP/1.1\r\n"));
    assert!(!looks_like_sip(b"\x80\x08\x00\x01abcdefgh"));
    assert!(!looks_like_sip(b""));
    assert!(!looks_like_sip(b"INVITE SIP/2.0\r\n"));
    assert!(!looks_like_sip(b"a=rtpmap:0 PCMU/8000\r\n"));
}

/// Every cut of a start line before its line end may begin SIP; other
/// protocols' first bytes and lines with a line end (decided by
/// [`looks_like_sip`]) do not.
#[test]
fn may_begin_sip_takes_every_cut_start_line() {
    for line in [
        "INVITE sip:bob@[2001:db8::2]:5060;transport=tcp SIP/2.0",
        "SIP/2.0 200 OK",
        "\r\nBYE sip:a@b SIP/2.0",
    ] {
        for cut in 1..=line.len() {
            let part = &line.as_bytes()[..cut];
            if part.iter().all(|b| *b == b'\r' || *b == b'\n') {
                continue;
            }
            assert!(may_begin_sip(part), "{:?}", String::from_utf8_lossy(part));
        }
    }
    for other in [
        &b"GET / HTTP/1.1"[..],
        b"get sip:a@b",
        b"INVITE sip:a@b HTTP/1.1",
        b"INVITE sip:a@b SIP/2.0\r\n",
        b"SIP/2.0 2x",
        b"SIP/2.0 200\x01",
        b"\x80\x08\x00\x01abcdefgh",
        b"a=rtpmap:0 PCMU/8000",
        b"",
        b"\r\n",
    ] {
        assert!(
            !may_begin_sip(other),
            "{:?}",
            String::from_utf8_lossy(other)
        );
    }
}

/// Every SIP-over-UDP message tshark finds in the corpus captures parses, with
/// the Call-ID tshark reports, and the rsip and tolerant paths agree.
#[test]
fn corpus_udp_sip_all_parse() {
    let Some(dir) = corpus_dir() else { return };
    if !have_tshark() {
        return;
    }
    let mut total = 0;
    let mut via_rsip = 0;
    for name in UDP_SIP_CAPTURES {
        let file = dir.join(name);
        if !file.exists() {
            eprintln!("note: {name} missing");
            continue;
        }
        for (i, (payload, call_id)) in udp_sip_payloads(&file).into_iter().enumerate() {
            assert!(
                looks_like_sip(&payload),
                "{name} #{i} not classified as SIP"
            );
            let m = parse_message(&payload).unwrap_or_else(|e| {
                panic!("{name} #{i}: {e}\n{}", String::from_utf8_lossy(&payload))
            });
            assert_eq!(m.call_id, call_id, "{name} #{i}");
            let tolerant = parse_message_tolerant(&payload).unwrap();
            assert_eq!(m, tolerant, "{name} #{i}: rsip and tolerant paths differ");
            if rsip_path::split(&payload)
                .and_then(|raw| assemble(raw, FieldParser::Rsip).ok())
                .is_some()
            {
                via_rsip += 1;
            }
            total += 1;
        }
    }
    eprintln!("{total} corpus UDP SIP messages parsed, {via_rsip} fully parsed by the rsip path");
    assert!(total > 200, "only {total} messages found");
}

#[test]
fn corpus_siprec_invites_parse() {
    let Some(dir) = corpus_dir() else { return };
    let cube = std::fs::read(dir.join("siprec/invite_cisco_cube_media_proxy.txt")).unwrap();
    let m = parse_message(&cube).unwrap();
    assert_eq!(m.method(), Some(&Method::Invite));
    assert_eq!(m.content_length, Some(2250));
    assert_eq!(m.media_type(), Some("multipart/mixed"));
    // Body = everything after the blank line, whatever Content-Length says.
    let text = String::from_utf8_lossy(&cube);
    let blank = text.find("\n\n").unwrap();
    assert_eq!(m.body, &cube[blank + 2..]);
    assert!(m.header("Require").unwrap().contains("siprec"));

    let sipp = std::fs::read(dir.join("siprec/invite_drachtio_sipp_template.txt")).unwrap();
    let m = parse_message(&sipp).unwrap();
    assert_eq!(m.method(), Some(&Method::Invite));
    assert_eq!(m.media_type(), Some("multipart/mixed"));
    assert!(!m.body.is_empty());
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_message(&bytes);
        let _ = looks_like_sip(&bytes);
    }

    #[test]
    fn never_panics_on_mutated_invite(
        edits in proptest::collection::vec((0usize..INVITE.len(), any::<u8>()), 0..8),
        cut in 0usize..=INVITE.len(),
    ) {
        let mut b = INVITE.as_bytes().to_vec();
        for (pos, v) in edits {
            if let Some(slot) = b.get_mut(pos) {
                *slot = v;
            }
        }
        b.truncate(cut);
        if let Ok(m) = parse_message(&b) {
            // Whatever path took it, the tolerant one agrees on the key fields.
            let t = parse_message_tolerant(&b);
            if let Ok(t) = t {
                prop_assert_eq!(&m.call_id, &t.call_id);
                prop_assert_eq!(m.cseq, t.cseq);
            }
        }
    }
}

/// `n` Via values (`per_header` per Via header line) before From..CSeq.
fn with_vias(n: usize, per_header: usize) -> String {
    let mut m = String::from("INVITE sip:srs@h SIP/2.0\r\n");
    let vias: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "SIP/2.0/UDP 10.0.{}.{}:5060;branch=z9hG4bK{i}",
                i / 250,
                i % 250
            )
        })
        .collect();
    for chunk in vias.chunks(per_header.max(1)) {
        m.push_str(&format!("Via: {}\r\n", chunk.join(", ")));
    }
    m.push_str("From: <sip:a@h>;tag=f\r\nTo: <sip:b@h>\r\nCall-ID: vias@h\r\nCSeq: 7 INVITE\r\nX-Pad: \"a, b, c\"\r\nContent-Length: 0\r\n\r\n");
    m
}

#[test]
fn via_count_limit_counts_every_value() {
    // At the limit: taken, both paths.
    let ok = with_vias(MAX_VIAS, 1);
    assert!(parse_message(ok.as_bytes()).is_ok());
    assert!(parse_message_tolerant(ok.as_bytes()).is_ok());
    // One more, as headers or as comma-separated values (folded too): refused.
    let over = with_vias(MAX_VIAS + 1, 1);
    assert_eq!(
        parse_message(over.as_bytes()),
        Err(SipError::TooManyVias(MAX_VIAS + 1))
    );
    let combined = with_vias(MAX_VIAS + 1, 10);
    assert_eq!(
        parse_message(combined.as_bytes()),
        Err(SipError::TooManyVias(MAX_VIAS + 1))
    );
    let folded = combined.replace(", SIP/2.0/UDP", ",\r\n  SIP/2.0/UDP");
    assert_eq!(
        parse_message_tolerant(folded.as_bytes()),
        Err(SipError::TooManyVias(MAX_VIAS + 1))
    );
    // 1,000 Via headers: the Via limit, not the header count, is named.
    assert_eq!(
        parse_message(with_vias(1000, 1).as_bytes()),
        Err(SipError::TooManyVias(1000))
    );
    // Commas in quoted strings of other headers are not Vias.
    assert!(parse_message(with_vias(MAX_VIAS, 70).as_bytes()).is_ok());
}

#[test]
fn salvage_keeps_what_an_answer_needs_and_nothing_else() {
    // 1,000 Vias (51 KB): refused, yet answerable with the first 70.
    let m = with_vias(1000, 1);
    assert!(m.len() > 50_000);
    let r = salvage_request(m.as_bytes()).unwrap();
    assert_eq!(r.method(), Some(&Method::Invite));
    assert_eq!(r.call_id, "vias@h");
    assert_eq!((r.cseq, &r.cseq_method), (7, &Method::Invite));
    assert_eq!(r.via_branch.as_deref(), Some("z9hG4bK0"));
    assert_eq!(r.headers_named("Via").count(), MAX_VIAS);
    assert_eq!(r.from.tag.as_deref(), Some("f"));
    assert_eq!(r.header("To"), Some("<sip:b@h>"));
    assert!(r.header("X-Pad").is_none() && r.body.is_empty());
    // Comma-joined Vias are cut at the limit too.
    let r = salvage_request(with_vias(1000, 100).as_bytes()).unwrap();
    let values: usize = r.headers_named("Via").map(|v| v.split(',').count()).sum();
    assert_eq!(values, MAX_VIAS);
    // Too many headers, compact names, a huge unrelated header: answerable.
    let mut many = String::from("OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKm\r\nf: <sip:a@h>;tag=1\r\nt: <sip:b@h>\r\ni: many\r\nCSeq: 1 OPTIONS\r\n");
    for i in 0..1000 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str(&format!("Subject: {}\r\n\r\n", "x".repeat(20_000)));
    assert_eq!(
        parse_message(many.as_bytes()),
        Err(SipError::TooManyHeaders)
    );
    let r = salvage_request(many.as_bytes()).unwrap();
    assert_eq!(r.call_id, "many");
    assert_eq!(r.headers.len(), 5);
    // An empty From: still answerable (without one).
    let bad_from = "BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKb\r\nFrom: \r\nTo: <sip:b@h>;tag=2\r\nCall-ID: bf\r\nCSeq: 2 BYE\r\n\r\n";
    assert_eq!(
        parse_message(bad_from.as_bytes()),
        Err(SipError::BadHeader("From"))
    );
    let r = salvage_request(bad_from.as_bytes()).unwrap();
    assert_eq!(r.header("From"), None);
    assert_eq!(r.to.tag.as_deref(), Some("2"));
    // Too broken to answer: no Via, no Call-ID, no CSeq, a response, not SIP,
    // a Call-ID too long to copy.
    let ok = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKo\r\nFrom: <sip:a@h>\r\nTo: <sip:b@h>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n\r\n";
    assert!(salvage_request(ok.as_bytes()).is_some());
    for (what, broken) in [
        (
            "no Via",
            ok.replace("Via: SIP/2.0/UDP h;branch=z9hG4bKo\r\n", ""),
        ),
        ("no Call-ID", ok.replace("Call-ID: o\r\n", "")),
        ("bad CSeq", ok.replace("CSeq: 1 OPTIONS", "CSeq: x")),
        (
            "response",
            ok.replace("OPTIONS sip:a@b SIP/2.0", "SIP/2.0 200 OK"),
        ),
        ("not SIP", format!("hello\r\n{ok}")),
        (
            "huge Call-ID",
            ok.replace(
                "Call-ID: o",
                &format!("Call-ID: {}", "o".repeat(MAX_SALVAGED_VALUE + 1)),
            ),
        ),
    ] {
        assert!(salvage_request(broken.as_bytes()).is_none(), "{what}");
    }
}

/// Found by fuzzing (`sip_salvage`): a value within the limit in bytes,
/// but not UTF-8, grew three times as each bad byte became U+FFFD; the
/// limit holds for the value as kept.
#[test]
fn salvaged_values_are_bounded_as_kept_not_as_received() {
    let mut msg = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCSeq: 1 OPTIONS\r\nCall-ID: "
        .to_vec();
    msg.extend(std::iter::repeat_n(0xffu8, MAX_SALVAGED_VALUE / 2));
    msg.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    // Too long as kept: no Call-ID, nothing to answer with.
    assert!(salvage_request(&msg).is_none());
    let short = String::from_utf8_lossy(&msg).replace(
        &"\u{fffd}".repeat(MAX_SALVAGED_VALUE / 2),
        &"\u{fffd}".repeat(MAX_SALVAGED_VALUE / 3),
    );
    let m = salvage_request(short.as_bytes()).unwrap();
    assert!(m.headers.iter().all(|(_, v)| v.len() <= MAX_SALVAGED_VALUE));
}

proptest! {
    #[test]
    fn salvage_never_panics_and_stays_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Some(m) = salvage_request(&bytes) {
            prop_assert!(m.headers.len() <= MAX_VIAS + 4);
            prop_assert!(m.headers.iter().all(|(_, v)| v.len() <= MAX_SALVAGED_VALUE));
        }
    }
}

#[test]
fn escaped_user_parts_are_decoded_on_both_paths() {
    // Strict (rsip) and tolerant (LF-only line ends) alike.
    for eol in ["\r\n", "\n"] {
        let msg = format!(
            "INVITE sip:%2B4930123@b SIP/2.0{eol}Via: SIP/2.0/UDP h;branch=z9hG4bK1{eol}\
             From: <sip:%32002@h>;tag=1{eol}To: <sip:%2B4930123@b>{eol}Call-ID: c{eol}\
             CSeq: 1 INVITE{eol}Contact: <sip:x@h>{eol}Content-Length: 0{eol}{eol}"
        );
        let m = parse_message(msg.as_bytes()).unwrap();
        assert_eq!(m.from.user.as_deref(), Some("2002"), "{eol:?}");
        assert_eq!(m.to.user.as_deref(), Some("+4930123"), "{eol:?}");
    }
    assert_eq!(unescape_user("%2B49"), "+49");
    assert_eq!(unescape_user("100%"), "100%", "malformed: as written");
    assert_eq!(unescape_user("a%0Ab"), "a%0Ab", "no control characters");
    assert_eq!(unescape_user("%zz1"), "%zz1");
    assert_eq!(unescape_user("%C3%A9"), "é");
}
