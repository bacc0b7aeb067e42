//! delta-writer end to end: the real binary behind a Lambda runtime API, moto's S3, and the Python `deltalake`
//! package reading the tables back.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test helpers, like the tests themselves, fail loudly

use std::collections::BTreeMap;
use std::path::Path;

use fleetlake_testkit::{LambdaHarness, Moto};
use serde_json::{json, Value};

const DAY: &str = "2026-11-24";

struct Env {
    moto: Moto,
    bucket: String,
    env: Vec<(String, String)>,
}

impl Env {
    async fn new(extra: &[(&str, &str)]) -> Env {
        let moto = Moto::start().await;
        let bucket = moto.bucket("lake").await;
        let mut env = moto.env();
        for (k, v) in [("LAKE_BUCKET", bucket.as_str()), ("CHUNK_RECORDS", "1000")].iter().chain(extra) {
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        Env { moto, bucket, env }
    }

    async fn writer(&self) -> LambdaHarness {
        LambdaHarness::start(Path::new(env!("CARGO_BIN_EXE_delta-writer")), "delta-writer", &self.env).await
    }

    async fn put(&self, key: &str, body: Vec<u8>) {
        self.moto.s3().put_object().bucket(&self.bucket).key(key).body(body.into()).send().await.unwrap();
    }

    /// The table as the Python `deltalake` package reads it.
    fn read(&self, table: &str) -> Value {
        let endpoint = self.env.iter().find(|(k, _)| k == "AWS_ENDPOINT_URL").unwrap().1.clone();
        fleetlake_testkit::lake::read_delta(&endpoint, &format!("s3://{}/bronze/{table}", self.bucket))
    }

    fn sqs(&self, messages: &[(&str, &[&str])]) -> Value {
        let records: Vec<Value> = messages
            .iter()
            .map(|(id, keys)| {
                let body = s3_notification(&self.bucket, keys);
                json!({"messageId": id, "eventSource": "aws:sqs", "body": body.to_string()})
            })
            .collect();
        json!({"Records": records})
    }
}

/// An S3 notification as moto sends it: every reserved character of the key encoded, no sequencer.
fn s3_notification(bucket: &str, keys: &[&str]) -> Value {
    let encode = |key: &str| -> String {
        key.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let records: Vec<Value> = keys
        .iter()
        .map(|k| {
            json!({"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                   "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": encode(k), "size": 1}}})
        })
        .collect();
    json!({"Records": records})
}

fn gzip(lines: &[String]) -> Vec<u8> {
    fleetlake_core::ndjson::gzip_lines(lines.iter().map(|l| l.as_bytes())).unwrap()
}

/// An enriched position from Kafka partition `partition` at `offset`.
fn enriched(partition: i64, offset: i64) -> String {
    json!({
        "transport_unit_id": format!("TU-{:06}", offset % 50), "ts": format!("{DAY}T{:02}:{:02}:00Z", (offset / 4) % 24, (offset % 4) * 15),
        "lat": 50.0 + (offset % 10) as f64 / 10.0, "lon": 8.25, "transport_type": "terrestrial", "speed_kmh": 80.5,
        "heading_deg": 90.0, "altitude_m": null,
        "_source": {"topic": "fleet.locations", "partition": partition, "offset": offset, "timestamp": 1_795_507_200_000_i64 + offset},
        "_ingested_at": "2026-11-24T08:00:00Z",
        "temperature_c": 4.5, "wind_speed_kmh": 12.0, "precipitation_mm": 0.2, "weather_code": 61, "weather_status": "ok"
    })
    .to_string()
}

fn enriched_key(partition: i64, first: i64, last: i64) -> String {
    format!("enriched/locations/dt={DAY}/fleet.locations-{partition}-{first}-{last}.ndjson.gz")
}

async fn put_positions(env: &Env, partition: i64, offsets: std::ops::RangeInclusive<i64>) -> String {
    let key = enriched_key(partition, *offsets.start(), *offsets.end());
    let lines: Vec<String> = offsets.map(|o| enriched(partition, o)).collect();
    env.put(&key, gzip(&lines)).await;
    key
}

/// The (partition, offset) identities in a table read back, sorted.
fn kafka_ids(table: &Value) -> Vec<(i64, i64)> {
    let mut ids: Vec<(i64, i64)> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["_source_partition"].as_i64().unwrap(), r["_source_offset"].as_i64().unwrap()))
        .collect();
    ids.sort_unstable();
    ids
}

fn expected_ids(parts: &[(i64, std::ops::RangeInclusive<i64>)]) -> Vec<(i64, i64)> {
    let mut ids: Vec<(i64, i64)> = parts.iter().flat_map(|(p, r)| r.clone().map(move |o| (*p, o))).collect();
    ids.sort_unstable();
    ids
}

fn failures(out: &Value) -> Vec<String> {
    out["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_and_changes_become_tables_an_independent_reader_opens() {
    let env = Env::new(&[]).await;
    let positions = put_positions(&env, 0, 0..=9).await;
    // A bad record and an unknown field in the same object.
    let mut lines: Vec<String> = (10..=12).map(|o| enriched(0, o)).collect();
    lines.push(json!({"transport_unit_id": "TU-1", "ts": "yesterday", "lat": 1, "lon": 2}).to_string());
    let mut with_extra: Value = serde_json::from_str(&enriched(0, 13)).unwrap();
    with_extra["flight_level"] = json!("FL350");
    lines.push(with_extra.to_string());
    let mixed = enriched_key(0, 10, 13);
    env.put(&mixed, gzip(&lines)).await;
    let perf = format!("landing/performance_stats/dt={DAY}/pg.public.performance_stats-0-5-6.ndjson.gz");
    env.put(&perf, gzip(&[
        json!({"op": "c", "ts_ms": 1_795_507_195_000_i64, "lsn": 24_023_128, "row": {"transport_unit_id": "TU-000042", "stat_date": "2026-11-23", "distance_km": 512.4, "fuel_used_l": 3120.5, "engine_hours": 21.5},
               "_source": {"topic": "pg.public.performance_stats", "partition": 0, "offset": 5, "timestamp": 1_795_507_196_000_i64}, "_ingested_at": "2026-11-24T08:00:00Z"}).to_string(),
        // Debezium's default encoding of a PostgreSQL date: days since 1970-01-01 (20415 = 2025-11-23).
        json!({"op": "u", "ts_ms": 1_795_507_197_000_i64, "lsn": 24_023_512, "row": {"transport_unit_id": "TU-000042", "stat_date": 20415, "distance_km": 1.0, "fuel_used_l": 2.0, "engine_hours": 3.0},
               "_source": {"topic": "pg.public.performance_stats", "partition": 0, "offset": 6, "timestamp": 1_795_507_198_000_i64}, "_ingested_at": "2026-11-24T08:00:00Z"}).to_string(),
    ])).await;
    let units = format!("landing/transport_units/dt={DAY}/pg.public.transport_units-0-1-2.ndjson.gz");
    env.put(&units, gzip(&[
        json!({"op": "r", "ts_ms": 1_795_507_191_000_i64, "lsn": 24_020_000, "row": {"transport_unit_id": "TU-000042", "transport_type": "maritime", "name": "MV Elbe Trader", "capacity_t": 8200, "flag": "DE"},
               "_source": {"topic": "pg.public.transport_units", "partition": 0, "offset": 1, "timestamp": 1_795_507_192_000_i64}, "_ingested_at": "2026-11-24T08:00:00Z"}).to_string(),
        json!({"op": "d", "ts_ms": 1_795_507_199_000_i64, "lsn": 24_024_000, "row": {"transport_unit_id": "TU-000999"},
               "_source": {"topic": "pg.public.transport_units", "partition": 0, "offset": 2, "timestamp": 1_795_507_199_100_i64}, "_ingested_at": "2026-11-24T08:00:00Z"}).to_string(),
    ])).await;

    let mut writer = env.writer().await;
    let event =
        env.sqs(&[("m1", &[positions.as_str(), mixed.as_str()]), ("m2", &[perf.as_str()]), ("m3", &[units.as_str()])]);
    let out = writer.invoke(&event).await.outcome.unwrap();
    assert_eq!(failures(&out), Vec::<String>::new());

    let locations = env.read("locations");
    assert_eq!(locations["partition_columns"], json!(["event_date"]));
    assert_eq!(kafka_ids(&locations), expected_ids(&[(0, 0..=13)]), "every good line once, the bad one not at all");
    let row = locations["rows"].as_array().unwrap().iter().find(|r| r["_source_offset"] == json!(13)).unwrap();
    assert_eq!(row["_extra"], json!(r#"{"flight_level":"FL350"}"#), "unknown fields are kept");
    assert_eq!(row["ts"], json!(format!("{DAY}T03:15:00+00:00")));
    assert_eq!(row["event_date"], json!(DAY));
    assert_eq!(row["weather_code"], json!(61));
    assert_eq!(row["_file"], json!(mixed));
    assert_eq!(row["_line"], json!(5));
    assert!(locations["configuration"]["delta.checkpointInterval"].is_string());

    let perf_table = env.read("performance_stats");
    let mut stat_dates: Vec<&str> =
        perf_table["rows"].as_array().unwrap().iter().map(|r| r["stat_date"].as_str().unwrap()).collect();
    stat_dates.sort_unstable();
    assert_eq!(stat_dates, ["2025-11-23", "2026-11-23"]);
    let units_table = env.read("transport_units");
    let rows = units_table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let deleted = rows.iter().find(|r| r["op"] == json!("d")).unwrap();
    assert_eq!(deleted["transport_unit_id"], json!("TU-000999"));
    assert_eq!(deleted["lsn"], json!(24_024_000));
    let read = rows.iter().find(|r| r["op"] == json!("r")).unwrap();
    assert_eq!(read["capacity_t"], json!(8200.0));
    assert_eq!(read["_extra"], json!(r#"{"flag":"DE"}"#));

    // The bad line is in quarantine with its reason.
    let q = env.moto.keys(&env.bucket, "quarantine/delta-writer/").await;
    assert_eq!(q.len(), 1, "{q:?}");
    let line: Value =
        serde_json::from_slice(env.moto.get(&env.bucket, &q[0]).await.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert!(line["reason"].as_str().unwrap().starts_with("ts: must be an RFC 3339 timestamp"), "{line}");
    assert_eq!(line["source"], json!({"key": mixed, "line": 4}));
    let _ = BTreeMap::<i32, i32>::new();
}

/// The EMF metrics line of an invocation.
fn metric(inv: &fleetlake_testkit::Invocation, name: &str) -> u64 {
    inv.stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|m| m.get(name).and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("no metric {name} in {:?}", inv.stdout))
}

/// Versions in the table's log, in order.
async fn log_versions(env: &Env, table: &str) -> Vec<u64> {
    env.moto
        .keys(&env.bucket, &format!("bronze/{table}/_delta_log/"))
        .await
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.strip_suffix(".json")?.parse().ok())
        .collect()
}

/// The data files of a table's partition, as keys in the bucket.
async fn data_files(env: &Env, table: &str, partition: &str) -> Vec<String> {
    env.moto
        .keys(&env.bucket, &format!("bronze/{table}/{partition}/"))
        .await
        .into_iter()
        .filter(|k| k.ends_with(".parquet"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_append_encoded_by_a_writer_per_core_lands_every_row_once() {
    // 1,000-row chunks: the append's twelve chunks go to as many writers as the process has cores (ENCODERS=0).
    let env = Env::new(&[("ENCODERS", "0")]).await;
    let keys = [
        put_positions(&env, 0, 0..=3_999).await,
        put_positions(&env, 1, 0..=3_999).await,
        put_positions(&env, 2, 0..=3_999).await,
    ];
    let mut writer = env.writer().await;
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let inv = writer.invoke(&env.sqs(&[("m1", &keys)])).await;
    assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new());
    assert_eq!(metric(&inv, "records_written"), 12_000);
    let locations = env.read("locations");
    assert_eq!(kafka_ids(&locations), expected_ids(&[(0, 0..=3_999), (1, 0..=3_999), (2, 0..=3_999)]));
    // One writer per core (at most four), each with one file of the day: more than one when there are cores.
    let cores = std::thread::available_parallelism().map_or(1, usize::from).min(4);
    let files = data_files(&env, "locations", &format!("event_date={DAY}")).await;
    assert_eq!(files.len(), cores, "{files:?}");
    // Once more: nothing new, nothing written.
    let again = writer.invoke(&env.sqs(&[("m2", &keys)])).await;
    assert_eq!(metric(&again, "records_written"), 0);
    assert_eq!(data_files(&env, "locations", &format!("event_date={DAY}")).await.len(), cores);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_reordered_and_recut_batches_land_each_record_once() {
    let env = Env::new(&[]).await;
    let mut writer = env.writer().await;
    let a = put_positions(&env, 0, 100..=199).await;
    let b = put_positions(&env, 0, 200..=299).await;

    // GIVEN the later slice arrives first (S3 notifications on SQS are unordered)
    let inv = writer.invoke(&env.sqs(&[("m-b", &[b.as_str()])])).await;
    assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new());
    assert_eq!(metric(&inv, "files_checked"), 0, "new offsets above the watermark need no lookup");
    // WHEN the earlier slice follows: it is below the watermark, so it is checked, and lands
    let inv = writer.invoke(&env.sqs(&[("m-a", &[a.as_str()])])).await;
    assert_eq!(metric(&inv, "records_written"), 100);
    assert_eq!(kafka_ids(&env.read("locations")), expected_ids(&[(0, 100..=299)]));
    let versions = log_versions(&env, "locations").await;

    // WHEN both are delivered again, one of them twice in the same batch
    let inv =
        writer.invoke(&env.sqs(&[("m-a2", &[a.as_str()]), ("m-b2", &[b.as_str()]), ("m-b3", &[b.as_str()])])).await;
    assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new());
    assert_eq!(metric(&inv, "records_duplicate"), 200);
    // THEN nothing is committed
    assert_eq!(log_versions(&env, "locations").await, versions, "a pure redelivery commits nothing");

    // WHEN a retried MSK batch was cut at other offsets: 150–249 (all in) and 250–349 (half new)
    let c = put_positions(&env, 0, 150..=249).await;
    let d = put_positions(&env, 0, 250..=349).await;
    let inv = writer.invoke(&env.sqs(&[("m-c", &[c.as_str(), d.as_str()])])).await;
    assert_eq!(metric(&inv, "records_written"), 50);
    // AND a fresh execution environment (nothing cached) sees the same table
    drop(writer);
    let mut fresh = env.writer().await;
    let inv = fresh.invoke(&env.sqs(&[("m-all", &[a.as_str(), b.as_str(), c.as_str(), d.as_str()])])).await;
    assert_eq!(metric(&inv, "records_written"), 0);
    // THEN every record is in the table exactly once
    let table = env.read("locations");
    assert_eq!(kafka_ids(&table), expected_ids(&[(0, 100..=349)]));
}

/// The lines of `key` (positions of Kafka `partition` at `offsets`) converted, written to Parquet and prepared, not
/// committed: what an invocation leaves when it stops before its commit. Returns the table as it was opened.
async fn prepared_append(
    env: &Env,
    key: &str,
    partition: i64,
    offsets: std::ops::RangeInclusive<i64>,
) -> (deltalake::DeltaTable, fleetlake_delta::Prepared) {
    use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, LOCATIONS};
    use fleetlake_core::lake::BatchName;
    use fleetlake_delta::{open_or_create, Appender};
    let settings = env.moto.delta_settings(&env.bucket);
    let table = open_or_create(&settings, &LOCATIONS).await.unwrap();
    let mut appender = Appender::new(&LOCATIONS, table.clone(), 128 << 20).unwrap();
    let mut converter = Converter::new(&LOCATIONS);
    let first = *offsets.start();
    let batch = BatchName::from_key(key);
    for o in offsets {
        let line = (o - first) as u64 + 1;
        let origin = LineOrigin { key, etag: "", line, lineage: Lineage::of(batch.as_ref()) };
        converter.push(enriched(partition, o).as_bytes(), origin).unwrap();
    }
    let (batch, ids) = converter.finish().unwrap();
    appender.write(batch, ids).await.unwrap();
    (table, appender.prepare().await.unwrap())
}

/// Commits prepared files as a writer that writes no `txn`: one that found no watermark for the partition (gone to
/// retention) and could not tell from the files how far the partition reached.
async fn commit_without_txn(table: &deltalake::DeltaTable, prepared: &fleetlake_delta::Prepared) {
    use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
    use deltalake::kernel::Action;
    use deltalake::protocol::{DeltaOperation, SaveMode};
    let actions: Vec<Action> = prepared.files().iter().cloned().map(Action::Add).collect();
    let operation = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
    CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .build(Some(table.snapshot().unwrap()), table.log_store(), operation)
        .await
        .unwrap();
}

/// Partition 0's offsets 0..=99 in the table through a writer (its watermark at 99), and the next two slices
/// landed, not written: the writer and the slices' keys.
async fn watermark_at_99(env: &Env) -> (LambdaHarness, String, String) {
    let first = put_positions(env, 0, 0..=99).await;
    let lower = put_positions(env, 0, 100..=199).await;
    let higher = put_positions(env, 0, 200..=299).await;
    let mut writer = env.writer().await;
    let inv = writer.invoke(&env.sqs(&[("m-first", &[first.as_str()])])).await;
    assert_eq!(metric(&inv, "records_written"), 100);
    (writer, lower, higher)
}

/// `higher` (offsets 200..=299 of partition 0, after [`watermark_at_99`]) delivered again: found in the table,
/// nothing written, the table holding 0..=299 once.
async fn redelivery_adds_nothing(env: &Env, writer: &mut LambdaHarness, higher: &str) {
    let inv = writer.invoke(&env.sqs(&[("m-again", &[higher])])).await;
    assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new());
    assert_eq!((metric(&inv, "records_written"), metric(&inv, "records_duplicate")), (0, 100));
    assert_eq!(kafka_ids(&env.read("locations")), expected_ids(&[(0, 0..=299)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_writing_files_and_committing_loses_and_doubles_nothing() {
    let env = Env::new(&[]).await;
    let key = put_positions(&env, 3, 0..=499).await;
    // GIVEN an invocation that wrote the Parquet files of the object and crashed before committing
    let (_, prepared) = prepared_append(&env, &key, 3, 0..=499).await;
    let orphans: Vec<String> = prepared.files().iter().map(|a| a.path.clone()).collect();
    assert!(!orphans.is_empty());
    drop(prepared);

    // WHEN Lambda retries the message
    let mut writer = env.writer().await;
    let inv = writer.invoke(&env.sqs(&[("m1", &[key.as_str()])])).await;
    assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new());

    // THEN the table holds each record once and none of the crashed attempt's files
    let table = env.read("locations");
    assert_eq!(kafka_ids(&table), expected_ids(&[(3, 0..=499)]));
    let files: Vec<&str> = table["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(orphans.iter().all(|o| files.iter().all(|f| !f.ends_with(o.as_str()))), "{orphans:?} vs {files:?}");
    let stored = env.moto.keys(&env.bucket, "bronze/locations/event_date=").await;
    assert!(stored.len() > files.len(), "the crashed attempt's files are still in storage, unreferenced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermark_lost_to_retention_never_moves_backwards() {
    let env = Env::new(&[]).await;
    let older = put_positions(&env, 0, 100..=199).await;
    let newer = put_positions(&env, 0, 200..=299).await;
    // GIVEN the newer offsets are in the table, and their `txn` is gone (TXN_RETENTION dropped it at a checkpoint:
    // here they are committed without one)
    let (table, prepared) = prepared_append(&env, &newer, 0, 200..=299).await;
    commit_without_txn(&table, &prepared).await;

    // WHEN a dead-letter redrive appends the older offsets, and then the newer ones are delivered again
    let mut writer = env.writer().await;
    let inv = writer.invoke(&env.sqs(&[("m-older", &[older.as_str()])])).await;
    assert_eq!(metric(&inv, "records_written"), 100);
    let inv = writer.invoke(&env.sqs(&[("m-newer", &[newer.as_str()])])).await;
    assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new());

    // THEN the redelivery is checked against the files, not taken for new offsets above a backwards watermark
    assert_eq!(metric(&inv, "records_duplicate"), 100);
    assert_eq!(kafka_ids(&env.read("locations")), expected_ids(&[(0, 100..=299)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_its_commit_race_to_higher_offsets_keeps_their_watermark() {
    let env = Env::new(&[]).await;
    let (mut writer, lower, higher) = watermark_at_99(&env).await;
    // GIVEN two writers that read partition 0's watermark at 99 and prepared the next offsets, the lower ones
    // slower to commit (an invocation stuck in a backoff, say)
    let (_, slower) = prepared_append(&env, &lower, 0, 100..=199).await;
    let (table, faster) = prepared_append(&env, &higher, 0, 200..=299).await;
    // WHEN the higher offsets commit first and the lower ones lose the race for that version and try again
    let won = faster.commit(vec![]).await.unwrap().version.unwrap();
    let retried = slower.commit(vec![]).await.unwrap().version.unwrap();
    assert_eq!((won, retried), (2, 3), "the slower writer lost version 2 and committed version 3");

    // THEN the watermark stays at the winner's 299 (the loser's 199 would move it backwards)
    let mut table = table;
    table.update_incremental(None).await.unwrap();
    let watermark = table
        .snapshot()
        .unwrap()
        .transaction_version(table.log_store().as_ref(), "kafka:fleet.locations:0")
        .await
        .unwrap();
    assert_eq!(watermark, Some(299));
    // and a redelivery of the higher offsets is checked against the files, not taken for new offsets above a
    // backwards watermark and written twice
    redelivery_adds_nothing(&env, &mut writer, &higher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_to_rows_committed_without_a_watermark_reads_the_watermark_again() {
    let env = Env::new(&[]).await;
    // A table whose watermarks are kept two seconds (TXN_RETENTION takes minutes and up), so that one can expire
    // within the test.
    let mut settings = env.moto.delta_settings(&env.bucket);
    settings.txn_retention = "interval 2 seconds".to_owned();
    fleetlake_delta::open_or_create(&settings, &fleetlake_core::bronze::LOCATIONS).await.unwrap();
    let (mut writer, lower, higher) = watermark_at_99(&env).await;
    // GIVEN a writer that read partition 0's watermark (99) and prepared the next offsets
    let (_, slower) = prepared_append(&env, &lower, 0, 100..=199).await;
    // and, once that watermark has expired, another writer's commit of higher offsets without a `txn` (a writer
    // that found no watermark and could not tell from the files' statistics how far the partition reached)
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (table, faster) = prepared_append(&env, &higher, 0, 200..=299).await;
    commit_without_txn(&table, &faster).await;
    // WHEN the slower writer loses the race for that version and commits on top
    assert_eq!(slower.commit(vec![]).await.unwrap().version, Some(3));

    // THEN a redelivery of the higher offsets is checked against the files: the slower writer's watermark came
    // from the table as it now is, not from what it had read before the race (99, which would have made it 199)
    redelivery_adds_nothing(&env, &mut writer, &higher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_writers_commit_every_row_once_with_contiguous_versions() {
    let env = Env::new(&[]).await;
    let mut keys = Vec::new();
    for p in 0..6 {
        keys.push(put_positions(&env, p, 0..=299).await);
    }
    // Six distinct objects, and two of them a second time: 8 invocations of 8 execution environments at once.
    let mut jobs = keys.clone();
    jobs.push(keys[0].clone());
    jobs.push(keys[1].clone());
    // The writers race for each log version with create-only PUTs: through the serialising proxy, which makes
    // each one atomic as S3 does (moto alone can let two win under load).
    let proxy = fleetlake_testkit::serialising_proxy(env.moto.endpoint.clone()).await;
    let through_proxy = fleetlake_testkit::through(&env.env, &proxy);
    let mut writers = Vec::new();
    for _ in &jobs {
        writers.push(
            LambdaHarness::start(Path::new(env!("CARGO_BIN_EXE_delta-writer")), "delta-writer", &through_proxy).await,
        );
    }
    let runs = writers.iter_mut().zip(&jobs).enumerate().map(|(i, (w, key))| {
        let event = env.sqs(&[(&format!("m{i}"), &[key.as_str()])]);
        async move { w.invoke(&event).await }
    });
    let results = futures::future::join_all(runs).await;
    for inv in &results {
        assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new());
    }
    // Races lost on the way are no errors: nothing at ERROR for an alarm on the logs to page someone about.
    let errors: Vec<String> = writers
        .iter()
        .flat_map(|w| {
            w.stderr().lines().filter(|l| l.contains(r#""level":"ERROR""#)).map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(errors, Vec::<String>::new());
    let table = env.read("locations");
    let parts: Vec<(i64, std::ops::RangeInclusive<i64>)> = (0..6).map(|p| (p, 0..=299)).collect();
    assert_eq!(kafka_ids(&table), expected_ids(&parts), "every row once");
    let versions = log_versions(&env, "locations").await;
    assert_eq!(versions, (0..versions.len() as u64).collect::<Vec<_>>(), "versions are contiguous");
    assert!((7..=9).contains(&versions.len()), "create + 6 to 8 appends: {versions:?}");
    let written: u64 = results.iter().map(|inv| metric(inv, "records_written")).sum();
    assert_eq!(written, 1800, "the repeated objects added nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_objects_are_quarantined_by_reference_and_only_a_non_event_fails() {
    let env = Env::new(&[]).await;
    let good = put_positions(&env, 1, 0..=49).await;
    let not_gzip = enriched_key(1, 50, 99);
    env.put(&not_gzip, b"this is not gzip".to_vec()).await;
    let gone = enriched_key(1, 100, 149);
    // A truncated object long enough that chunks of it are converted before the stream breaks.
    let truncated = enriched_key(1, 1000, 3999);
    let whole = gzip(&(1000..=3999).map(|o| enriched(1, o)).collect::<Vec<_>>());
    env.put(&truncated, whole[..whole.len() * 9 / 10].to_vec()).await;
    let mut writer = env.writer().await;
    let mut event = env.sqs(&[
        ("ok", &[good.as_str()]),
        ("bad-gzip", &[not_gzip.as_str()]),
        ("gone", &[gone.as_str()]),
        ("truncated", &[truncated.as_str()]),
    ]);
    event["Records"]
        .as_array_mut()
        .unwrap()
        .push(json!({"messageId": "not-s3", "eventSource": "aws:sqs", "body": "hello"}));
    let inv = writer.invoke(&event).await;
    let mut failed = failures(inv.outcome.as_ref().unwrap());
    failed.sort();
    // Only the message that is no notification is retried: no retry can make the others readable.
    assert_eq!(failed, ["not-s3"]);
    assert_eq!(kafka_ids(&env.read("locations")), expected_ids(&[(1, 0..=49)]), "none of the truncated object's rows");
    // Each unreadable object is in quarantine by reference, with the reason.
    let refs = env.moto.keys(&env.bucket, "quarantine/delta-writer/").await;
    assert_eq!(refs.len(), 3, "{refs:?}");
    for key in [&not_gzip, &gone, &truncated] {
        let name = key.rsplit('/').next().unwrap().trim_end_matches(".ndjson.gz");
        let found = refs.iter().find(|r| r.contains(name)).unwrap_or_else(|| panic!("{name} not in {refs:?}"));
        let line: Value = serde_json::from_slice(&env.moto.get(&env.bucket, found).await).unwrap();
        assert!(line["reason"].as_str().unwrap().starts_with("object refused: "), "{line}");
        assert_eq!(line["source"]["key"], json!(key), "{line}");
        assert_eq!(line["raw"], Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_object_is_appended_only_from_the_version_its_event_names() {
    let env = Env::new(&[]).await;
    let mut writer = env.writer().await;
    // Positions without lineage (a file dropped into the enriched zone): identified by the object's ETag and line.
    let key = format!("enriched/locations/dt={DAY}/manual.ndjson.gz");
    let position = |unit: &str, hour: u32| {
        json!({"transport_unit_id": unit, "ts": format!("{DAY}T{hour:02}:00:00Z"), "lat": 50.0, "lon": 8.0}).to_string()
    };
    let put = |lines: Vec<String>| {
        let (s3, bucket, key) = (env.moto.s3(), env.bucket.clone(), key.clone());
        async move {
            let out = s3.put_object().bucket(bucket).key(key).body(gzip(&lines).into()).send().await.unwrap();
            out.e_tag().unwrap().trim_matches('"').to_owned()
        }
    };
    let event = |etag: &str| {
        let mut ev = env.sqs(&[("m", &[key.as_str()])]);
        let mut body: Value = serde_json::from_str(ev["Records"][0]["body"].as_str().unwrap()).unwrap();
        body["Records"][0]["s3"]["object"]["eTag"] = json!(etag);
        ev["Records"][0]["body"] = json!(body.to_string());
        ev
    };
    let etag1 = put(vec![position("TU-1", 1)]).await;
    let etag2 = put(vec![position("TU-1", 1), position("TU-2", 2)]).await;

    // WHEN the newer version's event comes first and the older one's late
    let inv = writer.invoke(&event(&etag2)).await;
    assert_eq!(metric(&inv, "records_written"), 2);
    let inv = writer.invoke(&event(&etag1)).await;
    assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new(), "acknowledged, not retried");
    assert_eq!(metric(&inv, "objects_superseded"), 1);

    // THEN the table holds the current content once, under its own identity
    let rows = env.read("locations")["rows"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["_source_etag"] == json!(etag2)), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_quarantined_in_parts_as_they_add_up_and_chunks_are_cut_by_bytes() {
    // Parts and chunks of about 2 KB: an object of bad lines never sits in memory whole, whatever its lines' length.
    let env = Env::new(&[("QUARANTINE_PART_BYTES", "2000"), ("CHUNK_BYTES", "2000")]).await;
    let key = enriched_key(4, 0, 299);
    let lines: Vec<String> =
        (0..300).map(|o| if o % 3 == 0 { enriched(4, o) } else { format!("{{\"broken\": {o}") }).collect();
    env.put(&key, gzip(&lines)).await;
    let mut writer = env.writer().await;
    let inv = writer.invoke(&env.sqs(&[("m", &[key.as_str()])])).await;
    assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new());
    assert_eq!((metric(&inv, "records_written"), metric(&inv, "records_quarantined")), (100, 200));
    let want: Vec<(i64, i64)> = (0..300).filter(|o| o % 3 == 0).map(|o| (4, o)).collect();
    assert_eq!(kafka_ids(&env.read("locations")), want);

    let parts = env.moto.keys(&env.bucket, &format!("quarantine/delta-writer/dt={DAY}/fleet.locations-4-0-299")).await;
    assert!(parts.len() > 1, "{parts:?}");
    let mut quarantined: Vec<u64> = Vec::new();
    for part in &parts {
        let text = String::from_utf8(env.moto.get(&env.bucket, part).await).unwrap();
        quarantined.extend(
            text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["source"]["line"].as_u64().unwrap()),
        );
    }
    quarantined.sort_unstable();
    let want: Vec<u64> = (1..=300).filter(|n| (n - 1) % 3 != 0).collect();
    assert_eq!(quarantined, want, "every bad line once, across {} parts", parts.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_written_every_interval() {
    let env = Env::new(&[("CHECKPOINT_INTERVAL", "2")]).await;
    let mut writer = env.writer().await;
    for i in 0..4 {
        let key = put_positions(&env, 2, i * 10..=i * 10 + 9).await;
        writer.invoke(&env.sqs(&[("m", &[key.as_str()])])).await.outcome.unwrap();
    }
    // deltalake counts commits from 1: with an interval of 2, versions 1 and 3 (the 2nd and 4th commits).
    let log = env.moto.keys(&env.bucket, "bronze/locations/_delta_log/").await;
    let checkpoints: Vec<&String> = log.iter().filter(|k| k.ends_with(".checkpoint.parquet")).collect();
    assert_eq!(checkpoints.len(), 2, "{log:?}");
    for want in
        ["00000000000000000001.checkpoint.parquet", "00000000000000000003.checkpoint.parquet", "_last_checkpoint"]
    {
        assert!(log.iter().any(|k| k.ends_with(want)), "{want} missing from {log:?}");
    }
    let table = env.read("locations");
    assert_eq!(table["version"], json!(4));
    assert_eq!(kafka_ids(&table), expected_ids(&[(2, 0..=39)]));
}

/// A change pg-poller landed: no LSN, its identity is the key and `ts_ms`.
fn polled(op: &str, ts_ms: i64, unit: &str, fuel: f64, object: &str) -> String {
    json!({"op": op, "ts_ms": ts_ms, "row": {"transport_unit_id": unit, "stat_date": DAY, "fuel_used_l": fuel},
           "_source": {"key": object, "timestamp": 1_795_507_300_000_i64}, "_ingested_at": "2026-11-24T08:01:40Z"})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_changes_land_once_into_a_change_log_created_when_lsn_was_required() {
    use deltalake::kernel::{DataType as DeltaType, StructField};
    use fleetlake_core::bronze::{Kind, PERFORMANCE_STATS};
    let env = Env::new(&[]).await;
    // The change log as an earlier release created it: `lsn` NOT NULL.
    let columns: Vec<StructField> = PERFORMANCE_STATS
        .columns()
        .into_iter()
        .map(|(name, kind, nullable)| {
            let t = match kind {
                Kind::Utf8 => DeltaType::STRING,
                Kind::Float64 => DeltaType::DOUBLE,
                Kind::Int32 => DeltaType::INTEGER,
                Kind::Int64 => DeltaType::LONG,
                Kind::Timestamp | Kind::EpochMillis => DeltaType::TIMESTAMP,
                Kind::Date => DeltaType::DATE,
                Kind::Boolean => DeltaType::BOOLEAN,
            };
            StructField::new(name, t, nullable && name != "lsn")
        })
        .collect();
    let url = url::Url::parse(&format!("s3://{}/bronze/performance_stats/", env.bucket)).unwrap();
    deltalake::DeltaTableBuilder::from_url(url)
        .unwrap()
        .with_storage_options(env.moto.delta_storage_options())
        .build()
        .unwrap()
        .create()
        .with_columns(columns)
        .with_partition_columns(["stat_date"])
        .await
        .unwrap();
    let before = env.read("performance_stats");
    assert!(before["schema"].as_array().unwrap().iter().any(|f| f[0] == "lsn"));

    let key = format!("landing/performance_stats/dt={DAY}/poll-public.performance_stats-0000000000000001-r0123456789abcdef-0.ndjson.gz");
    let t = 1_795_500_000_000_i64;
    let lines = vec![
        polled("c", t, "TU-1", 10.0, &key),
        polled("c", t, "TU-2", 20.0, &key),
        polled("u", t + 60_000, "TU-1", 11.0, &key),
    ];
    env.put(&key, gzip(&lines)).await;
    // The same versions again, landed by a second run that lost the race to record its cursor.
    let again = key.replace("r0123456789abcdef", "rfedcba9876543210");
    env.put(&again, gzip(&lines[1..])).await;
    let mut writer = env.writer().await;
    for (id, keys) in [("m1", vec![key.as_str()]), ("m2", vec![again.as_str()])] {
        let out = writer.invoke(&env.sqs(&[(id, &keys)])).await;
        assert!(failures(&out.outcome.clone().unwrap()).is_empty(), "{:?}", out.outcome);
    }
    let table = env.read("performance_stats");
    let mut rows: Vec<(String, String, f64, bool, String)> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["transport_unit_id"].as_str().unwrap().to_owned(),
                r["op"].as_str().unwrap().to_owned(),
                r["fuel_used_l"].as_f64().unwrap(),
                r["lsn"].is_null(),
                r["_ingested_at"].as_str().unwrap_or("not kept").to_owned(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let row = |u: &str, op: &str, fuel: f64| {
        (u.to_owned(), op.to_owned(), fuel, true, "2026-11-24T08:01:40+00:00".to_owned())
    };
    assert_eq!(rows, [row("TU-1", "c", 10.0), row("TU-1", "u", 11.0), row("TU-2", "c", 20.0)]);
}

/// A predictor's record object of `units` predictions made from locations version `version`, as the predictor
/// names it: every such key of a day shares its first 60-odd characters.
async fn put_record(env: &Env, version: u64, units: u32) -> String {
    let key = format!("landing/predictions/dt={DAY}/predictor-commit-{version:020}.ndjson.gz");
    let lines: Vec<String> = (0..units)
        .map(|u| {
            json!({"transport_unit_id": format!("TU-{u:06}"), "predicted_at": format!("{DAY}T08:{:02}:00.000000Z", version % 60),
                   "target": "fuel_next_24h", "value": 10.5 + f64::from(u), "unit": "l", "model_version": "fuel-24h-test",
                   "features": "{\"distance_km\":3.5}", "source_version": version})
            .to_string()
        })
        .collect();
    env.put(&key, gzip(&lines)).await;
    key
}

/// The `add` actions' statistics in the table's log, by data file.
async fn logged_stats(env: &Env, table: &str) -> Vec<Value> {
    let mut stats = Vec::new();
    for key in env.moto.keys(&env.bucket, &format!("bronze/{table}/_delta_log/")).await {
        if !key.ends_with(".json") {
            continue;
        }
        let body = env.moto.s3().get_object().bucket(&env.bucket).key(&key).send().await.unwrap();
        let body = body.body.collect().await.unwrap().into_bytes();
        for line in String::from_utf8(body.to_vec()).unwrap().lines() {
            let action: Value = serde_json::from_str(line).unwrap();
            if let Some(s) = action["add"]["stats"].as_str() {
                stats.push(serde_json::from_str(s).unwrap());
            }
        }
    }
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_duplicate_check_reads_only_the_files_that_may_hold_its_object() {
    let env = Env::new(&[]).await;
    let mut writer = env.writer().await;
    let first = put_record(&env, 41, 3).await;
    let second = put_record(&env, 42, 3).await;
    let inv = writer.invoke(&env.sqs(&[("m1", &[first.as_str()])])).await;
    assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new());
    assert_eq!(metric(&inv, "records_written"), 3);
    // The file's statistics name its object in full, not the prefix every record of the day shares.
    let stats = logged_stats(&env, "predictions").await;
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0]["minValues"]["_source_key"].as_str(), stats[0]["maxValues"]["_source_key"].as_str()),
        (Some(first.as_str()), Some(first.as_str()))
    );

    // WHEN the next record arrives, from a fresh execution environment (nothing cached)
    drop(writer);
    let mut writer = env.writer().await;
    let inv = writer.invoke(&env.sqs(&[("m2", &[second.as_str()])])).await;
    // THEN it lands without reading the first record's file
    assert_eq!(metric(&inv, "records_written"), 3);
    assert_eq!(metric(&inv, "files_checked"), 0, "the first record's file cannot hold the second's lines");

    // WHEN the first is delivered again: its file, and only its, is read, and nothing lands twice
    drop(writer);
    let mut writer = env.writer().await;
    let inv = writer.invoke(&env.sqs(&[("m3", &[first.as_str()])])).await;
    assert_eq!(failures(inv.outcome.as_ref().unwrap()), Vec::<String>::new());
    assert_eq!((metric(&inv, "records_duplicate"), metric(&inv, "records_written")), (3, 0));
    assert_eq!(metric(&inv, "files_checked"), 1);
    let rows = env.read("predictions")["rows"].as_array().unwrap().len();
    assert_eq!(rows, 6);
}
