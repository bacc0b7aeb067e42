//! Position records of `fleet.locations`: validation per the design's record contract, unknown fields kept.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::bronze::{
    read_cell, Cell, Column, EventWindow, Json, RowError, TableSpec, CHANGE_COLUMNS, LOCATIONS, MAX_FIELDS,
    WEATHER_COLUMNS,
};
use crate::cdc::Change;

/// Transport types a position may declare (the bronze schema's list).
pub use crate::bronze::TRANSPORT_TYPES;

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
    /// The record has more fields of its own than a record may have.
    #[error("has {0} fields, more than {max}", max = crate::bronze::MAX_FIELDS)]
    TooManyFields(usize),
    /// The value, or the line it would land as, is longer than a line may be.
    #[error("value is {0} bytes as a landed line, more than the {max} a line may hold", max = crate::ndjson::MAX_LINE_BYTES)]
    TooLong(usize),
    /// The record's topic is not mapped to any dataset.
    #[error("topic {0:?} is not mapped to a dataset (TOPIC_DATASETS)")]
    UnknownTopic(String),
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

/// When a record reached the lake: what its event time is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The window event times must fall in.
    pub window: EventWindow,
    /// When the record was ingested (landed), µs since the epoch.
    pub ingested_us: i64,
    /// When it was produced (its Kafka timestamp), µs since the epoch, if known.
    pub produced_us: Option<i64>,
}

/// A JSON value as the bronze cell reader takes it.
fn json_of(v: &Value) -> Json<'_> {
    match v {
        Value::Null => Json::Null,
        Value::Bool(_) => Json::Bool,
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Json::Int(i),
            (None, Some(u)) => Json::UInt(u),
            _ => Json::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Json::Str(Cow::Borrowed(s)),
        Value::Array(_) => Json::Array,
        Value::Object(_) => Json::Object,
    }
}

/// The contract of a position as producers send it: the bronze `locations` columns but the weather, which
/// weather-enricher adds.
pub fn position_columns() -> impl Iterator<Item = &'static Column> {
    LOCATIONS.data.iter().filter(|c| !WEATHER_COLUMNS.contains(&c.name))
}

/// Checks a position record against the contract and returns its typed core. The rules are the bronze
/// `locations` spec's, read by the same cell reader delta-writer uses, so every stage accepts and refuses alike.
///
/// Required: `transport_unit_id`, `ts`, `lat`, `lon`. Optional but checked when present and not null:
/// `transport_type`, `speed_kmh`, `heading_deg`, `altitude_m`. Other fields are not looked at. With `received`,
/// `ts` must also fall in the event-time window.
pub fn validate_position(rec: &impl Fields, received: Option<&Received>) -> Result<Position, RecordError> {
    let (mut id, mut ts, mut lat, mut lon) = (None, None, None, None);
    for c in position_columns() {
        let cell = read_cell(c, rec.field(c.name).map(json_of)).map_err(|e| refused(c, &e))?;
        match (c.name, cell) {
            ("transport_unit_id", Cell::Str(s)) => id = Some(s.into_owned()),
            ("ts", Cell::Micros(us)) => {
                if let Some(r) = received {
                    r.window
                        .check(us, r.ingested_us, r.produced_us)
                        .map_err(|problem| RecordError::Invalid { field: c.name, problem })?;
                }
                ts = DateTime::from_timestamp_micros(us);
            }
            ("lat", Cell::F64(v)) => lat = Some(v),
            ("lon", Cell::F64(v)) => lon = Some(v),
            _ => {}
        }
    }
    Ok(Position {
        transport_unit_id: id.ok_or(RecordError::Missing("transport_unit_id"))?,
        ts: ts.ok_or(RecordError::Missing("ts"))?,
        lat: lat.ok_or(RecordError::Missing("lat"))?,
        lon: lon.ok_or(RecordError::Missing("lon"))?,
    })
}

/// Checks a Debezium change against its bronze table's spec, as delta-writer will: `ts_ms` representable (and in
/// the event-time window, with `received`), `lsn` (when there is one: a polled change has none) a 64-bit integer, each of the row's columns of its type and
/// within its bounds, and no more than [`MAX_FIELDS`] fields in the row.
pub fn validate_change(change: &Change, spec: &TableSpec, received: Option<&Received>) -> Result<(), RecordError> {
    let [_, ts_col, lsn_col] = &CHANGE_COLUMNS;
    let ts = read_cell(ts_col, Some(Json::Int(change.ts_ms))).map_err(|e| refused(ts_col, &e))?;
    if let (Some(r), Cell::Micros(us)) = (received, ts) {
        r.window
            .check(us, r.ingested_us, r.produced_us)
            .map_err(|problem| RecordError::Invalid { field: "source.ts_ms", problem })?;
    }
    if let Some(lsn) = change.lsn.filter(|lsn| i64::try_from(*lsn).is_err()) {
        return Err(RecordError::Invalid {
            field: lsn_col.name,
            problem: format!("must fit in 64 signed bits, got {lsn}"),
        });
    }
    if change.row.len() > MAX_FIELDS {
        return Err(RecordError::Invalid {
            field: "row",
            problem: format!("has {} fields, more than {MAX_FIELDS}", change.row.len()),
        });
    }
    for c in spec.data {
        read_cell(c, change.row.get(c.name).map(json_of)).map_err(|e| refused(c, &e))?;
    }
    Ok(())
}

/// The cell reader's refusal as a record error: `Missing` for an absent required field, the problem otherwise.
fn refused(c: &'static Column, e: &RowError) -> RecordError {
    let problem = e.0.strip_prefix(c.name).and_then(|p| p.strip_prefix(": ")).unwrap_or(&e.0);
    if problem == "required" {
        RecordError::Missing(c.name)
    } else {
        RecordError::Invalid { field: c.name, problem: problem.to_owned() }
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
        let p = validate_position(&rec(valid()), None).unwrap();
        assert_eq!(p.transport_unit_id, "TU-1");
        assert_eq!(p.ts.to_rfc3339(), "2026-11-23T09:15:00+00:00");
        assert_eq!((p.lat, p.lon), (51.5, -0.12));
    }

    #[test]
    fn each_broken_field_is_named_in_the_reason() {
        let cases = [
            ("transport_unit_id", json!(null), "missing required field `transport_unit_id`"),
            ("transport_unit_id", json!(""), "field `transport_unit_id` must be 1-64 characters, not all whitespace"),
            (
                "transport_unit_id",
                json!(" \t "),
                "field `transport_unit_id` must be 1-64 characters, not all whitespace",
            ),
            ("transport_unit_id", json!("x".repeat(65)), "field `transport_unit_id` must be 1-64 characters"),
            ("transport_unit_id", json!(7), "field `transport_unit_id` must be a string, got a number"),
            ("ts", json!("yesterday"), "field `ts` must be an RFC 3339 timestamp"),
            ("ts", json!("0000-12-31T23:00:00Z"), "field `ts` must be a time in the years 1 to 9999"),
            ("ts", json!("0001-01-01T00:30:00+01:00"), "field `ts` must be a time in the years 1 to 9999"),
            ("lat", json!(90.5), "field `lat` must be between -90 and 90, got 90.5"),
            ("lon", json!("1.0"), "field `lon` must be a number, got a string"),
            ("transport_type", json!("submarine"), "field `transport_type` must be one of aerial|maritime|terrestrial"),
            ("speed_kmh", json!(-1), "field `speed_kmh` must be between 0 and 2000, got -1"),
            ("speed_kmh", json!(1e300), "field `speed_kmh` must be between 0 and 2000, got 1e300"),
            ("heading_deg", json!(361), "field `heading_deg` must be between 0 and 360, got 361"),
            ("altitude_m", json!(99_999_999), "field `altitude_m` must be between -500 and 20000"),
        ];
        for (field, value, want) in cases {
            let mut r = rec(valid());
            r.insert(field.to_owned(), value);
            let got = validate_position(&r, None).unwrap_err().to_string();
            assert!(got.starts_with(want), "{field}: {got}");
        }
        let mut r = rec(valid());
        r.remove("lat");
        assert_eq!(validate_position(&r, None).unwrap_err(), RecordError::Missing("lat"));
    }

    #[test]
    fn an_event_time_outside_the_window_is_refused_against_ingestion_and_production() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros();
        let ingested = at("2026-11-23T12:00:00Z");
        let received = |produced: Option<&str>| Received {
            window: EventWindow::default(),
            ingested_us: ingested,
            produced_us: produced.map(at),
        };
        let with_ts = |ts: &str| {
            let mut r = rec(valid());
            r.insert("ts".into(), json!(ts));
            r
        };
        // Up to a day ahead of ingestion, up to a year behind.
        assert!(validate_position(&with_ts("2026-11-24T11:59:59Z"), Some(&received(None))).is_ok());
        assert!(validate_position(&with_ts("2025-11-24T00:00:00Z"), Some(&received(None))).is_ok());
        let ahead = validate_position(&with_ts("2099-01-01T00:00:00Z"), Some(&received(None))).unwrap_err();
        assert_eq!(
            ahead.to_string(),
            "field `ts` is more than 24 h after the record was ingested (EVENT_TIME_MAX_AHEAD_HOURS)"
        );
        let old = validate_position(&with_ts("2020-01-01T00:00:00Z"), Some(&received(None))).unwrap_err();
        assert!(old.to_string().contains("more than 365 days before the record was ingested"), "{old}");
        // A record redriven long after it was produced is judged by when it was produced.
        let produced = Some("2020-01-02T00:00:00Z");
        assert!(validate_position(&with_ts("2020-01-01T00:00:00Z"), Some(&received(produced))).is_ok());
        // Without a window only the representable range applies.
        assert!(validate_position(&with_ts("2099-01-01T00:00:00Z"), None).is_ok());
    }

    #[test]
    fn the_contract_is_the_bronze_spec_without_the_weather() {
        let names: Vec<&str> = position_columns().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["transport_unit_id", "ts", "lat", "lon", "transport_type", "speed_kmh", "heading_deg", "altitude_m"]
        );
    }

    #[test]
    fn non_objects_and_non_json_are_told_apart() {
        assert_eq!(parse_object(b"[1,2]").unwrap_err(), RecordError::NotObject("array"));
        assert!(matches!(parse_object(b"{not json").unwrap_err(), RecordError::NotJson(_)));
        assert!(matches!(parse_object(&[0xff, 0xfe]).unwrap_err(), RecordError::NotJson(_)));
    }
}
