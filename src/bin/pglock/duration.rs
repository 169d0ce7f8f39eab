//! Durations as the user writes them (`--timeout 30s`) and reads them (`gave up after
//! 300ms`, the status table).

use std::time::Duration;

/// `10s`, `500ms`, `2m`, `1h30m` (humantime's syntax), or plain (possibly fractional)
/// seconds, as flock(1)'s `-w` takes them.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|err| format!("{text:?}: {err}"));
    }
    humantime::parse_duration(text).map_err(|err| {
        format!("{text:?} is not a duration ({err}): use 10s, 500ms, 2m, 1h30m, or plain seconds")
    })
}

/// The longest `--timeout`: PostgreSQL's `lock_timeout` is an `int` of milliseconds.
pub const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// A `--timeout`: [`parse`], and at most [`MAX_TIMEOUT`] (the server could not keep a
/// longer bound; waiting for ever is leaving `--timeout` out).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse(text)?;
    if timeout > MAX_TIMEOUT {
        return Err(format!(
            "{text:?} is longer than PostgreSQL's lock_timeout can be ({}); leave --timeout \
             out to wait for ever",
            humantime::format_duration(MAX_TIMEOUT)
        ));
    }
    Ok(timeout)
}

/// 350ms, 1.2s, 2m05s, 3h07m: short, one word, for messages and table cells.
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        1..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1m 30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "s", "-1s", "-1", "10x", "1.2.3s", "ten", "inf", "NaN"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn timeouts_stop_where_lock_timeout_does() {
        assert_eq!(parse_timeout("24d"), Ok(Duration::from_secs(24 * 86400)));
        assert_eq!(parse_timeout("2147483647ms"), Ok(MAX_TIMEOUT));
        for long in ["2147483648ms", "25d", "1e19", "500000000000y"] {
            let err = parse_timeout(long).expect_err(long);
            assert!(err.contains("lock_timeout"), "{err}");
        }
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(350)), "350ms");
        assert_eq!(human(Duration::from_millis(1200)), "1.2s");
        assert_eq!(human(Duration::from_secs(125)), "2m05s");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 7 * 60)), "3h07m");
    }
}
