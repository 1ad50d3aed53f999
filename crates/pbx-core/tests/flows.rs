//! A leg's stream moved by the signalling to another flow (other
//! addresses, another SSRC): the new flow is the leg's from its first
//! packet, sample-exact, even when the old one sent until just before
//! (the plan and its check: `common/plan.rs`).

mod common;
use common::plan::*;
use common::*;

/// Early media from a media server (the 183's SDP: 10.0.0.9:30000, its
/// own SSRC and numbers: the ringback), then the 200 OK with the phone's
/// address (10.0.0.2:50000), the phone's stream (another SSRC) going on in
/// the very next 20 ms slot after the ringback's last packet, the callee
/// talking at once. Before, the phone's first 40 ms were taken for a
/// copy of the ringback's stream and lost (it took over only once the
/// media server had been quiet 60 ms).
#[test]
fn early_media_from_a_media_server_then_the_phone_in_the_next_slot() {
    ringback_then_the_phone(0);
}

/// A re-INVITE moving both streams to other ports with new SSRCs (a PBX
/// taking itself out of the media path, a transfer's new party): each
/// old stream sends up to its last slot, the new one goes on in the next
/// slot. Before, each new stream's first 40 ms were silence.
#[test]
fn a_reinvite_moving_both_streams_with_new_ssrcs_cuts_nothing() {
    for by_caller in [true, false] {
        let d = Dialog::new("moved@10.0.0.1");
        let pts = [0, 8, 101];
        let offer = sdp("10.0.0.1", 40000, &pts, "sendrecv");
        let answer = sdp("10.0.0.2", 50000, &pts, "sendrecv");
        let (offer2, answer2) = (
            sdp("10.0.0.1", 40100, &pts, "sendrecv"),
            sdp("10.0.0.2", 50100, &pts, "sendrecv"),
        );
        let (new_a, new_b) = (v4(10, 0, 0, 1, 40100), v4(10, 0, 0, 2, 50100));
        let mut sig = setup(&d, &offer, &answer);
        let at = MEDIA_US + 2_990_000;
        if by_caller {
            sig.extend(reinvite(&d, at, 2, true, &offer2, &answer2));
        } else {
            sig.extend(reinvite(&d, at, 2, false, &answer2, &offer2));
        }
        // Each side's old stream to 20 ms past the 200 OK, the new one on.
        let moved_at = at + 40_000;
        let mut legs = Vec::new();
        for leg in 0..2 {
            let (from, seq, ts) = if leg == 0 {
                (MEDIA_US, 100, 1000)
            } else {
                (MEDIA_US + 10_000, 7000, 90_000)
            };
            let mut old = Sender::new(leg, seq, ts);
            let n = ((moved_at - from) / 20_000) as usize;
            let next = old.talk(from, n);
            let mut new = Sender::new(leg, seq.wrapping_add(20_000), 0x7000_0000);
            new.ssrc = 0x0abc_0000 + leg as u32;
            new.k = old.k;
            new.talk(next, 150);
            let (mine, theirs) = if leg == 0 {
                (new_a, new_b)
            } else {
                (new_b, new_a)
            };
            for x in &mut new.out {
                x.path = Some((mine, theirs));
            }
            legs.extend(old.out);
            legs.extend(new.out);
        }
        let rec = record_sig(&legs, sig, &d);
        check_rec(
            &format!(
                "moved by a re-INVITE of the {}",
                if by_caller { "caller" } else { "callee" }
            ),
            &legs,
            0,
            rec,
        );
    }
}

/// Hold with a PBX's music: a re-INVITE puts the caller's side on a music
/// server (its address, sendonly) for 2 s, and the one taking the call
/// off hold announces the caller's own address again; the caller talks
/// in the very next slot after the music's last packet. Every packet at
/// its place. Before, the caller's address (announced long before) was
/// no news: its stream waited for the music to be quiet 60 ms, and its
/// first packet was lost.
#[test]
fn back_from_hold_music_the_party_is_heard_from_its_first_packet() {
    back_from_hold_music(0);
}

/// The same, but the media server's ringback goes on past the answer for
/// `overlap` ms while the phone already talks (both stream at once; the
/// ringback's packet sent with the phone's first is captured just before
/// it and taken, the later ones are refused: the phone's flow is active by
/// then). The phone is the leg's from its first packet, at its place,
/// every packet of it sample-exact; the ringback from then on is cut (the
/// phone, announced by the answer, supersedes it). Before, the phone's
/// stream started after the ringback's last packet taken: 20 ms late for
/// seconds, then moved back.
#[test]
fn ringback_still_playing_when_the_phone_starts_is_superseded_at_once() {
    for overlap_ms in [20i64, 40, 60, 100, 200] {
        ringback_then_the_phone(overlap_ms);
    }
}

/// The ringback (the 183's media server) until the phone's first slot and
/// `overlap_ms` beyond it, the phone's stream from then on: every packet
/// of the phone and of the ringback before it at its place.
fn ringback_then_the_phone(overlap_ms: i64) {
    let d = Dialog::new("early-overlap@10.0.0.1");
    let offer = sdp("10.0.0.1", 40000, &[0, 8, 101], "sendrecv");
    let early = sdp("10.0.0.9", 30000, &[0, 101], "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &[0, 101], "sendrecv");
    let media_server = v4(10, 0, 0, 9, 30000);
    let answer_at = MEDIA_US + 2_000_000;
    let sig = vec![
        sip(T0_US, true, d.request("INVITE", 1, true, Some(&offer))),
        sip(
            T0_US + 500_000,
            false,
            d.response(183, "Session Progress", 1, "INVITE", true, Some(&early)),
        ),
        sip(
            answer_at,
            false,
            d.response(200, "OK", 1, "INVITE", true, Some(&answer)),
        ),
        sip(answer_at + 10_000, true, d.request("ACK", 1, true, None)),
    ];
    let mut c = Sender::new(0, 100, 1000);
    c.talk(MEDIA_US, 300);
    for x in &mut c.out {
        let to = if x.sent_us < answer_at + 20_000 {
            media_server
        } else {
            callee_rtp()
        };
        x.path = Some((caller_rtp(), to));
    }
    let mut ring = Sender::new(1, 7000, 90_000);
    ring.ssrc = 0x0999_9999;
    let phone_from = ring.talk(MEDIA_US + 10_000, 102);
    ring.talk(phone_from, (overlap_ms / 20) as usize);
    for x in &mut ring.out {
        x.path = Some((media_server, caller_rtp()));
        x.expect = x.sent_us < phone_from;
    }
    let mut phone = Sender::new(1, 31_000, 5_000_000);
    phone.ssrc = 0x0222_3333;
    phone.k = ring.k;
    phone.talk(phone_from, 200);
    for x in &mut phone.out {
        x.path = Some((callee_rtp(), caller_rtp()));
    }
    let txs: Vec<Tx> = c.out.into_iter().chain(ring.out).chain(phone.out).collect();
    let rec = record_sig(&txs, sig, &d);
    check_rec(
        &format!("ringback {overlap_ms} ms over the phone"),
        &txs,
        0,
        rec,
    );
}

/// Back from hold music (as above), the music going on `overlap` ms after
/// the caller's first packet (the one sent with it captured just before
/// it, the others after: refused, the caller's flow active by then): the
/// caller's stream is the leg's from its first packet, sample-exact; the
/// music from then on is cut.
#[test]
fn hold_music_still_playing_when_the_party_is_back_is_superseded_at_once() {
    for overlap_ms in [20i64, 40, 60, 120] {
        back_from_hold_music(overlap_ms);
    }
}

/// Hold music (a re-INVITE's sendonly address) for 2 s, going on
/// `overlap_ms` past the re-INVITE that takes the call off hold, the
/// caller's own stream from then on: every packet at its place.
fn back_from_hold_music(overlap_ms: i64) {
    let d = Dialog::new("moh-overlap@10.0.0.1");
    let pts = [0, 8, 101];
    let offer = sdp("10.0.0.1", 40000, &pts, "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &pts, "sendrecv");
    let music = sdp("10.0.0.9", 30000, &pts, "sendonly");
    let held = sdp("10.0.0.2", 50000, &pts, "recvonly");
    let moh = v4(10, 0, 0, 9, 30000);
    let mut sig = setup(&d, &offer, &answer);
    sig.extend(reinvite(&d, MEDIA_US + 1_990_000, 2, true, &music, &held));
    sig.extend(reinvite(&d, MEDIA_US + 3_950_000, 3, true, &offer, &answer));
    let mut a = Sender::new(0, 100, 1000);
    let t = a.talk(MEDIA_US, 100);
    let mut m = Sender::new(0, 5000, 777_000);
    m.ssrc = 0x0777_0000;
    m.k = a.k;
    let back = m.talk(t, 100);
    m.talk(back, (overlap_ms / 20) as usize);
    for x in &mut m.out {
        x.path = Some((moh, callee_rtp()));
        x.expect = x.sent_us < back;
    }
    a.ts = a.ts.wrapping_add(16_000);
    a.k = m.k;
    a.talk(back, 100);
    let mut b = Sender::new(1, 7000, 90_000);
    b.talk(MEDIA_US + 10_000, 300);
    // (The music's packet sent with the caller's first arrives first.)
    let txs: Vec<Tx> = m.out.into_iter().chain(a.out).chain(b.out).collect();
    let rec = record_sig(&txs, sig, &d);
    check_rec(&format!("hold music {overlap_ms} ms over"), &txs, 0, rec);
}

/// A re-INVITE of the callee (a session refresh, the same SDP) answered by
/// a caller whose 200 OK does not copy the request's From and To (it
/// names itself in From, as in its own requests: not RFC 3261, seen on
/// broken UAs): the answer's SDP is still the caller's, who answers the
/// callee's request. Before, it was taken for the callee's: the callee's
/// stream, sent to the caller's address, became the caller's and was
/// recorded on channel 0 from the refresh on.
#[test]
fn an_answer_whose_from_and_to_are_not_the_requests_is_its_responders() {
    let d = Dialog::new("bad-echo@10.0.0.1");
    let pts = [0, 8, 101];
    let offer = sdp("10.0.0.1", 40000, &pts, "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &pts, "sendrecv");
    let mut sig = setup(&d, &offer, &answer);
    let at = MEDIA_US + 2_000_000;
    sig.push(sip(at, false, d.request("INVITE", 1, false, Some(&answer))));
    // The caller answers naming itself in From (as if it had asked).
    sig.push(sip(
        at + 20_000,
        true,
        d.response(200, "OK", 1, "INVITE", true, Some(&offer)),
    ));
    sig.push(sip(at + 30_000, false, d.request("ACK", 1, false, None)));
    let mut a = Sender::new(0, 100, 1000);
    a.talk(MEDIA_US, 250);
    let mut b = Sender::new(1, 7000, 90_000);
    b.talk(MEDIA_US + 10_000, 250);
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    let rec = record_sig(&txs, sig, &d);
    check_rec("answer with the caller's From", &txs, 0, rec);
}

/// A caller behind a NAT (it announces its private address, its packets
/// come from the NAT's 203.0.113.5:34567) and a callee that sends from
/// another port than it announced (50002), first to the caller's announced
/// address, then, latching, to the NAT's address its packets came from:
/// neither address of that flow was announced. It is the callee's stream
/// all the same (sent to where the caller's came from), every packet at
/// its place. Before, all but the callee's first 50 packets were dropped
/// as RTP of no known call, and the JSON counted none of them lost.
#[test]
fn a_callee_answering_a_natted_caller_from_an_unannounced_port_is_recorded() {
    let d = Dialog::new("nat@10.0.0.1");
    let pts = [0, 8, 101];
    let offer = sdp("10.0.0.1", 40000, &pts, "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &pts, "sendrecv");
    let sig = setup(&d, &offer, &answer);
    let nat = v4(203, 0, 113, 5, 34567);
    let callee_from = v4(10, 0, 0, 2, 50002);
    let mut a = Sender::new(0, 100, 1000);
    a.talk(MEDIA_US, 300);
    for x in &mut a.out {
        x.path = Some((nat, callee_rtp()));
    }
    let mut b = Sender::new(1, 7000, 90_000);
    b.talk(MEDIA_US + 10_000, 300);
    for (i, x) in b.out.iter_mut().enumerate() {
        let to = if i < 50 { caller_rtp() } else { nat };
        x.path = Some((callee_from, to));
    }
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    let rec = record_sig(&txs, sig, &d);
    check_rec("NAT, callee from another port", &txs, 0, rec);
}

/// The NAT call above, its BYE missed by the capture; 2 s after its media
/// end, another call whose signalling the capture does not see (SIP over
/// TLS) uses the NAT's address: none of it is the first call's (a latched
/// address takes packets only while its call has media, within a second).
/// Found by a re-audit of the latching: the first recording took the other
/// call's 500 packets and ran 7 s longer.
#[test]
fn a_latched_address_reused_after_its_call_went_quiet_is_not_that_calls() {
    let d = Dialog::new("nat-linger@10.0.0.1");
    let pts = [0, 8, 101];
    let sig = setup(
        &d,
        &sdp("10.0.0.1", 40000, &pts, "sendrecv"),
        &sdp("10.0.0.2", 50000, &pts, "sendrecv"),
    );
    let nat = v4(203, 0, 113, 5, 34567);
    let (callee_from, far) = (v4(10, 0, 0, 2, 50002), v4(198, 51, 100, 7, 9000));
    let mut a = Sender::new(0, 100, 1000);
    let end = a.talk(MEDIA_US, 200);
    for x in &mut a.out {
        x.path = Some((nat, callee_rtp()));
    }
    let mut b = Sender::new(1, 7000, 90_000);
    b.talk(MEDIA_US + 10_000, 200);
    for x in &mut b.out {
        x.path = Some((callee_from, nat));
    }
    // The other call, 2 s later: both directions on the NAT's address.
    let mut o0 = Sender::new(0, 3000, 500);
    o0.ssrc = 0x0333_0000;
    o0.k = a.k;
    o0.talk(end + 2_000_000, 100);
    let mut o1 = Sender::new(1, 4000, 700);
    o1.ssrc = 0x0444_0000;
    o1.k = b.k;
    o1.talk(end + 2_010_000, 100);
    for x in o0.out.iter_mut() {
        x.path = Some((nat, far));
        x.expect = false;
    }
    for x in o1.out.iter_mut() {
        x.path = Some((far, nat));
        x.expect = false;
    }
    let txs: Vec<Tx> = [a.out, b.out, o0.out, o1.out].concat();
    let rec = record_sig(&txs, sig, &d);
    check_rec("latched address reused", &txs, 0, rec);
}

/// The caller's re-INVITE (CSeq 2 of its own numbering, moving its stream
/// to port 40100) missed by the capture, after a re-INVITE of the callee
/// with the same CSeq number was seen: the callee's 200 to the caller's
/// request is the callee's answer, not taken for one to the callee's own
/// request. Found by a re-audit of the responder-by-CSeq rule: the channels
/// were swapped from then on.
#[test]
fn an_answer_to_a_request_the_capture_missed_is_not_taken_for_another_with_its_cseq() {
    // With its own Via branch, and with the branch of the other's request
    // (a sender numbering its branches by CSeq): told apart by the way the
    // answer goes (the callee's 200 to the caller, not the caller's to it).
    for same_branch in [false, true] {
        missed_request(same_branch);
    }
}

fn missed_request(same_branch: bool) {
    // (A Call-ID without "@": the helper puts it in the Via branch, a token.)
    let d = Dialog::new("missed-req-1");
    let pts = [0, 8, 101];
    let offer = sdp("10.0.0.1", 40000, &pts, "sendrecv");
    let answer = sdp("10.0.0.2", 50000, &pts, "sendrecv");
    let mut sig = setup(&d, &offer, &answer);
    sig.extend(reinvite(
        &d,
        MEDIA_US + 1_000_000,
        2,
        false,
        &answer,
        &offer,
    ));
    // The caller's own CSeq 2 re-INVITE (not captured), its 200 and ACK.
    let at = MEDIA_US + 2_000_000;
    let ok = String::from_utf8(d.response(200, "OK", 2, "INVITE", true, Some(&answer)))
        .unwrap()
        .replace(
            "-INVITE-2\r\n",
            if same_branch {
                "-INVITE-2\r\n"
            } else {
                "-INVITE-2-by-caller\r\n"
            },
        );
    sig.push(sip(at + 20_000, false, ok.into_bytes()));
    sig.push(sip(at + 30_000, true, d.request("ACK", 2, true, None)));
    let mut a = Sender::new(0, 100, 1000);
    a.talk(MEDIA_US, 250);
    for x in &mut a.out {
        if x.sent_us >= at + 40_000 {
            x.path = Some((v4(10, 0, 0, 1, 40100), callee_rtp()));
        }
    }
    let mut b = Sender::new(1, 7000, 90_000);
    b.talk(MEDIA_US + 10_000, 250);
    let txs: Vec<Tx> = a.out.into_iter().chain(b.out).collect();
    let rec = record_sig(&txs, sig, &d);
    check_rec(
        &format!("answer to a missed request (same branch: {same_branch})"),
        &txs,
        0,
        rec,
    );
}
