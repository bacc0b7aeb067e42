//! The bronze specs and the converter, on lines a producer sends.

use super::*;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, Float64Array};

/// A table of one unbounded number: the reader's precision on its own, without any column's bounds.
static NUMBERS: TableSpec = TableSpec {
    name: "numbers",
    input: (Zone::Enriched, "numbers"),
    layout: Layout::Record,
    data: &[col("value", Kind::Float64)],
    partitioning: None,
};

fn origin(line: u64) -> LineOrigin<'static> {
    LineOrigin { key: "enriched/locations/dt=2026-11-24/f.ndjson.gz", etag: "e1", line, lineage: Lineage::Vouched }
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
fn kafka_lineage_is_believed_only_from_the_batch_the_object_is_named_after() {
    let key = "enriched/locations/dt=2026-11-24/fleet.locations-2-5-9.ndjson.gz";
    let named = BatchName::from_key(key).unwrap();
    let mut c = Converter::new(&LOCATIONS);
    // The lander's object: lineage within its batch is kept, lineage outside it refused.
    c.push(POSITION.as_bytes(), LineOrigin { key, etag: "e1", line: 1, lineage: Lineage::Batch(&named) }).unwrap();
    let elsewhere = POSITION.replace(r#""offset":7"#, r#""offset":70"#);
    let err = c
        .push(elsewhere.as_bytes(), LineOrigin { key, etag: "e1", line: 2, lineage: Lineage::Batch(&named) })
        .unwrap_err();
    assert_eq!(
        err.0,
        "_source: names fleet.locations-2 offset 70, which is not in the batch fleet.locations-2-5-9 this object holds"
    );
    // A file dropped by hand claims the same Kafka record: it is identified by the file instead.
    let drop = "enriched/locations/dt=2026-11-24/drop.ndjson.gz";
    c.push(POSITION.as_bytes(), LineOrigin { key: drop, etag: "e2", line: 4, lineage: Lineage::File }).unwrap();
    let (batch, ids) = c.finish().unwrap();
    let kinds: Vec<IdKind> = ids.iter().map(|id| id.kind).collect();
    assert_eq!(kinds, [IdKind::Kafka, IdKind::File]);
    for lineage in ["_source_topic", "_source_partition", "_source_offset", "_source_timestamp", "_ingested_at"] {
        assert!(batch.column_by_name(lineage).unwrap().is_null(1), "{lineage} of a dropped file is not believed");
    }
    assert_eq!(batch.column_by_name("_source_key").unwrap().as_string::<i32>().value(1), drop);
    assert_eq!(batch.column_by_name("_source_etag").unwrap().as_string::<i32>().value(1), "e2");
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
    let mut c = Converter::new(&NUMBERS);
    for t in &texts {
        c.push(format!(r#"{{"value":{t}}}"#).as_bytes(), origin(1)).unwrap();
    }
    let (batch, _) = c.finish().unwrap();
    let alt = batch.column_by_name("value").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
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
            "transport_unit_id: must be 1-64 characters, not all whitespace",
        ),
        (r#"{"transport_unit_id":"T","ts":"2026-11-24","lat":1,"lon":2}"#, "ts: must be an RFC 3339 timestamp"),
        (
            r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":91,"lon":2}"#,
            "lat: must be between -90 and 90, got 91",
        ),
        (
            r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":"1","lon":2}"#,
            "lat: must be a number, got a string",
        ),
        (
            r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"weather_code":1.5}"#,
            "weather_code: must be an integer",
        ),
        (
            r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"transport_type":"rail"}"#,
            "transport_type: must be one of aerial|maritime|terrestrial, got \"rail\"",
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
    assert!(c.push(bad_op.as_bytes(), origin(3)).unwrap_err().0.starts_with("op: must be one of c|u|d|r, got \"x\""));
}

#[test]
fn every_table_indexes_its_identity_columns_in_file_statistics() {
    // deltalake collects statistics for the first 32 columns; the identity's sequence columns must be among them.
    for t in TABLES.into_iter().filter(|t| !matches!(t.layout, Layout::State(_))) {
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

#[test]
fn values_no_reader_can_represent_or_no_unit_can_have_are_refused_and_the_rest_goes_on() {
    // Each of these once passed this stage and failed a later one (a date Parquet readers and chrono cannot hold
    // panicked inside the writer; an absurd figure became `inf` in the model's features).
    let change = |row: &str| format!(r#"{{"op":"u","ts_ms":1795507197000,"lsn":1,"row":{row}}}"#);
    let cases = [
        (
            change(r#"{"transport_unit_id":"TU-1","stat_date":2147483647}"#),
            "stat_date: must be a date in the years 1 to 9999",
        ),
        (
            change(r#"{"transport_unit_id":"TU-1","stat_date":-2147483648}"#),
            "stat_date: must be a date in the years 1 to 9999",
        ),
        (change(r#"{"transport_unit_id":"TU-1","stat_date":"+10000-01-01"}"#), "stat_date: must be a"),
        (
            change(r#"{"transport_unit_id":"TU-1","stat_date":20415,"fuel_used_l":1e300}"#),
            "fuel_used_l: must be between 0 and 1000000, got 1e300",
        ),
        (
            change(r#"{"transport_unit_id":"TU-1","stat_date":20415,"engine_hours":25}"#),
            "engine_hours: must be between 0 and 24, got 25",
        ),
        (
            r#"{"op":"u","ts_ms":9223372036854775807,"lsn":1,"row":{"transport_unit_id":"TU-1","stat_date":20415}}"#
                .to_owned(),
            "ts_ms: must be a time in the years 1 to 9999",
        ),
    ];
    let mut c = Converter::new(&PERFORMANCE_STATS);
    for (line, want) in &cases {
        let err = c.push(line.as_bytes(), origin(1)).unwrap_err();
        assert!(err.0.starts_with(want), "{line}: {err}");
    }
    c.push(change(r#"{"transport_unit_id":"TU-1","stat_date":"9999-12-31"}"#).as_bytes(), origin(2)).unwrap();
    c.push(change(r#"{"transport_unit_id":"TU-1","stat_date":"0001-01-01"}"#).as_bytes(), origin(3)).unwrap();
    let (batch, ids) = c.finish().unwrap();
    assert_eq!((batch.num_rows(), ids.len()), (2, 2));
    let days = batch.column_by_name("stat_date").unwrap().as_primitive::<Date32Type>();
    assert_eq!((date_text(days.value(0)), date_text(days.value(1))), ("9999-12-31".into(), "0001-01-01".into()));

    let pos =
        |extra: &str| format!(r#"{{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2{extra}}}"#);
    let many: String = (0..MAX_LINE_MEMBERS).map(|i| format!(r#","f{i}":1"#)).collect();
    let cases = [
        (pos(r#","speed_kmh":1e308"#), "speed_kmh: must be between 0 and 2000, got 1e308".to_owned()),
        (pos(r#","altitude_m":-11000"#), "altitude_m: must be between -500 and 20000, got -11000".to_owned()),
        (pos(r#","temperature_c":1000"#), "temperature_c: must be between -100 and 70, got 1000".to_owned()),
        (pos(r#","weather_status":"sunny""#), "weather_status: must be one of ok|unavailable|out_of_range".to_owned()),
        (
            pos(&format!(r#","transport_type":"{}""#, "x".repeat(MAX_TEXT_BYTES + 1))),
            "transport_type: must be at most 4096 bytes".to_owned(),
        ),
        (
            pos(&many),
            format!("has {} fields, more than {MAX_LINE_MEMBERS} with lineage and weather", MAX_LINE_MEMBERS + 4),
        ),
        (
            r#"{"transport_unit_id":"T","ts":"0000-06-01T00:00:00Z","lat":1,"lon":2}"#.to_owned(),
            "ts: must be a time in the years 1 to 9999".to_owned(),
        ),
    ];
    let mut c = Converter::new(&LOCATIONS);
    for (line, want) in &cases {
        let err = c.push(line.as_bytes(), origin(1)).unwrap_err();
        assert!(err.0.starts_with(want.as_str()), "{}: {err}", line.chars().take(120).collect::<String>());
    }
    c.push(pos(r#","speed_kmh":950,"altitude_m":11000,"temperature_c":-56.5"#).as_bytes(), origin(2)).unwrap();
    assert_eq!(c.len(), 1);
}

#[test]
fn with_a_window_event_times_are_judged_against_each_lines_ingestion_and_production() {
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros();
    // The converter's clock is years later: lines that say when they were ingested are judged by that.
    let mut c = Converter::new(&LOCATIONS).with_window(EventWindow::default(), at("2031-01-01T00:00:00Z"));
    c.push(POSITION.as_bytes(), origin(1)).unwrap();
    let future = POSITION.replace("2026-11-24T23:45:00+01:00", "2026-11-26T00:00:00Z");
    let err = c.push(future.as_bytes(), origin(2)).unwrap_err();
    assert_eq!(err.0, "ts: is more than 24 h after the record was ingested (EVENT_TIME_MAX_AHEAD_HOURS)");
    // A line without `_ingested_at` is judged by the converter's clock; without `_source.timestamp`, by ingestion.
    let bare = r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2}"#;
    let err = c.push(bare.as_bytes(), origin(3)).unwrap_err();
    assert!(err.0.starts_with("ts: is more than 365 days before the record was ingested"), "{err}");
    // Changes: `ts_ms` the same way.
    let mut c = Converter::new(&PERFORMANCE_STATS).with_window(EventWindow::default(), at("2026-11-24T00:00:00Z"));
    let change = |ts_ms: i64| {
        format!(r#"{{"op":"u","ts_ms":{ts_ms},"lsn":1,"row":{{"transport_unit_id":"TU-1","stat_date":20415}}}}"#)
    };
    c.push(change(1_795_478_400_000).as_bytes(), origin(1)).unwrap();
    assert!(c
        .push(change(4_102_444_800_000).as_bytes(), origin(2))
        .unwrap_err()
        .0
        .starts_with("ts_ms: is more than 24 h"));
    assert_eq!(c.len(), 1);
}
