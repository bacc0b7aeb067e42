//! Debezium change events (JSON converter, with or without the `schema`/`payload` envelope) into landed changes.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::records::{json_type, RecordError};

/// A Debezium operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    /// Insert.
    #[serde(rename = "c")]
    Create,
    /// Update.
    #[serde(rename = "u")]
    Update,
    /// Delete.
    #[serde(rename = "d")]
    Delete,
    /// Snapshot read.
    #[serde(rename = "r")]
    Read,
}

/// One row change as landed: `{op, ts_ms, lsn, row}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The operation.
    pub op: Op,
    /// When the change happened in the database: `source.ts_ms`, or the envelope's `ts_ms` when absent.
    pub ts_ms: i64,
    /// PostgreSQL log sequence number of the change (`source.lsn`): with the table and key, the change's identity.
    /// Debezium always sends one; a change found by pg-poller has none (its identity is the table, the key and
    /// `ts_ms`, the row's `updated_at`) and lands without the member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
    /// The row after the change, or before it for deletes.
    pub row: Map<String, Value>,
}

/// Parses a Debezium value. `Ok(None)` is a tombstone (JSON `null`, or an envelope whose payload is null).
pub fn parse_change(value: Value) -> Result<Option<Change>, RecordError> {
    let mut event = match value {
        Value::Null => return Ok(None),
        Value::Object(m) => m,
        other => return Err(RecordError::NotObject(json_type(&other))),
    };
    // The JSON converter with schemas enabled wraps the event: {"schema": {...}, "payload": {...}}.
    if event.contains_key("schema") && event.contains_key("payload") {
        event = match event.remove("payload") {
            Some(Value::Object(p)) => p,
            Some(Value::Null) | None => return Ok(None),
            Some(other) => {
                return Err(RecordError::Invalid {
                    field: "payload",
                    problem: format!("must be an object, got {}", json_type(&other)),
                })
            }
        };
    }
    let op = match event.get("op") {
        Some(Value::String(s)) => match s.as_str() {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            other => {
                return Err(RecordError::Invalid {
                    field: "op",
                    problem: format!("must be one of c|u|d|r, got {other:?}"),
                })
            }
        },
        None | Some(Value::Null) => return Err(RecordError::Missing("op")),
        Some(other) => {
            return Err(RecordError::Invalid {
                field: "op",
                problem: format!("must be a string, got {}", json_type(other)),
            })
        }
    };
    let source = match event.get("source") {
        Some(Value::Object(s)) => s,
        None | Some(Value::Null) => return Err(RecordError::Missing("source")),
        Some(other) => {
            return Err(RecordError::Invalid {
                field: "source",
                problem: format!("must be an object, got {}", json_type(other)),
            })
        }
    };
    let lsn = match source.get("lsn") {
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| RecordError::Invalid {
            field: "source.lsn",
            problem: format!("must be a non-negative integer, got {n}"),
        })?,
        None | Some(Value::Null) => return Err(RecordError::Missing("source.lsn")),
        Some(other) => {
            return Err(RecordError::Invalid {
                field: "source.lsn",
                problem: format!("must be an integer, got {}", json_type(other)),
            })
        }
    };
    let Some(ts_ms) =
        source.get("ts_ms").and_then(Value::as_i64).or_else(|| event.get("ts_ms").and_then(Value::as_i64))
    else {
        return Err(RecordError::Missing("source.ts_ms"));
    };
    // Deletes carry the row in `before`; everything else in `after`.
    let image = if op == Op::Delete { "before" } else { "after" };
    let row = match event.remove(image) {
        Some(Value::Object(row)) => row,
        None | Some(Value::Null) => return Err(RecordError::Missing(image)),
        Some(other) => {
            return Err(RecordError::Invalid {
                field: image,
                problem: format!("must be an object, got {}", json_type(&other)),
            })
        }
    };
    Ok(Some(Change { op, ts_ms, lsn, row }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update() -> Value {
        json!({"before": {"unit_id": "TU-1", "fuel_l": 10.0}, "after": {"unit_id": "TU-1", "fuel_l": 12.5},
               "source": {"connector": "postgresql", "ts_ms": 1_763_900_000_000_i64, "lsn": 24_023_128, "table": "performance_stats"},
               "op": "u", "ts_ms": 1_763_900_000_500_i64})
    }

    #[test]
    fn plain_and_enveloped_events_land_the_same_change() {
        let plain = parse_change(update()).unwrap().unwrap();
        let wrapped = parse_change(json!({"schema": {"type": "struct"}, "payload": update()})).unwrap().unwrap();
        assert_eq!(plain, wrapped);
        assert_eq!(plain.op, Op::Update);
        assert_eq!(plain.ts_ms, 1_763_900_000_000);
        assert_eq!(plain.lsn, Some(24_023_128));
        assert_eq!(plain.row["fuel_l"], json!(12.5));
        assert_eq!(serde_json::to_value(&plain).unwrap()["op"], json!("u"));
    }

    #[test]
    fn deletes_land_the_before_image() {
        let mut ev = update();
        ev["op"] = json!("d");
        ev["after"] = Value::Null;
        let change = parse_change(ev).unwrap().unwrap();
        assert_eq!(change.row["fuel_l"], json!(10.0));
    }

    #[test]
    fn tombstones_are_none() {
        assert_eq!(parse_change(Value::Null).unwrap(), None);
        assert_eq!(parse_change(json!({"schema": {}, "payload": null})).unwrap(), None);
    }

    #[test]
    fn broken_events_say_why() {
        let mut ev = update();
        ev["op"] = json!("t");
        assert_eq!(parse_change(ev).unwrap_err().to_string(), "field `op` must be one of c|u|d|r, got \"t\"");
        let mut ev = update();
        ev["source"].as_object_mut().unwrap().remove("lsn");
        assert_eq!(parse_change(ev).unwrap_err(), RecordError::Missing("source.lsn"));
        let mut ev = update();
        ev["after"] = Value::Null;
        assert_eq!(parse_change(ev).unwrap_err(), RecordError::Missing("after"));
        assert_eq!(parse_change(json!([1])).unwrap_err(), RecordError::NotObject("array"));
    }
}
