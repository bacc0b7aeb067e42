//! Property-based tests of every parser and converter of the core: whatever the input, none panics, each either
//! accepts it or refuses it with a reason, and where two readers of the same input exist they agree.
// proptest's generated test functions take their inputs by value.
#![allow(clippy::needless_pass_by_value)]

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::NaiveDate;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::bronze::{
    kafka_group, Converter, EventWindow, IdKind, LineOrigin, Lineage, Zone, LOCATIONS, PERFORMANCE_STATS, TABLES,
    TRANSPORT_UNITS,
};
use crate::cdc::parse_change;
use crate::enrich::{prepare, LineSource};
use crate::lake::BatchName;
use crate::landing::{land_slice, KafkaMessage, TopicDatasets};
use crate::partitions::{touched_partitions, CommitKey};
use crate::records::{validate_change, validate_position, Received};
use crate::weather::parse_response;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect()),
        Just(String::new()),
        Just(" \t ".to_owned()),
        Just("TU-1".to_owned()),
        Just("maritime".to_owned()),
        Just("2026-11-24".to_owned()),
        Just("+10000-01-01".to_owned()),
        Just("fleet.locations".to_owned()),
    ]
}

/// Timestamps around the interesting edges: valid, out of the representable years, malformed, with offsets.
fn timestamp() -> impl Strategy<Value = String> {
    (
        0u32..10_000,
        0u32..14,
        0u32..33,
        0u32..25,
        0u32..61,
        prop_oneof![Just("Z"), Just("+01:00"), Just("-23:59"), Just("")],
    )
        .prop_map(|(y, mo, d, h, mi, off)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:00{off}"))
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Value::from),
        (-200.0f64..200.0).prop_map(Value::from),
        Just(json!(1e300)),
        Just(json!(i32::MAX)),
        Just(json!(-719_163)),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
        timestamp().prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// A field name: one the schemas know, a lineage member, or anything.
fn name() -> impl Strategy<Value = String> {
    const KNOWN: [&str; 26] = [
        "transport_unit_id",
        "ts",
        "lat",
        "lon",
        "transport_type",
        "speed_kmh",
        "heading_deg",
        "altitude_m",
        "temperature_c",
        "weather_code",
        "weather_status",
        "_source",
        "_ingested_at",
        "op",
        "ts_ms",
        "lsn",
        "row",
        "stat_date",
        "fuel_used_l",
        "engine_hours",
        "name",
        "capacity_t",
        "topic",
        "partition",
        "offset",
        "timestamp",
    ];
    prop_oneof![proptest::sample::select(&KNOWN[..]).prop_map(str::to_owned), text()]
}

/// A record: mostly well-formed positions and changes, with fields replaced, added or of the wrong type.
fn record() -> impl Strategy<Value = Map<String, Value>> {
    let position = (text(), timestamp(), number(), number(), proptest::option::of(number())).prop_map(
        |(id, ts, lat, lon, speed)| {
            let mut m = Map::new();
            m.insert("transport_unit_id".into(), json!(id));
            m.insert("ts".into(), json!(ts));
            m.insert("lat".into(), lat);
            m.insert("lon".into(), lon);
            if let Some(s) = speed {
                m.insert("speed_kmh".into(), s);
            }
            m
        },
    );
    (position, proptest::collection::btree_map(name(), value(), 0..6)).prop_map(|(mut m, extra)| {
        m.extend(extra);
        m
    })
}

/// JSON text, sometimes cut short or with a byte changed: what a broken producer or a torn file gives.
fn line() -> impl Strategy<Value = Vec<u8>> {
    (record(), any::<proptest::sample::Index>(), any::<u8>(), 0u8..4).prop_map(|(r, at, byte, how)| {
        let mut bytes = serde_json::to_vec(&Value::Object(r)).unwrap_or_default();
        let i = at.index(bytes.len().max(1)).min(bytes.len());
        match how {
            0 => bytes.truncate(i),
            1 if i < bytes.len() => bytes[i] = byte,
            _ => {}
        }
        bytes
    })
}

fn origin() -> LineOrigin<'static> {
    LineOrigin {
        key: "enriched/locations/dt=2026-11-24/fleet.locations-0-1-9.ndjson.gz",
        etag: "e",
        line: 1,
        lineage: Lineage::Vouched,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The converter takes any line: a row is added or a reason is given, and the columns stay aligned.
    #[test]
    fn the_converter_accepts_or_refuses_every_line_with_a_reason(lines in proptest::collection::vec(line(), 1..8)) {
        let named = BatchName::from_key(origin().key).ok_or_else(|| TestCaseError::fail("not a batch name"))?;
        for lineage in [Lineage::Vouched, Lineage::Batch(&named), Lineage::File, Lineage::Poll] {
            for spec in TABLES.into_iter().filter(|t| t.input.0 != Zone::Bronze) {
                let mut c = Converter::new(spec).with_window(EventWindow::default(), 1_795_478_400_000_000);
                let mut accepted = 0;
                for l in &lines {
                    match c.push(l, LineOrigin { lineage, ..origin() }) {
                        Ok(()) => accepted += 1,
                        Err(e) => prop_assert!(!e.0.is_empty()),
                    }
                }
                let (batch, ids) = c.finish().map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(batch.num_rows(), accepted);
                prop_assert_eq!(ids.len(), accepted);
                // Whatever a line claims, a Kafka identity comes only from the batch the object is named after.
                for id in ids.iter().filter(|id| id.kind == IdKind::Kafka) {
                    match lineage {
                        Lineage::Batch(b) => {
                            let group = kafka_group(&b.topic, b.partition as i32);
                            prop_assert_eq!(&*id.group, group.as_str());
                            prop_assert!((b.first_offset..=b.last_offset).contains(&id.seq));
                        }
                        Lineage::File => prop_assert!(false, "a dropped file's line took a Kafka identity: {:?}", id),
                        Lineage::Poll => prop_assert!(false, "a polled object's line took a Kafka identity: {:?}", id),
                        Lineage::Vouched => {}
                    }
                }
            }
        }
    }

    /// Two readers of a position, msk-lander's (serde_json, then the contract) and delta-writer's (its own scanner),
    /// accept and refuse the same records.
    #[test]
    fn the_landing_validator_and_the_converter_agree_on_positions(rec in record()) {
        let mut rec = rec;
        for field in ["_source", "_ingested_at", "temperature_c", "weather_code", "weather_status"] {
            rec.remove(field);
        }
        let text = serde_json::to_vec(&Value::Object(rec.clone())).unwrap_or_default();
        let landing = validate_position(&rec, None);
        let writer = Converter::new(&LOCATIONS).push(&text, origin());
        prop_assert_eq!(landing.is_ok(), writer.is_ok(), "landing {:?} vs writer {:?}", landing, writer);
    }

    /// Debezium values of any shape: a tombstone, a change, or a reason.
    #[test]
    fn debezium_values_are_parsed_or_refused(v in value(), op in prop_oneof![Just("c"), Just("u"), Just("d"), Just("r"), Just("x")], ts_ms in any::<i64>(), lsn in number(), row in proptest::collection::btree_map(name(), value(), 0..6)) {
        let received = Received { window: EventWindow::default(), ingested_us: 1_795_478_400_000_000, produced_us: None };
        for event in [v, json!({"op": op, "source": {"ts_ms": ts_ms, "lsn": lsn}, "after": row, "before": row})] {
            match parse_change(event) {
                Ok(Some(change)) => {
                    for spec in [&PERFORMANCE_STATS, &TRANSPORT_UNITS] {
                        if let Err(e) = validate_change(&change, spec, Some(&received)) {
                            prop_assert!(!e.to_string().is_empty());
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    /// MSK records of any bytes: every one ends landed, quarantined with a reason, or counted as a tombstone.
    #[test]
    fn every_kafka_record_is_landed_quarantined_or_a_tombstone(values in proptest::collection::vec(prop_oneof![line().prop_map(Some), Just(None)], 1..10), raw in any::<bool>()) {
        for topic in ["fleet.locations", "pg.public.performance_stats", "unmapped"] {
            let msgs: Vec<KafkaMessage> = values.iter().enumerate().map(|(i, v)| KafkaMessage {
                topic: topic.into(),
                partition: 0,
                offset: i as i64,
                timestamp_ms: 1_795_478_400_000,
                value: v.as_ref().map(|b| if raw { String::from_utf8_lossy(b).into_owned() } else { base64::engine::general_purpose::STANDARD.encode(b) }),
            }).collect();
            let at = chrono::DateTime::from_timestamp_micros(1_795_478_500_000_000).unwrap_or_default();
            let slice = land_slice(msgs, &TopicDatasets::default(), at, EventWindow::default());
            let slice = slice.ok_or_else(|| TestCaseError::fail("no slice"))?;
            prop_assert_eq!(slice.lines.len() + slice.quarantined.len() + slice.tombstones, values.len());
            prop_assert!(slice.quarantined.iter().all(|q| !q.reason.is_empty()));
        }
    }

    /// Landed lines of any bytes: weather-enricher prepares them or quarantines them with a reason.
    #[test]
    fn landed_lines_are_prepared_or_quarantined(l in line()) {
        let src = LineSource { key: "landing/locations/dt=2026-11-24/x.ndjson.gz", etag: Some("e"), line: 1, batch: None };
        if let Err(q) = prepare(&l, src, 0.1, Some((EventWindow::default(), 1_795_478_400_000_000))) {
            prop_assert!(!q.reason.is_empty());
        }
    }

    /// Weather responses of any shape: series for the asked cells, or a reason.
    #[test]
    fn weather_responses_are_read_or_refused(v in value(), n in 1usize..4, cut in any::<proptest::sample::Index>()) {
        let day = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap_or_default();
        let hourly = |k: &Value| json!({"hourly": {"time": (0..24).map(|h| format!("2026-11-24T{h:02}:00")).collect::<Vec<_>>(), "temperature_2m": k, "wind_speed_10m": k, "precipitation": k, "weather_code": k}});
        let body = serde_json::to_vec(&json!([hourly(&v), hourly(&json!([v.clone()]))])).unwrap_or_default();
        let shorter = &body[..cut.index(body.len().max(1)).min(body.len())];
        for b in [&body[..], shorter, &serde_json::to_vec(&v).unwrap_or_default()[..]] {
            match parse_response(b, n, day) {
                Ok(series) => prop_assert_eq!(series.len(), n),
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
        }
    }

    /// Delta commit files of any content: partition-sync reads the partitions they touch or says why not.
    #[test]
    fn commit_files_are_read_or_refused(actions in proptest::collection::vec(value(), 0..5), path_values in proptest::collection::btree_map(name(), value(), 0..3), cut in any::<proptest::sample::Index>()) {
        let mut text = Vec::new();
        for a in &actions {
            text.extend(serde_json::to_vec(a).unwrap_or_default());
            text.push(b'\n');
        }
        let values: BTreeMap<String, Value> = path_values;
        text.extend(serde_json::to_vec(&json!({"add": {"path": "event_date=2026-11-24/x.parquet", "partitionValues": values, "dataChange": true}})).unwrap_or_default());
        text.extend(b"\n{\"remove\":{\"path\":\"event_date=2026-11-2");
        let shorter = &text[..cut.index(text.len().max(1)).min(text.len())];
        for spec in TABLES {
            for t in [&text[..], shorter] {
                if let Err(reason) = touched_partitions(spec, t) {
                    prop_assert!(!reason.is_empty());
                }
            }
        }
    }

    /// Object keys of any text: a commit key of the lake, or not one.
    #[test]
    fn object_keys_never_panic(key in text(), version in any::<u64>()) {
        let _ = CommitKey::parse("bronze/", &key);
        let _ = CommitKey::parse("bronze/", &format!("bronze/{key}/_delta_log/{version:020}.json"));
        let _ = CommitKey::in_lake("lake", "bronze/", "lake", &format!("bronze/locations/_delta_log/{key}.json"));
    }
}
