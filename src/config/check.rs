//! The schema walk: the tree of values → the typed [`Config`], every
//! problem collected with its origin (unknown keys with a suggestion, wrong
//! types, values out of range, contradictions).

use super::*;

// The schema walk
// ---------------------------------------------------------------------------

pub(super) const SECTIONS: &[&str] = &[
    "agent",
    "spool",
    "health",
    "recording",
    "cloud",
    "stream",
    "roles",
    "sources",
    "filter",
    "log",
];
pub(super) const SOURCES: &[&str] = &["siprec", "sniff", "folder", "hep"];

/// A table being read: which keys were asked for, to report the rest as unknown.
pub(super) struct Sec<'t> {
    pub(super) path: String,
    pub(super) table: Option<&'t Table>,
    pub(super) known: Vec<&'static str>,
}

impl<'t> Sec<'t> {
    /// The section `name` of `parent` (a missing one reads as empty; one that
    /// is not a table is reported and reads as empty).
    pub(super) fn child(parent: &Sec<'t>, name: &str, errs: &mut Vec<ConfigError>) -> Sec<'t> {
        let path = if parent.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", parent.path)
        };
        let table = match parent.table.and_then(|t| t.get(name)) {
            None => None,
            Some(Entry {
                node:
                    Node {
                        kind: Kind::Table(t),
                        ..
                    },
                ..
            }) => Some(t),
            Some(e) => {
                errs.push(ConfigError::Invalid {
                    origin: e.node.origin.clone(),
                    key: path.clone(),
                    message: format!("expected a table ([{path}]), {}", e.node.found()),
                });
                None
            }
        };
        Sec {
            path,
            table,
            known: Vec::new(),
        }
    }

    pub(super) fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    pub(super) fn get(&mut self, key: &'static str) -> Option<&'t Node> {
        self.known.push(key);
        self.table?.get(key).map(|e| &e.node)
    }

    /// Where `key` was set, for problems between two keys.
    pub(super) fn origin(&self, key: &str) -> Origin {
        self.table
            .and_then(|t| t.get(key))
            .map(|e| e.node.origin.clone())
            .unwrap_or(Origin::Default)
    }

    /// Read `key` with `conv`; on success store it in `target`, else report.
    pub(super) fn field<T>(
        &mut self,
        errs: &mut Vec<ConfigError>,
        key: &'static str,
        target: &mut T,
        conv: impl FnOnce(&Node) -> Result<T, String>,
    ) {
        if let Some(n) = self.get(key) {
            match conv(n) {
                Ok(v) => *target = v,
                Err(message) => errs.push(ConfigError::Invalid {
                    origin: n.origin.clone(),
                    key: self.key(key),
                    message,
                }),
            }
        }
    }

    /// Report every key that was not asked for; note the known ones in `keys`.
    pub(super) fn finish(self, errs: &mut Vec<ConfigError>, keys: &mut Vec<String>, what: &str) {
        if what == "key" {
            keys.extend(self.known.iter().map(|k| self.key(k)));
        }
        let Some(t) = self.table else { return };
        for (k, e) in t {
            if self.known.contains(&k.as_str()) {
                continue;
            }
            let key = if self.path.is_empty() {
                k.clone()
            } else {
                format!("{}.{k}", self.path)
            };
            let mut message = format!("unknown {what}");
            match suggest(k, &self.known) {
                Some(s) => message.push_str(&format!(" (did you mean `{s}`?)")),
                None => message.push_str(&format!(" (known: {})", self.known.join(", "))),
            }
            errs.push(ConfigError::Invalid {
                origin: e.key_origin.clone(),
                key,
                message,
            });
        }
    }
}

/// Whether listeners on `a` and `b` cannot both bind: the same port, and
/// the same address or either one the wildcard (0.0.0.0 or ::). Every
/// listener here (health, SIPREC, SIPREC TLS, HEP) binds TCP, where Linux
/// refuses such a pair even with SO_REUSEADDR; SIPREC and HEP bind UDP as
/// well, where the same holds.
fn same_tcp_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The problem of `this` (the key reported) clashing with `other_key`
/// at `other`: `both` when the two are the same address.
fn clash(this: SocketAddr, other_key: &str, other: SocketAddr, both: &str) -> String {
    if this == other {
        format!("{this} is used by both {both}")
    } else {
        format!(
            "{this} clashes with {other_key} {other} (port {} on the same or every address)",
            this.port()
        )
    }
}

/// `sources.siprec.tls_*` once `tls_listen` is set: certificate and key
/// given and usable (loaded as the listener would), no port clashes.
pub(super) fn check_siprec_tls(
    s: &Sec<'_>,
    sr: &SiprecConfig,
    tls: SocketAddr,
    listen_ok: bool,
    ports_ok: bool,
    health: &SocketAddr,
    errs: &mut Vec<ConfigError>,
) {
    let mut problem = |key: &str, message: String| {
        let o = s.origin(key);
        let (origin, key) = if o == Origin::Default {
            (s.origin("tls_listen"), "tls_listen")
        } else {
            (o, key)
        };
        errs.push(ConfigError::Invalid {
            origin,
            key: s.key(key),
            message,
        });
    };
    if listen_ok && same_tcp_port(tls, sr.listen) {
        problem(
            "tls_listen",
            format!("{tls} clashes with sources.siprec.listen {} (TCP); TLS needs its own port, usually 5061", sr.listen),
        );
    }
    if same_tcp_port(tls, *health) {
        problem(
            "tls_listen",
            format!("{tls} clashes with health.listen {health}"),
        );
    }
    if ports_ok && sr.rtp_ports.contains(&tls.port()) {
        problem(
            "tls_listen",
            format!(
                "port {} is inside sources.siprec.rtp_ports ({}-{})",
                tls.port(),
                sr.rtp_ports.start(),
                sr.rtp_ports.end()
            ),
        );
    }
    let (Some(cert), Some(key)) = (&sr.tls_cert, &sr.tls_key) else {
        for (k, v) in [("tls_cert", &sr.tls_cert), ("tls_key", &sr.tls_key)] {
            if v.is_none() {
                errs.push(ConfigError::Invalid {
                    origin: s.origin("tls_listen"),
                    key: s.key(k),
                    message: "must be set when sources.siprec.tls_listen is (a PEM file)".into(),
                });
            }
        }
        return;
    };
    if !sr.enabled {
        return;
    }
    match crate::sys::tls::server_config(cert, key, sr.tls_client_ca.as_deref()) {
        Ok(_) => {}
        // The key is often readable only by the service user: checked when
        // the listener starts (and by check-config run as that user).
        Err(e) if e.permission_denied && e.key == "tls_key" => {}
        Err(e) => problem(e.key, e.message),
    }
}

/// Why the secret file (a token) `key` of section `s` names cannot be
/// read, at its line, if it is set and cannot: missing, a directory, or
/// another error; not when only its permissions keep this user out (it is
/// often readable by the service user alone: checked when the daemon uses
/// it, and by check-config run as that user).
fn unreadable_secret(s: &Sec<'_>, key: &str, p: &Path) -> Option<ConfigError> {
    if p.as_os_str().is_empty() {
        return None;
    }
    let message = match std::fs::File::open(p).and_then(|f| f.metadata()) {
        Ok(m) if m.is_dir() => format!("{} is a directory, not a file", p.display()),
        Ok(_) => {
            // (The token is the file's first line.)
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(p).unwrap_or_default());
            if !text.lines().next().unwrap_or("").trim().is_empty() {
                return None;
            }
            format!(
                "{} holds no token (its first line is empty): requests would go without Authorization",
                p.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return None,
        Err(e) => format!(
            "cannot read {}: {e} (recordings would be kept but not delivered)",
            p.display()
        ),
    };
    Some(ConfigError::Invalid {
        origin: s.origin(key),
        key: s.key(key),
        message,
    })
}

// --- the sections ---

pub(super) fn check(
    root: &Node,
    cfg: &mut Config,
    errs: &mut Vec<ConfigError>,
    keys: &mut Vec<String>,
) {
    let Kind::Table(t) = &root.kind else {
        return;
    };
    let mut top = Sec {
        path: String::new(),
        table: Some(t),
        known: SECTIONS.to_vec(),
    };

    let mut s = Sec::child(&top, "agent", errs);
    s.field(errs, "id", &mut cfg.agent.id, to_agent_id);
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "spool", errs);
    s.field(errs, "dir", &mut cfg.spool.dir, to_nonempty_path);
    s.field(
        errs,
        "max_size",
        &mut cfg.spool.max_size,
        |n| match to_size(n)? {
            0 => Err("must be above 0".into()),
            v => Ok(v),
        },
    );
    s.field(errs, "retention", &mut cfg.spool.retention, to_duration);
    // Encryption at rest: the key files are read here, once, so a missing
    // or malformed key is an error at its line (check-config, start,
    // SIGHUP), never a failure later while recording.
    use crate::spoolfile::crypt::{Keyring, SpoolKey, CREDENTIAL_NAME};
    let mut current: Option<SpoolKey> = None;
    s.field(
        errs,
        "encryption_key_file",
        &mut cfg.spool.encryption_key_file,
        |n| {
            let p = to_path(n)?;
            if !p.as_os_str().is_empty() {
                current = Some(SpoolKey::from_file(&p).map_err(|e| e.to_string())?);
            }
            Ok(p)
        },
    );
    let mut old: Vec<SpoolKey> = Vec::new();
    s.field(errs, "old_key_files", &mut cfg.spool.old_key_files, |n| {
        let v = to_string_list(n)?;
        let mut paths = Vec::new();
        for p in v {
            let p = PathBuf::from(p);
            old.push(SpoolKey::from_file(&p).map_err(|e| e.to_string())?);
            paths.push(p);
        }
        Ok(paths)
    });
    if current.is_none() && cfg.spool.encryption_key_file.as_os_str().is_empty() {
        // A systemd credential stands in for the key file.
        if let Some(d) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = Path::new(&d).join(CREDENTIAL_NAME);
            if p.is_file() {
                match SpoolKey::from_file(&p) {
                    Ok(k) => current = Some(k),
                    Err(e) => errs.push(ConfigError::Invalid {
                        // `encryption_key_file = ""` where written, else
                        // the variable that pointed at the credential.
                        origin: match s.origin("encryption_key_file") {
                            Origin::Default => Origin::Env {
                                var: "CREDENTIALS_DIRECTORY".into(),
                            },
                            o => o,
                        },
                        key: "spool.encryption_key_file".into(),
                        message: format!("systemd credential: {e}"),
                    }),
                }
            }
        }
    }
    match current {
        Some(k) => cfg.spool.keys = Some(std::sync::Arc::new(Keyring::new(k, old))),
        None if !old.is_empty() => errs.push(ConfigError::Invalid {
            origin: s.origin("old_key_files"),
            key: "spool.old_key_files".into(),
            message: "old keys without spool.encryption_key_file: set the current key".into(),
        }),
        None => cfg.spool.keys = None,
    }
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "health", errs);
    s.field(errs, "listen", &mut cfg.health.listen, to_socket_addr);
    let health_origin = s.origin("listen");
    if let Some(nets) = allow_list_of(&mut s, errs, "control_allow") {
        cfg.health.control_allow = nets;
    }
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "recording", errs);
    let r = &mut cfg.recording;
    s.field(errs, "sample_rate", &mut r.sample_rate, to_sample_rate);
    s.field(errs, "min_duration", &mut r.min_duration, to_duration);
    s.field(errs, "rtp_timeout", &mut r.rtp_timeout, |n| {
        to_duration_in(n, Duration::from_secs(1), Duration::from_secs(86_400))
    });
    s.field(errs, "jitter", &mut r.jitter, |n| {
        to_duration_in(n, Duration::ZERO, Duration::from_secs(10))
    });
    s.field(errs, "pause_dtmf", &mut r.pause_dtmf, to_dtmf_sequence);
    s.field(errs, "resume_dtmf", &mut r.resume_dtmf, to_dtmf_sequence);
    if !r.pause_dtmf.is_empty() && r.pause_dtmf == r.resume_dtmf {
        errs.push(ConfigError::Invalid {
            origin: s.origin("resume_dtmf"),
            key: s.key("resume_dtmf"),
            message: format!(
                "is the same sequence as recording.pause_dtmf (\"{}\"): a call could never be resumed by it",
                r.resume_dtmf
            ),
        });
    }
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "cloud", errs);
    let c = &mut cfg.cloud;
    s.field(errs, "url", &mut c.url, to_cloud_url);
    s.field(errs, "protocol", &mut c.protocol, to_protocol);
    s.field(errs, "audio_format", &mut c.audio_format, to_audio_format);
    s.field(errs, "token_file", &mut c.token_file, to_path);
    cfg.delivery_problems
        .extend(unreadable_secret(&s, "token_file", &c.token_file));
    s.field(errs, "max_parallel", &mut c.max_parallel, |n| {
        to_u32_in(n, 1..=64)
    });
    s.field(errs, "ca_file", &mut c.ca_file, to_opt_path);
    s.field(errs, "chunk_size", &mut c.chunk_size, |n| {
        let v = to_size(n)?;
        if !(64 << 10..=1 << 30).contains(&v) {
            return Err(format!("must be between 64KiB and 1GiB, found {v} bytes"));
        }
        Ok(v)
    });
    s.field(errs, "bandwidth_limit", &mut c.bandwidth_limit, to_size);
    s.field(errs, "client_cert", &mut c.client_cert, to_opt_path);
    s.field(errs, "client_key", &mut c.client_key, to_opt_path);
    s.field(errs, "proxy", &mut c.proxy, to_string);
    s.field(errs, "upload_window", &mut c.upload_window, |n| {
        let v = to_string(n)?;
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<UploadWindow>()
            .map(Some)
            .map_err(|_| format!("`{v}` is not a window like \"22:00-06:00\""))
    });
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "stream", errs);
    let st = &mut cfg.stream;
    s.field(errs, "enabled", &mut st.enabled, to_bool);
    let mut url_ok = true;
    s.field(errs, "url", &mut st.url, |n| {
        to_stream_url(n).inspect_err(|_| url_ok = false)
    });
    s.field(errs, "token_file", &mut st.token_file, to_path);
    cfg.delivery_problems
        .extend(unreadable_secret(&s, "token_file", &st.token_file));
    s.field(errs, "frame", &mut st.frame, |n| {
        to_duration_in(n, Duration::from_millis(20), Duration::from_secs(1))
    });
    s.field(errs, "max_lag", &mut st.max_lag, |n| {
        to_duration_in(n, Duration::from_secs(1), Duration::from_secs(3600))
    });
    if url_ok && st.enabled && st.url.is_empty() {
        let o = s.origin("url");
        let origin = if o == Origin::Default {
            s.origin("enabled")
        } else {
            o
        };
        errs.push(ConfigError::Invalid {
            origin,
            key: s.key("url"),
            message: "must be set when stream is enabled (wss://…)".into(),
        });
    }
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "roles", errs);
    let ro = &mut cfg.roles;
    s.field(errs, "internal_numbers", &mut ro.internal_numbers, |n| {
        let v = to_string_list(n)?;
        if let Some(p) = v.iter().find(|p| p.trim().is_empty() || p.trim() == "*") {
            return Err(format!("{} would make every number internal", quote(p)));
        }
        Ok(v)
    });
    s.field(errs, "extension_length", &mut ro.extension_length, |n| {
        let v = to_string(n)?;
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        let bad = || {
            format!(
                "{} is not a length range like \"2-5\" (or \"\" for none)",
                quote(v)
            )
        };
        let (lo, hi) = v.split_once('-').unwrap_or((v, v));
        let lo: usize = lo.trim().parse().map_err(|_| bad())?;
        let hi: usize = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi || hi > 15 {
            return Err(format!("{}: lengths from 1 to 15, low to high", quote(v)));
        }
        Ok(Some((lo, hi)))
    });
    s.field(errs, "agent_uris", &mut ro.agent_uris, to_string_list);
    s.field(errs, "trunks", &mut ro.trunks, |n| {
        to_string_list(n)?.iter().map(|t| parse_net(t)).collect()
    });
    s.finish(errs, keys, "key");

    let mut src = Sec::child(&top, "sources", errs);
    src.known = SOURCES.to_vec();

    let mut s = Sec::child(&src, "siprec", errs);
    let sr = &mut cfg.sources.siprec;
    s.field(errs, "enabled", &mut sr.enabled, to_bool);
    let mut listen_ok = true;
    s.field(errs, "listen", &mut sr.listen, |n| {
        to_socket_addr(n).inspect_err(|_| listen_ok = false)
    });
    let mut ports_ok = true;
    s.field(errs, "rtp_ports", &mut sr.rtp_ports, |n| {
        to_port_range(n).inspect_err(|_| ports_ok = false)
    });
    if let Some(nets) = allow_list(&mut s, errs) {
        sr.allow = nets;
    }
    s.field(errs, "max_calls", &mut sr.max_calls, |n| {
        to_u32_in(n, 1..=1_000_000)
    });
    let mut tls_ok = true;
    s.field(errs, "tls_listen", &mut sr.tls_listen, |n| {
        if matches!(&n.kind, Kind::Str(t) if t.trim().is_empty()) {
            return Ok(None);
        }
        to_socket_addr(n).map(Some).inspect_err(|_| tls_ok = false)
    });
    s.field(errs, "tls_cert", &mut sr.tls_cert, to_opt_path);
    s.field(errs, "tls_key", &mut sr.tls_key, to_opt_path);
    s.field(errs, "tls_client_ca", &mut sr.tls_client_ca, to_opt_path);
    s.field(errs, "tcp_idle_timeout", &mut sr.tcp_idle_timeout, |n| {
        to_duration_in(n, Duration::from_secs(1), Duration::from_secs(86_400))
    });
    s.field(
        errs,
        "tcp_message_timeout",
        &mut sr.tcp_message_timeout,
        |n| to_duration_in(n, Duration::from_secs(1), Duration::from_secs(600)),
    );
    if let (true, Some(tls)) = (tls_ok, sr.tls_listen) {
        check_siprec_tls(&s, sr, tls, listen_ok, ports_ok, &cfg.health.listen, errs);
    }
    if listen_ok && ports_ok && sr.rtp_ports.contains(&sr.listen.port()) {
        // At the key written in the file: `rtp_ports`, or `listen` when the
        // range is the built-in one.
        let ports_origin = s.origin("rtp_ports");
        let (origin, key, message) = if ports_origin != Origin::Default {
            (
                ports_origin,
                "rtp_ports",
                format!(
                    "contains the SIP port {} of sources.siprec.listen",
                    sr.listen.port()
                ),
            )
        } else {
            (
                s.origin("listen"),
                "listen",
                format!(
                    "port {} is inside sources.siprec.rtp_ports ({}-{})",
                    sr.listen.port(),
                    sr.rtp_ports.start(),
                    sr.rtp_ports.end()
                ),
            )
        };
        errs.push(ConfigError::Invalid {
            origin,
            key: s.key(key),
            message,
        });
    }
    let siprec_origin = s.origin("listen");
    let tls_origin = s.origin("tls_listen");
    if listen_ok && sr.enabled && same_tcp_port(sr.listen, cfg.health.listen) {
        let both = "health.listen and sources.siprec.listen";
        let (origin, key, message) = if siprec_origin != Origin::Default {
            (
                siprec_origin.clone(),
                s.key("listen"),
                clash(sr.listen, "health.listen", cfg.health.listen, both),
            )
        } else {
            (
                health_origin.clone(),
                "health.listen".to_string(),
                clash(cfg.health.listen, "sources.siprec.listen", sr.listen, both),
            )
        };
        errs.push(ConfigError::Invalid {
            origin,
            key,
            message,
        });
    }
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&src, "sniff", errs);
    let sn = &mut cfg.sources.sniff;
    s.field(errs, "enabled", &mut sn.enabled, to_bool);
    s.field(errs, "interface", &mut sn.interface, |n| {
        let v = to_string(n)?;
        if v.is_empty() {
            Err("must not be empty (\"any\" captures on all interfaces)".into())
        } else if v.len() > 15 || v.chars().any(|c| c.is_whitespace() || c == '/') {
            Err(format!("{} is not an interface name", quote(&v)))
        } else {
            Ok(v)
        }
    });
    // (Compiled, with libpcap, only for a capture that runs: a filter
    // left in a disabled section does not need the library.)
    let sniffing = sn.enabled;
    s.field(errs, "filter", &mut sn.filter, |n| {
        let v = to_string(n)?;
        if v.trim().is_empty() {
            return Ok(None);
        }
        if !sniffing {
            return Ok(Some(v));
        }
        crate::sys::bpf::compile_filter(&v)
            .map_err(|e| format!("not a valid capture filter (pcap syntax): {e}"))?;
        Ok(Some(v))
    });
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&src, "hep", errs);
    let h = &mut cfg.sources.hep;
    s.field(errs, "enabled", &mut h.enabled, to_bool);
    let mut hep_listen_ok = true;
    s.field(errs, "listen", &mut h.listen, |n| {
        to_socket_addr(n).inspect_err(|_| hep_listen_ok = false)
    });
    if let Some(nets) = allow_list(&mut s, errs) {
        h.allow = nets;
    }
    let siprec = &cfg.sources.siprec;
    let hep_origin = s.origin("listen");
    for (other, addr, on, other_origin) in [
        (
            "health.listen",
            Some(cfg.health.listen),
            true,
            &health_origin,
        ),
        (
            "sources.siprec.listen",
            Some(siprec.listen),
            siprec.enabled,
            &siprec_origin,
        ),
        (
            "sources.siprec.tls_listen",
            siprec.tls_listen,
            siprec.enabled,
            &tls_origin,
        ),
    ] {
        let Some(addr) = addr else { continue };
        if hep_listen_ok && h.enabled && on && same_tcp_port(h.listen, addr) {
            // At the key written in the file: this one, or the other
            // when sources.hep.listen is the built-in default.
            let both = format!("{other} and sources.hep.listen");
            let (origin, key, message) = if hep_origin != Origin::Default {
                (
                    hep_origin.clone(),
                    s.key("listen"),
                    clash(h.listen, other, addr, &both),
                )
            } else {
                (
                    other_origin.clone(),
                    other.to_string(),
                    clash(addr, "sources.hep.listen", h.listen, &both),
                )
            };
            errs.push(ConfigError::Invalid {
                origin,
                key,
                message,
            });
        }
    }
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&src, "folder", errs);
    let f = &mut cfg.sources.folder;
    s.field(errs, "enabled", &mut f.enabled, to_bool);
    let mut path_ok = true;
    s.field(errs, "path", &mut f.path, |n| {
        to_path(n).inspect_err(|_| path_ok = false)
    });
    s.field(errs, "cdr_csv", &mut f.cdr_csv, to_opt_path);
    s.field(errs, "settle", &mut f.settle, to_duration);
    s.field(errs, "watch", &mut f.watch, |n| {
        match to_string(n)?.as_str() {
            "auto" => Ok(FolderWatch::Auto),
            "inotify" => Ok(FolderWatch::Inotify),
            "poll" => Ok(FolderWatch::Poll),
            v => Err(format!(
                "{} is not one of \"auto\", \"inotify\", \"poll\"",
                quote(v)
            )),
        }
    });
    s.field(errs, "cdr_db_url_file", &mut f.cdr_db_url_file, to_opt_path);
    s.field(errs, "cdr_db_table", &mut f.cdr_db_table, |n| {
        let v = to_string(n)?;
        if valid_table(&v) {
            Ok(v)
        } else {
            Err(format!(
                "{} is not a table name (letters, digits, _)",
                quote(&v)
            ))
        }
    });
    s.field(errs, "cdr_csv_columns", &mut f.cdr_csv_columns, |n| {
        let v = to_string_list(n)?;
        if v.is_empty() {
            return Ok(CsvColumns::default());
        }
        CsvColumns::new(&v)
    });
    s.field(errs, "cdr_wait", &mut f.cdr_wait, |n| {
        to_duration_in(n, Duration::ZERO, Duration::from_secs(86_400))
    });
    s.field(errs, "utc_offset", &mut f.utc_offset, to_utc_offset);
    s.field(errs, "max_age", &mut f.max_age, to_duration);
    s.field(errs, "name_patterns", &mut f.name_patterns, |n| {
        let v = to_string_list(n)?;
        for p in &v {
            check_name_pattern(p)?;
        }
        Ok(v)
    });
    s.field(errs, "raw_stereo", &mut f.raw_stereo, |n| match &n.kind {
        Kind::Bool(true) => Ok(RawStereo::Stereo),
        Kind::Bool(false) => Ok(RawStereo::Mono),
        Kind::Str(v) if v == "auto" => Ok(RawStereo::Auto),
        _ => Err(format!("expected \"auto\", true or false, {}", n.found())),
    });
    s.field(
        errs,
        "caller_leg",
        &mut f.caller_leg_out,
        |n| match to_string(n)?.as_str() {
            "in" => Ok(false),
            "out" => Ok(true),
            v => Err(format!("{} is not a leg: \"in\" or \"out\"", quote(v))),
        },
    );
    s.field(errs, "leg_align", &mut f.leg_align, |n| {
        match to_string(n)?.as_str() {
            "end" => Ok(LegAlign::End),
            "start" => Ok(LegAlign::Start),
            v => Err(format!("{} is not \"end\" or \"start\"", quote(v))),
        }
    });
    s.field(
        errs,
        "inbound_contexts",
        &mut f.inbound_contexts,
        to_string_list,
    );
    s.field(
        errs,
        "outbound_contexts",
        &mut f.outbound_contexts,
        to_string_list,
    );
    s.field(
        errs,
        "internal_contexts",
        &mut f.internal_contexts,
        to_string_list,
    );
    s.field(
        errs,
        "after_delivery",
        &mut f.after_delivery,
        |n| match to_string(n)?.as_str() {
            "leave" => Ok(AfterDelivery::Leave),
            "move" => Ok(AfterDelivery::Move),
            "delete" => Ok(AfterDelivery::Delete),
            v => Err(format!(
                "{} is not one of \"leave\", \"move\", \"delete\"",
                quote(v)
            )),
        },
    );
    s.field(errs, "move_to", &mut f.move_to, to_opt_path);
    if f.after_delivery == AfterDelivery::Move {
        match &f.move_to {
            None => errs.push(ConfigError::Invalid {
                origin: s.origin("after_delivery"),
                key: s.key("move_to"),
                message: "must be set when after_delivery = \"move\"".into(),
            }),
            Some(m) if path_ok && m.starts_with(&f.path) => errs.push(ConfigError::Invalid {
                origin: s.origin("move_to"),
                key: s.key("move_to"),
                message:
                    "must not be inside sources.folder.path (moved files would be found again)"
                        .into(),
            }),
            _ => {}
        }
    }
    if f.cdr_db_url_file.is_some() && f.cdr_csv.is_some() {
        errs.push(ConfigError::Invalid {
            origin: s.origin("cdr_db_url_file"),
            key: s.key("cdr_db_url_file"),
            message: "use either cdr_csv or cdr_db_url_file, not both".into(),
        });
    }
    if path_ok && f.enabled && f.path.as_os_str().is_empty() {
        let o = s.origin("path");
        let origin = if o == Origin::Default {
            s.origin("enabled")
        } else {
            o
        };
        errs.push(ConfigError::Invalid {
            origin,
            key: s.key("path"),
            message: "must not be empty when sources.folder is enabled".into(),
        });
    }
    s.finish(errs, keys, "key");
    src.finish(errs, keys, "source");

    let mut s = Sec::child(&top, "filter", errs);
    let f = &mut cfg.filter;
    s.field(errs, "min_duration", &mut f.min_duration, to_duration);
    s.field(
        errs,
        "include_numbers",
        &mut f.include_numbers,
        to_string_list,
    );
    s.field(
        errs,
        "exclude_numbers",
        &mut f.exclude_numbers,
        to_string_list,
    );
    s.field(errs, "directions", &mut f.directions, |n| {
        let v = to_string_list(n)?;
        for d in &v {
            if !["inbound", "outbound", "internal", "unknown"].contains(&d.as_str()) {
                return Err(format!(
                    "`{d}` is not a direction (inbound, outbound, internal, unknown)"
                ));
            }
        }
        Ok(v)
    });
    s.field(errs, "keep_filtered", &mut f.keep_filtered, to_bool);
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "log", errs);
    s.field(errs, "format", &mut cfg.log.format, to_log_format);
    s.field(errs, "log_numbers", &mut cfg.log.log_numbers, to_bool);
    s.finish(errs, keys, "key");

    top.known = SECTIONS.to_vec();
    top.finish(errs, keys, "section");
}

/// `allow`: networks as an array (or, from the environment, a list
/// separated by commas or spaces); `None` when not given or unusable
/// (reported in `errs`).
fn allow_list(s: &mut Sec<'_>, errs: &mut Vec<ConfigError>) -> Option<Vec<IpNet>> {
    allow_list_of(s, errs, "allow")
}

/// A list of networks under the key `name` (as [`allow_list`]).
fn allow_list_of(
    s: &mut Sec<'_>,
    errs: &mut Vec<ConfigError>,
    name: &'static str,
) -> Option<Vec<IpNet>> {
    let n = s.get(name)?;
    match &n.kind {
        Kind::Array(items) => {
            let mut nets = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match as_str(item, "a network string such as \"10.0.0.0/8\"").and_then(parse_net) {
                    Ok(net) => nets.push(net),
                    Err(message) => errs.push(ConfigError::Invalid {
                        origin: item.origin.clone(),
                        key: format!("{}[{i}]", s.key(name)),
                        message,
                    }),
                }
            }
            Some(nets)
        }
        // From the environment a plain list is fine: "10.0.0.0/8, 192.0.2.7".
        Kind::Str(text) if n.env_text.is_some() => {
            let mut nets = Vec::new();
            for part in text.split([',', ' ']).filter(|p| !p.is_empty()) {
                match parse_net(part) {
                    Ok(net) => nets.push(net),
                    Err(message) => errs.push(ConfigError::Invalid {
                        origin: n.origin.clone(),
                        key: s.key(name),
                        message,
                    }),
                }
            }
            Some(nets)
        }
        _ => {
            errs.push(ConfigError::Invalid {
                origin: n.origin.clone(),
                key: s.key(name),
                message: format!(
                    "expected an array of networks such as [\"10.0.0.0/8\"], {}",
                    n.found()
                ),
            });
            None
        }
    }
}
