//! A quarantined record: the line every stage writes for input it refuses, `{reason, stage, source, raw}`.

use serde::Serialize;
use serde_json::Value;

/// One quarantined record: `{reason, stage, source, raw}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuarantineLine {
    /// Why the record was refused.
    pub reason: String,
    /// The stage that refused it.
    pub stage: String,
    /// Where the record came from (Kafka coordinates, or the object key and line).
    pub source: Value,
    /// The record as received (`null` when there was no value at all).
    pub raw: Option<String>,
}

impl QuarantineLine {
    /// A line for `source` (anything serialisable, normally a lineage struct).
    pub fn new(reason: impl Into<String>, stage: &str, source: &impl Serialize, raw: Option<String>) -> Self {
        let source = serde_json::to_value(source).unwrap_or(Value::Null);
        Self { reason: reason.into(), stage: stage.to_owned(), source, raw }
    }
}
