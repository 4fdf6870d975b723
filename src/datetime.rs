//! The one date module: Python datetimes in, `chrono` dates and microsecond timestamps out.
//!
//! Crontab matching (`crontab.rs`) looks at a datetime's calendar fields; the Memory and File
//! schedules order messages by `timestamp_micros`. Calendar arithmetic (day numbers, weekdays,
//! validity) is chrono's; reading the datetime object is `ffi::datetime_parts`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::ffi::{self, DateTimeParts};

/// A naive date and time from its fields; None for an impossible date (February 30th).
pub fn naive(parts: &DateTimeParts) -> Option<NaiveDateTime> {
    let date = NaiveDate::from_ymd_opt(parts.year, parts.month, parts.day)?;
    let time =
        NaiveTime::from_hms_micro_opt(parts.hour, parts.minute, parts.second, parts.microsecond)?;
    Some(date.and_time(time))
}

/// Microseconds since 1970-01-01 00:00 of a naive datetime, taken as UTC.
pub fn micros_since_epoch(value: &NaiveDateTime) -> i64 {
    // Every datetime Python can hold (years 1-9999) is within i64 microseconds of 1970.
    value.and_utc().timestamp_micros()
}

/// The naive datetime `micros` after 1970-01-01 00:00, when it is in chrono's range.
pub fn from_micros_since_epoch(micros: i64) -> Option<NaiveDateTime> {
    DateTime::<Utc>::from_timestamp_micros(micros).map(|t| t.naive_utc())
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// A `datetime.datetime` (or subclass) as a naive datetime, as its own fields say (no
/// time-zone conversion), and whether it carries a tzinfo. None for anything else.
pub fn read(value: &Bound<'_, PyAny>) -> PyResult<Option<(NaiveDateTime, bool)>> {
    let Some(parts) = ffi::datetime_parts(value)? else {
        return Ok(None);
    };
    // A datetime object always holds a valid date; this only guards the fallback path.
    let naive = naive(&parts)
        .ok_or_else(|| PyValueError::new_err(format!("invalid datetime fields {parts:?}")))?;
    Ok(Some((naive, parts.has_tzinfo)))
}

/// A datetime as microseconds since 1970-01-01, for ordering schedules.
///
/// Naive datetimes (what huey passes) are taken as they are; aware ones are converted to UTC
/// so that two aware datetimes order as Python compares them. `what` names the argument in
/// the error raised for anything that is not a datetime.
pub fn timestamp_micros(value: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
    let (naive, aware) = read(value)?.ok_or_else(|| {
        PyTypeError::new_err(format!(
            "{what} must be a datetime.datetime, got {}",
            type_name(value)
        ))
    })?;
    let mut micros = micros_since_epoch(&naive);
    if aware {
        let offset = value.call_method0("utcoffset")?;
        if !offset.is_none() {
            let days: i64 = offset.getattr("days")?.extract()?;
            let seconds: i64 = offset.getattr("seconds")?.extract()?;
            let us: i64 = offset.getattr("microseconds")?.extract()?;
            micros -= (days * 86_400 + seconds) * 1_000_000 + us;
        }
    }
    Ok(micros)
}

/// The calendar fields of a datetime, or of anything with `timetuple()` (dates and
/// datetime-like objects, as huey's crontab accepts), to the minute.
pub fn calendar_fields(value: &Bound<'_, PyAny>) -> PyResult<NaiveDateTime> {
    if let Some((naive, _)) = read(value)? {
        return Ok(naive);
    }
    let tt = value.call_method0("timetuple").map_err(|_| {
        PyTypeError::new_err(format!(
            "crontab expects a datetime, got {}",
            type_name(value)
        ))
    })?;
    let parts = DateTimeParts {
        year: tt.get_item(0)?.extract()?,
        month: tt.get_item(1)?.extract()?,
        day: tt.get_item(2)?.extract()?,
        hour: tt.get_item(3)?.extract()?,
        minute: tt.get_item(4)?.extract()?,
        ..DateTimeParts::default()
    };
    naive(&parts).ok_or_else(|| {
        PyValueError::new_err(format!(
            "timetuple() of {} is not a valid date: {parts:?}",
            type_name(value)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike};

    fn parts(year: i32, month: u32, day: u32) -> DateTimeParts {
        DateTimeParts {
            year,
            month,
            day,
            ..DateTimeParts::default()
        }
    }

    #[test]
    fn epoch_micros_match_python() {
        // (datetime(...) - datetime(1970, 1, 1)) // timedelta(microseconds=1)
        let at = |p: DateTimeParts| micros_since_epoch(&naive(&p).unwrap());
        assert_eq!(at(parts(1970, 1, 1)), 0);
        assert_eq!(at(parts(2000, 3, 1)), 951_868_800_000_000);
        assert_eq!(at(parts(1, 1, 1)), -62_135_596_800_000_000);
        assert_eq!(at(parts(9999, 12, 31)), 253_402_214_400_000_000);
        let last = DateTimeParts {
            hour: 23,
            minute: 59,
            second: 59,
            microsecond: 999_999,
            ..parts(1969, 12, 31)
        };
        assert_eq!(at(last), -1);
    }

    #[test]
    fn micros_round_trip() {
        for micros in [0, -1, 1, 951_868_800_000_001, -62_135_596_800_000_000] {
            let back = from_micros_since_epoch(micros).unwrap();
            assert_eq!(micros_since_epoch(&back), micros);
        }
    }

    #[test]
    fn impossible_dates_are_none() {
        assert!(naive(&parts(2023, 2, 29)).is_none());
        assert!(naive(&parts(2024, 2, 29)).is_some());
        assert!(naive(&parts(2024, 13, 1)).is_none());
        assert!(naive(&DateTimeParts {
            minute: 60,
            ..parts(2024, 1, 1)
        })
        .is_none());
    }

    #[test]
    fn weekday_and_fields() {
        let friday = naive(&DateTimeParts {
            hour: 7,
            minute: 30,
            ..parts(2026, 11, 27)
        })
        .unwrap();
        assert_eq!(friday.weekday().num_days_from_sunday(), 5);
        assert_eq!((friday.hour(), friday.minute()), (7, 30));
        assert_eq!(
            naive(&parts(2000, 1, 1))
                .unwrap()
                .weekday()
                .num_days_from_sunday(),
            6
        );
    }
}
