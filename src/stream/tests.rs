//! A call's stream task against an in-process receiver: the file as the
//! source of missed audio (a gap between queued chunks), a file that is
//! gone (stop incomplete), a receiver claiming more than was recorded.

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::recording::RecordingFile;

/// Accepts one connection, answers `start` with `ready` at `offset`, keeps
/// every message until `stop` (answered `done`) or the end.
async fn receiver(offset: u64) -> (String, tokio::task::JoinHandle<Vec<Message>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", l.local_addr().unwrap());
    let h =
        tokio::spawn(async move {
            let (sock, _) = l.accept().await.unwrap();
            #[allow(clippy::result_large_err)]
        let cb = |_: &tokio_tungstenite::tungstenite::handshake::server::Request,
                  mut r: tokio_tungstenite::tungstenite::handshake::server::Response| {
            r.headers_mut()
                .insert("sec-websocket-protocol", protocol::SUBPROTOCOL.parse().unwrap());
            Ok(r)
        };
            let mut ws = tokio_tungstenite::accept_hdr_async(sock, cb).await.unwrap();
            let mut got = Vec::new();
            while let Some(Ok(m)) = ws.next().await {
                let text = m.to_text().ok().map(str::to_string);
                got.push(m);
                if let Some(t) = text {
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    if v["type"] == "start" {
                        let r = json!({"type": "ready", "offset": offset}).to_string();
                        ws.send(Message::Text(r.into())).await.unwrap();
                    } else if v["type"] == "stop" {
                        let _ = ws.send(Message::Text(r#"{"type":"done"}"#.into())).await;
                        break;
                    }
                }
            }
            got
        });
    (url, h)
}

fn settings(url: &str) -> Arc<StreamSettings> {
    Arc::new(StreamSettings {
        url: url.to_string(),
        token: None,
        token_file: None,
        frame: Duration::from_millis(100),
        max_lag: Duration::from_secs(30),
        tls: crate::sys::tls::client_config(None).unwrap(),
        filters: Default::default(),
    })
}

/// A WAV of `frames` stereo frames, sample = its index (both channels).
fn wav(dir: &Path, frames: usize) -> (RecordingFile, Vec<i16>) {
    let samples: Vec<i16> = (0..frames * 2).map(|i| (i / 2) as i16).collect();
    let wav = dir.join("r.wav");
    let f = std::fs::File::create(&wav).unwrap();
    let mut w = pbx_core::audio::wav::WavWriter::new(f, 8000, 2).unwrap();
    w.write_samples(&samples).unwrap();
    w.finalize().unwrap();
    (
        RecordingFile::new(dir.join(".r.wav.part"), wav, None),
        samples,
    )
}

struct Call {
    tap: Tapped,
    stats: Arc<StreamStats>,
    task: tokio::task::JoinHandle<()>,
    closing: tokio_util::sync::CancellationToken,
}

fn call(url: &str, file: RecordingFile) -> Call {
    call_with(settings(url), file)
}

fn call_with(settings: Arc<StreamSettings>, file: RecordingFile) -> Call {
    let stats = Arc::new(StreamStats::default());
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    let shared = Arc::new(Shared::default());
    let closing = tokio_util::sync::CancellationToken::new();
    let file_of_tap = file.clone();
    let rec = TapBegin {
        recording_id: "r".into(),
        sample_rate: 8000,
        meta: json!({"recording_id": "r"}),
        file,
    };
    let task = tokio::spawn(client::run(client::CallStream {
        settings,
        rec,
        rx,
        shared: shared.clone(),
        stats: stats.clone(),
        closing: closing.clone(),
        broken_for: None,
    }));
    Call {
        tap: Tapped {
            tx,
            shared,
            stats: stats.clone(),
            file: Some(file_of_tap),
        },
        stats,
        task,
        closing,
    }
}

fn audio_of(got: &[Message]) -> Vec<(u64, Vec<i16>)> {
    got.iter()
        .filter_map(|m| match m {
            Message::Binary(b) => protocol::parse_audio(b).map(|(o, pcm)| {
                (
                    o,
                    pcm.chunks_exact(2)
                        .map(|s| i16::from_le_bytes([s[0], s[1]]))
                        .collect(),
                )
            }),
            _ => None,
        })
        .collect()
}

fn last_text(got: &[Message]) -> Value {
    got.iter()
        .rev()
        .find_map(|m| m.to_text().ok().and_then(|t| serde_json::from_str(t).ok()))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_gap_between_queued_chunks_is_read_from_the_file() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 3200);
    let (url, server) = receiver(0).await;
    let mut c = call(&url, file);
    // Frames 0..800 and 2400..3200 reach the queue; 800..2400 were dropped.
    c.tap.audio(0, &samples[..1600]);
    c.tap.shared.written.store(2400, Ordering::Release);
    c.tap.audio(2400, &samples[4800..]);
    Box::new(c.tap).end(TapEnd::Written {
        frames: 3200,
        meta: json!({"final": true}),
    });
    c.task.await.unwrap();
    let got = server.await.unwrap();
    let audio = audio_of(&got);
    let mut at = 0u64;
    let mut all = Vec::new();
    for (o, pcm) in &audio {
        assert_eq!(*o, at, "offsets continue");
        assert!(
            pcm.len() <= 800 * 2,
            "at most one frame (100 ms) per message"
        );
        at += (pcm.len() / 2) as u64;
        all.extend_from_slice(pcm);
    }
    assert_eq!(all, samples);
    let stop = last_text(&got);
    assert_eq!(stop["type"], "stop");
    assert_eq!(stop["complete"], true);
    assert_eq!(stop["frames"], 3200);
    assert_eq!(stop["meta"]["final"], true);
    assert_eq!(c.stats.complete.load(Ordering::Relaxed), 1);
    assert_eq!(c.stats.open.load(Ordering::Relaxed), 0);
}

/// Audio the stream still has to catch up on once the pair was delivered
/// and removed (`spool.retention = "0s"`, the default, removes it as soon
/// as the cloud has it) is read from the file held open since its first
/// audio: the stream ends complete (before: "the file ends early", stop
/// incomplete).
#[tokio::test]
async fn audio_missed_is_sent_even_after_delivery_removed_the_file() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 3200);
    let wav_path = file.wav.clone();
    let (url, server) = receiver(0).await;
    let mut c = call(&url, file);
    c.tap.audio(0, &samples[..1600]);
    // Delivered and removed before the stream read the rest.
    std::fs::remove_file(&wav_path).unwrap();
    c.tap.shared.written.store(3200, Ordering::Release);
    Box::new(c.tap).end(TapEnd::Written {
        frames: 3200,
        meta: json!({"final": true}),
    });
    c.task.await.unwrap();
    let got = server.await.unwrap();
    let all: Vec<i16> = audio_of(&got).into_iter().flat_map(|(_, p)| p).collect();
    assert_eq!(all, samples);
    let stop = last_text(&got);
    assert_eq!(
        (stop["complete"].clone(), stop["frames"].clone()),
        (json!(true), json!(3200))
    );
}

#[tokio::test]
async fn a_recording_file_that_is_gone_stops_the_stream_incomplete() {
    let d = tempfile::tempdir().unwrap();
    let file = RecordingFile::new(
        d.path().join(".gone.wav.part"),
        d.path().join("gone.wav"),
        None,
    );
    let (url, server) = receiver(0).await;
    let c = call(&url, file);
    // 1600 frames written that never reached the queue.
    c.tap.shared.written.store(1600, Ordering::Release);
    Box::new(c.tap).end(TapEnd::Written {
        frames: 1600,
        meta: json!({}),
    });
    c.task.await.unwrap();
    let got = server.await.unwrap();
    assert!(audio_of(&got).is_empty());
    let stop = last_text(&got);
    assert_eq!(
        (stop["complete"].clone(), stop["frames"].clone()),
        (json!(false), json!(0))
    );
    assert_eq!(c.stats.incomplete.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_receiver_claiming_more_than_was_recorded_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 800);
    let (url, server) = receiver(1_000_000).await;
    let mut c = call(&url, file);
    c.tap.audio(0, &samples);
    c.task.await.unwrap();
    let got = server.await.unwrap();
    assert!(audio_of(&got).is_empty());
    assert_eq!(c.stats.refused.load(Ordering::Relaxed), 1);
    assert!(c
        .stats
        .snapshot(true)
        .last_error
        .is_some_and(|e| e.contains("holds 1000000 frames")));
}

/// CONTRACT §5: binary messages of "about `frame` of audio each". The
/// recording hands over 40 ms chunks; they go out gathered into 100 ms
/// messages (the last one shorter), offsets continuous, every sample once.
#[tokio::test]
async fn queued_chunks_go_out_in_messages_of_one_frame() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 3520);
    let (url, server) = receiver(0).await;
    let mut c = call(&url, file);
    for at in (0..3520).step_by(320) {
        c.tap.audio(at as u64, &samples[at * 2..(at + 320) * 2]);
    }
    Box::new(c.tap).end(TapEnd::Written {
        frames: 3520,
        meta: json!({}),
    });
    c.task.await.unwrap();
    let audio = audio_of(&server.await.unwrap());
    let sizes: Vec<usize> = audio.iter().map(|(_, p)| p.len() / 2).collect();
    assert_eq!(sizes, [800, 800, 800, 800, 320]);
    let mut at = 0;
    for (o, _) in &audio {
        assert_eq!(*o, at);
        at += 800;
    }
    let all: Vec<i16> = audio.into_iter().flat_map(|(_, p)| p).collect();
    assert_eq!(all, samples);
}

/// Audio that does not make a whole frame is not held back longer than a
/// frame: one 40 ms chunk of a call still running reaches the receiver.
#[tokio::test]
async fn a_part_of_a_frame_is_sent_after_waiting_one_frame() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 320);
    let (url, server) = receiver(0).await;
    let mut c = call(&url, file);
    c.tap.audio(0, &samples);
    let t = std::time::Instant::now();
    while c.stats.bytes.load(Ordering::Relaxed) == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.stats.bytes.load(Ordering::Relaxed), 8 + 320 * 4);
    Box::new(c.tap).end(TapEnd::Written {
        frames: 320,
        meta: json!({}),
    });
    c.task.await.unwrap();
    let audio = audio_of(&server.await.unwrap());
    assert_eq!(audio, [(0, samples)]);
}

/// The daemon stops while a call's stream is still going (its time is up):
/// the receiver gets what was sent and `stop` with `"complete": false` at
/// the frames it holds, not a connection that just goes.
#[tokio::test]
async fn a_stream_cut_short_by_the_daemon_stopping_says_stop_incomplete() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 1600);
    let (url, server) = receiver(0).await;
    let mut c = call(&url, file);
    c.tap.audio(0, &samples);
    let t = std::time::Instant::now();
    while c.stats.bytes.load(Ordering::Relaxed) < 2 * (8 + 800 * 4) {
        assert!(t.elapsed() < Duration::from_secs(5), "never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.closing.cancel();
    c.task.await.unwrap();
    let got = server.await.unwrap();
    let stop = last_text(&got);
    assert_eq!(stop["type"], "stop");
    assert_eq!(
        (stop["complete"].clone(), stop["frames"].clone()),
        (json!(false), json!(1600))
    );
    assert_eq!(audio_of(&got).len(), 2);
    assert_eq!(c.stats.incomplete.load(Ordering::Relaxed), 1);
    drop(c.tap);
}

/// A recording's side dropped without an end (the engine thread gone):
/// its stream ends incomplete instead of waiting for ever.
#[tokio::test]
async fn a_tap_dropped_without_an_end_ends_its_stream() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 800);
    let (url, server) = receiver(0).await;
    let mut c = call(&url, file);
    c.tap.audio(0, &samples);
    drop(c.tap);
    tokio::time::timeout(Duration::from_secs(10), c.task)
        .await
        .expect("the stream ended")
        .unwrap();
    let stop = last_text(&server.await.unwrap());
    assert_eq!(stop["complete"], false);
}

fn filtered_settings(
    url: &str,
    f: impl FnOnce(&mut crate::config::filters::Filters),
) -> Arc<StreamSettings> {
    let mut s = Arc::try_unwrap(settings(url)).ok().unwrap();
    f(&mut s.filters);
    Arc::new(s)
}

/// With `filter.min_duration`, a call that ends shorter is never streamed
/// (delivery filters its recording out: its audio stays on the machine).
#[tokio::test]
async fn a_call_shorter_than_min_duration_is_never_streamed() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 3200);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("ws://{}/", l.local_addr().unwrap());
    let mut c = call_with(
        filtered_settings(&url, |f| f.min_duration = Duration::from_secs(1)),
        file,
    );
    c.tap.audio(0, &samples);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Box::new(c.tap).end(TapEnd::Written {
        frames: 3200,
        meta: json!({"duration_ms": 400}),
    });
    c.task.await.unwrap();
    assert!(l.accept().is_err(), "the receiver was connected to");
    assert_eq!(c.stats.filtered.load(Ordering::Relaxed), 1);
}

/// With `filter.min_duration`, a longer call streams from the moment it is
/// that long, every frame from the first (read back from the file).
#[tokio::test]
async fn a_call_reaching_min_duration_is_streamed_whole() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 3200);
    let (url, server) = receiver(0).await;
    let mut c = call_with(
        filtered_settings(&url, |f| f.min_duration = Duration::from_millis(200)),
        file,
    );
    c.tap.audio(0, &samples[..1600]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.tap.audio(800, &samples[1600..]);
    Box::new(c.tap).end(TapEnd::Written {
        frames: 3200,
        meta: json!({"duration_ms": 400}),
    });
    c.task.await.unwrap();
    let got = server.await.unwrap();
    let all: Vec<i16> = audio_of(&got).into_iter().flat_map(|(_, p)| p).collect();
    assert_eq!(all, samples);
    assert_eq!(last_text(&got)["complete"], true);
}

/// A call filtered out by what became known during it (a number in
/// `exclude_numbers` from later metadata) stops incomplete, and its final
/// metadata (the number) is not sent.
#[tokio::test]
async fn a_call_filtered_by_its_final_metadata_stops_incomplete_without_it() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 1600);
    let (url, server) = receiver(0).await;
    let mut c = call_with(
        filtered_settings(&url, |f| f.exclude_numbers = vec!["555*".into()]),
        file,
    );
    c.tap.audio(0, &samples);
    Box::new(c.tap).end(TapEnd::Written {
        frames: 1600,
        meta: json!({"from": {"number": "5551234"}, "duration_ms": 200}),
    });
    c.task.await.unwrap();
    let got = server.await.unwrap();
    let stop = last_text(&got);
    assert_eq!(stop["type"], "stop");
    assert_eq!(stop["complete"], false);
    assert!(!stop.to_string().contains("5551234"), "{stop}");
}

/// The token file is read at every connection: a token rotated by
/// rewriting the file is used without a reload.
#[tokio::test]
async fn a_rotated_token_file_is_used_at_the_next_connection() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 800);
    let token = d.path().join("token");
    std::fs::write(&token, "rotated\n").unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", l.local_addr().unwrap());
    let server =
        tokio::spawn(async move {
            let (sock, _) = l.accept().await.unwrap();
            let seen = Arc::new(std::sync::Mutex::new(String::new()));
            let seen2 = seen.clone();
            #[allow(clippy::result_large_err)]
        let cb = move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                       mut r: tokio_tungstenite::tungstenite::handshake::server::Response| {
            *seen2.lock().unwrap() = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            r.headers_mut()
                .insert("sec-websocket-protocol", protocol::SUBPROTOCOL.parse().unwrap());
            Ok(r)
        };
            let mut ws = tokio_tungstenite::accept_hdr_async(sock, cb).await.unwrap();
            while let Some(Ok(m)) = ws.next().await {
                if let Ok(t) = m.to_text() {
                    let v: Value = serde_json::from_str(t).unwrap_or_default();
                    if v["type"] == "start" {
                        let r = json!({"type": "ready", "offset": 0}).to_string();
                        ws.send(Message::Text(r.into())).await.unwrap();
                    } else if v["type"] == "stop" {
                        let _ = ws.send(Message::Text(r#"{"type":"done"}"#.into())).await;
                        break;
                    }
                }
            }
            let v = seen.lock().unwrap().clone();
            v
        });
    let mut st = Arc::try_unwrap(settings(&url)).ok().unwrap();
    st.token_file = Some(token);
    let mut c = call_with(Arc::new(st), file);
    c.tap.audio(0, &samples);
    Box::new(c.tap).end(TapEnd::Written {
        frames: 800,
        meta: json!({}),
    });
    c.task.await.unwrap();
    assert_eq!(server.await.unwrap(), "Bearer rotated");
}

/// A receiver that does not speak `pbx-edge.stream.v1` (a wrong
/// `stream.url`) is refused at once, not asked again with the token.
#[tokio::test]
async fn a_receiver_without_the_subprotocol_is_refused_not_retried() {
    let d = tempfile::tempdir().unwrap();
    let (file, samples) = wav(d.path(), 800);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", l.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut n = 0;
        while let Ok(Ok((sock, _))) = tokio::time::timeout(Duration::from_secs(3), l.accept()).await
        {
            n += 1;
            // A plain WebSocket server: no subprotocol in its answer.
            let _ = tokio_tungstenite::accept_async(sock).await;
        }
        n
    });
    let mut c = call(&url, file);
    c.tap.audio(0, &samples);
    Box::new(c.tap).end(TapEnd::Written {
        frames: 800,
        meta: json!({}),
    });
    tokio::time::timeout(Duration::from_secs(10), c.task)
        .await
        .expect("the stream gave up at once")
        .unwrap();
    assert_eq!(c.stats.refused.load(Ordering::Relaxed), 1);
    assert_eq!(server.await.unwrap(), 1, "connections made");
}
