//! Pause and resume of one call's recording: triggers in, muted stretches out.
//!
//! In: pause and resume requests with their place on the call's timeline
//! (output samples since time zero, the coordinate [`super::timeline`] and the
//! mixer use): from DTMF sequences (RFC 4733 events on either leg, matched
//! per leg, or in-band tones found by [`crate::audio::dtmf`] in the rendered
//! audio of G.711 legs without telephone-events), from the control API and
//! from a SIP header. Out: the stretches `[from, to)` where both channels are
//! written as exact zeros ([`PauseState::mute`], applied by the mixer to the
//! interleaved output just before it goes to the sink, so the timeline, and
//! with it the sync of the two channels and the duration, are untouched), the
//! list of them for the JSON ([`PauseState::meta`]), and which DTMF digits
//! are not to be kept ([`PauseState::hides`]).
//!
//! What is promised around the boundaries:
//! - a stretch starts and ends on a millisecond boundary of the WAV (at 8000
//!   and 16000 Hz), so `from_ms`/`to_ms` in the JSON say exactly which frames
//!   are zeros: `[from_ms * rate / 1000, to_ms * rate / 1000)`;
//! - nothing already handed to the sink is changed: a pause asked for at a
//!   place already written starts at the first frame not yet written (the
//!   mixer holds back the jitter window, `recording.jitter`, 500 ms by
//!   default, so a DTMF pause sequence keyed within that window of its first
//!   digit is muted from that first digit on; the JSON always says where the
//!   zeros really begin);
//! - a DTMF pause starts at the start of the first digit of the pause
//!   sequence (RFC 4733: the event's start, its arrival less its duration; in
//!   band: the start of the first detector block that held it, or the first
//!   frame not yet rendered); an API or SIP pause at the moment it arrives;
//! - a DTMF resume ends the stretch at the end of the resume sequence's last
//!   digit (RFC 4733: its start plus its final duration, on the event's end
//!   packet or once no update came for a quarter second; in band: the end of
//!   the detector's last block holding it), so the resume tones are muted
//!   too; an API or SIP resume at the moment it arrives;
//! - digits inside a stretch, and the digits of the pause and resume
//!   sequences themselves, are not kept in the recording's `dtmf`; in-band
//!   digits are only used for the sequences, never stored.
//!
//! Digits of a sequence must each start within [`SEQUENCE_GAP_MS`] of the
//! previous one, on the same leg. Memory: at most [`PAUSES_MAX`] stretches a
//! call (a resume beyond that is refused: the call stays paused).

use std::collections::VecDeque;

use crate::call::meta::{Pause, PauseBy};

/// Digits of a sequence start at most this long after the previous one.
pub const SEQUENCE_GAP_MS: i64 = 4000;
/// Most stretches kept for one call.
pub const PAUSES_MAX: usize = 4096;
/// Longest DTMF sequence matched.
pub const SEQUENCE_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    from: i64,
    to: Option<i64>,
    by: PauseBy,
    from_fixed: bool,
    to_fixed: bool,
}

/// A resume whose last digit is still sounding: the stretch ends when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Closing {
    pub(super) channel: usize,
    /// End of the digit as known so far.
    pub(super) end: i64,
    /// When (engine time, timeline position) it was last heard of.
    pub(super) heard: i64,
}

#[derive(Debug, Default, Clone)]
struct DigitSeq {
    /// Recent digits of one leg: the digit, its start, its index in the call's `dtmf`.
    digits: VecDeque<(char, i64, Option<usize>)>,
}

/// What a digit completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    /// The pause sequence: pause from the start of its first digit.
    Pause { from: i64 },
    /// The resume sequence (its last digit is the one just given).
    Resume,
}

/// One call's pause state. See the module documentation.
#[derive(Debug, Default, Clone)]
pub(super) struct PauseState {
    spans: Vec<Span>,
    pub(super) closing: Option<Closing>,
    seq: [DigitSeq; 2],
    hidden: Vec<usize>,
    /// The leg whose DTMF paused the call: only its digits resume it (the
    /// other party keys the card number, and a card holding the resume
    /// sequence, or a `#` after it, must not resume the recording). None
    /// for a pause by the API or SIP: a resume sequence from either leg.
    paused_on: Option<usize>,
}

/// The digits a DTMF sequence setting may hold.
pub fn is_dtmf_sequence(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= SEQUENCE_MAX
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
}

impl PauseState {
    /// Paused, and not about to resume.
    pub(super) fn is_paused(&self) -> bool {
        self.closing.is_none() && self.spans.last().is_some_and(|s| s.to.is_none())
    }

    /// Whether what comes now is muted (paused, or a resume waiting for its
    /// last digit to end).
    pub(super) fn muting(&self) -> bool {
        self.spans.last().is_some_and(|s| s.to.is_none())
    }

    /// Pause from `at`. False if already paused. A resume waiting for its
    /// last digit to end is called off instead (the call stays paused).
    pub(super) fn pause(&mut self, at: i64, by: PauseBy) -> bool {
        if self.closing.take().is_some() {
            return true;
        }
        if self.muting() {
            return false;
        }
        if by != PauseBy::Dtmf {
            self.paused_on = None;
        }
        self.spans.push(Span {
            from: at,
            to: None,
            by,
            from_fixed: false,
            to_fixed: false,
        });
        true
    }

    /// Resume at `at`. False if not paused (or the stretch limit is reached:
    /// the call then stays paused).
    pub(super) fn resume(&mut self, at: i64) -> bool {
        if !self.muting() || self.spans.len() >= PAUSES_MAX {
            return false;
        }
        self.closing = None;
        self.paused_on = None;
        if let Some(s) = self.spans.last_mut() {
            s.to = Some(at.max(s.from));
        }
        true
    }

    /// Resume when the digit now sounding on `channel` ends.
    pub(super) fn resume_after_digit(&mut self, channel: usize, end: i64, now: i64) {
        if self.muting() {
            self.closing = Some(Closing {
                channel,
                end,
                heard: now,
            });
        }
    }

    /// The digit a resume waits for sounds until at least `end`; `last`:
    /// it has ended there.
    pub(super) fn digit_goes_on(&mut self, channel: usize, end: i64, now: i64, last: bool) {
        if let Some(c) = self.closing.as_mut().filter(|c| c.channel == channel) {
            c.end = c.end.max(end);
            c.heard = now;
            if last {
                let end = c.end;
                self.resume(end);
            }
        }
    }

    /// A resume waiting for a digit not heard of for `quiet` ends where the
    /// digit was last known to end.
    pub(super) fn settle(&mut self, now: i64, quiet: i64) {
        if let Some(c) = self.closing {
            if now.saturating_sub(c.heard) >= quiet {
                self.resume(c.end);
            }
        }
    }

    /// A new digit began on `channel` at `start`: a resume waiting on that
    /// leg's previous digit takes that one as ended.
    pub(super) fn digit_began(&mut self, channel: usize, start: i64) {
        if let Some(c) = self.closing.filter(|c| c.channel == channel) {
            self.resume(c.end.min(start));
        }
    }

    /// A digit (RFC 4733 or in-band) began on `channel` at `start`; `index`:
    /// its entry in the call's `dtmf`. Matches the pause sequence while
    /// recording, the resume sequence while paused. `gap`: the most a
    /// sequence's digits may be apart (timeline samples).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn digit(
        &mut self,
        channel: usize,
        digit: char,
        start: i64,
        index: Option<usize>,
        pause_seq: &str,
        resume_seq: &str,
        gap: i64,
    ) -> Option<Trigger> {
        self.digit_began(channel, start);
        let muting = self.muting();
        let seq = &mut self.seq[channel.min(1)];
        if seq
            .digits
            .back()
            .is_some_and(|(_, s, _)| start - *s > gap || *s > start)
        {
            seq.digits.clear();
        }
        if seq.digits.len() >= SEQUENCE_MAX {
            seq.digits.pop_front();
        }
        seq.digits.push_back((digit, start, index));
        let want = if muting { resume_seq } else { pause_seq };
        if want.is_empty() || !is_dtmf_sequence(want) {
            return None;
        }
        if muting && self.paused_on.is_some_and(|c| c != channel.min(1)) {
            return None; // not the leg that paused
        }
        let n = want.chars().count();
        if seq.digits.len() < n {
            return None;
        }
        let tail = seq.digits.iter().skip(seq.digits.len() - n);
        if !tail.clone().map(|d| d.0).eq(want.chars()) {
            return None;
        }
        let first = tail.clone().next().map_or(start, |d| d.1);
        for (_, _, i) in tail {
            if let Some(i) = i {
                self.hidden.push(*i);
            }
        }
        seq.digits.clear();
        if muting {
            return Some(Trigger::Resume);
        }
        // Paused by this leg: digits either leg keyed before do not count
        // towards the resume.
        self.seq[1 - channel.min(1)].digits.clear();
        self.paused_on = Some(channel.min(1));
        Some(Trigger::Pause { from: first })
    }

    /// Whether a digit whose `dtmf` entry is `index` and which started at
    /// `start` is dropped from the recording.
    pub(super) fn hides(&self, index: usize, start: i64) -> bool {
        self.hidden.contains(&index)
            || self
                .spans
                .iter()
                .any(|s| start >= s.from && s.to.is_none_or(|t| start < t))
    }

    /// Put the stretches' ends not yet fixed on millisecond boundaries of the
    /// WAV (frame 0 at `origin`) and never before `flushed`, the first frame
    /// not yet written. Called before each write.
    pub(super) fn fix(&mut self, origin: i64, rate: u32, flushed: i64) {
        let r = i64::from(rate);
        let whole_ms = r % 1000 == 0;
        let down = |p: i64| {
            if whole_ms {
                origin + (p - origin).div_euclid(r / 1000) * (r / 1000)
            } else {
                p
            }
        };
        let up = |p: i64| {
            if whole_ms {
                origin + (p - origin + r / 1000 - 1).div_euclid(r / 1000) * (r / 1000)
            } else {
                p
            }
        };
        for s in &mut self.spans {
            if !s.from_fixed {
                let f = down(s.from);
                s.from = if f < flushed { up(flushed) } else { f };
                s.from_fixed = true;
            }
            if let (Some(t), false) = (s.to, s.to_fixed) {
                s.to = Some(up(t.max(flushed)).max(s.from));
                s.to_fixed = true;
            }
        }
    }

    /// Zero the frames of interleaved stereo `frames` (first frame at `at`)
    /// that lie in a stretch.
    pub(super) fn mute(&self, at: i64, frames: &mut [i16]) {
        let end = at + (frames.len() / 2) as i64;
        for s in self.spans.iter().rev() {
            let to = s.to.unwrap_or(i64::MAX);
            if to <= at {
                break; // stretches are in order: the rest are written
            }
            let (a, b) = (s.from.max(at), to.min(end));
            if a < b {
                let (i, j) = (((a - at) * 2) as usize, ((b - at) * 2) as usize);
                frames[i..j].fill(0);
            }
        }
    }

    /// The stretches for the JSON: frame 0 at `origin`, `frames` written.
    pub(super) fn meta(&self, origin: i64, rate: u32, frames: u64) -> Vec<Pause> {
        let r = i64::from(rate.max(1));
        let end = frames as i64;
        self.spans
            .iter()
            .filter_map(|s| {
                let from = (s.from - origin).clamp(0, end);
                let to = s.to.map_or(end, |t| (t - origin).clamp(0, end));
                (to > from).then(|| Pause {
                    from_ms: from * 1000 / r,
                    to_ms: (to * 1000 + r - 1) / r,
                    by: s.by,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: i64 = 4 * 8000;

    fn key(p: &mut PauseState, ch: usize, digits: &str, at: i64) -> Vec<Option<Trigger>> {
        digits
            .chars()
            .enumerate()
            .map(|(i, d)| p.digit(ch, d, at + i as i64 * 1600, Some(i), "*1", "*2", GAP))
            .collect()
    }

    #[test]
    fn sequences_pause_and_resume_per_leg() {
        let mut p = PauseState::default();
        // Interleaved legs do not make a sequence.
        assert_eq!(p.digit(0, '*', 0, None, "*1", "*2", GAP), None);
        assert_eq!(p.digit(1, '1', 100, None, "*1", "*2", GAP), None);
        assert!(!p.is_paused());
        let t = key(&mut p, 1, "9*1", 8000);
        assert_eq!(t[2], Some(Trigger::Pause { from: 9600 }));
        assert!(p.pause(9600, PauseBy::Dtmf));
        assert!(p.is_paused());
        // While paused only the resume sequence counts, and only from the
        // leg that paused: the other party keys the card number, which may
        // hold the resume sequence (before, it resumed the recording).
        assert_eq!(key(&mut p, 1, "*1", 20000), vec![None, None]);
        assert_eq!(key(&mut p, 0, "4*2", 30000), vec![None, None, None]);
        assert!(p.is_paused());
        assert_eq!(key(&mut p, 1, "*2", 40000)[1], Some(Trigger::Resume));
    }

    /// Digits the other leg keyed just before the pause do not count towards
    /// a resume; a pause by the API (no leg) is resumed from either leg.
    #[test]
    fn a_resume_counts_only_digits_of_the_pausing_leg_after_the_pause() {
        let mut p = PauseState::default();
        assert_eq!(key(&mut p, 0, "*", 0), vec![None]);
        assert_eq!(
            key(&mut p, 1, "*1", 1000)[1],
            Some(Trigger::Pause { from: 1000 })
        );
        assert!(p.pause(1000, PauseBy::Dtmf));
        // Leg 0's '*' before the pause and a '2' now: no resume.
        assert_eq!(key(&mut p, 0, "2", 2000), vec![None]);
        assert!(p.is_paused());
        assert!(p.resume(5000));
        assert!(p.pause(9000, PauseBy::Api));
        assert_eq!(key(&mut p, 0, "*2", 10000)[1], Some(Trigger::Resume));
    }

    #[test]
    fn digits_too_far_apart_are_no_sequence() {
        let mut p = PauseState::default();
        assert_eq!(p.digit(0, '*', 0, None, "*1", "*2", GAP), None);
        assert_eq!(p.digit(0, '1', GAP + 1, None, "*1", "*2", GAP), None);
        assert_eq!(p.digit(0, '*', GAP + 2, None, "*1", "*2", GAP), None);
        assert_eq!(
            p.digit(0, '1', GAP + 3, None, "*1", "*2", GAP),
            Some(Trigger::Pause { from: GAP + 2 })
        );
    }

    #[test]
    fn api_states_and_pending_resume() {
        let mut p = PauseState::default();
        assert!(!p.resume(10));
        assert!(p.pause(10, PauseBy::Api));
        assert!(!p.pause(20, PauseBy::Api));
        p.resume_after_digit(0, 100, 100);
        assert!(!p.is_paused());
        p.digit_goes_on(0, 160, 150, false);
        p.settle(300, 250);
        assert!(!p.is_paused());
        p.settle(400, 250);
        assert_eq!(
            p.meta(0, 8000, 10_000),
            vec![Pause {
                from_ms: 1,
                to_ms: 20,
                by: PauseBy::Api
            }]
        );
        assert!(!p.resume(500));
    }

    #[test]
    fn fix_aligns_to_ms_and_never_before_what_is_written() {
        let mut p = PauseState::default();
        p.pause(1003, PauseBy::Sip);
        p.fix(-5, 8000, 0);
        // 1003 + 5 = 1008 frames: exactly 126 ms.
        p.resume(2001);
        p.fix(-5, 8000, 1500);
        assert_eq!(
            p.meta(-5, 8000, 4000),
            vec![Pause {
                from_ms: 126,
                to_ms: 251,
                by: PauseBy::Sip
            }]
        );
        // Asked for before the written part: starts at the first frame not written (rounded up).
        p.pause(100, PauseBy::Api);
        p.fix(-5, 8000, 3001);
        p.resume(3500);
        p.fix(-5, 8000, 3001);
        let m = p.meta(-5, 8000, 4000);
        assert_eq!(
            m[1],
            Pause {
                from_ms: 376,
                to_ms: 439,
                by: PauseBy::Api
            }
        );
        let mut frames = vec![1i16; 2 * 1000];
        p.mute(3000, &mut frames);
        let zeros: Vec<usize> = (0..1000).filter(|i| frames[2 * i] == 0).collect();
        assert_eq!(zeros.first(), Some(&3));
        assert_eq!(zeros.len(), (3507 - 3003) as usize);
        assert!(zeros.iter().all(|i| frames[2 * i + 1] == 0));
    }

    #[test]
    fn digits_in_a_stretch_and_of_the_sequences_are_hidden() {
        let mut p = PauseState::default();
        let t = key(&mut p, 0, "5*1", 0);
        assert_eq!(t[2], Some(Trigger::Pause { from: 1600 }));
        p.pause(1600, PauseBy::Dtmf);
        assert!(!p.hides(0, 0));
        assert!(p.hides(1, 1600) && p.hides(2, 3200));
        assert!(p.hides(77, 90_000));
        p.resume(100_000);
        assert!(!p.hides(78, 100_000));
    }
}
