//! Crontab matching for periodic tasks.
//!
//! Each field is parsed once into a bit set; matching a datetime is five bit tests. The grammar
//! and its quirks are huey 3.5.4's: `*`, `*/n`, `m-n` (wrapping when `m > n`), `m-n/step`,
//! comma-separated lists and bare integers; day-of-week counts 0 = Sunday and accepts 7 for
//! Sunday; pieces that fit no form are ignored unless `strict`.

use std::fmt;

use chrono::{Datelike, NaiveDateTime, Timelike};
use pyo3::prelude::*;

use crate::datetime::calendar_fields;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(pub String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Minute,
    Hour,
    Day,
    Month,
    DayOfWeek,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::Day => "day",
            Field::Month => "month",
            Field::DayOfWeek => "day_of_week",
        }
    }

    /// Inclusive bounds of the values a user may write (day-of-week accepts 7 for Sunday).
    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::Day => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses a run of digits; `None` means it does not fit in a u32 (so it is out of range anyway).
fn number(s: &str) -> Option<u32> {
    s.parse().ok()
}

/// Splits `m-n` or `m-n/step` into its numbers, or `None` when the piece has another form.
fn split_range(piece: &str) -> Option<(&str, &str, Option<&str>)> {
    let (lhs, rest) = piece.split_once('-')?;
    let (rhs, step) = match rest.split_once('/') {
        Some((rhs, step)) => (rhs, Some(step)),
        None => (rest, None),
    };
    let ok = is_number(lhs) && is_number(rhs) && step.is_none_or(is_number);
    ok.then_some((lhs, rhs, step))
}

/// Parses one crontab field into a bit set (bit `v` set when value `v` matches).
pub fn parse_field(spec: &str, field: Field, strict: bool) -> Result<u64, CronError> {
    let (lo, hi) = field.bounds();
    let name = field.name();
    let in_range = |v: Option<u32>| v.filter(|v| (lo..=hi).contains(v));
    let mut bits: u64 = 0;
    for piece in spec.split(',') {
        if piece == "*" {
            bits |= (lo..=hi).fold(0, |acc, v| acc | 1 << v);
        } else if is_number(piece) {
            let v = in_range(number(piece))
                .ok_or_else(|| CronError(format!("{piece} is not a valid {name} ({lo}-{hi})")))?;
            bits |= 1 << v;
        } else if let Some((lhs, rhs, step)) = split_range(piece) {
            let invalid = || CronError(format!("{piece} is not a valid {name} range ({lo}-{hi})"));
            let start = in_range(number(lhs)).ok_or_else(invalid)?;
            let end = in_range(number(rhs)).ok_or_else(invalid)?;
            let step = match step {
                None => 1,
                Some(s) => match number(s) {
                    Some(n) if n > 0 => n as usize,
                    _ => return Err(CronError(format!("{piece}: the step must be at least 1"))),
                },
            };
            // A range whose start is past its end wraps around the top of the field.
            let values: Vec<u32> = if start <= end {
                (start..=end).collect()
            } else {
                let top = if field == Field::DayOfWeek { 6 } else { hi };
                (start..=top).chain(lo..=end).collect()
            };
            bits |= values
                .into_iter()
                .step_by(step)
                .fold(0, |acc, v| acc | 1 << v);
        } else if let Some(interval) = piece.strip_prefix("*/").filter(|s| is_number(s)) {
            if field == Field::DayOfWeek {
                return Err(CronError(format!(
                    "{piece}: day_of_week does not support */n, list the days instead"
                )));
            }
            let interval = match number(interval) {
                Some(n) if n > 0 => n as usize,
                _ => {
                    return Err(CronError(format!(
                        "{piece}: the interval must be at least 1"
                    )))
                }
            };
            bits |= (lo..=hi).step_by(interval).fold(0, |acc, v| acc | 1 << v);
        } else if strict {
            return Err(CronError(format!("'{piece}' is not a valid {name}")));
        }
    }
    if field == Field::DayOfWeek && bits & (1 << 7) != 0 {
        bits = (bits & !(1 << 7)) | 1; // 7 is another name for Sunday
    }
    if bits == 0 {
        return Err(CronError(format!("{name}='{spec}' matches no values")));
    }
    Ok(bits)
}

/// A parsed crontab specification: one bit set per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrontabSpec {
    minute: u64,
    hour: u64,
    day: u64,
    month: u64,
    day_of_week: u64,
}

impl CrontabSpec {
    pub fn parse(
        minute: &str,
        hour: &str,
        day: &str,
        month: &str,
        day_of_week: &str,
        strict: bool,
    ) -> Result<Self, CronError> {
        // Checked in huey's order, so the first error reported is the same one.
        let month = parse_field(month, Field::Month, strict)?;
        let day = parse_field(day, Field::Day, strict)?;
        let day_of_week = parse_field(day_of_week, Field::DayOfWeek, strict)?;
        let hour = parse_field(hour, Field::Hour, strict)?;
        let minute = parse_field(minute, Field::Minute, strict)?;
        Ok(CrontabSpec {
            minute,
            hour,
            day,
            month,
            day_of_week,
        })
    }

    /// `day_of_week` counts 0 = Sunday.
    pub fn matches(&self, month: u32, day: u32, day_of_week: u32, hour: u32, minute: u32) -> bool {
        let has = |bits: u64, v: u32| v < 64 && bits & (1 << v) != 0;
        has(self.month, month)
            && has(self.day, day)
            && has(self.day_of_week, day_of_week)
            && has(self.hour, hour)
            && has(self.minute, minute)
    }

    /// Whether the minute of `at` matches (its own fields; no time-zone conversion).
    pub fn matches_datetime(&self, at: &NaiveDateTime) -> bool {
        let dow = at.weekday().num_days_from_sunday();
        self.matches(at.month(), at.day(), dow, at.hour(), at.minute())
    }
}

/// A parsed crontab; calling it with a datetime says whether that minute matches.
#[pyclass(frozen, module = "huey._native", name = "Crontab")]
pub struct PyCrontab {
    spec: CrontabSpec,
    fields: [String; 5],
}

#[pymethods]
impl PyCrontab {
    #[new]
    #[pyo3(signature = (minute="*", hour="*", day="*", month="*", day_of_week="*", strict=false))]
    fn new(
        minute: &str,
        hour: &str,
        day: &str,
        month: &str,
        day_of_week: &str,
        strict: bool,
    ) -> PyResult<Self> {
        let spec = CrontabSpec::parse(minute, hour, day, month, day_of_week, strict)?;
        let fields = [minute, hour, day, month, day_of_week].map(str::to_owned);
        Ok(PyCrontab { spec, fields })
    }

    /// True when the datetime's minute matches (its own fields; no time-zone conversion).
    fn matches(&self, timestamp: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.spec.matches_datetime(&calendar_fields(timestamp)?))
    }

    fn __call__(&self, timestamp: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.matches(timestamp)
    }

    /// Matches explicit field values (`day_of_week` 0 = Sunday).
    fn matches_fields(
        &self,
        month: u32,
        day: u32,
        day_of_week: u32,
        hour: u32,
        minute: u32,
    ) -> bool {
        self.spec.matches(month, day, day_of_week, hour, minute)
    }

    fn __repr__(&self) -> String {
        let [minute, hour, day, month, dow] = &self.fields;
        format!(
            "crontab(minute='{minute}', hour='{hour}', day='{day}', month='{month}', \
             day_of_week='{dow}')"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(values: &[u32]) -> u64 {
        values.iter().fold(0, |acc, v| acc | 1 << v)
    }

    #[test]
    fn star_and_every() {
        assert_eq!(parse_field("*", Field::Hour, false).unwrap(), (1 << 24) - 1);
        assert_eq!(
            parse_field("*/15", Field::Minute, false).unwrap(),
            bits(&[0, 15, 30, 45])
        );
        assert_eq!(
            parse_field("*/5", Field::Month, false).unwrap(),
            bits(&[1, 6, 11])
        );
    }

    #[test]
    fn ranges_wrap_and_step() {
        assert_eq!(
            parse_field("22-2", Field::Hour, false).unwrap(),
            bits(&[22, 23, 0, 1, 2])
        );
        assert_eq!(
            parse_field("0-30/10", Field::Minute, false).unwrap(),
            bits(&[0, 10, 20, 30])
        );
        assert_eq!(
            parse_field("5-1", Field::DayOfWeek, false).unwrap(),
            bits(&[5, 6, 0, 1])
        );
        assert_eq!(
            parse_field("30-2", Field::Day, false).unwrap(),
            bits(&[30, 31, 1, 2])
        );
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        assert_eq!(
            parse_field("7", Field::DayOfWeek, false).unwrap(),
            bits(&[0])
        );
        assert_eq!(
            parse_field("5-7", Field::DayOfWeek, false).unwrap(),
            bits(&[5, 6, 0])
        );
    }

    #[test]
    fn errors_name_the_input() {
        let err = parse_field("61", Field::Minute, false).unwrap_err();
        assert_eq!(err.0, "61 is not a valid minute (0-59)");
        assert!(parse_field("0-61", Field::Minute, false)
            .unwrap_err()
            .0
            .contains("0-61"));
        assert!(parse_field("*/3", Field::DayOfWeek, false).is_err());
        assert!(parse_field("0-30/0", Field::Minute, false).is_err());
        assert!(parse_field("*/0", Field::Minute, false).is_err());
        assert!(parse_field("foo", Field::Minute, false)
            .unwrap_err()
            .0
            .contains("matches no"));
        assert!(parse_field("1,foo", Field::Minute, true)
            .unwrap_err()
            .0
            .contains("foo"));
        assert_eq!(
            parse_field("1,foo", Field::Minute, false).unwrap(),
            bits(&[1])
        );
    }

    #[test]
    fn spec_matches_datetimes() {
        let s = CrontabSpec::parse("0", "0", "*", "*", "1-5", false).unwrap();
        let at = |day, minute| {
            chrono::NaiveDate::from_ymd_opt(2026, 11, day)
                .unwrap()
                .and_hms_opt(0, minute, 0)
                .unwrap()
        };
        assert!(s.matches_datetime(&at(23, 0))); // a Monday
        assert!(!s.matches_datetime(&at(22, 0))); // a Sunday
        assert!(!s.matches_datetime(&at(23, 1)));
        let sunday = CrontabSpec::parse("*", "*", "*", "*", "7", false).unwrap();
        assert!(sunday.matches_datetime(&at(22, 5)));
        assert!(!sunday.matches_datetime(&at(21, 5)));
    }
}
