//! Finishing recordings off the engine thread (live sources).
//!
//! In: recordings whose call ended ([`Job`]: the open recording and the
//! call's metadata), from [`RecordingDir::end`](super::RecordingDir).
//! Out: one [`Done`] per job, collected by the engine thread
//! ([`Finisher::try_done`]), which counts it and reports the Call-ID as
//! closed (for SIPREC: the BYE is answered only then).
//!
//! Why: finishing a pair is mostly waiting for the disk (the WAV fsynced and
//! read back for its SHA-256, the JSON written and fsynced, the directory
//! fsynced: about 3.4 ms a pair). Done on the engine thread, 1,000 calls
//! ending together waited for each other and held up the audio of the calls
//! still running. Here [`WORKERS`] threads finish pairs side by side, so
//! their fsyncs share the file system's journal commits.
//!
//! Promises:
//! - Each job is finished exactly as the engine thread would have finished it
//!   ([`super::finish_recording`], the one code path for both), its tap
//!   told after the pair is durable.
//! - Dropping the finisher finishes every job already handed over before it
//!   returns (the workers drain the queue, then are joined): a stop never
//!   leaves a `.part` that a clean run would have finished.
//! - Idle workers block on the queue: no wake-ups without work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pbx_core::call::CallMeta;

use super::{defer_recording, finish_recording, Done, OpenRecording};

/// Threads finishing pairs at once.
pub(super) const WORKERS: usize = 4;

/// A recording to finish.
pub(super) struct Job {
    pub(super) rec: OpenRecording,
    pub(super) meta: CallMeta,
}

pub(super) struct Finisher {
    jobs: Option<mpsc::Sender<Box<Job>>>,
    done: mpsc::Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// Call-IDs of the recordings handed over and not collected yet, with
    /// how many each (a Call-ID may carry more than one recording).
    pending: HashMap<String, usize>,
    /// A stop ran out of time: the jobs not started yet are left for the
    /// next start ([`defer_recording`]).
    defer: Arc<AtomicBool>,
}

impl Finisher {
    /// Starts `workers` threads (at least one).
    pub(super) fn new(workers: usize) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Box<Job>>();
        let (done_tx, done) = mpsc::channel();
        let rx = Arc::new(Mutex::new(rx));
        let defer = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let rx = Arc::clone(&rx);
            let done_tx = done_tx.clone();
            let defer = Arc::clone(&defer);
            let h = std::thread::Builder::new()
                .name(format!("pbx-finish-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job.
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let done = if defer.load(Ordering::Relaxed) {
                        defer_recording(job.rec, &job.meta)
                    } else {
                        finish_recording(job.rec, &job.meta)
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                })?;
            handles.push(h);
        }
        Ok(Finisher {
            jobs: Some(jobs),
            done,
            workers: handles,
            pending: HashMap::new(),
            defer,
        })
    }

    /// The jobs not started yet are left for the next start from now on.
    pub(super) fn defer_rest(&self) {
        self.defer.store(true, Ordering::Relaxed);
    }

    /// Hands a recording over; on failure (no worker left) it is given back.
    pub(super) fn submit(&mut self, job: Box<Job>) -> Result<(), Box<Job>> {
        let call_id = job.rec.call_id.clone();
        match self.jobs.as_ref().map(|tx| tx.send(job)) {
            Some(Ok(())) => {
                *self.pending.entry(call_id).or_default() += 1;
                Ok(())
            }
            Some(Err(mpsc::SendError(job))) => Err(job),
            None => unreachable!("the job queue lives as long as the finisher"),
        }
    }

    /// Whether a recording of this Call-ID is being finished.
    pub(super) fn has(&self, call_id: &str) -> bool {
        self.pending.contains_key(call_id)
    }

    /// Recordings handed over and not collected yet.
    pub(super) fn pending(&self) -> usize {
        self.pending.values().sum()
    }

    /// A finished recording, waiting for one when `block` (and any is
    /// pending); `None` when none is ready (or none pending).
    pub(super) fn try_done(&mut self, block: bool) -> Option<Done> {
        if self.pending.is_empty() {
            return None;
        }
        let d = if block {
            self.done.recv().ok()?
        } else {
            self.done.try_recv().ok()?
        };
        Some(self.collected(d))
    }

    /// A finished recording, waiting at most `wait` (the caller knows one
    /// is pending). `Disconnected`: no worker is left.
    pub(super) fn try_done_within(
        &mut self,
        wait: Duration,
    ) -> Result<Done, mpsc::RecvTimeoutError> {
        let d = self.done.recv_timeout(wait)?;
        Ok(self.collected(d))
    }

    fn collected(&mut self, d: Done) -> Done {
        if let Some(n) = self.pending.get_mut(&d.call_id) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&d.call_id);
            }
        }
        d
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        // The workers finish what is queued, then see the queue closed.
        self.jobs = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
