//! Time as the core sees it: a wall-clock instant handed in by the shell.
//!
//! The core never reads a clock. Captures carry their own timestamps; the live
//! shell stamps each packet on arrival. [`Timestamp`] is microseconds since the
//! Unix epoch (UTC), which is what pcap and pcapng store and what the recording
//! JSON needs (`started_at`, ...).

use std::fmt;
use std::ops::{Add, Sub};

/// `a · m / d` rounded toward zero, exactly: in 64 bits when the product
/// fits (every real call's sample positions), else in 128 (a 128-bit
/// division costs tens of instructions, and this runs for every packet).
/// `d` must be positive.
pub fn mul_div(a: i64, m: i64, d: i64) -> i64 {
    match a.checked_mul(m) {
        Some(p) => p / d,
        None => (i128::from(a) * i128::from(m) / i128::from(d)) as i64,
    }
}

/// Microseconds since 1970-01-01T00:00:00Z.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub const fn from_micros(us: i64) -> Self {
        Timestamp(us)
    }

    pub const fn from_secs(s: i64) -> Self {
        Timestamp(s.saturating_mul(1_000_000))
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Signed difference `self - earlier` in microseconds.
    pub const fn micros_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    pub const fn add_micros(self, us: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(us))
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-25T03:16:16.123Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60,
            micros / 1000
        )
    }

    /// Parses RFC 3339 (`2026-11-25T03:16:16.123Z`, `...16+01:00`, any
    /// fraction of a second up to microseconds kept); `None` if it is not.
    pub fn parse_rfc3339(t: &str) -> Option<Timestamp> {
        let b = t.as_bytes();
        let num = |a: usize, n: usize| -> Option<i64> {
            let d = b.get(a..a + n)?;
            d.iter()
                .all(u8::is_ascii_digit)
                .then(|| d.iter().fold(0i64, |v, c| v * 10 + i64::from(c - b'0')))
        };
        let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
        if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
            return None;
        }
        let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
        let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let mut i = 19;
        let mut micros = 0i64;
        if sep(i, b".") {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                if i - start < 6 {
                    micros = micros * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            if i == start {
                return None;
            }
            for _ in (i - start)..6 {
                micros *= 10;
            }
        }
        let offset = match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => 0,
            Some(c @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
                let o = num(i + 1, 2)? * 3600 + num(i + 4, 2)? * 60;
                if *c == b'-' {
                    -o
                } else {
                    o
                }
            }
            _ => return None,
        };
        let days = days_from_civil(y, mo as u32, d as u32);
        let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
        Some(Timestamp(secs * 1_000_000 + micros))
    }

    /// A civil date and time read as UTC (file names, CDR rows): `None`
    /// unless year 0..=9999, month 1..=12, day 1..=31 (a day past the end
    /// of its month rolls over), hour ..=23, minute ..=59, second ..=60.
    pub fn from_civil(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<Timestamp> {
        let ok = (0..=9999).contains(&y)
            && (1..=12).contains(&mo)
            && (1..=31).contains(&d)
            && (0..=23).contains(&h)
            && (0..=59).contains(&mi)
            && (0..=60).contains(&s);
        if !ok {
            return None;
        }
        let days = days_from_civil(y, mo as u32, d as u32);
        Some(Timestamp::from_secs(days * 86_400 + h * 3600 + mi * 60 + s))
    }

    /// Compact UTC form for identifiers: `20261125T031616Z`.
    pub fn to_compact(self) -> String {
        let secs = self.0.div_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

impl Add<std::time::Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: std::time::Duration) -> Timestamp {
        self.add_micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }
}

impl Sub for Timestamp {
    type Output = i64;
    /// Difference in microseconds.
    fn sub(self, rhs: Timestamp) -> i64 {
        self.micros_since(rhs)
    }
}

impl serde::Serialize for Timestamp {
    /// As RFC 3339 text.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
/// Howard Hinnant's `civil_from_days` (the one copy in the workspace).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day), proleptic Gregorian → days since 1970-01-01.
/// Howard Hinnant's `days_from_civil` (the one copy in the workspace).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 64-bit path and the 128-bit one agree with exact arithmetic,
    /// rounding toward zero, also where the product overflows 64 bits.
    #[test]
    fn mul_div_is_exact_with_and_without_overflow() {
        for (a, m, d) in [
            (0i64, 8000i64, 1_000_000i64),
            (1_234_567, 8000, 1_000_000),
            (-1_234_567, 8000, 1_000_000),
            (i64::MAX / 3, 16000, 8000),
            (i64::MIN / 5, 48000, 90000),
            (i64::MAX, i64::MAX, i64::MAX),
        ] {
            let exact = (i128::from(a) * i128::from(m) / i128::from(d)) as i64;
            assert_eq!(mul_div(a, m, d), exact, "{a} * {m} / {d}");
        }
    }

    #[test]
    fn rfc3339_round_trip_and_offsets() {
        for us in [
            0i64,
            1_764_756_900_123_000,
            -86_400_000_000,
            4_102_444_799_999_000,
        ] {
            let t = Timestamp::from_micros(us);
            assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        }
        let t = Timestamp::parse_rfc3339("2026-12-03T10:15:00.5+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-03T09:15:00.500Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2026-12-03T10:15:00Z"),
            Timestamp::parse_rfc3339("2026-12-03T10:15:00.000000Z")
        );
        for bad in [
            "",
            "2026-12-03",
            "2026-13-03T10:15:00Z",
            "2026-12-03T10:15:00",
            "2026-12-03T10:15:00.Z",
            "x026-12-03T10:15:00Z",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_epoch_and_known_dates() {
        assert_eq!(Timestamp::ZERO.to_rfc3339(), "1970-01-01T00:00:00.000Z");
        // 2026-11-25T03:16:16.5Z
        let t = Timestamp::from_micros(1_795_576_576_500_000);
        assert_eq!(t.to_rfc3339(), "2026-11-25T03:16:16.500Z");
        assert_eq!(t.to_compact(), "20261125T031616Z");
        // leap day
        let t = Timestamp::from_secs(951_782_400); // 2000-02-29
        assert_eq!(t.to_rfc3339(), "2000-02-29T00:00:00.000Z");
        // before the epoch
        assert_eq!(
            Timestamp::from_micros(-1).to_rfc3339(),
            "1969-12-31T23:59:59.999Z"
        );
    }
}
