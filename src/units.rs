//! Durations ("30s", "5m", "1h30m", "250ms") and sizes ("512MiB", "20GiB", "1.5GB")
//! as written in the config file and on the command line.

use std::time::Duration;

/// Parse a duration: one or more `<number>[.<fraction>]<unit>` groups, unit
/// in ms, s, m, h, d (a fraction down to the millisecond). A bare `0` is
/// accepted.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("empty duration (write e.g. \"30s\", \"5m\")".into());
    }
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!(
                "`{s}` is not a duration (write e.g. \"30s\", \"5m\", \"1h\")"
            ));
        }
        let n: u128 = rest[..num_len]
            .parse()
            .map_err(|_| format!("`{s}`: number too large"))?;
        rest = &rest[num_len..];
        // A decimal fraction ("1.5s", "0.25m"), down to the millisecond.
        let mut frac = (0u128, 1u128);
        if let Some(after) = rest.strip_prefix('.') {
            let len = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            if len == 0 || len > 9 {
                return Err(format!(
                    "`{s}` is not a duration (write e.g. \"1.5s\", \"30s\", \"5m\")"
                ));
            }
            frac = (after[..len].parse().unwrap_or(0), 10u128.pow(len as u32));
            rest = &after[len..];
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        let ms_per = match unit {
            "ms" => 1,
            "s" | "sec" | "secs" => 1000,
            "m" | "min" | "mins" => 60_000,
            "h" | "hr" | "hours" => 3_600_000,
            "d" | "days" => 86_400_000,
            "" => return Err(format!("`{s}`: missing unit (ms, s, m, h, d)")),
            u => return Err(format!("`{s}`: unknown unit `{u}` (use ms, s, m, h, d)")),
        };
        if frac.0 * ms_per % frac.1 != 0 {
            return Err(format!("`{s}`: finer than a millisecond"));
        }
        total = total
            .checked_add(n.checked_mul(ms_per).ok_or("duration too large")?)
            .and_then(|t| t.checked_add(frac.0 * ms_per / frac.1))
            .ok_or("duration too large")?;
    }
    let ms = u64::try_from(total).map_err(|_| "duration too large".to_string())?;
    Ok(Duration::from_millis(ms))
}

/// Parse a size: `<number>[.<fraction>] <unit>`, unit in B, KB, MB, GB, TB
/// (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024). A bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    if num.is_empty() {
        return Err(format!(
            "`{s}` is not a size (write e.g. \"512MiB\", \"20GiB\")"
        ));
    }
    let n: f64 = num.parse().map_err(|_| format!("`{s}`: bad number"))?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "`{s}`: unknown unit `{u}` (use B, KB, MB, GB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("`{s}`: out of range"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5 weeks").is_err());
        // Decimal fractions, to the millisecond.
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0.25m").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1h0.5m").unwrap(), Duration::from_secs(3630));
        assert_eq!(
            parse_duration("2.5ms").unwrap_err(),
            "`2.5ms`: finer than a millisecond"
        );
        assert!(parse_duration("1.s").is_err());
        assert!(parse_duration(".5s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
