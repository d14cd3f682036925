//! Durations as manifests write them: `90s`, `45m`, `6h`, `1d`, `1h30m`,
//! and `500ms` where less than a second means something (an enqueued
//! item's latency budget).

use std::time::Duration;

/// Parses a compact duration: one or more `<integer><unit>` groups with
/// units `ms`, `s`, `m`, `h`, `d`. Returns a reason on failure.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        // In milliseconds.
        let unit = match ch {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(format!("unknown unit `{ch}` (use ms, s, m, h or d)")),
        };
        if digits.is_empty() {
            return Err(format!("unit `{ch}` has no number before it"));
        }
        let value: u64 = digits.parse().map_err(|_| "number too large".to_owned())?;
        total = value
            .checked_mul(unit)
            .and_then(|millis| total.checked_add(millis))
            .ok_or_else(|| "duration too large".to_owned())?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("`{digits}` has no unit (write `{digits}s`, `{digits}m` or `{digits}h`)"));
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration the way manifests write it (`1h30m`, `90s` stays `1m30s`).
pub fn format_duration(duration: Duration) -> String {
    let mut rest = duration.as_secs();
    if rest == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("45m"), Ok(Duration::from_secs(2700)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21_600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s250ms"), Ok(Duration::from_millis(90_250)));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("6").unwrap_err().contains("no unit"));
        assert!(parse_duration("6x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for text in ["90s", "45m", "6h", "1d", "1h30m"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }
}
