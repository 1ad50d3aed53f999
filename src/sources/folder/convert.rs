//! A finished recording set (+ its CDR row) → a recording pair, written by
//! [`crate::recording::write_whole`] (the one writer).

use super::*;

// ---------------------------------------------------------------- convert

/// A recording pair written to the spool.
#[derive(Debug, Clone)]
pub struct Converted {
    pub id: String,
    pub wav: PathBuf,
    pub json: PathBuf,
    pub bytes: u64,
    pub duration_ms: i64,
    pub warnings: Vec<String>,
}

/// Turns a finished recording set into `<id>.wav` + `<id>.json` in `out_dir`.
/// Reads only the PBX's files. `mtime` is the start time used when neither the
/// file name nor the CDR has one; `note`, if any, is the first of the JSON's
/// `warnings`. `retake`: the set was taken before and written to since
/// (its files' total size now): its recording id is this version's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn convert(
    set: &RecordingSet,
    cdr: Option<&CdrRow>,
    out_dir: &Path,
    agent_id: &str,
    settings: &FolderSettings,
    mtime: Timestamp,
    note: Option<String>,
    retake: Option<u64>,
) -> Result<Converted, FolderError> {
    let mut warnings: Vec<String> = note.into_iter().collect();
    let mut mixed_mono = false;
    let mut legs_differ_ms: Option<u64> = None;
    let (left, right, rate, sources, codecs): (Vec<i16>, Vec<i16>, u32, Vec<String>, [&str; 2]);
    let src_name = |p: &PathBuf| p.to_string_lossy().into_owned();
    if set.rx.is_some() || set.tx.is_some() {
        // A leg that cannot be read (a truncated or foreign file) is a
        // silent channel beside the other, said in a warning, as a missing
        // leg is: refusing the set threw the readable party's audio away.
        // Only with no leg readable is the set refused.
        let read = |p: &Option<PathBuf>| match p.as_ref().map(|p| read_audio_as(p, settings, true))
        {
            Some(Ok(pcm)) => (Some(pcm), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let (a, a_err) = read(&set.rx);
        let (b, b_err) = read(&set.tx);
        let (a_err, b_err) = match (a.is_none() && b.is_none(), a_err, b_err) {
            (true, Some(e), _) | (true, None, Some(e)) => return Err(e),
            (_, a_err, b_err) => (a_err, b_err),
        };
        for (err, which) in [
            (
                &a_err,
                "the caller leg (-in) cannot be read: channel 0 is silent",
            ),
            (
                &b_err,
                "the callee leg (-out) cannot be read: channel 1 is silent",
            ),
        ] {
            if let Some(e) = err {
                warnings.push(format!("{which} ({e})"));
            }
        }
        for (leg, p) in [(&a, &set.rx), (&b, &set.tx)] {
            if let (Some(pcm), Some(path)) = (leg, p) {
                warnings.extend(pcm.warnings.iter().cloned());
                if pcm.channels != 1 {
                    warnings.push(format!(
                        "{}: leg has {} channels, the first is used",
                        path.display(),
                        pcm.channels
                    ));
                }
            }
        }
        if a.is_none() && a_err.is_none() {
            warnings.push("the caller leg (-in) is missing: channel 0 is silent".into());
        }
        if b.is_none() && b_err.is_none() {
            warnings.push("the callee leg (-out) is missing: channel 1 is silent".into());
        }
        let ra = a.as_ref().map(|p| p.rate).unwrap_or(8000);
        let rb = b.as_ref().map(|p| p.rate).unwrap_or(8000);
        rate = target_rate(settings, ra.max(rb));
        let la = match (&a, &set.rx) {
            (Some(p), Some(path)) => resample(channel(p, 0), p.rate, rate, path)?,
            _ => Vec::new(),
        };
        let lb = match (&b, &set.tx) {
            (Some(p), Some(path)) => resample(channel(p, 0), p.rate, rate, path)?,
            _ => Vec::new(),
        };
        let (mut la, mut lb) = (la, lb);
        if a.is_some() && b.is_some() && la.len() != lb.len() {
            let diff = la.len().abs_diff(lb.len());
            let ms = diff as u64 * 1000 / u64::from(rate);
            // Named by file: with `caller_leg = "out"` the -in leg is the callee.
            let shorter = if la.len() < lb.len() {
                "-in (rx)"
            } else {
                "-out (tx)"
            };
            if settings.leg_align == LegAlign::End {
                // Both files open when MixMonitor starts and close at
                // hang-up; without its `S` option a direction without audio
                // (ringing, one-way early media) writes nothing: what the
                // shorter leg lacks is at its start.
                let short = if la.len() < lb.len() {
                    &mut la
                } else {
                    &mut lb
                };
                short.splice(0..0, std::iter::repeat_n(0i16, diff));
            }
            if ms > 0 {
                legs_differ_ms = Some(ms);
                let (at, pad) = match settings.leg_align {
                    LegAlign::End => ("end", "start"),
                    LegAlign::Start => ("start", "end"),
                };
                let w = format!(
                    "the legs differ in length by {ms} ms (the {shorter} leg is shorter): \
                     lined up at their {at}, the shorter padded with silence at its {pad} \
                     (leg_align = \"{at}\"); MixMonitor's S option keeps the legs the same \
                     length"
                );
                tracing::info!(
                    target: "pbx_edge::folder",
                    set = %crate::logmask::file_for_log(&set.key),
                    "{w}"
                );
                warnings.push(w);
            }
        }
        left = la;
        right = lb;
        sources = [&set.rx, &set.tx]
            .into_iter()
            .flatten()
            .map(src_name)
            .collect();
        codecs = [
            a.as_ref().map_or("L16", |p| p.codec),
            b.as_ref().map_or("L16", |p| p.codec),
        ];
    } else if let Some(path) = &set.whole {
        let p = read_audio(path, settings)?;
        warnings.extend(p.warnings.iter().cloned());
        let r = target_rate(settings, p.rate);
        if p.channels == 2 {
            left = resample(channel(&p, 0), p.rate, r, path)?;
            right = resample(channel(&p, 1), p.rate, r, path)?;
        } else {
            // Honest mono (CONTRACT §3): a 1-channel WAV, not a mix beside
            // a silent channel an analysis would read as a silent callee.
            mixed_mono = true;
            warnings.push(
                "mono mix: both parties are on the one channel of a 1-channel WAV; \
                 record split legs (MixMonitor r()/t()) or stereo for a two-channel analysis"
                    .into(),
            );
            left = resample(channel(&p, 0), p.rate, r, path)?;
            right = Vec::new();
        }
        rate = r;
        sources = vec![src_name(path)];
        codecs = [p.codec, p.codec];
    } else {
        return Err(fmt_err(&set.key, "no audio file in the set"));
    }

    // `caller_leg = "out"`: the caller is what the PBX sent (tx / right).
    let (left, right, codecs) = if settings.caller_leg_out && !mixed_mono {
        (right, left, [codecs[1], codecs[0]])
    } else {
        (left, right, codecs)
    };

    // Metadata: the CDR first, then the file name, then the mtime.
    let stem = set.stem();
    let name = parse_name(&stem, &settings.name_patterns);
    let call_id = cdr
        .map(|c| c.uniqueid.clone())
        .or_else(|| name.as_ref().map(|n| n.uniqueid.clone()))
        .unwrap_or_else(|| stem.clone());
    let frames = left.len().max(right.len());
    let duration_ms = (frames as u64 * 1000 / u64::from(rate)) as i64;
    if (duration_ms.max(0) as u128) < settings.min_duration.as_millis() {
        return Err(FolderError::TooShort {
            path: set.key.clone(),
            duration_ms,
            min_ms: settings.min_duration.as_millis(),
        });
    }
    let name_start = name
        .as_ref()
        .map(|n| settings.timezone.to_utc(n.started_at));
    let started_at = cdr
        .and_then(|c| c.start)
        .or(name_start)
        .unwrap_or_else(|| mtime.add_micros(-duration_ms * 1000));
    let answered_at = cdr.and_then(|c| c.answer);
    let ended_at = cdr
        .and_then(|c| c.end)
        .unwrap_or_else(|| started_at.add_micros(duration_ms * 1000));
    let (from_number, to_number) = match (cdr, &name) {
        (Some(c), _) => (
            if c.src.is_empty() {
                c.cnum.clone()
            } else {
                c.src.clone()
            },
            c.dst.clone(),
        ),
        (None, Some(n)) => (n.src.clone(), n.dst.clone()),
        (None, None) => (String::new(), String::new()),
    };
    let from_name = cdr
        .and_then(|c| clid_name(&c.clid).or_else(|| Some(c.cnam.clone()).filter(|n| !n.is_empty())))
        .or_else(|| name.as_ref().and_then(|n| n.src_name.clone()));
    let file_direction = name
        .as_ref()
        .map(|n| direction_of(&n.kind))
        .unwrap_or("unknown");
    let direction = settings.direction.classify(cdr, file_direction);
    let id = match retake {
        None => recording_id(&call_id, started_at),
        Some(size) => {
            warnings.push(format!(
                "the PBX wrote to these files after a first version of them was taken                  (a call on hold when pbx-edge started): this is their version of {size} bytes,                  a recording of its own"
            ));
            recording_id(&format!("{call_id}#{size}"), started_at)
        }
    };

    let mut doc = RecordingDoc {
        schema: SCHEMA,
        recording_id: id.clone(),
        agent_id: agent_id.to_string(),
        source: "folder".into(),
        call_id: Some(call_id),
        from: Some(DocParty {
            number: from_number,
            name: from_name,
            uri: None,
        }),
        to: Some(DocParty {
            number: to_number,
            name: None,
            uri: None,
        }),
        direction: direction.to_string(),
        started_at: Some(started_at),
        answered_at,
        ended_at: Some(ended_at),
        duration_ms,
        // Filled in by `write_whole` from the WAV it writes.
        audio: DocAudio::wav(rate, 0, String::new()),
        channels: if mixed_mono {
            DocChannels::mixed(codecs[0])
        } else {
            DocChannels::summary(codecs)
        },
        dtmf: Vec::new(),
        truncated: false,
        warnings: warnings.clone(),
        call: None,
        folder: Some(FolderFields {
            mixed_mono,
            disposition: cdr.map(|c| c.disposition.clone()),
            did: cdr.map(|c| c.did.clone()).filter(|d| !d.is_empty()),
            cdr: cdr.is_some(),
            pbx_type: name.as_ref().map(|n| n.kind.clone()),
            source_files: sources,
            legs_differ_ms,
            leg_align: legs_differ_ms.map(|_| settings.leg_align.as_str()),
        }),
        ids: cdr_ids(cdr),
        roles: None,
    };
    doc.assign_roles(&settings.roles);
    let channels: &[&[i16]] = if mixed_mono {
        &[&left]
    } else {
        &[&left, &right]
    };
    let (written, bytes) =
        crate::recording::write_whole(out_dir, rate, channels, doc, settings.keys.as_deref())
            .map_err(|source| FolderError::Write {
                id: id.clone(),
                source,
            })?;
    Ok(Converted {
        id,
        wav: written.wav,
        json: written.json,
        bytes,
        duration_ms: written.duration_ms,
        warnings,
    })
}

/// The recording's rate (`recording.sample_rate`) for files whose highest
/// rate is `highest`: "auto" = 16000 Hz if any is wideband, else 8000 Hz.
fn target_rate(settings: &FolderSettings, highest: u32) -> u32 {
    match settings.sample_rate {
        crate::config::SampleRate::Auto if highest > 8000 => 16000,
        crate::config::SampleRate::Auto | crate::config::SampleRate::Hz8000 => 8000,
        crate::config::SampleRate::Hz16000 => 16000,
    }
}

/// Suffix of a WAV being converted in the spool (removed at start if left).
pub use crate::recording::WHOLE_TMP as FOLDER_TMP;

/// `ids` from the CDR row: Asterisk's `uniqueid` and `linkedid`.
fn cdr_ids(cdr: Option<&CdrRow>) -> std::collections::BTreeMap<String, String> {
    let mut ids = std::collections::BTreeMap::new();
    if let Some(c) = cdr {
        for (k, v) in [
            ("asterisk_uniqueid", &c.uniqueid),
            ("asterisk_linkedid", &c.linkedid),
        ] {
            if !v.trim().is_empty() {
                ids.insert(k.to_string(), v.trim().to_string());
            }
        }
    }
    ids
}
