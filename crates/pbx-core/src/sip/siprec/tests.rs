use std::fmt::Write as _;

use super::*;
use crate::sip::message::parse_message;
use crate::sip::multipart::split_multipart;
use crate::sip::sdp::Direction;
use crate::sip::test_support::corpus_dir;
use std::path::PathBuf;

fn siprec_file(name: &str) -> Option<Vec<u8>> {
    let path: PathBuf = corpus_dir()?.join("siprec").join(name);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) => {
            eprintln!("note: {} missing, test skipped", path.display());
            None
        }
    }
}

/// A body-only corpus file (blank line, then `--boundary`): its parts.
fn body_parts(name: &str, boundary: &str) -> Option<Vec<Part>> {
    let body = siprec_file(name)?;
    let ct = format!("multipart/mixed;boundary={boundary}");
    Some(split_multipart(&ct, &body).expect("multipart splits"))
}

/// Expected participant: (id, aor, name, number, send, recv).
type P<'a> = (
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    &'a [&'a str],
    &'a [&'a str],
);

fn check_participants(rs: &RecordingSession, want: &[P<'_>]) {
    assert_eq!(rs.participants.len(), want.len(), "{:#?}", rs.participants);
    for (p, w) in rs.participants.iter().zip(want) {
        assert_eq!(p.id, w.0);
        assert_eq!(p.aor.as_deref(), w.1, "aor of {}", p.id);
        assert_eq!(p.name.as_deref(), w.2, "name of {}", p.id);
        assert_eq!(p.number.as_deref(), w.3, "number of {}", p.id);
        assert_eq!(p.send, w.4, "send of {}", p.id);
        assert_eq!(p.recv, w.5, "recv of {}", p.id);
    }
}

fn check_streams(rs: &RecordingSession, want: &[(&str, &str)]) {
    let got: Vec<(&str, &str)> = rs
        .streams
        .iter()
        .map(|s| (s.id.as_str(), s.label.as_str()))
        .collect();
    assert_eq!(got, want);
}

/// Expected assignment per m-line: (m_line, party, participant, basis, match).
type A<'a> = (
    usize,
    Option<Party>,
    Option<&'a str>,
    PartyBasis,
    StreamMatch,
);

fn check_assign(a: &[StreamAssignment], want: &[A<'_>]) {
    assert_eq!(a.len(), want.len(), "{a:#?}");
    for (x, w) in a.iter().zip(want) {
        assert_eq!(x.m_line, w.0);
        assert_eq!(x.party, w.1, "party of m-line {}", x.m_line);
        assert_eq!(x.participant.as_deref(), w.2);
        assert_eq!(x.basis, w.3);
        assert_eq!(x.matched_by, w.4);
        assert_eq!(
            x.warning.is_some(),
            w.3 != PartyBasis::Send || w.4 != StreamMatch::Label,
            "{x:?}"
        );
    }
}

const C: Option<Party> = Some(Party::Caller);
const E: Option<Party> = Some(Party::Callee);

#[test]
fn cisco_cube_full_invite() {
    let Some(bytes) = siprec_file("invite_cisco_cube_media_proxy.txt") else {
        return;
    };
    let msg = parse_message(&bytes).expect("INVITE parses");
    assert!(is_siprec_request(&msg));
    let (sdp, meta) = siprec_parts(&msg).expect("siprec parts");
    let rs = meta.expect("metadata present");
    assert_eq!(sdp.media.len(), 2);
    assert_eq!(rs.session_id.as_deref(), Some("sPVtz01IEeqC3dJj6Y+AJA=="));
    assert_eq!(
        rs.call_id_hint.as_deref(),
        Some("0e0960d88013509f86e7ad2d78da208a;remote=4d0de1325c205fa08f77d8d31c1b3a6f")
    );
    assert_eq!(
        rs.associate_time.as_deref(),
        Some("2020-02-13T03:35:19.008Z")
    );
    assert_eq!(rs.data_mode.as_deref(), Some("complete"));
    check_participants(
        &rs,
        &[
            (
                "sPVtz01IEeqC3tJj6Y+AJA==",
                Some("sip:3478@8.41.17.71"),
                None,
                Some("3478"),
                &["sPgFxk1IEeqC49Jj6Y+AJA=="],
                &["sPgFxk1IEeqC5NJj6Y+AJA=="],
            ),
            (
                "sPVtz01IEeqC39Jj6Y+AJA==",
                Some("sip:98765@8.41.17.71"),
                None,
                Some("98765"),
                &["sPgFxk1IEeqC5NJj6Y+AJA=="],
                &["sPgFxk1IEeqC49Jj6Y+AJA=="],
            ),
        ],
    );
    check_streams(
        &rs,
        &[
            ("sPgFxk1IEeqC49Jj6Y+AJA==", "1"),
            ("sPgFxk1IEeqC5NJj6Y+AJA==", "2"),
        ],
    );
    let a = assign_streams(&sdp, &rs).unwrap();
    check_assign(
        &a,
        &[
            (
                0,
                C,
                Some("sPVtz01IEeqC3tJj6Y+AJA=="),
                PartyBasis::Send,
                StreamMatch::Label,
            ),
            (
                1,
                E,
                Some("sPVtz01IEeqC39Jj6Y+AJA=="),
                PartyBasis::Send,
                StreamMatch::Label,
            ),
        ],
    );
}

/// Resolves the SIPp keywords of drachtio's template the way SIPp would.
fn resolve_sipp(template: &str) -> String {
    let t = template
        .replace("[remote_port]", "5060")
        .replace("[transport]", "UDP")
        .replace("[local_ip_type]", "4")
        .replace("[local_ip]", "192.0.2.10")
        .replace("[local_port]", "5061")
        .replace("[branch]", "z9hG4bK-1-0")
        .replace("[pid]", "77")
        .replace("[call_number]", "1")
        .replace("[call_id]", "1-77@192.0.2.10")
        .replace("[auto_media_port]", "6000");
    let body_len = t.split_once("\n\n").map(|(_, b)| b.len()).unwrap_or(0);
    t.replace("[len]", &body_len.to_string())
}

fn check_drachtio_template(text: &str) {
    let msg = parse_message(resolve_sipp(text).as_bytes()).expect("INVITE parses");
    // No Require: siprec, no +sip.src: not RFC 7866, accepted anyway.
    assert!(!is_siprec_request(&msg));
    let (sdp, meta) = siprec_parts(&msg).expect("siprec parts");
    let rs = meta.expect("application/rs-metadata accepted");
    assert_eq!(rs.session_id.as_deref(), Some("XoM2pKdFR8C3eX33qJKcww=="));
    assert_eq!(rs.call_id_hint.as_deref(), Some("hvij5wK4Wx"));
    check_participants(
        &rs,
        &[
            (
                "omFyWlFETEyFz/KXNLe4iQ==",
                Some("sip:6001@localhost"),
                None,
                Some("6001"),
                &[],
                &[],
            ),
            (
                "fLbZzLMgRXGp+F5w0hOt6w==",
                Some("sip:101@localhost"),
                None,
                Some("101"),
                &[],
                &[],
            ),
        ],
    );
    check_streams(
        &rs,
        &[
            ("1LiAtnDVR9m469/0L4bwCA==", "1"),
            ("WJgj5uxeRH+nwUah02dWqg==", "2"),
        ],
    );
    assert_eq!(sdp.media[0].label.as_deref(), Some("a_leg"));
    let a = assign_streams(&sdp, &rs).unwrap();
    check_assign(
        &a,
        &[
            (
                0,
                C,
                Some("omFyWlFETEyFz/KXNLe4iQ=="),
                PartyBasis::ParticipantOrder,
                StreamMatch::Position,
            ),
            (
                1,
                E,
                Some("fLbZzLMgRXGp+F5w0hOt6w=="),
                PartyBasis::ParticipantOrder,
                StreamMatch::Position,
            ),
        ],
    );
    assert_eq!(a[0].stream.as_deref(), Some("1LiAtnDVR9m469/0L4bwCA=="));
    let w = a[0].warning.as_deref().unwrap();
    assert!(w.contains("a_leg") && w.contains("position"), "{w}");
}

#[test]
fn drachtio_sipp_template_labels_mismatch() {
    let Some(bytes) = siprec_file("invite_drachtio_sipp_template.txt") else {
        return;
    };
    check_drachtio_template(&String::from_utf8_lossy(&bytes));
}

#[test]
fn drachtio_sipp_scenario_file() {
    let Some(bytes) = siprec_file("drachtio_uac_siprec_pcap.sipp.xml") else {
        return;
    };
    // The scenario itself is XML with a DOCTYPE: refused, never expanded.
    assert_eq!(parse_metadata(&bytes), Err(SiprecError::DtdRefused));
    // Its first <send> is the template's INVITE, 6 spaces indented.
    let text = String::from_utf8_lossy(&bytes);
    let cdata = text
        .split("<![CDATA[")
        .nth(1)
        .and_then(|s| s.split("]]>").next())
        .unwrap();
    let dedented: Vec<&str> = cdata
        .lines()
        .map(|l| l.strip_prefix("      ").unwrap_or(l))
        .collect();
    let invite = dedented.join("\n");
    check_drachtio_template(invite.trim_start_matches('\n'));
}

#[test]
fn acme_body_send_inside_participant() {
    let Some(parts) = body_parts("body_drachtio_acme-siprec-offer.txt", "unique-boundary-1") else {
        return;
    };
    let (sdp, meta) = parts_to_siprec(&parts).unwrap();
    let rs = meta.unwrap();
    assert_eq!(rs.session_id.as_deref(), Some("AavRXwIIQj1Q39eJulTipQ=="));
    assert_eq!(rs.associate_time.as_deref(), Some("2019-03-09T16:50:20"));
    check_participants(
        &rs,
        &[
            (
                "fSD3PFErSjNTHLDiXCELjw==",
                Some("sip:9000@192.168.50.102"),
                Some("9000"),
                Some("9000"),
                &["Q4O8SGLQSilXHUGQX2zd8Q=="],
                &[],
            ),
            (
                "EbccNyypRlFYXTm4iw8hxw==",
                Some("sip:1002@192.168.50.10"),
                Some("1002"),
                Some("1002"),
                &["l1NyQy8ORSlouUj2G3UE/A=="],
                &[],
            ),
        ],
    );
    check_streams(
        &rs,
        &[
            ("Q4O8SGLQSilXHUGQX2zd8Q==", "16777227"),
            ("l1NyQy8ORSlouUj2G3UE/A==", "16777228"),
        ],
    );
    assert_eq!(
        rs.streams[0].session.as_deref(),
        Some("AavRXwIIQj1Q39eJulTipQ==")
    );
    let a = assign_streams(&sdp, &rs).unwrap();
    check_assign(
        &a,
        &[
            (
                0,
                C,
                Some("fSD3PFErSjNTHLDiXCELjw=="),
                PartyBasis::Send,
                StreamMatch::Label,
            ),
            (
                1,
                E,
                Some("EbccNyypRlFYXTm4iw8hxw=="),
                PartyBasis::Send,
                StreamMatch::Label,
            ),
        ],
    );
}

#[test]
fn cisco_body_with_gtd_part() {
    let Some(parts) = body_parts("body_drachtio_cisco-siprec-offer.txt", "uniqueBoundary") else {
        return;
    };
    assert_eq!(parts.len(), 3);
    let (sdp, meta) = parts_to_siprec(&parts).unwrap();
    let rs = meta.unwrap();
    assert_eq!(rs.session_id.as_deref(), Some("kQNhKFdEEeeJ9tD/VsPGWA=="));
    assert_eq!(
        rs.call_id_hint.as_deref(),
        Some("e9fffff2020a598b86962867715db0cf;remote=cd0f7093d62c5f0697098fd69a4aa57b")
    );
    check_participants(
        &rs,
        &[
            (
                "kQNhKFdEEeeJ99D/VsPGWA==",
                Some("sip:7301@35.162.237.204"),
                None,
                Some("7301"),
                &["kQOH5VdEEeeJ/ND/VsPGWA=="],
                &["kQOH5VdEEeeJ/dD/VsPGWA=="],
            ),
            (
                "kQNhKFdEEeeJ+ND/VsPGWA==",
                Some("sip:7300@35.162.237.204"),
                Some("7300"),
                Some("7300"),
                &["kQOH5VdEEeeJ/dD/VsPGWA=="],
                &["kQOH5VdEEeeJ/ND/VsPGWA=="],
            ),
        ],
    );
    check_streams(
        &rs,
        &[
            ("kQOH5VdEEeeJ/ND/VsPGWA==", "1"),
            ("kQOH5VdEEeeJ/dD/VsPGWA==", "2"),
        ],
    );
    let a = assign_streams(&sdp, &rs).unwrap();
    check_assign(
        &a,
        &[
            (
                0,
                C,
                Some("kQNhKFdEEeeJ99D/VsPGWA=="),
                PartyBasis::Send,
                StreamMatch::Label,
            ),
            (
                1,
                E,
                Some("kQNhKFdEEeeJ+ND/VsPGWA=="),
                PartyBasis::Send,
                StreamMatch::Label,
            ),
        ],
    );
}

#[test]
fn sonus_tns_prefix_calldata_and_crossed_labels() {
    let Some(parts) = body_parts(
        "body_drachtio_sonus-siprec-offer.txt",
        "sonus-content-delim",
    ) else {
        return;
    };
    let (sdp, meta) = parts_to_siprec(&parts).unwrap();
    let rs = meta.unwrap();
    assert_eq!(rs.group_id.as_deref(), Some("MTQ3YzA3YzAtNjdkNy0xMA=="));
    assert_eq!(rs.session_id.as_deref(), Some("MTQ3YzA3YzEtNjdkNy0xMA=="));
    assert_eq!(
        rs.call_id_hint.as_deref(),
        Some("2da553f7-a48b-1235-d6a2-5254003a4988")
    );
    assert_eq!(
        rs.from_hdr.as_deref(),
        Some("\"Extension 8500\" <sip:2249888500@172.16.198.55>;tag=SerryvK5ej0jc")
    );
    assert_eq!(
        rs.to_hdr.as_deref(),
        Some("<sip:2249888012@172.16.195.72>;tag=gK00801b2d")
    );
    assert_eq!(rs.associate_time.as_deref(), Some("1970-05-13T03:29:05Z"));
    check_participants(
        &rs,
        &[
            (
                "MTQ3YzA3YzItNjdkNy0xMA==",
                Some("sip:2249888500@172.16.198.55"),
                Some("Extension 8500"),
                Some("2249888500"),
                &["MTQ3YzA3YzUtNjdkNy0xMA=="],
                &["MTQ3YzA3YzQtNjdkNy0xMA=="],
            ),
            (
                "MTQ3YzA3YzMtNjdkNy0xMA==",
                Some("sip:2249888012@172.16.195.72"),
                None,
                Some("2249888012"),
                &["MTQ3YzA3YzQtNjdkNy0xMA=="],
                &["MTQ3YzA3YzUtNjdkNy0xMA=="],
            ),
        ],
    );
    check_streams(
        &rs,
        &[
            ("MTQ3YzA3YzQtNjdkNy0xMA==", "1"),
            ("MTQ3YzA3YzUtNjdkNy0xMA==", "2"),
        ],
    );
    // The caller (first participant, "Extension 8500" = fromhdr) sends the
    // stream labelled 2, i.e. the *second* m-line: order says nothing.
    let a = assign_streams(&sdp, &rs).unwrap();
    check_assign(
        &a,
        &[
            (
                0,
                E,
                Some("MTQ3YzA3YzMtNjdkNy0xMA=="),
                PartyBasis::Send,
                StreamMatch::Label,
            ),
            (
                1,
                C,
                Some("MTQ3YzA3YzItNjdkNy0xMA=="),
                PartyBasis::Send,
                StreamMatch::Label,
            ),
        ],
    );
}

#[test]
fn broadworks_datamode_capitalised() {
    let Some(parts) = body_parts("body_drachtio_broadworks-offer-2.txt", "foobar") else {
        return;
    };
    let (sdp, meta) = parts_to_siprec(&parts).unwrap();
    let rs = meta.unwrap();
    assert_eq!(rs.data_mode.as_deref(), Some("complete"));
    assert_eq!(rs.session_id.as_deref(), Some("00FA0800705D4C5DCAAC41"));
    assert_eq!(rs.associate_time.as_deref(), Some("2019-11-12T15:57:37"));
    check_participants(
        &rs,
        &[
            (
                "9a2de728ba0bc348db1e",
                Some("sip:9878942259@212.188.68.145"),
                None,
                Some("9878942259"),
                &["e6988909e02ca808ec0a"],
                &[],
            ),
            (
                "abcdef12345678901234",
                Some("sip:ASBCE@asbce.com"),
                None,
                None,
                &["261ddd3615629f108092"],
                &[],
            ),
        ],
    );
    check_streams(
        &rs,
        &[
            ("e6988909e02ca808ec0a", "10"),
            ("261ddd3615629f108092", "20"),
        ],
    );
    let a = assign_streams(&sdp, &rs).unwrap();
    check_assign(
        &a,
        &[
            (
                0,
                C,
                Some("9a2de728ba0bc348db1e"),
                PartyBasis::Send,
                StreamMatch::Label,
            ),
            (
                1,
                E,
                Some("abcdef12345678901234"),
                PartyBasis::Send,
                StreamMatch::Label,
            ),
        ],
    );
    // The answer keeps PCMA + telephone-event PT 97 and the labels.
    let ans = answer_sdp(&sdp, "10.0.0.5".parse().unwrap(), &[20000, 20002], &[], 1);
    let parsed = parse_sdp(&ans).unwrap();
    assert_eq!(parsed.media[0].formats, vec![8, 97]);
    assert_eq!(parsed.media[0].telephone_event_pt(), Some(97));
    assert_eq!(parsed.media[1].label.as_deref(), Some("20"));
}

#[test]
fn every_corpus_file_is_handled() {
    // Each file either yields metadata or a clean error: no panic.
    let Some(dir) = corpus_dir() else { return };
    let Ok(entries) = std::fs::read_dir(dir.join("siprec")) else {
        return;
    };
    let mut seen = 0;
    for e in entries.flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        let _ = parse_metadata(&bytes);
        if let Ok(msg) = parse_message(&bytes) {
            let _ = siprec_parts(&msg);
        }
        seen += 1;
    }
    assert!(seen >= 7, "expected the 7 SIPREC corpus files, saw {seen}");
}

// -- metadata edge cases ------------------------------------------------

#[test]
fn dtd_and_entities_refused() {
    let bomb = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<recording xmlns="urn:ietf:params:xml:ns:recording:1"><datamode>&lol2;</datamode></recording>"#;
    assert_eq!(parse_metadata(bomb), Err(SiprecError::DtdRefused));
    let xxe =
        br#"<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><recording>&x;</recording>"#;
    assert_eq!(parse_metadata(xxe), Err(SiprecError::DtdRefused));
    // An entity never declared (no DTD) is an error, not an expansion.
    let undefined = br#"<recording><datamode>&x;</datamode></recording>"#;
    assert!(matches!(
        parse_metadata(undefined),
        Err(SiprecError::Xml(_))
    ));
    // Predefined entities and character references are decoded.
    let ok = br#"<recording><participant id="p&amp;1"><nameID aor="sip:1@h"><name>A &lt;&#66;&#x43;&gt;</name></nameID></participant></recording>"#;
    let rs = parse_metadata(ok).unwrap();
    assert_eq!(rs.participants[0].id, "p&1");
    assert_eq!(rs.participants[0].name.as_deref(), Some("A <BC>"));
}

#[test]
fn limits() {
    let big = vec![b' '; MAX_METADATA_LEN + 1];
    assert_eq!(
        parse_metadata(&big),
        Err(SiprecError::TooLarge(MAX_METADATA_LEN + 1))
    );
    let mut many = String::from("<recording>");
    for i in 0..=MAX_PARTICIPANTS {
        let _ = write!(many, "<participant participant_id=\"p{i}\"/>");
    }
    many.push_str("</recording>");
    assert_eq!(
        parse_metadata(many.as_bytes()),
        Err(SiprecError::TooManyParticipants)
    );
    let mut streams = String::from("<recording>");
    for i in 0..=MAX_STREAMS {
        let _ = write!(
            streams,
            "<stream stream_id=\"s{i}\"><label>{i}</label></stream>"
        );
    }
    streams.push_str("</recording>");
    assert_eq!(
        parse_metadata(streams.as_bytes()),
        Err(SiprecError::TooManyStreams)
    );
    let deep = format!(
        "<recording>{}{}</recording>",
        "<a>".repeat(40),
        "</a>".repeat(40)
    );
    assert_eq!(parse_metadata(deep.as_bytes()), Err(SiprecError::TooDeep));
    assert!(matches!(
        parse_metadata(b"<recording><participant>"),
        Err(SiprecError::Xml(_))
    ));
    assert_eq!(
        parse_metadata(b"<other/>"),
        Err(SiprecError::NotRecording("other".into()))
    );
    assert_eq!(parse_metadata(b"  "), Err(SiprecError::Empty));
    assert!(matches!(
        parse_metadata(b"<recording></participant></recording>"),
        Err(SiprecError::Xml(_))
    ));
}

#[test]
fn old_draft_aor_element_and_tel_numbers() {
    let xml = br#"<recording xmlns='urn:ietf:params:xml:ns:recording'>
  <participant id="a"><aor>tel:+1-555-123-4567;phone-context=x</aor><name>Alice</name>
<send>s1</send><recv>s2</recv></participant>
  <participant id="b"><nameID aor="sip:+44%2020@example.com"/><send>s2</send></participant>
  <stream id="s1"><label>L1</label></stream>
  <stream id="s2"><label>L2</label></stream>
</recording>"#;
    let rs = parse_metadata(xml).unwrap();
    let a = &rs.participants[0];
    assert_eq!(
        a.aor.as_deref(),
        Some("tel:+1-555-123-4567;phone-context=x")
    );
    assert_eq!(a.number.as_deref(), Some("+15551234567"));
    assert_eq!(a.name.as_deref(), Some("Alice"));
    assert_eq!(a.send, vec!["s1"]);
    assert_eq!(a.recv, vec!["s2"]);
    assert_eq!(rs.participants[1].number.as_deref(), Some("+4420"));
    assert_eq!(number_of("sip:alice@example.com"), None);
    assert_eq!(number_of("sip:1001@pbx"), Some("1001".into()));
}

#[test]
fn assoc_for_undeclared_participant_and_duplicates_merge() {
    let xml = br#"<recording>
  <participant participant_id="p1"><nameID aor="sip:1@h"/></participant>
  <stream stream_id="s1"><label>1</label></stream>
  <participantstreamassoc participant_id="p2"><send>s1</send></participantstreamassoc>
  <participantstreamassoc participant_id="p1"><send>s9</send><send>s9</send></participantstreamassoc>
  <participant participant_id="p1"><nameID aor="sip:1@h"><name>One</name></nameID></participant>
</recording>"#;
    let rs = parse_metadata(xml).unwrap();
    assert_eq!(rs.participants.len(), 2);
    assert_eq!(rs.participants[0].name.as_deref(), Some("One"));
    assert_eq!(rs.participants[0].send, vec!["s9"]);
    assert_eq!(rs.participants[1].id, "p2");
    assert_eq!(rs.participants[1].send, vec!["s1"]);
}

fn sdp_with_labels(labels: &[&str]) -> SessionDescription {
    let mut s =
        String::from("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n");
    for (i, l) in labels.iter().enumerate() {
        let _ = write!(
            s,
            "m=audio {} RTP/AVP 0\r\na=sendonly\r\na=label:{l}\r\n",
            4000 + 2 * i
        );
    }
    parse_sdp(&s).unwrap()
}

#[test]
fn conference_first_sender_is_caller_all_others_callee() {
    let xml = br#"<recording>
  <participant participant_id="silent"><nameID aor="sip:0@h"/></participant>
  <participant participant_id="b"/><participant participant_id="a"/><participant participant_id="c"/>
  <stream stream_id="sa"><label>1</label></stream>
  <stream stream_id="sb"><label>2</label></stream>
  <stream stream_id="sc"><label>3</label></stream>
  <stream stream_id="sx"><label>4</label></stream>
  <participantstreamassoc participant_id="a"><send>sa</send></participantstreamassoc>
  <participantstreamassoc participant_id="b"><send>sb</send></participantstreamassoc>
  <participantstreamassoc participant_id="c"><send>sc</send></participantstreamassoc>
</recording>"#;
    let rs = parse_metadata(xml).unwrap();
    let sdp = sdp_with_labels(&["1", "2", "3", "4"]);
    let a = assign_streams(&sdp, &rs).unwrap();
    // "b" is the first *sending* participant in metadata order.
    let parties: Vec<Option<Party>> = a.iter().map(|x| x.party).collect();
    assert_eq!(parties, vec![E, C, E, None]);
    assert_eq!(a[3].basis, PartyBasis::Unknown);
    assert!(a[3].warning.as_deref().unwrap().contains("unknown leg"));
}

#[test]
fn partial_label_match_and_unmatched_lines() {
    let xml = br#"<recording>
  <participant participant_id="a"><send>s1</send></participant>
  <participant participant_id="b"><send>s2</send></participant>
  <stream stream_id="s1"><label>x</label></stream>
  <stream stream_id="s2"><label>y</label></stream>
</recording>"#;
    let rs = parse_metadata(xml).unwrap();
    // The second line's label matches s1. The first line's fallback is
    // the stream at its own position (0 = s1), already claimed: it stays
    // unmatched rather than guessing further.
    let sdp = sdp_with_labels(&["zzz", "x"]);
    let a = assign_streams(&sdp, &rs).unwrap();
    assert_eq!(a[1].party, C);
    assert_eq!(a[1].matched_by, StreamMatch::Label);
    assert_eq!(a[0].matched_by, StreamMatch::None);
    assert_eq!(a[0].party, None);
    // Swapped labels: decided by label, not order.
    let sdp = sdp_with_labels(&["y", "x"]);
    let a = assign_streams(&sdp, &rs).unwrap();
    assert_eq!((a[0].party, a[1].party), (E, C));
    // No audio at all.
    let none = parse_sdp("v=0\r\nm=audio 0 RTP/AVP 0\r\n").unwrap();
    assert_eq!(assign_streams(&none, &rs), Err(SiprecError::NoAudio));
}

#[test]
fn siprec_parts_variants() {
    let plain = "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let msg = parse_message(plain.as_bytes()).unwrap();
    let (sdp, meta) = siprec_parts(&msg).unwrap();
    assert_eq!(sdp.media.len(), 1);
    assert!(meta.is_none());
    let no_body = "BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c1\r\nCSeq: 2 BYE\r\n\r\n";
    let msg = parse_message(no_body.as_bytes()).unwrap();
    assert_eq!(siprec_parts(&msg), Err(SiprecError::NoSdp));
    // Metadata found by disposition even with a generic XML type.
    let mp = "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Type: multipart/mixed;boundary=B\r\n\r\n--B\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nm=audio 4000 RTP/AVP 0\r\n\r\n--B\r\nContent-Type: application/xml\r\nContent-Disposition: recording-session\r\n\r\n<recording><stream id='s'><label>1</label></stream></recording>\r\n--B--\r\n";
    let msg = parse_message(mp.as_bytes()).unwrap();
    let (_, meta) = siprec_parts(&msg).unwrap();
    assert_eq!(meta.unwrap().streams[0].label, "1");
}

// -- SDP answer ---------------------------------------------------------

#[test]
fn answer_sdp_takes_gsm() {
    let offer = parse_sdp(
        "v=0\r\no=SRC 42 7 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
         m=audio 4000 RTP/AVP 18 3\r\na=label:1\r\na=sendonly\r\n",
    )
    .unwrap();
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    let a = parse_sdp(&answer_sdp(&offer, ip, &[30000], &[], 1)).unwrap();
    assert_eq!(
        (a.media[0].port, a.media[0].formats.clone()),
        (30000, vec![3])
    );
}

#[test]
fn held_streams_are_answered_inactive() {
    // RFC 3264 6.1: inactive → inactive; recvonly (the SRC will not
    // send) → inactive; sendonly or no attribute → recvonly; a
    // session-level a=inactive holds every line without its own.
    let offer = parse_sdp(
        "v=0\r\no=SRC 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=inactive\r\n\
         m=audio 4000 RTP/AVP 0\r\na=inactive\r\n\
         m=audio 4002 RTP/AVP 0\r\na=recvonly\r\n\
         m=audio 4004 RTP/AVP 0\r\na=sendonly\r\n\
         m=audio 4006 RTP/AVP 0\r\n",
    )
    .unwrap();
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    let a = parse_sdp(&answer_sdp(&offer, ip, &[1, 2, 3, 4], &[], 1)).unwrap();
    let dirs: Vec<_> = a.media.iter().map(|m| m.direction).collect();
    use Direction::*;
    assert_eq!(
        dirs,
        vec![
            Some(Inactive),
            Some(Inactive),
            Some(RecvOnly),
            Some(Inactive)
        ]
    );
    assert!(
        a.media.iter().all(|m| !m.is_rejected()),
        "held, not removed"
    );
    // L16 where the decoder goes (8/16 kHz), not at 44.1 kHz.
    let offer = parse_sdp(
        "v=0\r\no=SRC 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
         m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 L16/16000\r\n\
         m=audio 4002 RTP/AVP 97\r\na=rtpmap:97 L16/44100/2\r\n",
    )
    .unwrap();
    let a = parse_sdp(&answer_sdp(&offer, ip, &[1, 2], &[], 1)).unwrap();
    assert_eq!(a.media[0].formats, vec![96]);
    assert!(!a.media[0].is_rejected() && a.media[1].is_rejected());
}

#[test]
fn answer_sdp_recvonly_ports_codecs() {
    let offer = parse_sdp(
        "v=0\r\no=SRC 42 7 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
         m=audio 4000 RTP/AVP 18 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=label:1\r\na=sendonly\r\n\
         m=audio 4002 RTP/AVP 111 0 102 101\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\na=rtpmap:102 telephone-event/48000\r\na=rtpmap:101 telephone-event/8000\r\na=label:2\r\na=sendonly\r\n\
         m=video 4004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=label:3\r\n\
         m=audio 4006 RTP/AVP 18\r\na=label:4\r\n\
         m=audio 4008 RTP/AVP 0\r\na=label:5\r\n",
    )
    .unwrap();
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    let ans = answer_sdp(&offer, ip, &[30000, 30002, 30004, 30006], &[], 3);
    let a = parse_sdp(&ans).expect("answer parses");
    assert_eq!(a.origin_version, Some(3));
    assert_eq!(a.connection, Some(ip));
    assert_eq!(
        a.media.len(),
        offer.media.len(),
        "one answer line per offer line"
    );
    // 1: G.729 skipped, PCMA chosen, te kept.
    let m = &a.media[0];
    assert_eq!((m.port, m.formats.clone()), (30000, vec![8, 101]));
    assert_eq!(m.direction, Some(Direction::RecvOnly));
    assert_eq!(m.label.as_deref(), Some("1"));
    assert_eq!(m.fmtp(101), Some("0-16"));
    // 2: opus with the 48 kHz telephone-event.
    let m = &a.media[1];
    assert_eq!((m.port, m.formats.clone()), (30002, vec![111, 102]));
    assert!(m.rtpmap(111).unwrap().is("opus"));
    assert_eq!(m.rtpmap(111).unwrap().channels, Some(2));
    assert_eq!(m.fmtp(111), Some("useinbandfec=1"));
    assert_eq!(m.direction, Some(Direction::RecvOnly));
    // 3: video rejected; 4: G.729 only, rejected; 5: no port given.
    assert!(a.media[2].is_rejected());
    assert_eq!(a.media[2].media, "video");
    assert!(a.media[3].is_rejected());
    assert!(a.media[4].is_rejected());
    assert_eq!(a.media[4].label.as_deref(), Some("5"));
    // The sess-id stays when the same offer is answered again.
    let again = parse_sdp(&answer_sdp(&offer, ip, &[1, 2], &[], 4)).unwrap();
    assert_eq!(again.origin_session, a.origin_session);
    assert_eq!(again.origin_version, Some(4));
}

#[test]
fn answer_sdp_sdes() {
    let offer = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
         m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj\r\na=label:1\r\n\
         m=audio 4002 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=label:2\r\n\
         m=audio 4004 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=label:3\r\n\
         m=audio 4006 RTP/AVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=label:4\r\n",
    )
    .unwrap();
    let ip: IpAddr = "2001:db8::5".parse().unwrap();
    let key = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk";
    let ans = answer_sdp(
        &offer,
        ip,
        &[40000, 40002, 40004, 40006],
        &[
            Some(("AES_CM_128_HMAC_SHA1_32", key)),
            None,
            Some(("F8_128_HMAC_SHA1_80", key)),
        ],
        1,
    );
    assert!(ans.contains("c=IN IP6 2001:db8::5"));
    let a = parse_sdp(&ans).unwrap();
    let m = &a.media[0];
    assert_eq!(m.proto, "RTP/SAVP");
    assert_eq!(m.crypto.len(), 1);
    assert_eq!(m.crypto[0].tag, 2);
    assert_eq!(m.crypto[0].suite, "AES_CM_128_HMAC_SHA1_32");
    assert_eq!(m.crypto[0].key_params, format!("inline:{key}"));
    assert_eq!(m.direction, Some(Direction::RecvOnly));
    // No key given, or a suite that was not offered: rejected.
    assert!(a.media[1].is_rejected());
    assert!(a.media[2].is_rejected());
    // Best-effort SRTP offered in RTP/AVP: answered in the clear.
    assert_eq!((a.media[3].port, a.media[3].crypto.len()), (40006, 0));
    assert_eq!(a.media[3].proto, "RTP/AVP");
}

/// A partial update merges by id (a stream it gives a participant is no
/// longer anyone else's; what it leaves out stays); a complete one replaces;
/// the merged document never grows past the limits.
#[test]
fn metadata_updates_merge_partial_and_replace_complete() {
    let doc = |mode: &str, body: &str| {
        parse_metadata(format!("<recording xmlns='urn:ietf:params:xml:ns:recording:1'><datamode>{mode}</datamode>{body}</recording>").as_bytes()).unwrap()
    };
    let mut m = doc(
        "complete",
        "<participant participant_id='a'><nameID aor='sip:1@h'><name>A</name></nameID></participant>\
         <participant participant_id='b'><nameID aor='sip:2@h'/></participant>\
         <stream stream_id='s1'><label>1</label></stream><stream stream_id='s2'><label>2</label></stream>\
         <participantstreamassoc participant_id='a'><send>s1</send></participantstreamassoc>\
         <participantstreamassoc participant_id='b'><send>s2</send></participantstreamassoc>",
    );
    let partial = doc(
        "partial",
        "<participant participant_id='c'><nameID aor='sip:3@h'/></participant>\
         <participantstreamassoc participant_id='c'><send>s2</send></participantstreamassoc>",
    );
    assert!(partial.is_partial());
    m.update(partial);
    let ids: Vec<&str> = m.participants.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(m.participant("a").unwrap().send, ["s1"]);
    assert!(m.participant("b").unwrap().send.is_empty());
    assert_eq!(m.participant("c").unwrap().send, ["s2"]);
    assert_eq!(m.participant("a").unwrap().name.as_deref(), Some("A"));
    assert_eq!(m.streams.len(), 2);
    // The streams still go to A (caller) and now C.
    let a = assign_streams(&sdp_with_labels(&["1", "2"]), &m).unwrap();
    assert_eq!(a[0].participant.as_deref(), Some("a"));
    assert_eq!(a[1].participant.as_deref(), Some("c"));
    // A participant without an id in an update (the parser names it `_0`
    // by position) is a new one, not the known first participant.
    m.update(doc(
        "partial",
        "<participant><nameID aor='sip:9@h'/></participant>",
    ));
    assert_eq!(m.participants.len(), 4);
    assert_eq!(m.participants[0].id, "a");
    assert_eq!(m.participants[3].aor.as_deref(), Some("sip:9@h"));
    // Many partial updates adding participants: bounded.
    for i in 0..2 * MAX_PARTICIPANTS {
        m.update(doc(
            "partial",
            &format!("<participant participant_id='x{i}'/>"),
        ));
    }
    assert_eq!(m.participants.len(), MAX_PARTICIPANTS);
    // A complete document replaces everything.
    m.update(doc("complete", "<participant participant_id='z'/>"));
    assert_eq!(m.participants.len(), 1);
}

proptest::proptest! {
    #[test]
    fn metadata_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        let _ = parse_metadata(&bytes);
    }

    #[test]
    fn metadata_from_xml_pieces(pieces in proptest::collection::vec(0usize..16, 0..64)) {
        const P: [&str; 16] = [
            "<recording>", "</recording>", "<participant participant_id='p'>", "</participant>",
            "<stream stream_id='s'>", "</stream>", "<label>1</label>", "<send>s</send>",
            "<participantstreamassoc id='p'>", "</participantstreamassoc>", "&amp;", "&#0;",
            "<nameID aor='sip:1@h'/>", "<![CDATA[x]]>", "<!DOCTYPE x>", "<tns:recording xmlns:tns='u'>",
        ];
        let doc: String = pieces.iter().map(|i| P[*i]).collect();
        if let Ok(rs) = parse_metadata(doc.as_bytes()) {
            proptest::prop_assert!(rs.participants.len() <= MAX_PARTICIPANTS);
            let sdp = sdp_with_labels(&["1", "2"]);
            let _ = assign_streams(&sdp, &rs);
        }
    }
}
