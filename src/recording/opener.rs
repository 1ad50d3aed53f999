//! Creating recordings' files off the engine thread (live sources).
//!
//! In: recordings that begin ([`OpenJob`]: the start sidecar to write, the
//! `.part` to create with its WAV header, the answered-call note to drop),
//! from [`RecordingDir`](super::RecordingDir)'s `begin`. Out: one
//! [`Opened`] per job, in the order given, taken in by the engine thread
//! ([`Opener::try_opened`], [`Opener::wait_for`]).
//!
//! Why: creating a file allocates an inode, which a busy file system makes
//! slow (ext4 looks through its inode bitmaps, and skips inodes freed a
//! moment ago: `recently_deleted`, where a spool that deletes every
//! delivered recording spends its time). Done on the engine thread, 2,000
//! calls beginning at once held the audio of every call for seconds (the
//! engine 4 s behind its media, BENCHMARKS.md). Here one thread creates the
//! files in the order the calls began, while the engine goes on; the audio
//! of a recording whose file is not ready yet waits in memory
//! ([`super::OpenRecording`]), and is written through as soon as it is.
//!
//! Promises:
//! - Jobs are done one at a time, in the order submitted: a call's answered
//!   note goes only after its start sidecar is written (an answered call
//!   always leaves a recording after a crash), and results come back in
//!   submission order.
//! - Dropping the opener finishes the jobs already handed over (the thread
//!   drains its queue, then is joined).
//! - Idle, the thread blocks on its queue: no wake-ups without work.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use pbx_core::call::CallKey;
use serde_json::Value;

use super::{
    create_private_file, crypt::Keyring, mark_unsynced, write_small_file, AnsweredCalls, PartWriter,
};

/// The files of a recording that begins.
pub(super) struct OpenJob {
    pub(super) key: CallKey,
    pub(super) sidecar: PathBuf,
    pub(super) sidecar_doc: Value,
    pub(super) part: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) sample_rate: u32,
    pub(super) seal: Option<Arc<Keyring>>,
    /// The call's answered note, dropped once its start sidecar is written.
    pub(super) call_id: String,
    pub(super) answered: AnsweredCalls,
}

/// A recording's `.part`, open with its header written, or why not.
pub(super) struct Opened {
    pub(super) key: CallKey,
    pub(super) writer: std::io::Result<PartWriter>,
}

impl OpenJob {
    /// Writes the start sidecar, creates the `.part` with its header (handed
    /// to the kernel at once: a crash a moment later still leaves a valid,
    /// empty WAV), and drops the answered note: the start sidecar now
    /// stands for the call. When the sidecar cannot be written (a full
    /// disk), the note stays: it still stands for the call (see
    /// [`super::RecordingDir`]'s `end`). The one way a recording's files
    /// are made, on the engine thread or the opener's.
    pub(super) fn run(self) -> Opened {
        let noted = write_small_file(&self.sidecar, &self.sidecar_doc, self.seal.as_deref());
        let writer = create_private_file(&self.part)
            .and_then(|f| PartWriter::new(f, self.sample_rate, self.seal.as_deref()));
        match (&noted, &writer) {
            (Ok(()), _) => self.answered.forget(&self.call_id),
            // The `.part` stands for the call: the note becomes its sidecar.
            (Err(_), Ok(_)) => self.answered.move_to(&self.call_id, &self.sidecar),
            (Err(_), Err(_)) => {}
        }
        if writer.is_err() {
            // No header reached it: not a recording (the sidecar or the
            // note stands for the call).
            let _ = std::fs::remove_file(&self.part);
        }
        mark_unsynced(&self.dir);
        Opened {
            key: self.key,
            writer,
        }
    }
}

pub(super) struct Opener {
    jobs: Option<mpsc::Sender<Box<OpenJob>>>,
    opened: mpsc::Receiver<Opened>,
    worker: Option<JoinHandle<()>>,
    /// Jobs handed over and not taken in yet.
    pending: usize,
}

impl Opener {
    pub(super) fn new() -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Box<OpenJob>>();
        let (tx, opened) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("pbx-open".into())
            .spawn(move || {
                for job in rx {
                    if tx.send((*job).run()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Opener {
            jobs: Some(jobs),
            opened,
            worker: Some(worker),
            pending: 0,
        })
    }

    /// Hands a job over; on failure (the thread is gone) it is given back.
    pub(super) fn submit(&mut self, job: Box<OpenJob>) -> Result<(), Box<OpenJob>> {
        match self.jobs.as_ref().map(|tx| tx.send(job)) {
            Some(Ok(())) => {
                self.pending += 1;
                Ok(())
            }
            Some(Err(mpsc::SendError(job))) => Err(job),
            None => unreachable!("the job queue lives as long as the opener"),
        }
    }

    /// Jobs handed over and not taken in yet.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// The next result, waiting for it when `block`; `None` when none is
    /// ready (or none pending, or the thread is gone).
    pub(super) fn try_opened(&mut self, block: bool) -> Option<Opened> {
        if self.pending == 0 {
            return None;
        }
        let o = if block {
            self.opened.recv().ok()?
        } else {
            self.opened.try_recv().ok()?
        };
        self.pending -= 1;
        Some(o)
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}
