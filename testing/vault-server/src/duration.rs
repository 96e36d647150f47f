//! Vault's duration fields: seconds as a number, or Go duration strings such as `1h30m`.

use std::time::Duration;

use serde_json::Value;

/// Parses a duration field given as a JSON number of seconds or a string such as `"90"`,
/// `"90s"`, `"5m"` or `"1h30m"`. Returns `None` for anything else, including `"2d"` (Go has
/// no day unit).
pub(crate) fn parse_field(value: &Value) -> Option<Duration> {
    match value {
        Value::Number(n) => n.as_u64().map(Duration::from_secs),
        Value::String(s) => parse_str(s),
        _ => None,
    }
}

/// Parses `"90"` (seconds) or a Go duration string made of `h`, `m`, `s` and `ms` parts.
pub(crate) fn parse_str(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Duration::ZERO);
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let amount: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            _ => return None,
        };
        total += unit * u32::try_from(amount).ok()?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Formats whole seconds the way Go's `time.Duration.String` does (`1h0m0s`, `5m0s`, `30s`).
pub(crate) fn go_format(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_numbers_and_go_strings() {
        assert_eq!(parse_field(&json!(90)), Some(Duration::from_secs(90)));
        assert_eq!(parse_field(&json!("90")), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_field(&json!("1h30m")),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_field(&json!("500ms")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_field(&json!("2d")), None);
        assert_eq!(parse_field(&json!(true)), None);
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(go_format(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_format(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_format(Duration::from_secs(42)), "42s");
    }
}
