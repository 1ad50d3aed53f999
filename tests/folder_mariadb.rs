//! The folder source with FreePBX's `asteriskcdrdb.cdr` table in a real
//! MariaDB server (Debian `mariadb-server`), started by the test in a temp
//! directory on a random loopback port: rows matched by recordingfile,
//! uniqueid and linkedid, a row inserted after the recording settled, a
//! recording without a row, and the database going down and coming back.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pbx_core::audio::wav::WavWriter;
use pbx_edge::cdr::mysql::MysqlStore;
use pbx_edge::cdr::PbxTimeZone;
use pbx_edge::folder::{FolderScanner, FolderSettings};
use pbx_testgen::audio::speechlike;
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(5);
const PASSWORD: &str = "s3cr@t:pw";
const PASSWORD_URL: &str = "s3cr%40t%3Apw";

/// FreePBX's asteriskcdrdb.cdr (FreePBX 15/16 `cdr` module schema).
const FREEPBX_CDR: &str = "
CREATE TABLE `cdr` (
  `calldate` datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  `clid` varchar(80) NOT NULL DEFAULT '',
  `src` varchar(80) NOT NULL DEFAULT '',
  `dst` varchar(80) NOT NULL DEFAULT '',
  `dcontext` varchar(80) NOT NULL DEFAULT '',
  `channel` varchar(80) NOT NULL DEFAULT '',
  `dstchannel` varchar(80) NOT NULL DEFAULT '',
  `lastapp` varchar(80) NOT NULL DEFAULT '',
  `lastdata` varchar(80) NOT NULL DEFAULT '',
  `duration` int(11) NOT NULL DEFAULT 0,
  `billsec` int(11) NOT NULL DEFAULT 0,
  `disposition` varchar(45) NOT NULL DEFAULT '',
  `amaflags` int(11) NOT NULL DEFAULT 0,
  `accountcode` varchar(20) NOT NULL DEFAULT '',
  `uniqueid` varchar(32) NOT NULL DEFAULT '',
  `userfield` varchar(255) NOT NULL DEFAULT '',
  `did` varchar(50) NOT NULL DEFAULT '',
  `recordingfile` varchar(255) NOT NULL DEFAULT '',
  `cnum` varchar(80) NOT NULL DEFAULT '',
  `cnam` varchar(80) NOT NULL DEFAULT '',
  `outbound_cnum` varchar(80) NOT NULL DEFAULT '',
  `outbound_cnam` varchar(80) NOT NULL DEFAULT '',
  `dst_cnam` varchar(80) NOT NULL DEFAULT '',
  `linkedid` varchar(32) NOT NULL DEFAULT '',
  `peeraccount` varchar(80) NOT NULL DEFAULT '',
  `sequence` int(11) NOT NULL DEFAULT 0,
  KEY `calldate` (`calldate`),
  KEY `dst` (`dst`),
  KEY `accountcode` (`accountcode`),
  KEY `uniqueid` (`uniqueid`),
  KEY `did` (`did`),
  KEY `recordingfile` (`recordingfile`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
";

struct Maria {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn os_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Maria {
    /// A fresh server, or `None` (skipped) when mariadb-server is not
    /// installed and CI is unset.
    fn start(tmp: &Path) -> Option<Maria> {
        if !Path::new("/usr/sbin/mariadbd").exists() || !which("mariadb-install-db") {
            assert!(
                std::env::var_os("CI").is_none(),
                "mariadb-server is not installed (apt-get install mariadb-server)"
            );
            eprintln!("mariadb-server not installed: test skipped");
            return None;
        }
        let dir = tmp.join("mariadb");
        fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                &format!("--datadir={}", dir.join("data").display()),
                &format!("--user={}", os_user()),
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "mariadb-install-db failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut m = Maria {
            dir,
            port,
            child: None,
        };
        m.run();
        m.sql(&format!(
            "CREATE DATABASE asteriskcdrdb; USE asteriskcdrdb; {FREEPBX_CDR}
             CREATE USER 'freepbxuser'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';
             GRANT SELECT ON asteriskcdrdb.* TO 'freepbxuser'@'127.0.0.1';"
        ));
        Some(m)
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }

    fn run(&mut self) {
        let child = Command::new("/usr/sbin/mariadbd")
            .args([
                "--no-defaults",
                &format!("--datadir={}", self.dir.join("data").display()),
                &format!("--socket={}", self.sock().display()),
                &format!("--pid-file={}", self.dir.join("pid").display()),
                &format!("--port={}", self.port),
                "--bind-address=127.0.0.1",
                &format!("--user={}", os_user()),
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--skip-name-resolve",
            ])
            .stdout(Stdio::null())
            .stderr(File::create(self.dir.join("err.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            let ok = Command::new("mariadb")
                .args(["--no-defaults", "-u", "root", "-S"])
                .arg(self.sock())
                .args(["-e", "SELECT 1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "mariadbd did not start: {}",
                fs::read_to_string(self.dir.join("err.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: a clean shutdown.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }

    fn sql(&self, sql: &str) {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-u", "root", "-S"])
            .arg(self.sock())
            .args(["-e", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!(
            "mysql://freepbxuser:{PASSWORD_URL}@127.0.0.1:{}/asteriskcdrdb",
            self.port
        )
    }
}

impl Drop for Maria {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn write_wav(path: &Path, channels: u16, samples: &[i16]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = WavWriter::new(File::create(path).unwrap(), 8000, channels).unwrap();
    w.write_samples(samples).unwrap();
    w.finalize().unwrap();
}

fn json_of(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn by_call(s: &FolderScanner, call_id: &str) -> Value {
    let c = s
        .written
        .iter()
        .map(|c| json_of(&c.json))
        .find(|j| j["call_id"] == call_id)
        .unwrap_or_else(|| panic!("no recording of {call_id}"));
    c
}

#[allow(clippy::too_many_arguments)]
fn insert(
    m: &Maria,
    calldate: &str,
    src: &str,
    dst: &str,
    dcontext: &str,
    disp: &str,
    duration: i64,
    billsec: i64,
    uniqueid: &str,
    linkedid: &str,
    did: &str,
    recordingfile: &str,
    cnum: &str,
    outbound_cnum: &str,
) {
    m.sql(&format!(
        "INSERT INTO asteriskcdrdb.cdr (calldate, clid, src, dst, dcontext, channel, dstchannel, \
         lastapp, lastdata, duration, billsec, disposition, amaflags, uniqueid, did, recordingfile, \
         cnum, cnam, outbound_cnum, linkedid, sequence) VALUES ('{calldate}', '\"Alice\" <{src}>', \
         '{src}', '{dst}', '{dcontext}', 'PJSIP/{src}-00000001', 'PJSIP/trunk-00000002', 'Dial', \
         'PJSIP/{dst}@trunk,300', {duration}, {billsec}, '{disp}', 3, '{uniqueid}', '{did}', \
         '{recordingfile}', '{cnum}', 'Alice', '{outbound_cnum}', '{linkedid}', 1)"
    ));
}

#[test]
fn freepbx_cdr_table_in_mariadb() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut m) = Maria::start(tmp.path()) else {
        return;
    };
    let root = tmp.path().join("monitor");
    let spool = tmp.path().join("spool");
    let day = root.join("2026/11/24");

    // A: outbound, split legs; two rows of the call (linkedid), the
    // answered one names the recording file.
    let a = "out-5551234-1001-20261124-101502-1700000000.123";
    write_wav(
        &day.join(format!("{a}-in.wav")),
        1,
        &speechlike(1, 1000, 8000),
    );
    write_wav(
        &day.join(format!("{a}-out.wav")),
        1,
        &speechlike(2, 1000, 8000),
    );
    insert(
        &m,
        "2026-11-24 10:15:02",
        "1001",
        "5551234",
        "from-internal",
        "NO ANSWER",
        5,
        0,
        "1700000000.124",
        "1700000000.123",
        "",
        "",
        "1001",
        "5550100",
    );
    insert(
        &m,
        "2026-11-24 10:15:02",
        "1001",
        "5551234",
        "from-internal",
        "ANSWERED",
        60,
        57,
        "1700000000.123",
        "1700000000.123",
        "",
        &format!("{a}.wav"),
        "1001",
        "5550100",
    );
    // B: inbound stereo; its row is inserted after the file settled and is
    // found by linkedid (the agent's leg has its own uniqueid).
    let b = "external-200-5559876-20261124-110000-1700000050.7";
    write_wav(&day.join(format!("{b}.wav")), 2, &speechlike(3, 2000, 8000));
    // C: no row ever: goes with the file name after cdr_wait.
    let c = "internal-1002-1001-20261124-120000-1700000090.1";
    write_wav(&day.join(format!("{c}.wav")), 2, &speechlike(4, 2000, 8000));

    let settings = FolderSettings {
        cdr_wait: Duration::from_secs(30),
        timezone: PbxTimeZone::Fixed(3600),
        ..FolderSettings::default()
    };
    let mut s = FolderScanner::new(&root, &spool, "pbx-test", None, SETTLE, settings).unwrap();
    s.set_cdr_store(Box::new(
        MysqlStore::new(&m.url(), "cdr", PbxTimeZone::Fixed(3600)).unwrap(),
    ));
    let t0 = Instant::now();
    assert_eq!(s.scan(t0), 0);
    assert_eq!(s.scan(t0 + SETTLE), 1, "A has its row: {:?}", s.errors);
    assert!(s.cdr_down().is_none());
    let ja = by_call(&s, "1700000000.123");
    assert_eq!(ja["cdr"], true);
    assert_eq!(ja["from"]["number"], "1001");
    assert_eq!(ja["from"]["name"], "Alice");
    assert_eq!(ja["to"]["number"], "5551234");
    assert_eq!(ja["direction"], "outbound");
    assert_eq!(ja["disposition"], "ANSWERED");
    assert_eq!(ja["started_at"], "2026-11-24T09:15:02.000Z");
    assert_eq!(ja["answered_at"], "2026-11-24T09:15:05.000Z");
    assert_eq!(ja["ended_at"], "2026-11-24T09:16:02.000Z");

    // B's row arrives late (after it settled), within cdr_wait.
    assert_eq!(
        s.scan(t0 + SETTLE + Duration::from_secs(10)),
        0,
        "B and C wait"
    );
    insert(
        &m,
        "2026-11-24 11:00:00",
        "5559876",
        "200",
        "ext-queues",
        "ANSWERED",
        30,
        25,
        "1700000050.8",
        "1700000050.7",
        "5551000",
        "",
        "5559876",
        "",
    );
    assert_eq!(s.scan(t0 + SETTLE + Duration::from_secs(11)), 1);
    let jb = by_call(&s, "1700000050.8");
    assert_eq!(jb["direction"], "inbound", "DID set: inbound");
    assert_eq!(jb["did"], "5551000");
    assert_eq!(jb["from"]["number"], "5559876");
    assert_eq!(jb["started_at"], "2026-11-24T10:00:00.000Z");

    // C: cdr_wait over, no row: the file name's details.
    assert_eq!(s.scan(t0 + SETTLE + Duration::from_secs(31)), 1);
    let jc = by_call(&s, "1700000090.1");
    assert_eq!(jc["cdr"], false);
    assert_eq!(jc["direction"], "internal");
    assert_eq!(jc["from"]["number"], "1001");
    assert_eq!(jc["started_at"], "2026-11-24T11:00:00.000Z");

    // The database goes down: a new recording waits (up to cdr_wait), the
    // source says why, and the password is not in the message.
    m.stop();
    let d = "out-5550000-1001-20261124-130000-1700000100.1";
    write_wav(&day.join(format!("{d}.wav")), 2, &speechlike(5, 1000, 8000));
    let t1 = t0 + Duration::from_secs(100);
    assert_eq!(s.scan(t1), 0);
    assert_eq!(s.scan(t1 + SETTLE), 0);
    assert_eq!(
        s.scan(t1 + SETTLE + Duration::from_secs(20)),
        0,
        "not lost, not taken without its row within cdr_wait"
    );
    let why = s.cdr_down().expect("store reported down").to_string();
    assert!(why.contains("CDR database"), "{why}");
    assert!(
        !why.contains(PASSWORD) && !why.contains(PASSWORD_URL),
        "{why}"
    );
    assert!(s
        .errors
        .iter()
        .all(|e| !e.contains(PASSWORD) && !e.contains(PASSWORD_URL)));
    // Back up, with D's row: taken with it.
    m.run();
    insert(
        &m,
        "2026-11-24 13:00:00",
        "1001",
        "5550000",
        "from-internal",
        "ANSWERED",
        10,
        8,
        "1700000100.1",
        "1700000100.1",
        "",
        &format!("{d}.wav"),
        "1001",
        "5550100",
    );
    assert_eq!(
        s.scan(t1 + SETTLE + Duration::from_secs(21)),
        1,
        "{:?}",
        s.errors
    );
    assert!(s.cdr_down().is_none());
    let jd = by_call(&s, "1700000100.1");
    assert_eq!(jd["cdr"], true);
    assert_eq!(jd["disposition"], "ANSWERED");
}
