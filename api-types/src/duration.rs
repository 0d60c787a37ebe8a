//! The duration syntax users type (CLI and controller flags; later compose files and update
//! policies): a bare number of seconds (`90`, `1.5`) or [`humantime`]'s syntax (`500ms`,
//! `30s`, `5m`, `1m30s`, `1.5s`, `1h 30m`). Pure; no I/O.

use std::time::Duration;

/// Parses a duration. The error says what was wrong and shows the syntax; callers (clap, a
/// field validator) add the flag or field name.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    // humantime wants a unit; a bare number means seconds.
    let with_unit;
    let t = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        with_unit = format!("{t}s");
        &with_unit
    } else {
        t
    };
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration: {e} (use e.g. 500ms, 30s, 5m or 1m30s)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("120s").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration(" 90 ").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn durations_reject_what_is_not_one() {
        for bad in [
            "",
            "s",
            "1x",
            "5x",
            "-1s",
            ".",
            "1..5s",
            "99999999999999999999",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("is not a duration"), "{bad}: {err}");
        }
    }
}
