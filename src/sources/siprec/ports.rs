//! RTP ports for SIPREC streams: which port a new stream gets, and what
//! becomes of a port after its call.
//!
//! In: `rtp_ports` (the range), requests for a port per new stream, ports
//! given back when a call ends, the time. Out: ports bound for the media
//! receive thread ([`crate::sources::siprec::media`]), each with its stream's
//! [`Admission`]; a small state file in the spool directory.
//!
//! Why it matters: an SBC keeps sending a stream for a while after its call
//! ended for us (late packets after the BYE; after a crash or restart of
//! pbx-edge, whole streams of calls it no longer knows). A port handed out
//! again at once would put that audio into a new call. So:
//! - **Cooling-off** ([`COOL_OFF`], 60 s): the pool ([`PortPool`]) hands out
//!   the least recently used port, starting at a random place in the range
//!   (even ports only; the next port up stays free for RTCP). A port given
//!   back goes to the end of the line: it comes back after every other free
//!   port, so at least 60 s later whenever the range has room for the ports
//!   in use plus those freed in 60 s (`rtp_ports` of 10,000 ports: 5,000
//!   streams, e.g. 1,000 calls in progress and 25 ending a second). Only when
//!   the range is too small for the load is a port handed out earlier
//!   (counted in [`PortPool::early_reuses`], warned).
//! - **Retired ports** ([`RETIRE_FOR`], 10 s): a port given back stays open
//!   that long, its datagrams counted (`unknown_port`) and dropped, then it is
//!   closed. If the pool hands it out before (a small range), the open socket
//!   carries the new stream.
//! - **Restarts**: the pool keeps the ports in use or cooling off in
//!   `<spool dir>/.rtp-ports` (port numbers and a time, nothing else): a
//!   snapshot, replaced atomically at most once a second, and after it one
//!   line `+PORT` appended for every port handed out since, so a SIGKILL
//!   loses none (the page cache keeps what was written; it is not fsynced: a
//!   power cut may lose the last second, and with it those ports' cooling).
//!   The next run (within [`STATE_MAX_AGE`]) puts those ports at the end of
//!   the line and keeps them open, retired, for [`COOL_OFF`]: streams of calls
//!   the restart killed are counted as `unknown_port`, never recorded into new
//!   calls. Without the file (first start, or it is old) the pool starts at a
//!   random place, so a new run rarely meets ports the previous one used.
//!
//! A port is never handed to two streams at once: [`PortPool`] is shared by
//! every SIPREC instance of the daemon (a reload moving the listener).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sources::siprec::admission::{Admission, StreamOrigin};
use crate::sources::siprec::media::{MediaControl, MediaPort};
use crate::sources::siprec::srtp::SrtpStream;

/// A port given back is not handed out again within this time while the
/// range allows.
pub const COOL_OFF: Duration = Duration::from_secs(60);

/// A port given back stays open this long, counting what still arrives.
pub const RETIRE_FOR: Duration = Duration::from_secs(10);

/// A state file older than this is ignored at start.
pub const STATE_MAX_AGE: Duration = Duration::from_secs(3600);

/// The state file's name in the spool directory.
pub(crate) const STATE_FILE: &str = ".rtp-ports";

/// At most this many ports of the previous run are kept open at start.
const MAX_QUARANTINE: usize = 4096;

/// How often the state file is written at most.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The pool of RTP ports (even ports of the range), least recently used first.
///
/// The range can change while ports are out (a reload of `rtp_ports`): new
/// calls take ports of the new range, a port of the old range given back by
/// a call in progress leaves the pool.
#[derive(Debug)]
pub struct PortPool {
    range: RangeInclusive<u16>,
    /// Free ports in the order they are handed out, each with when it was
    /// given back (None: not used since the pool began).
    free: VecDeque<(u16, Option<Instant>)>,
    taken: HashSet<u16>,
    /// Ports the previous run had in use or cooling off (to keep open at start).
    quarantine: Vec<u16>,
    /// Ports handed out before their cooling-off ended.
    early_reuses: u64,
    state: Option<PathBuf>,
    /// The state file, open for appending `+PORT` lines (after a snapshot).
    append: Option<std::fs::File>,
    dirty: bool,
}

/// A port pool shared by the SIPREC instances of one daemon.
pub type SharedPorts = Arc<Mutex<PortPool>>;

fn even_ports(range: &RangeInclusive<u16>) -> impl Iterator<Item = u16> {
    let start = range.start().saturating_add(range.start() % 2);
    (start..=*range.end()).step_by(2)
}

/// The even ports of `range` not in `skip`, from a random one on, round.
fn fresh_ports(range: &RangeInclusive<u16>, skip: &HashSet<u16>) -> Vec<u16> {
    let mut v: Vec<u16> = even_ports(range).filter(|p| !skip.contains(p)).collect();
    if !v.is_empty() {
        let k = fastrand::usize(..v.len());
        v.rotate_left(k);
    }
    v
}

impl PortPool {
    /// A pool starting at a random even port of `range`, without a state file.
    pub fn new(range: RangeInclusive<u16>) -> Self {
        PortPool {
            free: fresh_ports(&range, &HashSet::new())
                .into_iter()
                .map(|p| (p, None))
                .collect(),
            range,
            taken: HashSet::new(),
            quarantine: Vec::new(),
            early_reuses: 0,
            state: None,
            append: None,
            dirty: false,
        }
    }

    /// A pool that keeps its state in `path`: the ports the previous run
    /// wrote there (if it is younger than [`STATE_MAX_AGE`] at `wall`) cool
    /// off from `now` and are handed out last.
    pub(crate) fn restore(
        range: RangeInclusive<u16>,
        path: &Path,
        wall: SystemTime,
        now: Instant,
    ) -> Self {
        let mut pool = PortPool::new(range);
        let recent = read_state(path, wall).unwrap_or_default();
        let recent: Vec<u16> = recent
            .into_iter()
            .filter(|p| pool.range.contains(p) && p % 2 == 0)
            .collect();
        if !recent.is_empty() {
            let set: HashSet<u16> = recent.iter().copied().collect();
            pool.free.retain(|(p, _)| !set.contains(p));
            pool.free.extend(recent.iter().map(|p| (*p, Some(now))));
            pool.quarantine = recent.into_iter().take(MAX_QUARANTINE).collect();
        }
        pool.state = Some(path.to_path_buf());
        // A snapshot now: the previous run's ports stay recorded (they cool
        // off from now), and ports handed out from now on are appended.
        pool.dirty = true;
        if let Err(e) = pool.save(now, wall) {
            tracing::warn!(path = %path.display(), "RTP port state not written: {e}");
        }
        pool
    }

    /// Hand out ports of `range` from now on (ports out stay out until given back).
    pub(crate) fn set_range(&mut self, range: RangeInclusive<u16>) {
        if range == self.range {
            return;
        }
        let old: Vec<(u16, Option<Instant>)> = self
            .free
            .drain(..)
            .filter(|(p, _)| range.contains(p))
            .collect();
        let known: HashSet<u16> = old
            .iter()
            .map(|(p, _)| *p)
            .chain(self.taken.iter().copied())
            .collect();
        // Ports never used first, then the used ones, least recently used first.
        self.free = fresh_ports(&range, &known)
            .into_iter()
            .map(|p| (p, None))
            .chain(old)
            .collect();
        self.range = range;
        self.dirty = true;
    }

    /// The least recently used free port.
    pub fn take(&mut self, now: Instant) -> Option<u16> {
        let (p, freed) = self.free.pop_front()?;
        if freed.is_some_and(|t| now.saturating_duration_since(t) < COOL_OFF) {
            self.early_reuses += 1;
        }
        self.taken.insert(p);
        self.dirty = true;
        if let Some(f) = self.append.as_mut() {
            if f.write_all(format!("+{p}\n").as_bytes()).is_err() {
                self.append = None;
            }
        }
        Some(p)
    }

    /// `p` is free again (at `now`): it is handed out after every other free port.
    pub(crate) fn give_back(&mut self, p: u16, now: Instant) {
        if self.taken.remove(&p) && self.range.contains(&p) && p % 2 == 0 {
            self.free.push_back((p, Some(now)));
        }
        self.dirty = true;
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Ports handed out and not given back.
    pub fn in_use(&self) -> usize {
        self.taken.len()
    }

    /// Ports handed out before [`COOL_OFF`] had passed since they were given back.
    pub fn early_reuses(&self) -> u64 {
        self.early_reuses
    }

    /// The ports of the previous run to keep open (once; empty afterwards).
    pub(crate) fn take_quarantine(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.quarantine)
    }

    /// Ports in use or given back less than [`COOL_OFF`] ago.
    fn recent(&self, now: Instant) -> Vec<u16> {
        let mut v: Vec<u16> = self.taken.iter().copied().collect();
        v.extend(
            self.free
                .iter()
                .filter(|(_, t)| t.is_some_and(|t| now.saturating_duration_since(t) < COOL_OFF))
                .map(|(p, _)| *p),
        );
        v.sort_unstable();
        v
    }

    /// Whether [`Self::save`] would write the state file.
    pub(crate) fn unsaved(&self) -> bool {
        self.dirty && self.state.is_some()
    }

    /// Write the state file if anything changed (temp file + rename).
    pub(crate) fn save(&mut self, now: Instant, wall: SystemTime) -> std::io::Result<()> {
        let Some(path) = self.state.clone() else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let secs = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let ports: Vec<String> = self.recent(now).iter().map(u16::to_string).collect();
        let text = format!(
            "# pbx-edge: RTP ports in use or cooling off, for the next start\nsaved_at={secs}\nports={}\n",
            ports.join(",")
        );
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = crate::sys::create_private_file(&tmp)?;
            f.write_all(text.as_bytes())?;
        }
        self.append = None;
        std::fs::rename(&tmp, &path)?;
        self.append = std::fs::OpenOptions::new().append(true).open(&path).ok();
        self.dirty = false;
        Ok(())
    }
}

/// The ports in the state file at `path`, if it is younger than [`STATE_MAX_AGE`].
fn read_state(path: &Path, wall: SystemTime) -> Option<Vec<u16>> {
    parse_state(&std::fs::read_to_string(path).ok()?, wall)
}

/// The ports named by a state file's text (`saved_at=`, `ports=` and `+port`
/// lines; anything else ignored), sorted and without duplicates, if it was
/// saved no longer than [`STATE_MAX_AGE`] before `wall`. Never panics.
pub fn parse_state(text: &str, wall: SystemTime) -> Option<Vec<u16>> {
    let mut saved_at = None;
    let mut ports = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("saved_at=") {
            saved_at = v.trim().parse::<u64>().ok();
        } else if let Some(v) = line.strip_prefix("ports=") {
            ports.extend(v.split(',').filter_map(|p| p.trim().parse::<u16>().ok()));
        } else if let Some(p) = line.strip_prefix('+').and_then(|p| p.trim().parse().ok()) {
            // Handed out after the snapshot.
            ports.push(p);
        }
    }
    let saved = UNIX_EPOCH.checked_add(Duration::from_secs(saved_at?))?;
    let age = wall.duration_since(saved).unwrap_or(Duration::ZERO);
    ports.sort_unstable();
    ports.dedup();
    (age <= STATE_MAX_AGE).then_some(ports)
}

/// The ports of one SIPREC instance: takes them from the shared pool, binds
/// them for the media thread, retires them after their call.
pub struct RtpPorts {
    pool: SharedPorts,
    media: MediaControl,
    /// Ports of ours still open in the media thread without a stream, and
    /// until when.
    retired: HashMap<u16, (SocketAddr, Instant)>,
    last_save: Option<Instant>,
    warned_early: u64,
}

impl RtpPorts {
    /// `quarantine_ip`: where to keep the previous run's ports open (the
    /// listen address).
    pub fn new(
        pool: SharedPorts,
        media: MediaControl,
        quarantine_ip: IpAddr,
        now: Instant,
    ) -> RtpPorts {
        let mut me = RtpPorts {
            pool,
            media,
            retired: HashMap::new(),
            last_save: None,
            warned_early: 0,
        };
        let ports = me
            .pool
            .lock()
            .map(|mut p| p.take_quarantine())
            .unwrap_or_default();
        let mut kept = 0;
        for p in ports {
            let local = SocketAddr::new(quarantine_ip, p);
            if let Ok(port) = MediaPort::bind(local, Arc::default(), Admission::retired()) {
                me.retired.insert(p, (port.local, now + COOL_OFF));
                me.media.add(port);
                kept += 1;
            }
        }
        if kept > 0 {
            tracing::info!(
                ports = kept,
                "SIPREC: RTP ports of the previous run kept closed to new calls for {}s (what arrives on them is counted, not recorded)",
                COOL_OFF.as_secs()
            );
        }
        me
    }

    /// A port on `ip` for a new stream, read by the media thread from now
    /// on; None when the range is used up.
    pub fn open(
        &mut self,
        ip: IpAddr,
        last_rtp: Arc<AtomicI64>,
        decrypt: Option<Box<SrtpStream>>,
        admission: Admission,
        now: Instant,
    ) -> Option<SocketAddr> {
        // A port we cannot bind (taken by another program, or still open as
        // a retired port elsewhere): the next one.
        for _ in 0..16 {
            let p = self.pool.lock().ok()?.take(now)?;
            self.warn_early_reuse();
            let local = SocketAddr::new(ip, p);
            if let Some((at, _)) = self.retired.get(&p).copied() {
                if at == local {
                    // Still open here: it carries the new stream.
                    self.retired.remove(&p);
                    self.media.reuse(local, decrypt, last_rtp, admission);
                    return Some(local);
                }
            }
            match MediaPort::bind(local, last_rtp.clone(), Admission::retired()) {
                Ok(mut port) => {
                    port.decrypt = decrypt;
                    port.admission = admission;
                    let local = port.local;
                    self.media.add(port);
                    return Some(local);
                }
                Err(e) => {
                    tracing::debug!(port = p, "RTP port not bindable: {e}");
                    if let Ok(mut g) = self.pool.lock() {
                        g.give_back(p, now);
                    }
                }
            }
        }
        None
    }

    /// The stream on `local` ended: the port is retired (open, counting, for
    /// [`RETIRE_FOR`]) and cools off in the pool.
    pub fn close(&mut self, local: SocketAddr, now: Instant) {
        self.media.retire(local);
        if let Some((old, _)) = self.retired.insert(local.port(), (local, now + RETIRE_FOR)) {
            if old != local {
                self.media.remove(old);
            }
        }
        if let Ok(mut g) = self.pool.lock() {
            g.give_back(local.port(), now);
        }
    }

    /// The SRC re-offered the stream on `local`.
    pub fn set_origin(&self, local: SocketAddr, origin: StreamOrigin) {
        self.media.set_origin(local, origin);
    }

    /// The stream on `local` is decrypted with other keys from now on.
    pub fn set_decrypt(&self, local: SocketAddr, decrypt: Option<Box<SrtpStream>>) {
        self.media.set_decrypt(local, decrypt);
    }

    /// When [`Self::tick`] has work next: a retired port's time is up, or,
    /// while ports are retired, the pool's changed state is due to be
    /// written (at most once a second; a state file that cannot be written
    /// is not retried every second for good). `None`: no work until
    /// something changes. Linear in the retired ports: asked only between
    /// calls, not per message.
    pub fn next_due(&self) -> Option<Instant> {
        let retire = self.retired.values().map(|(_, until)| *until).min();
        let unsaved = retire.is_some() && self.pool.lock().is_ok_and(|p| p.unsaved());
        let save = unsaved.then(|| self.last_save.map_or_else(Instant::now, |t| t + SAVE_EVERY));
        retire.into_iter().chain(save).min()
    }

    /// Close retired ports whose time is up; write the pool's state file
    /// (at most once a second).
    pub fn tick(&mut self, now: Instant, wall: SystemTime) {
        let due: Vec<u16> = self
            .retired
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            if let Some((local, _)) = self.retired.remove(&p) {
                self.media.remove(local);
            }
        }
        if self
            .last_save
            .is_some_and(|t| now.saturating_duration_since(t) < SAVE_EVERY)
        {
            return;
        }
        self.last_save = Some(now);
        if let Ok(mut g) = self.pool.lock() {
            if let Err(e) = g.save(now, wall) {
                tracing::debug!("RTP port state not written: {e}");
            }
        }
    }

    fn warn_early_reuse(&mut self) {
        let n = self.pool.lock().map(|g| g.early_reuses()).unwrap_or(0);
        if n > self.warned_early {
            if self.warned_early == 0 || n >= self.warned_early * 2 {
                tracing::warn!(
                    early = n,
                    "SIPREC: an RTP port was handed out again less than {}s after its call ended; widen rtp_ports",
                    COOL_OFF.as_secs()
                );
            }
            self.warned_early = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_all(p: &mut PortPool, now: Instant) -> Vec<u16> {
        std::iter::from_fn(|| p.take(now)).collect()
    }

    #[test]
    fn hands_out_every_even_port_once_from_a_random_start() {
        let now = Instant::now();
        let mut starts = HashSet::new();
        for _ in 0..50 {
            let mut p = PortPool::new(20001..=20100);
            assert_eq!(p.available(), 50);
            let got = take_all(&mut p, now);
            let mut sorted = got.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (20002..=20100).step_by(2).collect::<Vec<_>>());
            // Round from the start: consecutive even ports.
            assert!(got
                .windows(2)
                .all(|w| w[1] == w[0] + 2 || (w[0] == 20100 && w[1] == 20002)));
            starts.insert(got[0]);
        }
        // 50 pools over 50 places: not all at the start of the range.
        assert!(starts.len() > 5, "starts {starts:?}");
    }

    #[test]
    fn a_port_given_back_comes_back_last() {
        let t0 = Instant::now();
        let mut p = PortPool::new(30000..=30009);
        let a = p.take(t0).unwrap();
        p.give_back(a, t0);
        // Every other port first, then a.
        let got = take_all(&mut p, t0);
        assert_eq!(got.len(), 5);
        assert_eq!(*got.last().unwrap(), a);
        assert!(!got[..4].contains(&a));
        // a came back at once: the range is too small for a cooling-off.
        assert_eq!(p.early_reuses(), 1);
        p.give_back(a, t0);
        assert_eq!(p.take(t0 + COOL_OFF), Some(a));
        assert_eq!(p.early_reuses(), 1);
    }

    #[test]
    fn range_change_keeps_ports_out_and_drops_old_ones() {
        let now = Instant::now();
        let mut p = PortPool::new(20000..=20005);
        let (a, b) = (p.take(now).unwrap(), p.take(now).unwrap());
        // The new range overlaps: a port still out is not handed out again.
        p.set_range(20002..=20009);
        assert_eq!(p.in_use(), 2);
        let got: HashSet<u16> = take_all(&mut p, now).into_iter().collect();
        let want: HashSet<u16> = [20002u16, 20004, 20006, 20008]
            .into_iter()
            .filter(|x| *x != a && *x != b)
            .collect();
        assert_eq!(got, want);
        // Given back: a port outside the new range leaves the pool.
        p.give_back(a, now);
        p.give_back(b, now);
        let back = [a, b].iter().filter(|x| **x >= 20002).count();
        assert_eq!(p.available(), back);
        assert_eq!(p.in_use(), want.len());
        // A port never handed out is not taken in.
        p.give_back(20100, now);
        assert_eq!(p.available(), back);
    }

    #[test]
    fn the_state_file_puts_the_previous_runs_ports_last_and_in_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut first = PortPool::restore(40000..=40099, &path, wall, now);
        let used: Vec<u16> = (0..6).map(|_| first.take(now).unwrap()).collect();
        // Two calls ended, one still going when the run was killed.
        first.give_back(used[0], now);
        first.give_back(used[1], now);
        first.save(now, wall).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("saved_at="), "{text}");
        // Two more calls after the last snapshot, then the kill: appended.
        let late: Vec<u16> = (0..4).map(|_| first.take(now).unwrap()).collect();
        let used: Vec<u16> = used.into_iter().chain(late).collect();
        drop(first);
        // Restart a few seconds later.
        let mut second =
            PortPool::restore(40000..=40099, &path, wall + Duration::from_secs(5), now);
        let mut q = second.take_quarantine();
        q.sort_unstable();
        let mut want = used.clone();
        want.sort_unstable();
        assert_eq!(q, want);
        let order = take_all(&mut second, now);
        assert_eq!(order.len(), 50);
        let tail: HashSet<u16> = order[40..].iter().copied().collect();
        assert_eq!(tail, used.iter().copied().collect::<HashSet<_>>());
        // An old state file is ignored.
        let mut late = PortPool::restore(40000..=40099, &path, wall + STATE_MAX_AGE * 2, now);
        assert!(late.take_quarantine().is_empty());
        // A garbled one too.
        std::fs::write(&path, "saved_at=x\nports=1,2,three\n").unwrap();
        let mut bad = PortPool::restore(40000..=40099, &path, wall, now);
        assert!(bad.take_quarantine().is_empty());
        assert_eq!(bad.available(), 50);
    }

    /// Found by the `rtp_port_state` fuzz target: a `saved_at` beyond what
    /// a SystemTime holds made the start panic (a crash loop on a damaged
    /// state file); now the file is ignored.
    #[test]
    fn absurd_saved_at_is_ignored_not_a_panic() {
        let wall = SystemTime::now();
        for v in ["18446744073709551615", "9223372036854775808"] {
            let text = format!("saved_at={v}\nports=40000,40001\n+40002\n");
            assert_eq!(parse_state(&text, wall), None, "{v}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, "saved_at=18446744073709551615\nports=40000\n").unwrap();
        let mut pool = PortPool::restore(40000..=40099, &path, wall, Instant::now());
        assert!(pool.take_quarantine().is_empty());
        // Every even port of the range (RTP; RTCP on the odd one) free.
        assert_eq!(pool.available(), 50);
        // A good file still reads.
        let secs = wall.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let good = format!("saved_at={secs}\nports=40001,40000\n+40000\n+7\n");
        assert_eq!(parse_state(&good, wall), Some(vec![7, 40000, 40001]));
    }
}
