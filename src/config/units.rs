//! Human durations and sizes of the configuration (SPEC §4): `"500ms"`, `"1h30m"`, `"256KiB"`.
//!
//! Both parsers return the message of a [`super::ConfigError`] (the value and valid examples);
//! the caller adds the TOML path.

use std::time::Duration;

/// Examples shown when a duration does not parse.
const DURATION_EXAMPLES: &str = r#"(examples: "500ms", "5s", "1m")"#;
/// Examples shown when a size does not parse.
const SIZE_EXAMPLES: &str = r#"(examples: "256KiB", "1MiB", "64MB", 1024)"#;

/// Parses a human duration: `"500ms"`, `"5s"`, `"1m"`, `"1h30m"` (humantime's syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("{text:?} is not a duration {DURATION_EXAMPLES}"))
}

/// Whether `text` is a duration too large to represent at all (`"99999999999999999999y"`), as
/// opposed to one that is not a duration.
pub fn duration_overflows(text: &str) -> bool {
    matches!(
        humantime::parse_duration(text.trim()),
        Err(humantime::DurationError::NumberOverflow)
    )
}

/// Parses a human size into bytes: `"1024"` (bytes), `"64MB"` (1000²), `"1MiB"` (1024²),
/// `"1.5GiB"`; units are `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) and `KiB`/`MiB`/`GiB`/`TiB`
/// (powers of 1024), in any letter case, optionally after a space. A fraction of a byte is
/// rounded down.
///
/// Parsed by hand: none of the crates the relay already depends on parses sizes, and these
/// thirty lines are simpler to read and test than a new dependency whose rules for `"MB"` vs
/// `"MiB"` would have to be checked anyway.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("{text:?} is not a size {SIZE_EXAMPLES}");
    let trimmed = text.trim();
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_end);
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(invalid()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(invalid());
    }
    let too_large = || format!("{text:?} is too large");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    // The fraction in exact integer arithmetic (no float rounding surprises): at most 12
    // digits are significant at TiB scale.
    if !fraction.is_empty() {
        let digits = &fraction[..fraction.len().min(12)];
        let numerator: u128 = digits.parse().map_err(|_| invalid())?;
        let denominator = 10u128.pow(digits.len() as u32);
        let extra = numerator * u128::from(multiplier) / denominator;
        bytes = bytes
            .checked_add(u64::try_from(extra).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// Formats a byte count the way the reference configuration writes it (`"1MiB"`, `"1500"`),
/// for messages that mention a limit.
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("1m", Duration::from_secs(60)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h 30m", Duration::from_secs(5400)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_duration_names_the_value_and_examples() {
        assert_eq!(
            parse_duration("5 parsecs").unwrap_err(),
            r#""5 parsecs" is not a duration (examples: "500ms", "5s", "1m")"#
        );
        for text in ["", "5", "-1s", "s", "1.5.2s"] {
            assert!(parse_duration(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn sizes() {
        let cases = [
            ("1024", 1024),
            ("0", 0),
            ("12B", 12),
            ("256KiB", 256 * 1024),
            ("1MiB", 1 << 20),
            ("64MB", 64_000_000),
            ("1KB", 1000),
            ("1 kib", 1024),
            ("1.5GiB", 3 << 29),
            ("1.5KB", 1500),
            ("0.5KiB", 512),
            ("1.0001KiB", 1024),
            ("2TiB", 2 << 40),
            (" 3 MiB ", 3 << 20),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_sizes_name_the_value_and_examples() {
        assert_eq!(
            parse_size("lots").unwrap_err(),
            r#""lots" is not a size (examples: "256KiB", "1MiB", "64MB", 1024)"#
        );
        for text in [
            "", "MiB", "-1MiB", "1..5MiB", "1.MiB", ".5KiB", "1 parsec", "1MiBs", "1e3",
        ] {
            assert!(parse_size(text).is_err(), "{text:?}");
        }
        assert_eq!(
            parse_size("99999999999TiB").unwrap_err(),
            r#""99999999999TiB" is too large"#
        );
    }

    #[test]
    fn format_size_uses_the_largest_exact_unit() {
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(256 * 1024), "256KiB");
        assert_eq!(format_size(1500), "1500");
        assert_eq!(format_size(0), "0");
    }

    proptest! {
        #[test]
        fn every_unit_scales_exactly(n in 0u64..1_000_000, unit in 0usize..9) {
            let (suffix, multiplier) = [
                ("", 1u64), ("B", 1), ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000),
                ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
            ][unit];
            prop_assert_eq!(parse_size(&format!("{n}{suffix}")), Ok(n * multiplier));
        }

        #[test]
        fn format_then_parse_round_trips(bytes in 0u64..(1 << 40)) {
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }
}
