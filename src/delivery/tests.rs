use super::*;
use serde_json::json;

#[test]
fn globs() {
    assert!(glob_match("+49*", "+4930123"));
    assert!(!glob_match("+49*", "+4330123"));
    assert!(glob_match("1??", "123"));
    assert!(!glob_match("1??", "1234"));
    assert!(glob_match("*", ""));
    assert!(glob_match("*00", "1200"));
    assert!(glob_match("a*b*c", "aXXbYYc"));
    assert!(!glob_match("a*b*c", "aXXbYY"));
    assert!(glob_match("**", "x"));
    assert!(!glob_match("", "x"));
}

#[test]
fn filters() {
    let doc = json!({
        "duration_ms": 5000,
        "direction": "inbound",
        "from": {"number": "+4930111"},
        "to": {"number": "200"},
    });
    assert_eq!(Filters::default().check(&doc), None);
    let f = Filters {
        min_duration: Duration::from_secs(6),
        ..Filters::default()
    };
    assert!(f.check(&doc).unwrap().contains("min_duration"));
    let f = Filters {
        include_numbers: vec!["2??".into()],
        ..Filters::default()
    };
    assert_eq!(f.check(&doc), None);
    let f = Filters {
        include_numbers: vec!["3*".into()],
        ..Filters::default()
    };
    assert!(f.check(&doc).is_some());
    let f = Filters {
        exclude_numbers: vec!["+4930*".into()],
        ..Filters::default()
    };
    assert!(f.check(&doc).unwrap().contains("exclude"));
    let f = Filters {
        directions: vec!["outbound".into(), "Inbound".into()],
        ..Filters::default()
    };
    assert_eq!(f.check(&doc), None);
    let f = Filters {
        directions: vec!["outbound".into()],
        ..Filters::default()
    };
    assert!(f.check(&doc).unwrap().contains("direction inbound"));
    // Missing fields: unknown direction, no numbers, duration 0.
    let f = Filters {
        include_numbers: vec!["*".into()],
        ..Filters::default()
    };
    assert!(f.check(&json!({})).is_some());
}

#[test]
fn windows() {
    let w: UploadWindow = "22:00-06:00".parse().unwrap();
    assert!(w.contains(23 * 60));
    assert!(w.contains(0));
    assert!(w.contains(5 * 60 + 59));
    assert!(!w.contains(6 * 60));
    assert!(!w.contains(12 * 60));
    let w: UploadWindow = "09:30-17:00".parse().unwrap();
    assert!(w.contains(9 * 60 + 30));
    assert!(!w.contains(17 * 60));
    let w: UploadWindow = "00:00-24:00".parse().unwrap();
    assert!(w.contains(0) && w.contains(1439));
    for bad in ["", "9-17", "25:00-01:00", "10:60-11:00", "10:00"] {
        assert!(bad.parse::<UploadWindow>().is_err(), "{bad}");
    }
    assert!(local_minute_of_day(SystemTime::now()) < 1440);
}

#[test]
fn settings_from_config() {
    let mut cfg = Config::defaults(None);
    let s = DeliverySettings::from_config(&cfg);
    assert!(s.cloud.is_none());
    assert_eq!(s.pause_retry, Duration::from_secs(300));
    cfg.cloud.url = "https://cloud.example".into();
    cfg.cloud.max_parallel = 5;
    let s = DeliverySettings::from_config(&cfg);
    assert_eq!(s.max_parallel, 5);
    let c = s.cloud.unwrap();
    assert_eq!(c.url, "https://cloud.example");
    assert_eq!(c.chunk_size, 4 << 20);
}

#[test]
fn second_process_is_locked_out() {
    let d = tempfile::tempdir().unwrap();
    let a = take_lock(d.path()).unwrap();
    // flock is per open file description: a second open conflicts.
    assert!(matches!(take_lock(d.path()), Err(DeliveryError::Locked(_))));
    drop(a);
    assert!(take_lock(d.path()).is_ok());
}
