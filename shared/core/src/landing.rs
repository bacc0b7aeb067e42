//! Kafka messages into landed lines: the functional core of msk-lander, with no I/O.
//!
//! One topic-partition slice of an MSK batch becomes one landing object (valid records, lineage added),
//! plus quarantine lines for the records that could not be landed, plus a count of skipped tombstones.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::bronze::{EventWindow, TableSpec, Zone, ADDED_FIELDS, MAX_FIELDS};
use crate::cdc::parse_change;
use crate::config::ConfigError;
use crate::lake::{is_valid_topic, BatchName};
use crate::ndjson::MAX_LINE_BYTES;
use crate::quarantine::QuarantineLine;
use crate::records::{parse_object, validate_change, validate_position, Received, RecordError};

/// The stage name msk-lander uses in quarantine keys and lines.
pub const STAGE: &str = "msk-lander";

/// Default `TOPIC_DATASETS`.
pub const DEFAULT_TOPIC_DATASETS: &str =
    "fleet.locations=locations,pg.public.performance_stats=performance_stats,pg.public.transport_units=transport_units";

/// The dataset whose records are positions; every other dataset carries Debezium change events.
pub const POSITIONS_DATASET: &str = "locations";

/// Which Kafka topic lands in which dataset (`landing/<dataset>/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDatasets(BTreeMap<String, String>);

impl TopicDatasets {
    /// Parses `topic=dataset,topic=dataset`; topics must be legal Kafka names, datasets lowercase identifiers.
    pub fn parse(var: &str, raw: &str) -> Result<Self, ConfigError> {
        let mut map = BTreeMap::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((topic, dataset)) = entry.split_once('=') else {
                return Err(ConfigError::new(var, format!("entry {entry:?} is not topic=dataset")));
            };
            let (topic, dataset) = (topic.trim(), dataset.trim());
            if !is_valid_topic(topic) {
                return Err(ConfigError::new(var, format!("{topic:?} is not a valid Kafka topic name")));
            }
            let dataset_ok = !dataset.is_empty()
                && dataset.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !dataset_ok {
                return Err(ConfigError::new(
                    var,
                    format!("dataset {dataset:?} must be lowercase letters, digits and _"),
                ));
            }
            if map.insert(topic.to_owned(), dataset.to_owned()).is_some() {
                return Err(ConfigError::new(var, format!("topic {topic:?} is mapped twice")));
            }
        }
        if map.is_empty() {
            return Err(ConfigError::new(var, "maps no topic"));
        }
        Ok(Self(map))
    }

    /// The dataset of `topic`, if mapped.
    pub fn dataset(&self, topic: &str) -> Option<&str> {
        self.0.get(topic).map(String::as_str)
    }
}

impl Default for TopicDatasets {
    fn default() -> Self {
        Self::parse("TOPIC_DATASETS", DEFAULT_TOPIC_DATASETS)
            .unwrap_or_else(|_| unreachable!("the default mapping is valid"))
    }
}

/// One Kafka message as the MSK trigger delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMessage {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i64,
    /// Offset in the partition.
    pub offset: i64,
    /// Broker or producer timestamp, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Base64 value; `None` is a tombstone.
    pub value: Option<String>,
}

/// Lineage of a landed record: where in Kafka it came from. Serialised as `_source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KafkaSource {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i64,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, epoch milliseconds.
    pub timestamp: i64,
}

/// What one topic-partition slice of a batch turned into.
#[derive(Debug, Clone, PartialEq)]
pub struct LandedSlice {
    /// The slice's identity (topic, partition, first and last offset of every message in it).
    pub name: BatchName,
    /// The dataset, or `None` for an unmapped topic.
    pub dataset: Option<String>,
    /// UTC date of the first message's Kafka timestamp (the first one set, else the ingestion date): the `dt=`
    /// partition of the slice's objects.
    pub dt: NaiveDate,
    /// Landed NDJSON lines, in offset order, without terminators.
    pub lines: Vec<Vec<u8>>,
    /// Records that could not be landed, with their reasons.
    pub quarantined: Vec<QuarantineLine>,
    /// Tombstones skipped.
    pub tombstones: usize,
}

/// Lands one slice: `messages` must all belong to one topic-partition; they are sorted by offset and a
/// repeated offset is kept once. `ingested_at` becomes every line's `_ingested_at`.
///
/// Returns `None` for an empty slice.
pub fn land_slice(
    mut messages: Vec<KafkaMessage>,
    datasets: &TopicDatasets,
    ingested_at: DateTime<Utc>,
    window: EventWindow,
) -> Option<LandedSlice> {
    messages.sort_by_key(|m| m.offset);
    messages.dedup_by_key(|m| m.offset);
    let (first, last) = (messages.first()?, messages.last()?);
    let name = BatchName {
        topic: first.topic.clone(),
        partition: first.partition,
        first_offset: first.offset,
        last_offset: last.offset,
    };
    // The first real Kafka timestamp (producers may send none: -1 or 0); without one, the ingestion date.
    let dt = messages
        .iter()
        .filter(|m| m.timestamp_ms > 0)
        .find_map(|m| DateTime::from_timestamp_millis(m.timestamp_ms))
        .map_or_else(|| ingested_at.date_naive(), |t| t.date_naive());
    let dataset = datasets.dataset(&first.topic).map(str::to_owned);
    let ingested_us = ingested_at.timestamp_micros();
    let ingested_at = ingested_at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut slice = LandedSlice { name, dataset, dt, lines: Vec::new(), quarantined: Vec::new(), tombstones: 0 };
    for msg in messages {
        let source =
            KafkaSource { topic: msg.topic, partition: msg.partition, offset: msg.offset, timestamp: msg.timestamp_ms };
        let Some(dataset) = slice.dataset.as_deref() else {
            let raw = msg.value.as_deref().map(|v| decode_raw(v).0);
            slice.quarantined.push(QuarantineLine::new(
                RecordError::UnknownTopic(source.topic.clone()).to_string(),
                STAGE,
                &source,
                raw,
            ));
            continue;
        };
        let Some(value) = msg.value else {
            slice.tombstones += 1;
            continue;
        };
        let received = Received {
            window,
            ingested_us,
            produced_us: (source.timestamp > 0).then(|| source.timestamp.saturating_mul(1000)),
        };
        match land_value(dataset, &value, &source, &ingested_at, &received) {
            Ok(Some(line)) => slice.lines.push(line),
            Ok(None) => slice.tombstones += 1,
            Err(reason) => {
                let (raw, is_text) = decode_raw(&value);
                let reason = if is_text { reason.to_string() } else { format!("{reason} (raw kept as base64)") };
                slice.quarantined.push(QuarantineLine::new(reason, STAGE, &source, Some(raw)));
            }
        }
    }
    Some(slice)
}

/// Decodes and validates one value; `Ok(None)` is a Debezium tombstone inside the value.
fn land_value(
    dataset: &str,
    b64: &str,
    source: &KafkaSource,
    ingested_at: &str,
    received: &Received,
) -> Result<Option<Vec<u8>>, RecordError> {
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| RecordError::Base64(e.to_string()))?;
    let mut out = if dataset == POSITIONS_DATASET {
        let rec = parse_object(&bytes)?;
        let own = rec.keys().filter(|k| !ADDED_FIELDS.contains(&k.as_str())).count();
        if own > MAX_FIELDS {
            return Err(RecordError::TooManyFields(own));
        }
        validate_position(&rec, Some(received))?;
        rec
    } else {
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| RecordError::NotJson(e.to_string()))?;
        let Some(change) = parse_change(value)? else {
            return Ok(None);
        };
        if let Some(spec) = TableSpec::for_input(Zone::Landing, dataset) {
            validate_change(&change, spec, Some(received))?;
        }
        match serde_json::to_value(change) {
            Ok(Value::Object(m)) => m,
            _ => unreachable!("a Change serialises to an object"),
        }
    };
    add_lineage(&mut out, source, ingested_at);
    let line = serde_json::to_vec(&out).unwrap_or_else(|_| unreachable!("a JSON map serialises"));
    // A line longer than the later stages read is refused here, the first stage that sees it, with its Kafka
    // coordinates (a later stage could only name the file and line).
    if line.len() > MAX_LINE_BYTES {
        return Err(RecordError::TooLong(line.len()));
    }
    Ok(Some(line))
}

fn add_lineage(rec: &mut Map<String, Value>, source: &KafkaSource, ingested_at: &str) {
    let source = serde_json::to_value(source).unwrap_or_else(|_| unreachable!("KafkaSource serialises"));
    rec.insert("_source".to_owned(), source);
    rec.insert("_ingested_at".to_owned(), Value::String(ingested_at.to_owned()));
}

/// The raw form of a value for quarantine: its text when it is base64 of UTF-8, else the base64 itself.
fn decode_raw(b64: &str) -> (String, bool) {
    match base64::engine::general_purpose::STANDARD.decode(b64).map(String::from_utf8) {
        Ok(Ok(text)) => (text, true),
        _ => (b64.to_owned(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &str) -> Option<String> {
        Some(base64::engine::general_purpose::STANDARD.encode(v))
    }

    fn msg(topic: &str, offset: i64, value: Option<String>) -> KafkaMessage {
        KafkaMessage { topic: topic.into(), partition: 2, offset, timestamp_ms: 1_795_478_400_000 + offset, value }
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T01:02:03.456Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn positions_get_lineage_and_keep_unknown_fields() {
        let pos = r#"{"transport_unit_id":"TU-7","ts":"2026-11-24T00:00:00Z","lat":1.5,"lon":2.5,"cargo":"fish"}"#;
        let slice = land_slice(
            vec![msg("fleet.locations", 11, b64(pos)), msg("fleet.locations", 10, None)],
            &TopicDatasets::default(),
            at(),
            EventWindow::default(),
        )
        .unwrap();
        assert_eq!(slice.name.to_string(), "fleet.locations-2-10-11");
        assert_eq!(slice.dt.to_string(), "2026-11-24");
        assert_eq!(slice.tombstones, 1);
        assert!(slice.quarantined.is_empty());
        let line: Value = serde_json::from_slice(&slice.lines[0]).unwrap();
        assert_eq!(
            line,
            json!({"transport_unit_id":"TU-7","ts":"2026-11-24T00:00:00Z","lat":1.5,"lon":2.5,"cargo":"fish",
                   "_source":{"topic":"fleet.locations","partition":2,"offset":11,"timestamp":1_795_478_400_011_i64},
                   "_ingested_at":"2026-11-24T01:02:03.456Z"})
        );
    }

    #[test]
    fn a_value_too_long_for_a_line_is_refused_with_its_coordinates() {
        let fits = format!(
            r#"{{"transport_unit_id":"TU-7","ts":"2026-11-24T00:00:00Z","lat":1.5,"lon":2.5,"pad":"{}"}}"#,
            "x".repeat(MAX_LINE_BYTES - 400)
        );
        let long = fits.replace(r#""pad":""#, &format!(r#""pad":"{}"#, "y".repeat(400)));
        let slice = land_slice(
            vec![msg("fleet.locations", 1, b64(&fits)), msg("fleet.locations", 2, b64(&long))],
            &TopicDatasets::default(),
            at(),
            EventWindow::default(),
        )
        .unwrap();
        assert_eq!(slice.lines.len(), 1);
        assert!(slice.lines[0].len() <= MAX_LINE_BYTES);
        assert_eq!(slice.quarantined.len(), 1);
        let q = &slice.quarantined[0];
        assert!(
            q.reason.ends_with(&format!("bytes as a landed line, more than the {MAX_LINE_BYTES} a line may hold")),
            "{}",
            q.reason
        );
        assert_eq!(q.source["offset"], json!(2));
    }

    #[test]
    fn a_position_of_too_many_fields_of_its_own_is_refused_as_it_lands() {
        let with = |n: usize| {
            let extra: String = (0..n).map(|i| format!(r#","f{i}":{i}"#)).collect();
            format!(
                r#"{{"transport_unit_id":"TU-7","ts":"2026-11-24T00:00:00Z","lat":1.5,"lon":2.5,"_source":1,"weather_code":3{extra}}}"#
            )
        };
        // 4 fields of the contract + n more; the lineage and weather fields it carries are not its own.
        let slice = land_slice(
            vec![
                msg("fleet.locations", 1, b64(&with(MAX_FIELDS - 4))),
                msg("fleet.locations", 2, b64(&with(MAX_FIELDS - 3))),
            ],
            &TopicDatasets::default(),
            at(),
            EventWindow::default(),
        )
        .unwrap();
        assert_eq!(slice.lines.len(), 1);
        assert_eq!(slice.quarantined.len(), 1);
        assert_eq!(slice.quarantined[0].reason, format!("has {} fields, more than {MAX_FIELDS}", MAX_FIELDS + 1));
    }

    #[test]
    fn debezium_changes_land_as_op_ts_lsn_row() {
        let ev = r#"{"schema":{"type":"struct"},"payload":{"op":"c","after":{"transport_unit_id":"TU-1"},"source":{"ts_ms":1795478399005,"lsn":77},"ts_ms":1795478399009}}"#;
        let slice = land_slice(
            vec![msg("pg.public.transport_units", 0, b64(ev))],
            &TopicDatasets::default(),
            at(),
            EventWindow::default(),
        )
        .unwrap();
        assert_eq!(slice.dataset.as_deref(), Some("transport_units"));
        let line: Value = serde_json::from_slice(&slice.lines[0]).unwrap();
        assert_eq!(line["op"], json!("c"));
        assert_eq!(line["ts_ms"], json!(1_795_478_399_005_i64));
        assert_eq!(line["lsn"], json!(77));
        assert_eq!(line["row"], json!({"transport_unit_id": "TU-1"}));
        assert_eq!(line["_source"]["offset"], json!(0));
    }

    #[test]
    fn bad_records_are_quarantined_with_reasons_and_the_rest_lands() {
        let good = r#"{"transport_unit_id":"TU-1","ts":"2026-11-24T00:00:00Z","lat":0,"lon":0}"#;
        let msgs = vec![
            msg("fleet.locations", 1, Some("***".into())),
            msg("fleet.locations", 2, b64("not json")),
            msg(
                "fleet.locations",
                3,
                b64(r#"{"transport_unit_id":"TU-1","ts":"2026-11-24T00:00:00Z","lat":95,"lon":0}"#),
            ),
            msg("fleet.locations", 4, Some(base64::engine::general_purpose::STANDARD.encode([0xff, 0x00]))),
            msg("fleet.locations", 5, b64(good)),
        ];
        let slice = land_slice(msgs, &TopicDatasets::default(), at(), EventWindow::default()).unwrap();
        assert_eq!(slice.lines.len(), 1);
        let reasons: Vec<&str> = slice.quarantined.iter().map(|q| q.reason.as_str()).collect();
        assert!(reasons[0].starts_with("value is not valid base64"), "{}", reasons[0]);
        assert!(reasons[1].starts_with("value is not JSON"), "{}", reasons[1]);
        assert_eq!(reasons[2], "field `lat` must be between -90 and 90, got 95");
        assert!(reasons[3].ends_with("(raw kept as base64)"), "{}", reasons[3]);
        assert_eq!(slice.quarantined[1].raw.as_deref(), Some("not json"));
        assert_eq!(slice.quarantined[1].source["offset"], json!(2));
        assert_eq!(slice.quarantined[0].stage, STAGE);
    }

    #[test]
    fn unknown_topics_are_quarantined_whole() {
        let slice = land_slice(
            vec![msg("other", 0, b64("{}")), msg("other", 1, None)],
            &TopicDatasets::default(),
            at(),
            EventWindow::default(),
        )
        .unwrap();
        assert!(slice.lines.is_empty());
        assert_eq!(slice.quarantined.len(), 2);
        assert_eq!(slice.quarantined[0].reason, "topic \"other\" is not mapped to a dataset (TOPIC_DATASETS)");
        assert_eq!(slice.quarantined[1].raw, None);
    }

    #[test]
    fn missing_kafka_timestamps_fall_back_to_the_next_one_or_the_ingestion_date() {
        let pos = r#"{"transport_unit_id":"TU-7","ts":"2026-11-24T00:00:00Z","lat":1.5,"lon":2.5}"#;
        let mut first = msg("fleet.locations", 1, b64(pos));
        first.timestamp_ms = -1;
        let second = msg("fleet.locations", 2, b64(pos));
        let later = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let slice =
            land_slice(vec![first.clone(), second], &TopicDatasets::default(), later, EventWindow::default()).unwrap();
        assert_eq!(slice.dt.to_string(), "2026-11-24");
        let slice = land_slice(vec![first], &TopicDatasets::default(), later, EventWindow::default()).unwrap();
        assert_eq!(slice.dt.to_string(), "2026-12-01");
    }

    #[test]
    fn implausible_values_are_quarantined_at_landing_and_the_rest_lands() {
        // msg() stamps 2026-11-24T00:00Z (+ offset ms); at() ingests at 2026-11-24T01:02Z.
        let pos = |ts: &str, extra: &str| {
            b64(&format!(r#"{{"transport_unit_id":"TU-1","ts":"{ts}","lat":1,"lon":2{extra}}}"#))
        };
        let positions = vec![
            msg("fleet.locations", 1, pos("2026-11-24T00:00:00Z", "")),
            msg("fleet.locations", 2, pos("2099-01-01T00:00:00Z", "")),
            msg("fleet.locations", 3, pos("2001-01-01T00:00:00Z", "")),
            msg("fleet.locations", 4, pos("2026-11-24T00:00:00Z", r#","speed_kmh":1e300"#)),
            msg("fleet.locations", 5, pos("2026-11-24T00:15:00Z", r#","altitude_m":1200"#)),
        ];
        let slice = land_slice(positions, &TopicDatasets::default(), at(), EventWindow::default()).unwrap();
        let reasons: Vec<&str> = slice.quarantined.iter().map(|q| q.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "field `ts` is more than 24 h after the record was ingested (EVENT_TIME_MAX_AHEAD_HOURS)",
                "field `ts` is more than 365 days before the record was produced (EVENT_TIME_MAX_AGE_DAYS)",
                "field `speed_kmh` must be between 0 and 2000, got 1e300",
            ]
        );
        assert_eq!(slice.lines.len(), 2, "the good positions land");

        let change = |ts_ms: i64, lsn: &str, row: &str| {
            b64(&format!(r#"{{"op":"u","source":{{"ts_ms":{ts_ms},"lsn":{lsn}}},"after":{row}}}"#))
        };
        let now_ms = 1_795_478_400_000;
        let changes = vec![
            msg(
                "pg.public.performance_stats",
                1,
                change(now_ms, "7", r#"{"transport_unit_id":"TU-1","stat_date":20416}"#),
            ),
            msg(
                "pg.public.performance_stats",
                2,
                change(now_ms, "8", r#"{"transport_unit_id":"TU-1","stat_date":2147483647}"#),
            ),
            msg(
                "pg.public.performance_stats",
                3,
                change(now_ms, "18446744073709551615", r#"{"transport_unit_id":"TU-1","stat_date":20416}"#),
            ),
            msg(
                "pg.public.performance_stats",
                4,
                change(now_ms, "9", r#"{"transport_unit_id":"TU-1","stat_date":20416,"fuel_used_l":1e308}"#),
            ),
            msg(
                "pg.public.performance_stats",
                5,
                change(i64::MAX, "10", r#"{"transport_unit_id":"TU-1","stat_date":20416}"#),
            ),
            // A business date long past is fine: no window on stat_date.
            msg(
                "pg.public.performance_stats",
                6,
                change(now_ms, "11", r#"{"transport_unit_id":"TU-1","stat_date":"1990-01-01"}"#),
            ),
        ];
        let slice = land_slice(changes, &TopicDatasets::default(), at(), EventWindow::default()).unwrap();
        let reasons: Vec<&str> = slice.quarantined.iter().map(|q| q.reason.as_str()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].starts_with("field `stat_date` must be a date in the years 1 to 9999"), "{}", reasons[0]);
        assert!(reasons[1].starts_with("field `lsn` must fit in 64 signed bits"), "{}", reasons[1]);
        assert!(reasons[2].starts_with("field `fuel_used_l` must be between 0 and 1000000"), "{}", reasons[2]);
        assert!(reasons[3].starts_with("field `ts_ms` must be a time in the years 1 to 9999"), "{}", reasons[3]);
        assert_eq!(slice.lines.len(), 2);
    }

    #[test]
    fn same_input_same_lines() {
        let pos = r#"{"transport_unit_id":"TU-7","ts":"2026-11-24T00:00:00Z","lat":1.5,"lon":2.5}"#;
        let make = || {
            land_slice(
                vec![msg("fleet.locations", 3, b64(pos)), msg("fleet.locations", 3, b64(pos))],
                &TopicDatasets::default(),
                at(),
                EventWindow::default(),
            )
        };
        let (a, b) = (make().unwrap(), make().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.lines.len(), 1, "a repeated offset lands once");
    }

    #[test]
    fn topic_dataset_mapping_is_validated() {
        let m = TopicDatasets::parse("TOPIC_DATASETS", " a.b = x , c=y_2 ").unwrap();
        assert_eq!(m.dataset("a.b"), Some("x"));
        for bad in ["a", "a=", "a/b=x", "a=X", "a=x,a=y", ""] {
            assert_eq!(TopicDatasets::parse("TOPIC_DATASETS", bad).unwrap_err().var, "TOPIC_DATASETS", "{bad:?}");
        }
    }
}
