//! What a value of the configuration may be: the readers the schema walk
//! ([`super::check`]) turns TOML nodes into typed values with (strings,
//! durations, sizes, addresses, URLs, port ranges, networks, DTMF
//! sequences, ...), each with the error message `check-config` shows, and
//! the suggestion for a misspelt name.

use super::*;

/// The closest known name to a misspelt one, if close enough.
pub(super) fn suggest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let lname = name.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lname, k), *k))
        // Close, and not mostly different (`sip` is not `hep`).
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && 2 * *d <= k.len().max(lname.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

pub(super) fn quote(s: &str) -> String {
    const MAX: usize = 60;
    let mut t: String = s.chars().take(MAX).collect();
    if s.chars().count() > MAX {
        t.push('…');
    }
    format!("\"{}\"", t.escape_debug())
}

// --- value conversions: each returns the message of what is wrong ---

pub(super) fn as_str<'n>(n: &'n Node, expect: &str) -> Result<&'n str, String> {
    match (&n.kind, &n.env_text) {
        (Kind::Str(s), _) => Ok(s),
        (_, Some(text)) => Ok(text),
        _ => Err(format!("expected {expect}, {}", n.found())),
    }
}

/// `"local"` (this machine's zone) → `None`; `"+01:00"`, `"-05:30"`, `"UTC"` →
/// seconds east of UTC.
pub(super) fn to_utc_offset(n: &Node) -> Result<Option<i64>, String> {
    let v = to_string(n)?;
    let t = v.trim();
    if t.eq_ignore_ascii_case("local") {
        return Ok(None);
    }
    if t.eq_ignore_ascii_case("utc") || t == "Z" {
        return Ok(Some(0));
    }
    let bad = || {
        format!(
            "{} is not a UTC offset: \"local\", \"UTC\" or like \"+01:00\"",
            quote(&v)
        )
    };
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(Some(sign * (h * 3600 + m * 60)))
}

/// A folder name pattern: a regex naming at least `uniqueid` and a time.
pub(super) fn check_name_pattern(p: &str) -> Result<(), String> {
    let re = regex::Regex::new(p).map_err(|e| format!("{} is not a regex: {e}", quote(p)))?;
    let names: Vec<&str> = re.capture_names().flatten().collect();
    if !names.contains(&"uniqueid") {
        return Err(format!("{} has no (?P<uniqueid>…) group", quote(p)));
    }
    let timed = names.contains(&"datetime")
        || names.contains(&"epoch")
        || (names.contains(&"date") && names.contains(&"time"));
    if !timed {
        return Err(format!(
            "{} has no start time: (?P<datetime>…), (?P<epoch>…) or (?P<date>…) + (?P<time>…)",
            quote(p)
        ));
    }
    Ok(())
}

pub(super) fn to_string(n: &Node) -> Result<String, String> {
    as_str(n, "a string").map(str::to_string)
}

/// An array of strings; from the environment also a comma-separated list.
pub(super) fn to_string_list(n: &Node) -> Result<Vec<String>, String> {
    match &n.kind {
        Kind::Array(items) => items
            .iter()
            .map(|i| as_str(i, "a string").map(str::to_string))
            .collect(),
        Kind::Str(text) if n.env_text.is_some() => Ok(text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()),
        _ => Err(format!("expected an array of strings, {}", n.found())),
    }
}

pub(super) fn to_bool(n: &Node) -> Result<bool, String> {
    match &n.kind {
        Kind::Bool(b) => Ok(*b),
        // From the environment, what shells and unit files write too:
        // `1`/`0`, `yes`/`no`, `on`/`off`, any case.
        _ if n.env_text.is_some() => {
            let t = n
                .env_text
                .as_deref()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match t.as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(format!(
                    "expected true or false (or 1/0, yes/no, on/off), {}",
                    n.found()
                )),
            }
        }
        _ => Err(format!("expected true or false, {}", n.found())),
    }
}

pub(super) fn to_int_in(n: &Node, range: RangeInclusive<i64>) -> Result<i64, String> {
    let (lo, hi) = (range.start(), range.end());
    match n.kind {
        Kind::Int(Some(i)) if range.contains(&i) => Ok(i),
        Kind::Int(Some(i)) => Err(format!("must be between {lo} and {hi}, found {i}")),
        Kind::Int(None) => Err(format!("must be between {lo} and {hi}")),
        _ => Err(format!("expected an integer, {}", n.found())),
    }
}

pub(super) fn to_u32_in(n: &Node, range: RangeInclusive<u32>) -> Result<u32, String> {
    let i = to_int_in(n, i64::from(*range.start())..=i64::from(*range.end()))?;
    u32::try_from(i).map_err(|_| "out of range".to_string())
}

pub(super) fn to_duration(n: &Node) -> Result<Duration, String> {
    let s = as_str(n, "a duration string such as \"30s\" or \"5m\"")?;
    parse_duration(s)
}

pub(super) fn to_duration_in(n: &Node, lo: Duration, hi: Duration) -> Result<Duration, String> {
    let d = to_duration(n)?;
    if d < lo {
        return Err(format!("must be at least {}", fmt_duration(lo)));
    }
    if d > hi {
        return Err(format!("must be at most {}", fmt_duration(hi)));
    }
    Ok(d)
}

pub(super) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

pub(super) fn to_size(n: &Node) -> Result<u64, String> {
    match n.kind {
        Kind::Int(Some(i)) => u64::try_from(i).map_err(|_| format!("must not be negative ({i})")),
        _ => parse_size(as_str(n, "a size string such as \"512MiB\" or \"20GiB\"")?),
    }
}

pub(super) fn to_socket_addr(n: &Node) -> Result<SocketAddr, String> {
    let s = as_str(n, "an address such as \"127.0.0.1:5090\"")?;
    s.trim().parse::<SocketAddr>().map_err(|_| {
        format!(
            "{} is not an IP address and port (write e.g. \"127.0.0.1:5090\", \"0.0.0.0:5090\" or \"[::1]:5090\"; host names are not accepted)",
            quote(s)
        )
    })
}

pub(super) fn to_path(n: &Node) -> Result<PathBuf, String> {
    let s = as_str(n, "a path string")?;
    if s.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    Ok(PathBuf::from(s))
}

pub(super) fn to_opt_path(n: &Node) -> Result<Option<PathBuf>, String> {
    let p = to_path(n)?;
    Ok((!p.as_os_str().is_empty()).then_some(p))
}

pub(super) fn to_nonempty_path(n: &Node) -> Result<PathBuf, String> {
    let p = to_path(n)?;
    if p.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(p)
}

pub(super) fn to_agent_id(n: &Node) -> Result<String, String> {
    let s = as_str(n, "a string")?;
    if s.is_empty() {
        return Err("must not be empty (leave the key out to use the host name)".into());
    }
    if s.chars().count() > 128 {
        return Err("longer than 128 characters".into());
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(s.to_string())
}

/// `recording.pause_dtmf` / `resume_dtmf`: empty, or 1 to 16 DTMF digits
/// (`0-9 * # A-D`).
pub(super) fn to_dtmf_sequence(n: &Node) -> Result<String, String> {
    let s = as_str(n, "a string of DTMF digits")?
        .trim()
        .to_ascii_uppercase();
    if s.is_empty() || pbx_core::call::pause::is_dtmf_sequence(&s) {
        return Ok(s);
    }
    if s.chars().count() > pbx_core::call::pause::SEQUENCE_MAX {
        return Err(format!(
            "longer than {} digits",
            pbx_core::call::pause::SEQUENCE_MAX
        ));
    }
    Err(format!(
        "{} holds characters that are not DTMF digits (0-9, *, #, A-D), e.g. \"*1\"",
        quote(&s)
    ))
}

pub(super) fn to_sample_rate(n: &Node) -> Result<SampleRate, String> {
    let bad = || {
        let found = match &n.kind {
            Kind::Str(s) => format!("found {}", quote(s)),
            _ => n.found(),
        };
        format!("expected \"auto\", \"8000\" or \"16000\", {found}")
    };
    match &n.kind {
        Kind::Int(Some(8000)) => Ok(SampleRate::Hz8000),
        Kind::Int(Some(16000)) => Ok(SampleRate::Hz16000),
        Kind::Str(s) => match s.trim() {
            "auto" => Ok(SampleRate::Auto),
            "8000" => Ok(SampleRate::Hz8000),
            "16000" => Ok(SampleRate::Hz16000),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

pub(super) fn to_protocol(n: &Node) -> Result<CloudProtocol, String> {
    match as_str(n, "\"tus\" or \"multipart\"")? {
        "tus" => Ok(CloudProtocol::Tus),
        "multipart" => Ok(CloudProtocol::Multipart),
        s => Err(format!(
            "expected \"tus\" or \"multipart\", found {}",
            quote(s)
        )),
    }
}

pub(super) fn to_audio_format(n: &Node) -> Result<AudioFormat, String> {
    match as_str(n, "\"wav\" or \"flac\"")? {
        "wav" => Ok(AudioFormat::Wav),
        "flac" => Ok(AudioFormat::Flac),
        s => Err(format!("expected \"wav\" or \"flac\", found {}", quote(s))),
    }
}

pub(super) fn to_log_format(n: &Node) -> Result<LogFormat, String> {
    match as_str(n, "\"auto\", \"journald\", \"text\" or \"json\"")? {
        "auto" => Ok(LogFormat::Auto),
        "journald" => Ok(LogFormat::Journald),
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        s => Err(format!(
            "expected \"auto\", \"journald\", \"text\" or \"json\", found {}",
            quote(s)
        )),
    }
}

/// `cloud.url`: empty, or https, or http to a loopback host (CONTRACT §4).
pub(super) fn to_cloud_url(n: &Node) -> Result<String, String> {
    let u = to_url(n, ["https", "http"], "cloud.token_file", false)?;
    Ok(u.trim_end_matches('/').to_string())
}

/// `stream.url`: empty, or wss, or ws to a loopback host (CONTRACT §5).
pub(super) fn to_stream_url(n: &Node) -> Result<String, String> {
    to_url(n, ["wss", "ws"], "stream.token_file", true)
}

/// A URL of scheme `secure`, or `plain` to a loopback host only; no
/// credentials (they go in `token_key`), no fragment, and a query only when
/// `query` allows it. Empty stays empty.
fn to_url(
    n: &Node,
    [secure, plain]: [&str; 2],
    token_key: &str,
    query: bool,
) -> Result<String, String> {
    let s = as_str(n, "a URL string")?.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    let u = url::Url::parse(s).map_err(|e| format!("{} is not a URL: {e}", quote(s)))?;
    if u.scheme() == plain {
        let loopback = match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            None => false,
        };
        if !loopback {
            return Err(format!(
                "plain {plain}:// is accepted only for loopback hosts (localhost, 127.0.0.0/8, ::1); use {secure}://"
            ));
        }
    } else if u.scheme() != secure {
        return Err(format!(
            "scheme must be {secure} (or {plain} for a loopback host), found `{}`",
            u.scheme()
        ));
    }
    if u.host().is_none() {
        return Err("has no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "must not contain credentials; put the token in {token_key}"
        ));
    }
    if u.fragment().is_some() || (!query && u.query().is_some()) {
        return Err(if query {
            "must not have a fragment (#…)"
        } else {
            "must not have a query (?…) or fragment (#…)"
        }
        .into());
    }
    Ok(s.to_string())
}

pub(super) fn to_port_range(n: &Node) -> Result<RangeInclusive<u16>, String> {
    let s = as_str(n, "a port range string such as \"20000-29999\"")?;
    let bad = || {
        format!(
            "{} is not a port range (write e.g. \"20000-29999\")",
            quote(s)
        )
    };
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(format!("low port {lo} is above high port {hi}"));
    }
    if lo < 1024 {
        return Err(format!(
            "starts at {lo}: ports below 1024 are privileged (start at 1024 or above)"
        ));
    }
    let first_even = if lo % 2 == 0 {
        lo
    } else {
        lo.saturating_add(1)
    };
    if first_even < lo || first_even >= hi {
        return Err(format!(
            "{lo}-{hi} holds no RTP/RTCP pair (an even port and the odd one after it)"
        ));
    }
    Ok(lo..=hi)
}

pub(super) fn parse_net(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    if let Ok(a) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    Err(format!(
        "{} is not a network (write e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\")",
        quote(s)
    ))
}
