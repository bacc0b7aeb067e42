//! One JSON value read as a typed cell of a column, and checked against the column's rule.

use super::*;

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError(pub String);

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn invalid(field: &str, problem: impl fmt::Display) -> RowError {
    RowError(format!("{field}: {problem}"))
}

/// A typed value read from JSON.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell<'a> {
    Null,
    Str(Cow<'a, str>),
    F64(f64),
    I64(i64),
    /// Microseconds since the epoch.
    Micros(i64),
    /// Days since the epoch.
    Days(i32),
}

pub(crate) fn read_cell<'a>(c: &Column, value: Option<Json<'a>>) -> Result<Cell<'a>, RowError> {
    let value = value.unwrap_or(Json::Null);
    if matches!(value, Json::Null) {
        return if c.required { Err(invalid(c.name, "required")) } else { Ok(Cell::Null) };
    }
    let got = value.kind();
    let wrong = |want: &str| invalid(c.name, format!("must be {want}, got {got}"));
    let cell = match (c.kind, value) {
        (Kind::Utf8, Json::Str(s)) => {
            if s.len() > MAX_TEXT_BYTES {
                return Err(invalid(c.name, format!("must be at most {MAX_TEXT_BYTES} bytes, got {}", s.len())));
            }
            Cell::Str(s)
        }
        (Kind::Utf8, _) => return Err(wrong("a string")),
        (Kind::Float64, Json::Int(v)) => Cell::F64(v as f64),
        (Kind::Float64, Json::UInt(v)) => Cell::F64(v as f64),
        (Kind::Float64, Json::Float(v)) => {
            if !v.is_finite() {
                return Err(invalid(c.name, "must be a finite number"));
            }
            Cell::F64(v)
        }
        (Kind::Float64, _) => return Err(wrong("a number")),
        (Kind::Int32, Json::Int(v)) => {
            if i32::try_from(v).is_err() {
                return Err(invalid(c.name, format!("must fit in 32 bits, got {v}")));
            }
            Cell::I64(v)
        }
        (Kind::Int64, Json::Int(v)) => Cell::I64(v),
        (Kind::Int32 | Kind::Int64, _) => return Err(wrong("an integer")),
        (Kind::EpochMillis, Json::Int(ms)) => Cell::Micros(
            ms.checked_mul(1000)
                .filter(|us| (MICROS_RANGE.0..=MICROS_RANGE.1).contains(us))
                .ok_or_else(|| invalid(c.name, format!("must be a time in the years 1 to 9999, got {ms}")))?,
        ),
        (Kind::EpochMillis, _) => return Err(wrong("integer epoch milliseconds")),
        (Kind::Timestamp, Json::Str(s)) => {
            let us = match rfc3339_micros_fast(&s) {
                Some(us) => us,
                None => DateTime::parse_from_rfc3339(&s)
                    .map_err(|e| invalid(c.name, format!("must be an RFC 3339 timestamp, got {s:?} ({e})")))?
                    .timestamp_micros(),
            };
            if !(MICROS_RANGE.0..=MICROS_RANGE.1).contains(&us) {
                return Err(invalid(c.name, format!("must be a time in the years 1 to 9999 UTC, got {s:?}")));
            }
            Cell::Micros(us)
        }
        (Kind::Timestamp, _) => return Err(wrong("an RFC 3339 timestamp string")),
        (Kind::Date, Json::Str(s)) => {
            let d = NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .map_err(|e| invalid(c.name, format!("must be a YYYY-MM-DD date, got {s:?} ({e})")))?;
            days_in_range(c, i64::from(d.num_days_from_ce()) - i64::from(UNIX_EPOCH_DAYS_CE))?
        }
        (Kind::Date, Json::Int(days)) => days_in_range(c, days)?,
        (Kind::Date, _) => return Err(wrong("a YYYY-MM-DD string or epoch days")),
        // Derived by the pipeline (a history table's `is_current`): no source line carries one.
        (Kind::Boolean, _) => return Err(invalid(c.name, "is derived by the pipeline, not read from a line")),
    };
    check(c, &cell)?;
    Ok(cell)
}

/// A date as days since 1970-01-01, refused outside [`DAYS_RANGE`] (years 1 to 9999), where Parquet readers, Athena
/// and chrono stop agreeing (or stop working).
fn days_in_range<'a>(c: &Column, days: i64) -> Result<Cell<'a>, RowError> {
    i32::try_from(days).ok().filter(|d| (DAYS_RANGE.0..=DAYS_RANGE.1).contains(d)).map(Cell::Days).ok_or_else(|| {
        invalid(c.name, format!("must be a date in the years 1 to 9999, got {days} days from 1970-01-01"))
    })
}

/// The common shape `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)` as UTC microseconds, without chrono's general
/// parser (a third of a row's conversion time); `None` for anything else, which then takes chrono's parser, so the
/// two always agree on what is valid.
pub(crate) fn rfc3339_micros_fast(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(r)?;
        digits.iter().try_fold(0u32, |n, d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None; // leap seconds and errors: chrono decides
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = i - start;
        if frac == 0 || frac > 9 {
            return None;
        }
        let digits = frac.min(6);
        micros = i64::from(num(start..start + digits)?) * 10i64.pow(6 - digits as u32);
    }
    let offset_s = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = i64::from(date.num_days_from_ce() - UNIX_EPOCH_DAYS_CE);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_s;
    Some(secs * 1_000_000 + micros)
}

/// A number for a message: whole numbers without a fraction, huge and tiny ones in exponent form.
fn number_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{}", v as i64)
    } else if v.abs() >= 1e16 || (v != 0.0 && v.abs() < 1e-5) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

pub(crate) fn check(c: &Column, cell: &Cell<'_>) -> Result<(), RowError> {
    let number = match cell {
        Cell::F64(v) => Some(*v),
        Cell::I64(v) => Some(*v as f64),
        _ => None,
    };
    match (c.check, cell) {
        (Check::Range(lo, hi), _) if number.is_some_and(|v| !(lo..=hi).contains(&v)) => {
            let v = number.unwrap_or_default();
            Err(invalid(c.name, format!("must be between {lo} and {hi}, got {}", number_text(v))))
        }
        (Check::Len(lo, hi), Cell::Str(s)) if !(lo..=hi).contains(&s.chars().count()) => {
            Err(invalid(c.name, format!("must be {lo}-{hi} characters, got {}", s.chars().count())))
        }
        (Check::Id(lo, hi), Cell::Str(s)) if !Check::id_ok(lo, hi, s) => {
            Err(invalid(c.name, format!("must be {lo}-{hi} characters, not all whitespace, got {}", s.chars().count())))
        }
        (Check::OneOf(allowed), Cell::Str(s)) if !allowed.contains(&s.as_ref()) => {
            Err(invalid(c.name, format!("must be one of {}, got {s:?}", allowed.join("|"))))
        }
        _ => Ok(()),
    }
}
