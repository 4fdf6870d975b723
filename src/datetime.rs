//! Reading `datetime.datetime` objects without a Python call per field.
//!
//! The limited API (abi3) hides CPython's datetime accessor macros, so the packed fields are
//! read through the struct layout instead. That layout is checked against a known datetime the
//! first time it is needed; if it ever differs, every read falls back to attribute lookups.
//! Crontab matching (minute precision) and the schedules (microsecond timestamps) share it.

use std::os::raw::c_char;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The fields of a `datetime.datetime`, as stored (no time-zone conversion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DateTimeFields {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub microsecond: u32,
    pub has_tzinfo: bool,
}

impl DateTimeFields {
    /// Microseconds since 0001-01-01 00:00 on the proleptic Gregorian calendar, ignoring any
    /// tzinfo. Every valid datetime fits: year 9999 is about 3.2e17 microseconds.
    pub fn naive_micros(&self) -> i64 {
        let days = days_from_civil(self.year, self.month, self.day);
        let seconds = days * 86_400 + i64::from(self.hour) * 3_600 + i64::from(self.minute) * 60;
        (seconds + i64::from(self.second)) * 1_000_000 + i64::from(self.microsecond)
    }
}

/// Days from 0001-01-01 to the given proleptic Gregorian date (0001-01-01 is day 0).
pub fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    // Howard Hinnant's algorithm, counting years from March so leap days come last.
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    // 0000-03-01 is day 0 of the era count; 0001-01-01 comes 306 days later.
    era * 146_097 + doe - 306
}

/// Memory layout of CPython's `PyDateTime_DateTime` up to its packed fields: year (2 bytes,
/// big-endian), month, day, hour, minute, second, microsecond (3 bytes, big-endian). This
/// prefix has been the same in every CPython 3.x.
#[repr(C)]
struct RawDateTime {
    ob_base: ffi::PyObject,
    hashcode: ffi::Py_hash_t,
    hastzinfo: c_char,
    data: [u8; 10],
}

struct DateTimeType {
    class: Py<PyType>,
    layout_ok: bool,
}

static DATETIME: PyOnceLock<DateTimeType> = PyOnceLock::new();

fn datetime_type(py: Python<'_>) -> PyResult<&DateTimeType> {
    DATETIME.get_or_try_init(py, || {
        let class = py
            .import("datetime")?
            .getattr("datetime")?
            .cast_into::<PyType>()?;
        let probe = class.call1((2001, 2, 3, 4, 5, 6, 789_012))?;
        // SAFETY: `probe` is an exact `datetime.datetime`, whose layout starts with RawDateTime.
        let raw = unsafe { read_raw(probe.as_ptr()) };
        let expected = DateTimeFields {
            year: 2001,
            month: 2,
            day: 3,
            hour: 4,
            minute: 5,
            second: 6,
            microsecond: 789_012,
            has_tzinfo: false,
        };
        Ok(DateTimeType {
            class: class.unbind(),
            layout_ok: raw == expected,
        })
    })
}

/// # Safety
/// `obj` must point to a live `datetime.datetime` (or subclass) instance.
unsafe fn read_raw(obj: *mut ffi::PyObject) -> DateTimeFields {
    let raw = &*(obj as *const RawDateTime);
    let d = &raw.data;
    DateTimeFields {
        year: (i32::from(d[0]) << 8) | i32::from(d[1]),
        month: u32::from(d[2]),
        day: u32::from(d[3]),
        hour: u32::from(d[4]),
        minute: u32::from(d[5]),
        second: u32::from(d[6]),
        microsecond: (u32::from(d[7]) << 16) | (u32::from(d[8]) << 8) | u32::from(d[9]),
        has_tzinfo: raw.hastzinfo != 0,
    }
}

/// The fields of `value` when it is a `datetime.datetime` (or subclass), else `None`.
pub fn datetime_fields(value: &Bound<'_, PyAny>) -> PyResult<Option<DateTimeFields>> {
    let py = value.py();
    let dt = datetime_type(py)?;
    let class = dt.class.bind(py);
    let ty = value.get_type();
    // SAFETY: both are valid type objects.
    let is_datetime = ty.is(class)
        || unsafe { ffi::PyType_IsSubtype(ty.as_type_ptr(), class.as_type_ptr()) != 0 };
    if !is_datetime {
        return Ok(None);
    }
    if dt.layout_ok {
        // SAFETY: checked just above that `value` is a datetime.datetime instance, and that
        // the layout matches.
        return Ok(Some(unsafe { read_raw(value.as_ptr()) }));
    }
    let field = |name: &str| value.getattr(name)?.extract::<u32>();
    Ok(Some(DateTimeFields {
        year: value.getattr("year")?.extract()?,
        month: field("month")?,
        day: field("day")?,
        hour: field("hour")?,
        minute: field("minute")?,
        second: field("second")?,
        microsecond: field("microsecond")?,
        has_tzinfo: !value.getattr("tzinfo")?.is_none(),
    }))
}

/// A datetime as microseconds on the proleptic calendar, for ordering schedules.
///
/// Naive datetimes (what huey passes) are taken as they are; aware ones are converted to UTC
/// so that two aware datetimes order as Python compares them. `what` names the argument in
/// the error raised for anything that is not a datetime.
pub fn timestamp_micros(value: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
    let fields = datetime_fields(value)?.ok_or_else(|| {
        let type_name = value
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        PyTypeError::new_err(format!(
            "{what} must be a datetime.datetime, got {type_name}"
        ))
    })?;
    let mut micros = fields.naive_micros();
    if fields.has_tzinfo {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_numbers_match_python_toordinal() {
        // datetime.date(y, m, d).toordinal() - 1
        assert_eq!(days_from_civil(1, 1, 1), 0);
        assert_eq!(days_from_civil(1970, 1, 1), 719_162);
        assert_eq!(days_from_civil(2000, 2, 29), 730_178);
        assert_eq!(days_from_civil(2000, 3, 1), 730_179);
        assert_eq!(days_from_civil(9999, 12, 31), 3_652_058);
    }

    #[test]
    fn micros_order_within_a_second() {
        let base = DateTimeFields {
            year: 2024,
            month: 12,
            day: 31,
            hour: 23,
            minute: 59,
            second: 59,
            microsecond: 999_998,
            has_tzinfo: false,
        };
        let later = DateTimeFields {
            microsecond: 999_999,
            ..base
        };
        let next_year = DateTimeFields {
            year: 2025,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            microsecond: 0,
            has_tzinfo: false,
        };
        assert_eq!(later.naive_micros() - base.naive_micros(), 1);
        assert_eq!(next_year.naive_micros() - later.naive_micros(), 1);
        // 1970-01-01 is the Unix epoch.
        let epoch = DateTimeFields {
            year: 1970,
            month: 1,
            day: 1,
            ..Default::default()
        };
        assert_eq!(epoch.naive_micros(), 719_162 * 86_400 * 1_000_000);
    }
}
