//! Position records of `fleet.locations`: validation per the design's record contract, unknown fields kept.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::bronze::{Check, UNIT_ID};

/// Transport types a position may declare (the bronze schema's list).
pub use crate::bronze::TRANSPORT_TYPES;

/// Longest accepted `transport_unit_id`, in characters (the bronze schema's rule).
pub const MAX_UNIT_ID_CHARS: usize = match UNIT_ID {
    Check::Id(_, max) => max,
    _ => 64,
};

/// Why a record was refused; the `Display` text is the quarantine reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// The Kafka value is not valid base64.
    #[error("value is not valid base64: {0}")]
    Base64(String),
    /// The value is not UTF-8 JSON.
    #[error("value is not JSON: {0}")]
    NotJson(String),
    /// The value is JSON but not an object.
    #[error("value is JSON {0}, not an object")]
    NotObject(&'static str),
    /// A required field is absent or null.
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    /// A field is present but breaks the contract.
    #[error("field `{field}` {problem}")]
    Invalid {
        /// The field at fault (a dotted path for nested fields).
        field: &'static str,
        /// What is wrong, with the offending value.
        problem: String,
    },
    /// The record's topic is not mapped to any dataset.
    #[error("topic {0:?} is not mapped to a dataset (TOPIC_DATASETS)")]
    UnknownTopic(String),
}

impl RecordError {
    fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid { field, problem: problem.into() }
    }
}

/// JSON type name for messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Parses a JSON object from bytes, naming what it got instead.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, RecordError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(RecordError::NotObject(json_type(&other))),
        Err(e) => Err(RecordError::NotJson(e.to_string())),
    }
}

/// The typed core of a valid position; the full record (unknown fields included) stays a JSON map.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// `transport_unit_id`, 1–64 characters.
    pub transport_unit_id: String,
    /// `ts`, RFC 3339, normalised to UTC.
    pub ts: DateTime<Utc>,
    /// `lat`, −90…90.
    pub lat: f64,
    /// `lon`, −180…180.
    pub lon: f64,
}

/// Read access to a record's top-level fields: a parsed JSON map, or a view that decoded only the fields the
/// contract names (the enricher's fast path).
pub trait Fields {
    /// The field's value, if present.
    fn field(&self, name: &str) -> Option<&Value>;
}

impl Fields for Map<String, Value> {
    fn field(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// Checks a position record against the contract and returns its typed core.
///
/// Required: `transport_unit_id`, `ts`, `lat`, `lon`. Optional but checked when present and not null:
/// `transport_type`, `speed_kmh`, `heading_deg`, `altitude_m`. Other fields are not looked at.
pub fn validate_position(rec: &impl Fields) -> Result<Position, RecordError> {
    let transport_unit_id = match rec.field("transport_unit_id") {
        None | Some(Value::Null) => return Err(RecordError::Missing("transport_unit_id")),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n == 0 || n > MAX_UNIT_ID_CHARS || s.trim().is_empty() {
                return Err(RecordError::invalid(
                    "transport_unit_id",
                    format!("must be 1-{MAX_UNIT_ID_CHARS} characters, got {n}"),
                ));
            }
            s.clone()
        }
        Some(other) => {
            return Err(RecordError::invalid(
                "transport_unit_id",
                format!("must be a string, got {}", json_type(other)),
            ))
        }
    };
    let ts = match rec.field("ts") {
        None | Some(Value::Null) => return Err(RecordError::Missing("ts")),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| RecordError::invalid("ts", format!("must be an RFC 3339 timestamp, got {s:?} ({e})")))?
            .with_timezone(&Utc),
        Some(other) => {
            return Err(RecordError::invalid("ts", format!("must be an RFC 3339 string, got {}", json_type(other))))
        }
    };
    let lat = required_number(rec, "lat", -90.0, 90.0)?;
    let lon = required_number(rec, "lon", -180.0, 180.0)?;
    match rec.field("transport_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if TRANSPORT_TYPES.contains(&t.as_str()) => {}
        Some(other) => {
            return Err(RecordError::invalid(
                "transport_type",
                format!("must be one of {}, got {other}", TRANSPORT_TYPES.join("|")),
            ))
        }
    }
    optional_number(rec, "speed_kmh", 0.0, f64::MAX)?;
    optional_number(rec, "heading_deg", 0.0, 360.0)?;
    optional_number(rec, "altitude_m", f64::MIN, f64::MAX)?;
    Ok(Position { transport_unit_id, ts, lat, lon })
}

fn required_number(rec: &impl Fields, field: &'static str, min: f64, max: f64) -> Result<f64, RecordError> {
    optional_number(rec, field, min, max)?.ok_or(RecordError::Missing(field))
}

fn optional_number(rec: &impl Fields, field: &'static str, min: f64, max: f64) -> Result<Option<f64>, RecordError> {
    match rec.field(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(RecordError::invalid(field, range_text(min, max, n))),
        },
        Some(other) => Err(RecordError::invalid(field, format!("must be a number, got {}", json_type(other)))),
    }
}

fn range_text(min: f64, max: f64, got: &serde_json::Number) -> String {
    match (min > f64::MIN, max < f64::MAX) {
        (true, true) => format!("must be between {min} and {max}, got {got}"),
        (true, false) => format!("must be >= {min}, got {got}"),
        _ => format!("must be a finite number, got {got}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test records are objects"),
        }
    }

    fn valid() -> Value {
        json!({"transport_unit_id": "TU-1", "ts": "2026-11-23T10:15:00+01:00", "lat": 51.5, "lon": -0.12,
               "transport_type": "maritime", "speed_kmh": 21.5, "heading_deg": 360, "altitude_m": null, "crew": 4})
    }

    #[test]
    fn a_valid_position_yields_its_core_in_utc() {
        let p = validate_position(&rec(valid())).unwrap();
        assert_eq!(p.transport_unit_id, "TU-1");
        assert_eq!(p.ts.to_rfc3339(), "2026-11-23T09:15:00+00:00");
        assert_eq!((p.lat, p.lon), (51.5, -0.12));
    }

    #[test]
    fn each_broken_field_is_named_in_the_reason() {
        let cases = [
            ("transport_unit_id", json!(null), "missing required field `transport_unit_id`"),
            ("transport_unit_id", json!(""), "field `transport_unit_id` must be 1-64 characters, got 0"),
            ("transport_unit_id", json!("x".repeat(65)), "field `transport_unit_id` must be 1-64 characters, got 65"),
            ("transport_unit_id", json!(7), "field `transport_unit_id` must be a string, got number"),
            ("ts", json!("yesterday"), "field `ts` must be an RFC 3339 timestamp"),
            ("lat", json!(90.5), "field `lat` must be between -90 and 90, got 90.5"),
            ("lon", json!("1.0"), "field `lon` must be a number, got string"),
            ("transport_type", json!("submarine"), "field `transport_type` must be one of aerial|maritime|terrestrial"),
            ("speed_kmh", json!(-1), "field `speed_kmh` must be >= 0, got -1"),
            ("heading_deg", json!(361), "field `heading_deg` must be between 0 and 360, got 361"),
        ];
        for (field, value, want) in cases {
            let mut r = rec(valid());
            r.insert(field.to_owned(), value);
            let got = validate_position(&r).unwrap_err().to_string();
            assert!(got.starts_with(want), "{field}: {got}");
        }
        let mut r = rec(valid());
        r.remove("lat");
        assert_eq!(validate_position(&r).unwrap_err(), RecordError::Missing("lat"));
    }

    #[test]
    fn non_objects_and_non_json_are_told_apart() {
        assert_eq!(parse_object(b"[1,2]").unwrap_err(), RecordError::NotObject("array"));
        assert!(matches!(parse_object(b"{not json").unwrap_err(), RecordError::NotJson(_)));
        assert!(matches!(parse_object(&[0xff, 0xfe]).unwrap_err(), RecordError::NotJson(_)));
    }
}
