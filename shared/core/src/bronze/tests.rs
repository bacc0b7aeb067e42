//! The bronze specs and the converter, on lines a producer sends.

use super::*;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, Float64Array};

fn origin(line: u64) -> LineOrigin<'static> {
    LineOrigin { key: "enriched/locations/dt=2026-11-24/f.ndjson.gz", etag: "e1", line }
}

const POSITION: &str = r#"{"transport_unit_id":"TU-1","ts":"2026-11-24T23:45:00+01:00","lat":53.5,"lon":9.9,"speed_kmh":12,"_source":{"topic":"fleet.locations","partition":2,"offset":7,"timestamp":1795507200001},"_ingested_at":"2026-11-24T08:00:00Z","weather_code":61,"flight_level":"FL350","tags":["a"]}"#;

#[test]
fn a_position_becomes_one_typed_row_with_lineage_and_identity() {
    let mut c = Converter::new(&LOCATIONS);
    c.push(POSITION.as_bytes(), origin(3)).unwrap();
    let (batch, ids) = c.finish().unwrap();
    assert_eq!(batch.num_rows(), 1);
    let ts = batch.column_by_name("ts").unwrap().as_primitive::<TimestampMicrosecondType>().value(0);
    assert_eq!(ts, 1_795_560_300_000_000, "the offset is applied: 22:45 UTC");
    let day = batch.column_by_name("event_date").unwrap().as_primitive::<Date32Type>().value(0);
    assert_eq!(date_text(day), "2026-11-24", "the UTC date of ts");
    let speed = batch.column_by_name("speed_kmh").unwrap().as_any().downcast_ref::<Float64Array>().unwrap().value(0);
    assert_eq!(speed, 12.0, "an integer is a valid number");
    assert_eq!(
        batch.column_by_name("_extra").unwrap().as_string::<i32>().value(0),
        r#"{"flight_level":"FL350","tags":["a"]}"#
    );
    let src_ts = batch.column_by_name("_source_timestamp").unwrap().as_primitive::<TimestampMicrosecondType>().value(0);
    assert_eq!(src_ts, 1_795_507_200_001_000, "milliseconds kept");
    assert_eq!(batch.column_by_name("_line").unwrap().as_primitive::<Int64Type>().value(0), 3);
    assert!(batch.column_by_name("_source_key").unwrap().is_null(0), "a Kafka record names no file");
    assert_eq!(
        ids.iter().collect::<Vec<_>>(),
        [Identity { kind: IdKind::Kafka, group: "fleet.locations|2".into(), seq: 7 }]
    );
    assert_eq!(batch.schema(), LOCATIONS.arrow_schema());
}

#[test]
fn keys_are_matched_whatever_their_order_escapes_or_repeats() {
    let mut c = Converter::new(&LOCATIONS);
    let lines = [
        // The same key order on consecutive lines, then another order, then escapes and repeats.
        r#"{"transport_unit_id":"TU-1","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2}"#,
        r#"{"transport_unit_id":"TU-2","ts":"2026-11-24T10:00:00Z","lat":3,"lon":4}"#,
        r#"{"lon":6,"lat":5,"ts":"2026-11-24T10:00:00Z","transport_unit_id":"TU-3"}"#,
        r#"{"transport_unit_\u0069d":"TU-4","ts":"2026-11-24T10:00:00Z","lat":7,"lon":8,"x\u0079":1}"#,
        r#"{"transport_unit_id":"TU-0","lat":90,"ts":"2026-11-24T10:00:00Z","lat":9,"lon":10,"k":1,"k":2}"#,
    ];
    for (i, line) in lines.iter().enumerate() {
        c.push(line.as_bytes(), origin(i as u64 + 1)).unwrap();
    }
    let (batch, _) = c.finish().unwrap();
    let units = batch.column_by_name("transport_unit_id").unwrap().as_string::<i32>();
    let lat = batch.column_by_name("lat").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
    let lon = batch.column_by_name("lon").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
    let extra = batch.column_by_name("_extra").unwrap().as_string::<i32>();
    let rows: Vec<(&str, f64, f64, Option<&str>)> = (0..batch.num_rows())
        .map(|i| (units.value(i), lat.value(i), lon.value(i), (!extra.is_null(i)).then(|| extra.value(i))))
        .collect();
    assert_eq!(
        rows,
        [
            ("TU-1", 1.0, 2.0, None),
            ("TU-2", 3.0, 4.0, None),
            ("TU-3", 5.0, 6.0, None),
            ("TU-4", 7.0, 8.0, Some(r#"{"xy":1}"#)),
            ("TU-0", 9.0, 10.0, Some(r#"{"k":2}"#)),
        ],
        "an escaped key is its unescaped name; a repeated key's last value wins"
    );
}

#[test]
fn numbers_keep_every_bit_the_text_gives_them() {
    // Shortest round-trip texts of doubles (what serializers write), and texts with more digits than a double
    // holds: each must read as the correctly rounded double, as Rust's own parser reads it.
    let mut texts: Vec<String> = [
        "0.30000000000000004",
        "53.551086",
        "-9.993682",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "5e-324",
        "0.1",
        "123456789012345678",
        "1.00000000000000011102230246251565404236316680908203125",
        "9007199254740993",
        "-0.0",
    ]
    .map(String::from)
    .to_vec();
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2000 {
        let v = f64::from_bits(rng.u64(..));
        if v.is_finite() {
            texts.push(format!("{v:?}"));
            texts.push(format!("{:.17e}", v));
        }
    }
    let mut c = Converter::new(&LOCATIONS);
    for t in &texts {
        let line =
            format!(r#"{{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"altitude_m":{t}}}"#);
        c.push(line.as_bytes(), origin(1)).unwrap();
    }
    let (batch, _) = c.finish().unwrap();
    let alt = batch.column_by_name("altitude_m").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
    for (i, t) in texts.iter().enumerate() {
        let want: f64 = t.parse().unwrap();
        assert_eq!(alt.value(i).to_bits(), want.to_bits(), "{t}");
    }
}

#[test]
fn the_timestamp_fast_path_agrees_with_chrono() {
    let samples = [
        "2026-11-24T10:00:00Z",
        "2026-11-24t10:00:00z",
        "1969-12-31T23:59:59.999999Z",
        "2026-11-24T23:45:00+01:00",
        "2026-11-24T00:15:00-05:30",
        "2024-02-29T12:00:00.5Z",
        "2026-11-24T10:00:00.123456789Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
    ];
    for s in samples {
        let chrono = DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros();
        assert_eq!(rfc3339_micros_fast(s), Some(chrono), "{s}");
    }
    // Not taken by the fast path: chrono decides (and refuses or accepts) these.
    for s in [
        "2026-02-30T10:00:00Z",
        "2026-11-24T24:00:00Z",
        "2026-11-24T10:00:60Z",
        "2026-11-24T10:00:00",
        "2026-11-24 10:00:00Z",
        "2026-11-24T10:00:00.Z",
        "2026-11-24T10:00:00+0100",
        "+2026-11-24T10:00:00Z",
    ] {
        assert_eq!(rfc3339_micros_fast(s), None, "{s}");
    }
}

#[test]
fn a_record_of_a_dropped_file_is_identified_by_file_and_line() {
    let mut c = Converter::new(&LOCATIONS);
    let line = r#"{"transport_unit_id":"TU-1","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"_source":{"key":"landing/locations/dt=2026-11-24/drop.ndjson.gz","etag":"abc"}}"#;
    c.push(line.as_bytes(), origin(9)).unwrap();
    let (_, ids) = c.finish().unwrap();
    assert_eq!(
        ids.iter().collect::<Vec<_>>(),
        [Identity { kind: IdKind::File, group: "landing/locations/dt=2026-11-24/drop.ndjson.gz|abc".into(), seq: 9 }]
    );
}

#[test]
fn bad_records_are_refused_with_the_field_and_nothing_is_added() {
    let cases = [
        (r#"{"ts":"2026-11-24T10:00:00Z","lat":1,"lon":2}"#, "transport_unit_id: required"),
        // The same identifier rule as every other stage (records::validate_position): not all whitespace.
        (
            r#"{"transport_unit_id":" \t ","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2}"#,
            "transport_unit_id: must be 1 to 64 characters, not all whitespace",
        ),
        (r#"{"transport_unit_id":"T","ts":"2026-11-24","lat":1,"lon":2}"#, "ts: not an RFC 3339 timestamp"),
        (r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":91,"lon":2}"#, "lat: 91 is outside"),
        (
            r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":"1","lon":2}"#,
            "lat: expected a number, got a string",
        ),
        (
            r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"weather_code":1.5}"#,
            "weather_code: expected an integer",
        ),
        (
            r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"transport_type":"rail"}"#,
            "transport_type: \"rail\" is not one of",
        ),
        (r#"[1,2]"#, "not a JSON object"),
        (r#"{"transport_unit_id":"T","#, "not a JSON object"),
    ];
    let mut c = Converter::new(&LOCATIONS);
    for (line, want) in cases {
        let err = c.push(line.as_bytes(), origin(1)).unwrap_err();
        assert!(err.0.starts_with(want), "{line}: {err}");
    }
    assert!(c.is_empty());
    c.push(POSITION.as_bytes(), origin(2)).unwrap();
    let (batch, ids) = c.finish().unwrap();
    assert_eq!((batch.num_rows(), ids.len()), (1, 1), "columns stay aligned after refusals");
}

#[test]
fn changes_carry_op_lsn_and_a_key_identity_and_accept_debezium_dates() {
    let mut c = Converter::new(&PERFORMANCE_STATS);
    let line = r#"{"op":"u","ts_ms":1795507197000,"lsn":24023512,"row":{"transport_unit_id":"TU-42","stat_date":20415,"distance_km":1.5,"note":"x"},"_source":{"topic":"pg.public.performance_stats","partition":0,"offset":6,"timestamp":1}}"#;
    c.push(line.as_bytes(), origin(1)).unwrap();
    let (batch, ids) = c.finish().unwrap();
    assert_eq!(
        ids.iter().collect::<Vec<_>>(),
        [Identity { kind: IdKind::Change, group: "u|TU-42|2025-11-23".into(), seq: 24_023_512 }]
    );
    assert_eq!(batch.column_by_name("_extra").unwrap().as_string::<i32>().value(0), r#"{"note":"x"}"#);
    assert!(batch.column_by_name("fuel_used_l").unwrap().is_null(0));
    let missing_key = r#"{"op":"d","ts_ms":1,"lsn":2,"row":{"transport_unit_id":"TU-42"}}"#;
    assert_eq!(c.push(missing_key.as_bytes(), origin(2)).unwrap_err().0, "stat_date: required");
    let bad_op = r#"{"op":"x","ts_ms":1,"lsn":2,"row":{"transport_unit_id":"TU-42","stat_date":"2026-11-23"}}"#;
    assert!(c.push(bad_op.as_bytes(), origin(3)).unwrap_err().0.starts_with("op: \"x\" is not one of"));
}

#[test]
fn every_table_indexes_its_identity_columns_in_file_statistics() {
    // deltalake collects statistics for the first 32 columns; the identity's sequence columns must be among them.
    for t in TABLES {
        let names: Vec<&str> = t.columns().iter().map(|c| c.0).collect();
        for col in ["_source_offset", "_source_partition", "_line"]
            .into_iter()
            .chain(matches!(t.layout, Layout::Change { .. }).then_some("lsn"))
        {
            let i = names.iter().position(|n| *n == col).unwrap();
            assert!(i < 32, "{} {col} is column {i}", t.name);
        }
    }
}

#[test]
fn identities_are_kept_as_runs_of_consecutive_sequences_and_read_back_row_by_row() {
    // GIVEN offsets 5, 6, 7 and 9 of partition 2, then 10 of partition 3, then a dropped file's lines 1 and 2
    let mut c = Converter::new(&LOCATIONS);
    let kafka = |p: i32, o: i64| {
        format!(
            r#"{{"transport_unit_id":"TU-1","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"_source":{{"topic":"fleet.locations","partition":{p},"offset":{o}}}}}"#
        )
    };
    let mut sent = Vec::new();
    for (i, (p, o)) in [(2, 5), (2, 6), (2, 7), (2, 9), (3, 10)].into_iter().enumerate() {
        c.push(kafka(p, o).as_bytes(), origin(i as u64 + 1)).unwrap();
        sent.push(Identity { kind: IdKind::Kafka, group: kafka_group("fleet.locations", p).into(), seq: o });
    }
    let dropped = r#"{"transport_unit_id":"TU-1","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2}"#;
    for line in [6, 7] {
        c.push(dropped.as_bytes(), origin(line)).unwrap();
        sent.push(Identity { kind: IdKind::File, group: file_group(origin(line).key, "e1").into(), seq: line as i64 });
    }
    // WHEN the chunk is finished
    let (batch, ids) = c.finish().unwrap();
    // THEN there is one run per unbroken sequence, and the rows read back in order
    let runs: Vec<(IdKind, &str, i64, usize)> =
        ids.runs().iter().map(|r| (r.kind, &*r.group, r.first, r.len)).collect();
    assert_eq!(
        runs,
        [
            (IdKind::Kafka, "fleet.locations|2", 5, 3),
            (IdKind::Kafka, "fleet.locations|2", 9, 1),
            (IdKind::Kafka, "fleet.locations|3", 10, 1),
            (IdKind::File, "enriched/locations/dt=2026-11-24/f.ndjson.gz|e1", 6, 2),
        ]
    );
    assert_eq!((ids.len(), batch.num_rows()), (7, 7));
    assert_eq!(ids.iter().collect::<Vec<_>>(), sent);
    assert_eq!(sent.into_iter().collect::<Identities>(), ids, "built row by row: the same runs");
    assert_eq!(ids.runs()[0].last(), 7);
}

#[test]
fn source_reads_as_serde_reads_it() {
    let mut c = Converter::new(&LOCATIONS);
    for raw in [
        r#"{"topic":"fleet.locations","partition":2,"offset":7,"timestamp":1795507200001}"#,
        r#"{"key":"landing/x.ndjson.gz","etag":"abc","other":{"a":[1]}}"#,
        r#"{"topic":null,"partition":null}"#,
        r#"{}"#,
        r#"{"topic":"a","topic":"b"}"#,
        r#"{"partition":"2"}"#,
        r#"{"offset":1.5}"#,
        r#"{"offset":18446744073709551615}"#,
        r#"{"topic":"t\u0041"}"#,
        r#"{"u":1,"u":2,"offset":3}"#,
        r#"["topic"]"#,
    ] {
        let fast = c.read_source(raw).map(|s| format!("{s:?}")).map_err(|e| e.0);
        let serde =
            serde_json::from_str::<Source<'_>>(raw).map(|s| format!("{s:?}")).map_err(|e| invalid("_source", e).0);
        assert_eq!(fast, serde, "{raw}");
    }
}
