//! Kubernetes resource quantities ([`Quantity`]), the byte sizes and cpu amounts built on them
//! ([`ByteSize`], [`Cpu`]), and the humantime encoding of durations used by
//! [`Limits`](crate::Limits) and [`Scale`](crate::Scale).
//!
//! Values refused here are reported with the value first (`"64Q": unknown suffix "Q"`), and
//! [`crate::from_json`] names the field in front of it, so there is one mechanism for naming a
//! bad field: the path serde was at.
//!
//! Service specs are written by people, so sizes and cpu are written the way Kubernetes users
//! already write them (`64Mi`, `1G`, `128974848`, `129e6`; `250m`, `0.5`, `2`) and follow Go's
//! grammar in `k8s.io/apimachinery/pkg/api/resource`.
//! A quantity is kept exactly, as an integer mantissa and a power of ten, so `0.1` is not a float
//! and `500m` bytes can be refused instead of being rounded.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A parsed Kubernetes resource quantity such as `64Mi`, `1.5G`, `500m` or `1e3`.
///
/// The grammar is Go's (`k8s.io/apimachinery/pkg/api/resource`): an optional sign `+` or `-`,
/// digits with an optional `.` fraction, then a suffix, which is one of the binary suffixes
/// `Ki Mi Gi Ti Pi Ei`, the decimal suffixes `n u m k M G T P E` or none, or a decimal exponent
/// `e`/`E` followed by an integer.
/// Only lowercase `k` means 1000; `K` is refused, as in Kubernetes.
///
/// The value is held exactly as `mantissa * 10^exponent`, normalized so that equal values
/// compare equal (`1k == 1000 == 1e3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quantity {
    /// The significant digits with the sign; never divisible by ten unless it is zero.
    mantissa: i128,
    /// The power of ten the mantissa is scaled by; zero when the mantissa is zero.
    exponent: i32,
}

/// Where the number is scaled by a quantity's suffix.
enum SuffixScale {
    /// Multiply by `10^n`.
    Decimal(i32),
    /// Multiply by `2^n`.
    Binary(u32),
}

impl Quantity {
    /// The quantity as a number of bytes: it must be non-negative and whole.
    ///
    /// The error is a bare reason such as `must be a whole number of bytes`, for the caller to
    /// put in context.
    pub fn to_bytes(&self) -> Result<u64, String> {
        if self.mantissa < 0 {
            return Err("must not be negative".into());
        }
        let too_large = || "must be less than 16Ei bytes".to_string();
        let (bytes, exact) = self.scaled(0).ok_or_else(too_large)?;
        if !exact {
            return Err("must be a whole number of bytes".into());
        }
        u64::try_from(bytes).map_err(|_| too_large())
    }

    /// The quantity in thousandths (`500m` and `0.5` are 500, `1` is 1000), as Kubernetes
    /// counts CPU.
    ///
    /// It must be non-negative; precision below a thousandth is rounded up, like Kubernetes'
    /// `MilliValue`.
    pub fn to_millis(&self) -> Result<u64, String> {
        if self.mantissa < 0 {
            return Err("must not be negative".into());
        }
        let too_large = || format!("must be at most {}m", u64::MAX);
        let (millis, exact) = self.scaled(3).ok_or_else(too_large)?;
        let millis = if exact { millis } else { millis + 1 };
        u64::try_from(millis).map_err(|_| too_large())
    }

    /// The value times `10^shift`, truncated toward zero, and whether that was exact; `None` if
    /// it does not fit in an `i128`.
    fn scaled(&self, shift: i32) -> Option<(i128, bool)> {
        if self.mantissa == 0 {
            return Some((0, true));
        }
        let exponent = i64::from(self.exponent) + i64::from(shift);
        if exponent >= 0 {
            let power = 10_i128.checked_pow(u32::try_from(exponent).ok()?)?;
            Some((self.mantissa.checked_mul(power)?, true))
        } else {
            let power = u32::try_from(-exponent)
                .ok()
                .and_then(|n_digits| 10_i128.checked_pow(n_digits));
            match power {
                Some(power) => Some((self.mantissa / power, self.mantissa % power == 0)),
                // The divisor exceeds any i128, so the (non-zero) mantissa is all fraction.
                None => Some((0, false)),
            }
        }
    }

    /// Parses `text`, returning a bare reason on failure.
    fn parse(text: &str) -> Result<Quantity, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        let (negative, unsigned) = match text.as_bytes()[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (int_digits, rest) = split_digits(unsigned);
        let (frac_digits, suffix) = match rest.strip_prefix('.') {
            Some(after_dot) => split_digits(after_dot),
            None => ("", rest),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(match unsigned.chars().next() {
                Some(found) if found != '.' => format!("expected a number, found {found:?}"),
                _ => "expected a number".into(),
            });
        }
        let scale = parse_suffix(suffix)?;

        // Zeros at the end of the fraction add nothing, and zeros at the end of a whole number
        // only move the exponent: dropping both keeps `1000000000000000000000000000000000000000`
        // and `1.000000000000000000000000000000000000000` from overflowing the mantissa.
        let frac_digits = frac_digits.trim_end_matches('0');
        let (int_digits, n_int_zeros) = if frac_digits.is_empty() {
            let significant = int_digits.trim_end_matches('0');
            (significant, int_digits.len() - significant.len())
        } else {
            (int_digits, 0)
        };
        let mut mantissa: i128 = 0;
        for digit in int_digits.bytes().chain(frac_digits.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|shifted| shifted.checked_add(i128::from(digit - b'0')))
                .ok_or("has too many digits")?;
        }
        let out_of_range = || "exponent is out of range".to_string();
        let n_int_zeros = i64::try_from(n_int_zeros).map_err(|_| out_of_range())?;
        let n_frac_digits = i64::try_from(frac_digits.len()).map_err(|_| out_of_range())?;
        let mut exponent = n_int_zeros - n_frac_digits;
        match scale {
            SuffixScale::Decimal(power) => exponent += i64::from(power),
            SuffixScale::Binary(power) => {
                mantissa = mantissa
                    .checked_mul(1_i128 << power)
                    .ok_or("is too large")?;
            }
        }
        let exponent = i32::try_from(exponent).map_err(|_| out_of_range())?;
        if negative {
            mantissa = -mantissa;
        }
        Ok(Quantity::normalized(mantissa, exponent))
    }

    /// Moves factors of ten from the mantissa to the exponent, so each value has one
    /// representation.
    fn normalized(mut mantissa: i128, mut exponent: i32) -> Quantity {
        if mantissa == 0 {
            return Quantity {
                mantissa: 0,
                exponent: 0,
            };
        }
        while mantissa % 10 == 0 && exponent < i32::MAX {
            mantissa /= 10;
            exponent += 1;
        }
        Quantity { mantissa, exponent }
    }
}

/// Splits `text` after its leading ASCII digits.
fn split_digits(text: &str) -> (&str, &str) {
    let n_digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text.split_at(n_digits)
}

/// Interprets the suffix of a quantity.
fn parse_suffix(suffix: &str) -> Result<SuffixScale, String> {
    let scale = match suffix {
        "" => SuffixScale::Decimal(0),
        "n" => SuffixScale::Decimal(-9),
        "u" => SuffixScale::Decimal(-6),
        "m" => SuffixScale::Decimal(-3),
        "k" => SuffixScale::Decimal(3),
        "M" => SuffixScale::Decimal(6),
        "G" => SuffixScale::Decimal(9),
        "T" => SuffixScale::Decimal(12),
        "P" => SuffixScale::Decimal(15),
        "E" => SuffixScale::Decimal(18),
        "Ki" => SuffixScale::Binary(10),
        "Mi" => SuffixScale::Binary(20),
        "Gi" => SuffixScale::Binary(30),
        "Ti" => SuffixScale::Binary(40),
        "Pi" => SuffixScale::Binary(50),
        "Ei" => SuffixScale::Binary(60),
        // A common slip from other tools, where `K` means 1000 or 1024.
        "K" => return Err("unknown suffix \"K\" (did you mean \"k\" or \"Ki\"?)".into()),
        _ => {
            // `E` alone is exa, matched above; `e3`, `E-2` and `e+6` are decimal exponents.
            let exponent = suffix.strip_prefix(['e', 'E']).filter(|exponent| {
                let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
                !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
            });
            match exponent {
                Some(exponent) => SuffixScale::Decimal(
                    exponent
                        .parse()
                        .map_err(|_| format!("exponent {exponent:?} is out of range"))?,
                ),
                None => return Err(format!("unknown suffix {suffix:?}")),
            }
        }
    };
    Ok(scale)
}

impl FromStr for Quantity {
    type Err = String;

    fn from_str(text: &str) -> Result<Quantity, String> {
        Quantity::parse(text).map_err(|reason| format!("invalid quantity {text:?}: {reason}"))
    }
}

impl fmt::Display for Quantity {
    /// Writes a quantity that parses back to the same value: a whole number with the largest
    /// decimal suffix that keeps it whole (`500m`, `1G`, `10M`), else a decimal exponent
    /// (`15e-10`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SUFFIXES: [(i32, &str); 10] = [
            (18, "E"),
            (15, "P"),
            (12, "T"),
            (9, "G"),
            (6, "M"),
            (3, "k"),
            (0, ""),
            (-3, "m"),
            (-6, "u"),
            (-9, "n"),
        ];
        let suffixed = SUFFIXES
            .iter()
            .find(|(power, _)| *power <= self.exponent)
            .and_then(|&(power, suffix)| {
                // Suffixes are 10^3 apart, so a gap above 2 means the exponent is beyond `E`,
                // where a run of zeros would be harder to read than an exponent.
                let power_gap = u32::try_from(self.exponent - power)
                    .ok()
                    .filter(|power_gap| *power_gap <= 2)?;
                let whole = self.mantissa.checked_mul(10_i128.checked_pow(power_gap)?)?;
                Some((whole, suffix))
            });
        match suffixed {
            Some((whole, suffix)) => write!(f, "{whole}{suffix}"),
            None => write!(f, "{}e{}", self.mantissa, self.exponent),
        }
    }
}

/// A number of bytes, written as a Kubernetes quantity (`64Mi`, `1G`) or a plain number.
///
/// It serializes canonically as a string: with the largest binary suffix (`Ki`, `Mi`, `Gi`,
/// `Ti`) that divides it exactly, else as plain bytes (`"1000"`).
/// It deserializes from a quantity string or a non-negative JSON integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Parses a byte size, returning a bare reason on failure.
fn parse_byte_size(text: &str) -> Result<u64, String> {
    Quantity::parse(text)?.to_bytes()
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        parse_byte_size(text)
            .map(ByteSize)
            .map_err(|reason| format!("invalid byte size {text:?}: {reason}"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        if self.0 != 0 {
            for (suffix, unit) in UNITS {
                if self.0.is_multiple_of(unit) {
                    return write!(f, "{}{suffix}", self.0 / unit);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

/// Accepts a quantity string or a non-negative integer.
struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte size: a quantity string like \"64Mi\" or a whole number of bytes")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
        parse_byte_size(text)
            .map(ByteSize)
            .map_err(|reason| value_error(text, &reason))
    }

    fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(bytes))
    }

    fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<ByteSize, E> {
        u64::try_from(bytes)
            .map(ByteSize)
            .map_err(|_| value_error(bytes, "must not be negative"))
    }
}

/// An amount of cpu in millicores, as Kubernetes counts it: `Cpu(250)` is a quarter of a core.
///
/// It deserializes from a quantity string (`"250m"`, `"0.5"`, `"2"`) or a JSON number of cores
/// (`0.5`, `2`), which must not be negative; precision below a millicore is rounded up, like
/// Kubernetes' `MilliValue`.
/// It serializes canonically as a string: whole cores as `"1"` or `"2"`, anything else as
/// millicores (`"250m"`, `"1500m"`), and [`Display`](fmt::Display) writes the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(pub u64);

impl Cpu {
    /// The number of millicores.
    pub fn millis(self) -> u64 {
        self.0
    }
}

/// Parses an amount of cpu into millicores, returning a bare reason on failure.
fn parse_cpu(text: &str) -> Result<u64, String> {
    Quantity::parse(text)?.to_millis()
}

impl FromStr for Cpu {
    type Err = String;

    fn from_str(text: &str) -> Result<Cpu, String> {
        parse_cpu(text)
            .map(Cpu)
            .map_err(|reason| format!("invalid cpu {text:?}: {reason}"))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Cpu, D::Error> {
        deserializer.deserialize_any(CpuVisitor)
    }
}

/// Accepts a quantity string or a non-negative JSON number of cores.
struct CpuVisitor;

impl CpuVisitor {
    /// Parses `text`, naming `input` (the value as the client wrote it) in the error.
    fn parse<E: de::Error>(&self, text: &str, input: impl fmt::Debug) -> Result<Cpu, E> {
        parse_cpu(text)
            .map(Cpu)
            .map_err(|reason| value_error(input, &reason))
    }
}

impl Visitor<'_> for CpuVisitor {
    type Value = Cpu;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cpu: a quantity string like \"250m\" or \"0.5\", or a number of cores")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Cpu, E> {
        self.parse(text, text)
    }

    // Numbers go through the quantity parser too, so that every form of a value is refused
    // or rounded alike. `f64`'s `Display` never uses an exponent, which the grammar would
    // accept anyway.

    fn visit_u64<E: de::Error>(self, cores: u64) -> Result<Cpu, E> {
        self.parse(&cores.to_string(), cores)
    }

    fn visit_i64<E: de::Error>(self, cores: i64) -> Result<Cpu, E> {
        self.parse(&cores.to_string(), cores)
    }

    fn visit_f64<E: de::Error>(self, cores: f64) -> Result<Cpu, E> {
        self.parse(&cores.to_string(), cores)
    }
}

/// The error a visitor gives for a value it refuses: the value as written, then why, e.g.
/// `"64Q": unknown suffix "Q"`.
///
/// It names no field: [`crate::from_json`] puts the path of the field in front, so the whole
/// message reads `invalid limits.memory "64Q": unknown suffix "Q"`.
fn value_error<E: de::Error>(input: impl fmt::Debug, reason: &str) -> E {
    E::custom(format!("{input:?}: {reason}"))
}

/// A non-zero duration written as a humantime string (`"10s"`, `"250ms"`), for
/// `#[serde(with = "crate::quantity::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes the duration as a humantime string such as `10s` or `250ms`.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*duration))
    }

    /// Reads a humantime string into a non-zero duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(super::DurationVisitor)
    }
}

/// An optional non-zero duration written as a humantime string; `null` or a missing field is
/// `None`, for `#[serde(default, with = "crate::quantity::optional_duration")]`.
pub mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Writes the duration as a humantime string, or `null`.
    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => super::duration::serialize(duration, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Reads `null` as `None` and a humantime string as a non-zero duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<Humantime>::deserialize(deserializer).map(|parsed| parsed.map(|h| h.0))
    }

    /// A duration read by the visitor, so `Option`'s own `Deserialize` handles `null`.
    struct Humantime(Duration);

    impl<'de> serde::Deserialize<'de> for Humantime {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Humantime, D::Error> {
            super::duration::deserialize(deserializer).map(Humantime)
        }
    }
}

/// Accepts a humantime string for a non-zero duration.
struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string like \"10s\" or \"250ms\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        let duration =
            humantime::parse_duration(text).map_err(|err| value_error(text, &err.to_string()))?;
        if duration.is_zero() {
            return Err(value_error(text, "must be greater than zero"));
        }
        Ok(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> Result<u64, String> {
        text.parse::<ByteSize>().map(ByteSize::bytes)
    }

    fn millis(text: &str) -> Result<u64, String> {
        text.parse::<Quantity>()?.to_millis()
    }

    #[test]
    fn byte_sizes_parse() {
        let cases: &[(&str, u64)] = &[
            ("64Mi", 67_108_864),
            ("1G", 1_000_000_000),
            ("1.5Gi", 1_610_612_736),
            ("1e3", 1000),
            ("1E3", 1000),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129M", 129_000_000),
            ("123Mi", 128_974_848),
            ("1k", 1000),
            ("1Ki", 1024),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ei", 1 << 60),
            ("+5", 5),
            ("-0", 0),
            ("0", 0),
            ("0.5Ki", 512),
            (".5Ki", 512),
            ("1.", 1),
            ("1000m", 1),
            ("007", 7),
            ("1.000000000000000000000000000000000000000000000", 1),
            ("12e+2", 1200),
            ("20e-1", 2),
        ];
        for &(text, expected) in cases {
            assert_eq!(bytes(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn millis_parse() {
        let cases: &[(&str, u64)] = &[
            ("500m", 500),
            ("0.5", 500),
            ("1", 1000),
            ("250m", 250),
            ("2", 2000),
            ("1.5", 1500),
            ("0", 0),
            // Below a thousandth rounds up, like Kubernetes' MilliValue.
            ("1u", 1),
            ("1500u", 2),
            ("0.0001", 1),
        ];
        for &(text, expected) in cases {
            assert_eq!(millis(text), Ok(expected), "{text}");
        }
        assert_eq!(millis("-1"), Err("must not be negative".into()));
    }

    #[test]
    fn bad_quantities() {
        let cases: &[(&str, &str)] = &[
            ("64Q", r#"invalid quantity "64Q": unknown suffix "Q""#),
            (
                "64K",
                r#"invalid quantity "64K": unknown suffix "K" (did you mean "k" or "Ki"?)"#,
            ),
            ("", r#"invalid quantity "": must not be empty"#),
            ("1.2.3", r#"invalid quantity "1.2.3": unknown suffix ".3""#),
            (
                " 64Mi",
                r#"invalid quantity " 64Mi": expected a number, found ' '"#,
            ),
            ("64Mi ", r#"invalid quantity "64Mi ": unknown suffix "Mi ""#),
            (
                "Mi",
                r#"invalid quantity "Mi": expected a number, found 'M'"#,
            ),
            ("-", r#"invalid quantity "-": expected a number"#),
            (".", r#"invalid quantity ".": expected a number"#),
            ("1e", r#"invalid quantity "1e": unknown suffix "e""#),
            (
                "1e3.5",
                r#"invalid quantity "1e3.5": unknown suffix "e3.5""#,
            ),
            ("1mi", r#"invalid quantity "1mi": unknown suffix "mi""#),
            ("1MB", r#"invalid quantity "1MB": unknown suffix "MB""#),
            (
                "1e99999999999",
                r#"invalid quantity "1e99999999999": exponent "99999999999" is out of range"#,
            ),
            (
                "1e2147483647k",
                r#"invalid quantity "1e2147483647k": unknown suffix "e2147483647k""#,
            ),
            (
                "123456789012345678901234567890123456789012",
                r#"invalid quantity "123456789012345678901234567890123456789012": has too many digits"#,
            ),
        ];
        for &(text, expected) in cases {
            assert_eq!(
                text.parse::<Quantity>(),
                Err(expected.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_byte_sizes() {
        let cases: &[(&str, &str)] = &[
            ("-1Mi", r#"invalid byte size "-1Mi": must not be negative"#),
            (
                "500m",
                r#"invalid byte size "500m": must be a whole number of bytes"#,
            ),
            (
                "1.5",
                r#"invalid byte size "1.5": must be a whole number of bytes"#,
            ),
            (
                "1e-50",
                r#"invalid byte size "1e-50": must be a whole number of bytes"#,
            ),
            (
                "16Ei",
                r#"invalid byte size "16Ei": must be less than 16Ei bytes"#,
            ),
            (
                "1e40",
                r#"invalid byte size "1e40": must be less than 16Ei bytes"#,
            ),
            ("64Q", r#"invalid byte size "64Q": unknown suffix "Q""#),
        ];
        for &(text, expected) in cases {
            assert_eq!(
                text.parse::<ByteSize>(),
                Err(expected.to_string()),
                "{text}"
            );
        }
        // Just below the limit still fits.
        assert_eq!(bytes("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn equal_values_compare_equal() {
        let one_thousand: Quantity = "1k".parse().unwrap();
        for text in ["1000", "1e3", "1.0k", "1000000m", "0.001M"] {
            assert_eq!(text.parse::<Quantity>().unwrap(), one_thousand, "{text}");
        }
    }

    #[test]
    fn quantity_display_round_trips() {
        let cases = [
            ("500m", "500m"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1G", "1G"),
            ("1.5Gi", "1610612736"),
            ("129e6", "129M"),
            ("-2k", "-2k"),
            ("1e7", "10M"),
            ("1e20", "100E"),
            ("15e-10", "15e-10"),
            ("1e40", "1e40"),
            ("0", "0"),
        ];
        for (text, expected) in cases {
            let quantity: Quantity = text.parse().unwrap();
            assert_eq!(quantity.to_string(), expected, "{text}");
            assert_eq!(expected.parse::<Quantity>().unwrap(), quantity, "{text}");
        }
    }

    #[test]
    fn byte_size_serializes_canonically() {
        let cases = [
            (0, "0"),
            (1000, "1000"),
            (1024, "1Ki"),
            (1536, "1536"),
            (67_108_864, "64Mi"),
            (1 << 30, "1Gi"),
            (3 << 40, "3Ti"),
            (1 << 50, "1024Ti"),
            (1_610_612_736, "1536Mi"),
        ];
        for (n_bytes, expected) in cases {
            let size = ByteSize(n_bytes);
            let json = serde_json::to_string(&size).unwrap();
            assert_eq!(json, format!("\"{expected}\""));
            assert_eq!(serde_json::from_str::<ByteSize>(&json).unwrap(), size);
            assert_eq!(size.to_string(), expected);
            assert_eq!(expected.parse::<ByteSize>(), Ok(size));
        }
    }

    #[test]
    fn byte_size_accepts_json_integers() {
        assert_eq!(
            serde_json::from_str::<ByteSize>("67108864").unwrap(),
            ByteSize(67_108_864)
        );
        assert_eq!(serde_json::from_str::<ByteSize>("0").unwrap(), ByteSize(0));
        let negative = serde_json::from_str::<ByteSize>("-1").unwrap_err();
        assert_eq!(
            negative.to_string(),
            "-1: must not be negative at line 1 column 2"
        );
        let float = serde_json::from_str::<ByteSize>("1.5").unwrap_err();
        assert!(
            float.to_string().starts_with(
                "invalid type: floating point `1.5`, expected a byte size: a quantity string"
            ),
            "{float}"
        );
        let bad = serde_json::from_str::<ByteSize>("\"64Q\"").unwrap_err();
        assert_eq!(
            bad.to_string(),
            r#""64Q": unknown suffix "Q" at line 1 column 5"#
        );
    }

    #[test]
    fn cpu_parses_like_kubernetes_and_prints_canonically() {
        let cases: &[(&str, u64, &str)] = &[
            ("250m", 250, "250m"),
            ("0.5", 500, "500m"),
            ("1", 1000, "1"),
            ("2", 2000, "2"),
            ("1.5", 1500, "1500m"),
            ("1500m", 1500, "1500m"),
            ("2000m", 2000, "2"),
            ("0", 0, "0"),
            // Below a millicore rounds up, like Kubernetes' MilliValue.
            ("0.0001", 1, "1m"),
        ];
        for &(text, n_millis, shown) in cases {
            let cpu: Cpu = text.parse().unwrap();
            assert_eq!(cpu, Cpu(n_millis), "{text}");
            assert_eq!(cpu.millis(), n_millis, "{text}");
            assert_eq!(cpu.to_string(), shown, "{text}");
            let json = serde_json::to_string(&cpu).unwrap();
            assert_eq!(json, format!("\"{shown}\""), "{text}");
            assert_eq!(serde_json::from_str::<Cpu>(&json).unwrap(), cpu, "{text}");
        }
    }

    #[test]
    fn cpu_accepts_json_numbers_of_cores() {
        let cases: &[(&str, u64)] = &[
            ("0.5", 500),
            ("1", 1000),
            ("2", 2000),
            ("1.0", 1000),
            ("0.25", 250),
            ("0", 0),
        ];
        for &(json, n_millis) in cases {
            assert_eq!(
                serde_json::from_str::<Cpu>(json).unwrap(),
                Cpu(n_millis),
                "{json}"
            );
        }
    }

    #[test]
    fn bad_cpu() {
        let cases = [
            (
                "K".parse::<Cpu>(),
                r#"invalid cpu "K": expected a number, found 'K'"#,
            ),
            (
                "-1".parse::<Cpu>(),
                r#"invalid cpu "-1": must not be negative"#,
            ),
            (
                "1Q".parse::<Cpu>(),
                r#"invalid cpu "1Q": unknown suffix "Q""#,
            ),
        ];
        for (parsed, expected) in cases {
            assert_eq!(parsed, Err(expected.to_string()));
        }
        let cases = [
            (
                r#""-250m""#,
                r#""-250m": must not be negative at line 1 column 7"#,
            ),
            ("-1", "-1: must not be negative at line 1 column 2"),
            ("-0.5", "-0.5: must not be negative at line 1 column 4"),
            (
                "true",
                "invalid type: boolean `true`, expected cpu: a quantity string like \"250m\" \
                 or \"0.5\", or a number of cores at line 1 column 4",
            ),
        ];
        for (json, expected) in cases {
            let err = serde_json::from_str::<Cpu>(json).unwrap_err();
            assert_eq!(err.to_string(), expected, "{json}");
        }
    }
}
