//! Values of the `ENVPROXY_*` switches, read the same way by the library and `envproxy check`.

/// Values that turn a switch such as `ENVPROXY_NO_JAVA` on, compared case-insensitively.
/// Anything else, the empty string included, leaves it off.
pub const SWITCH_ON_VALUES: [&str; 3] = ["1", "true", "yes"];

/// Returns whether `value` turns a switch on: `1`, `true` or `yes` in any case.
pub fn is_switch_on(value: &str) -> bool {
    SWITCH_ON_VALUES
        .iter()
        .any(|on| value.eq_ignore_ascii_case(on))
}

/// Values of `ENVPROXY_ENABLED` that turn EnvProxy off, compared case-insensitively. Anything
/// else, the empty string included, leaves it on.
pub const DISABLED_VALUES: [&str; 4] = ["0", "false", "no", "off"];

/// Returns whether the `ENVPROXY_ENABLED` value `value` turns EnvProxy off: `0`, `false`, `no`
/// or `off` in any case.
pub fn is_disabled(value: &str) -> bool {
    DISABLED_VALUES
        .iter()
        .any(|off| value.eq_ignore_ascii_case(off))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_values() {
        let cases = [
            ("0", true),
            ("false", true),
            ("FALSE", true),
            ("No", true),
            ("off", true),
            ("1", false),
            ("true", false),
            ("", false),
            (" 0", false),
        ];
        for (value, expected) in cases {
            assert_eq!(is_disabled(value), expected, "{value:?}");
        }
    }

    #[test]
    fn switch_values() {
        let cases = [
            ("1", true),
            ("true", true),
            ("TRUE", true),
            ("Yes", true),
            ("0", false),
            ("false", false),
            ("no", false),
            ("", false),
            (" 1", false),
            ("on", false),
        ];
        for (value, expected) in cases {
            assert_eq!(is_switch_on(value), expected, "{value:?}");
        }
    }
}
