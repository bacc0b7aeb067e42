//! The payload of the MSK event source mapping.
//!
//! It mirrors `aws_lambda_events::kafka::KafkaEvent` (and accepts the same JSON, that crate's own fixture
//! included) with one difference that matters for lineage: `timestamp` stays the integer epoch milliseconds it
//! is on the wire. aws_lambda_events 1.2 converts it through `f64` seconds and drops milliseconds
//! (`1795507200001` reads back as `…000`), and it panics on a fractional value; neither is acceptable for
//! `_source.timestamp`.

use std::collections::HashMap;

use serde::Deserialize;

/// An MSK (or self-managed Kafka) trigger batch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MskEvent {
    /// `aws:kafka` for MSK.
    #[serde(default)]
    pub(crate) event_source: Option<String>,
    /// The cluster ARN.
    #[serde(default)]
    pub(crate) event_source_arn: Option<String>,
    /// Records grouped by `<topic>-<partition>`.
    #[serde(default)]
    pub(crate) records: Option<HashMap<String, Vec<MskRecord>>>,
}

/// One Kafka record of the batch; headers are not used and not parsed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MskRecord {
    /// Topic (absent in some self-managed Kafka payloads: then taken from the group key).
    #[serde(default)]
    pub(crate) topic: Option<String>,
    /// Partition.
    pub(crate) partition: i64,
    /// Offset.
    pub(crate) offset: i64,
    /// Epoch milliseconds.
    #[serde(default)]
    pub(crate) timestamp: i64,
    /// Base64 value; `null` is a tombstone.
    #[serde(default)]
    pub(crate) value: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millisecond_timestamps_survive_exactly() {
        let rec: MskRecord = serde_json::from_str(
            r#"{"topic":"t","partition":0,"offset":1,"timestamp":1795507200001,"timestampType":"CREATE_TIME","key":null,"value":null,"headers":[{"h":[1,2]}]}"#,
        )
        .unwrap();
        assert_eq!(rec.timestamp, 1_795_507_200_001);
    }

    #[test]
    fn null_records_is_an_empty_batch() {
        let ev: MskEvent = serde_json::from_str(r#"{"eventSource":"aws:kafka","records":null}"#).unwrap();
        assert!(ev.records.unwrap_or_default().is_empty());
    }
}
