//! lake-maintainer against moto's S3: tables written by the shared Delta adapter, the real binary behind a Lambda
//! runtime API, the vacuum's time rule exercised at a time past the retention, and the Python `deltalake` package
//! as the independent reader.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test helpers, like the tests themselves, fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, TableSpec, LOCATIONS, TRANSPORT_UNITS_CURRENT};
use fleetlake_delta::{
    compact_partition, log_hygiene, open_or_create, replace_partition, vacuum, AppendStats, Appender, DeltaSettings,
    Replaced,
};
use fleetlake_testkit::lake::{commit_stat_changes, read_delta, stat_change};
use fleetlake_testkit::{LambdaHarness, Moto};
use serde_json::{json, Value};

const HOUR_MS: i64 = 3_600_000;

struct Env {
    moto: Moto,
    bucket: String,
    settings: DeltaSettings,
}

impl Env {
    async fn new() -> Env {
        let moto = Moto::start().await;
        let bucket = moto.bucket("lake").await;
        let settings = moto.delta_settings(&bucket);
        Env { moto, bucket, settings }
    }

    /// Replaces the whole of `transport_units_current` with one row per name; returns the data file added.
    async fn replace(&self, version: i64, names: &[&str]) -> String {
        let spec: &'static TableSpec = &TRANSPORT_UNITS_CURRENT;
        let mut table = open_or_create(&self.settings, spec).await.unwrap();
        let n = names.len();
        let columns: Vec<ArrayRef> = spec
            .arrow_schema()
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    "transport_unit_id" => Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("TU-{i}")))),
                    "name" => Arc::new(StringArray::from_iter_values(names.iter())),
                    "capacity_t" => Arc::new(Float64Array::from(vec![1.0; n])),
                    "updated_at" => {
                        Arc::new(TimestampMicrosecondArray::from(vec![version * 1000; n]).with_timezone("UTC"))
                    }
                    "lsn" => Arc::new(Int64Array::from(vec![version; n])),
                    _ => deltalake::arrow::array::new_null_array(f.data_type(), n),
                }
            })
            .collect();
        let rows = RecordBatch::try_new(spec.arrow_schema(), columns).unwrap();
        let done = replace_partition(&mut table, spec, None, rows, version).await.unwrap();
        assert!(matches!(done, Replaced::Committed { .. }), "{done:?}");
        let files: Vec<String> =
            fleetlake_delta::active_files(&table, spec).unwrap().into_iter().map(|f| f.path).collect();
        assert_eq!(files.len(), 1);
        files[0].clone()
    }

    fn key(&self, relative: &str) -> String {
        format!("bronze/transport_units_current/{relative}")
    }

    async fn put(&self, key: &str, body: &str) {
        self.moto
            .s3()
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }

    /// The table's data files in S3 (relative to its root; no log, no manifests).
    async fn stored(&self) -> BTreeSet<String> {
        let out = self
            .moto
            .s3()
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix("bronze/transport_units_current/")
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key()?.strip_prefix("bronze/transport_units_current/"))
            .filter(|k| !k.starts_with('_'))
            .map(str::to_owned)
            .collect()
    }

    /// The table's rows as the Python `deltalake` package reads them.
    fn reader_rows(&self) -> Value {
        self.rows_of("transport_units_current")
    }

    /// A bronze table's rows as the Python `deltalake` package reads them.
    fn rows_of(&self, table: &str) -> Value {
        read_delta(&self.moto.endpoint, &format!("s3://{}/bronze/{table}", self.bucket))["rows"].clone()
    }

    async fn maintainer(&self, vars: &[(String, String)]) -> LambdaHarness {
        LambdaHarness::start(Path::new(env!("CARGO_BIN_EXE_lake-maintainer")), "lake-maintainer", vars).await
    }

    async fn table(&self) -> deltalake::DeltaTable {
        open_or_create(&self.settings, &TRANSPORT_UNITS_CURRENT).await.unwrap()
    }
}

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_deletes_exactly_the_unreferenced_files_past_retention_that_no_manifest_names() {
    let env = Env::new().await;
    let first = env.replace(1, &["a", "b"]).await;
    let second = env.replace(2, &["a2", "b2"]).await;
    // An orphan: an append's data file whose commit never happened.
    let orphan = "part-00000-never-committed.parquet".to_owned();
    env.put(&env.key(&orphan), "not even parquet").await;
    // A manifest that still names the removed file: partition-sync's message for version 2 is still queued.
    let root = format!("s3://{}/bronze/transport_units_current/", env.bucket);
    env.put(&env.key("_symlink_format_manifest/manifest"), &format!("{root}{first}\n")).await;
    let rows = env.reader_rows();
    let table = env.table().await;
    let now = chrono::Utc::now().timestamp_millis();

    // WHEN vacuumed now: the removal and the orphan are younger than the retention (24 h)
    let report = vacuum(&env.settings, &table, &TRANSPORT_UNITS_CURRENT, 24, now, false).await.unwrap();
    // THEN nothing is deleted
    assert_eq!((report.deleted.len(), report.kept_for_manifests.len()), (0, 0));
    assert_eq!(env.stored().await, set(&[&first, &second, &orphan]));

    // WHEN a dry run looks 25 h later
    let later = now + 25 * HOUR_MS;
    let report = vacuum(&env.settings, &table, &TRANSPORT_UNITS_CURRENT, 24, later, true).await.unwrap();
    // THEN it lists the orphan, keeps the file the manifest names, and deletes nothing
    assert_eq!(report.deleted, std::slice::from_ref(&orphan));
    assert_eq!(report.kept_for_manifests, std::slice::from_ref(&first));
    assert_eq!(env.stored().await, set(&[&first, &second, &orphan]));

    // WHEN the manifest has caught up and the vacuum runs for real, 25 h later
    env.put(&env.key("_symlink_format_manifest/manifest"), &format!("{root}{second}\n")).await;
    let report = vacuum(&env.settings, &table, &TRANSPORT_UNITS_CURRENT, 24, later, false).await.unwrap();
    // THEN exactly the removed file and the orphan are gone, and a reader gets the same rows
    assert_eq!(report.deleted.iter().collect::<BTreeSet<_>>(), set(&[&first, &orphan]).iter().collect());
    assert_eq!(env.stored().await, set(&[&second]));
    assert_eq!(env.reader_rows(), rows);
    // AND a vacuum that runs again changes nothing (the removed file's tombstone is planned again until log cleanup
    // drops it; deleting what is gone is a no-op)
    vacuum(&env.settings, &table, &TRANSPORT_UNITS_CURRENT, 24, later, false).await.unwrap();
    assert_eq!(env.stored().await, set(&[&second]));
    assert_eq!(env.reader_rows(), rows);
    // AND a retention under 24 h is refused
    assert!(vacuum(&env.settings, &table, &TRANSPORT_UNITS_CURRENT, 23, later, true).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_checkpoint_is_written_and_a_broken_one_is_reported_never_overwritten() {
    let env = Env::new().await;
    for v in 1..=3 {
        env.replace(v, &["a", "b"]).await;
    }
    let table = env.table().await;
    assert_eq!(table.version(), Some(3));
    // WHEN the log is past the interval with no checkpoint
    let report = log_hygiene(&env.settings, &table, &TRANSPORT_UNITS_CURRENT, 2).await.unwrap();
    // THEN one is written at the current version
    assert_eq!((report.checkpoint_before, report.checkpoint_written), (None, true));
    let checkpoint = env.key("_delta_log/00000000000000000003.checkpoint.parquet");
    assert!(env.moto.s3().head_object().bucket(&env.bucket).key(&checkpoint).send().await.is_ok());
    // WHEN it runs again: the checkpoint is recent and loads, so nothing is written
    let report = log_hygiene(&env.settings, &table, &TRANSPORT_UNITS_CURRENT, 2).await.unwrap();
    assert_eq!((report.checkpoint_before, report.checkpoint_written), (Some(3), false));
    // WHEN the checkpoint is broken
    env.put(&checkpoint, "not a checkpoint").await;
    let error = log_hygiene(&env.settings, &table, &TRANSPORT_UNITS_CURRENT, 2).await.unwrap_err();
    // THEN the table's maintenance fails for good (no retry repairs it), naming the checkpoint, and nothing in the
    // log is touched
    assert_eq!(error.fault(), fleetlake_core::fault::Fault::Permanent);
    assert!(error.to_string().contains("checkpoint 3 does not give the table's state"), "{error}");
    let body = env.moto.s3().get_object().bucket(&env.bucket).key(&checkpoint).send().await.unwrap().body;
    assert_eq!(body.collect().await.unwrap().into_bytes().as_ref(), b"not a checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_schedule_maintains_every_table_there_is_and_deletes_nothing_young() {
    let env = Env::new().await;
    let first = env.replace(1, &["a"]).await;
    let second = env.replace(2, &["b"]).await;
    let mut vars = env.moto.env();
    vars.push(("LAKE_BUCKET".into(), env.bucket.clone()));
    vars.push(("CHECKPOINT_INTERVAL".into(), "2".into()));
    let mut maintainer = env.maintainer(&vars).await;
    let schedule: Value = serde_json::from_str(include_str!("../../../events/lake-maintainer/schedule.json")).unwrap();

    let inv = maintainer.invoke(&schedule).await;
    let answer = inv.outcome.clone().unwrap_or_else(|e| panic!("{e}\n{}", maintainer.stderr()));
    // THEN the one table there is was maintained: a checkpoint written, nothing young vacuumed
    let done = &answer["tables"]["transport_units_current"];
    assert_eq!(done["checkpoint_written"], json!(true), "{answer}");
    assert_eq!(done["files_vacuumed"], json!(0), "{answer}");
    assert_eq!(answer["tables"].as_object().unwrap().len(), 1, "{answer}");
    assert_eq!(env.stored().await, set(&[&first, &second]));

    // WHEN asked on demand for a dry run of a named table, and for something it does not do
    let dry = maintainer.invoke(&json!({"task": "vacuum", "table": "transport_units_current", "dry_run": true})).await;
    assert_eq!(dry.outcome.unwrap()["tables"]["transport_units_current"]["files"], json!([]));
    let refused = maintainer.invoke(&json!({"task": "optimize"})).await;
    let error = refused.outcome.unwrap_err();
    assert!(error["errorMessage"].as_str().unwrap().contains(r#"task "optimize" is not"#), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_partitions_never_built_are_built_once_from_the_change_log() {
    let env = Env::new().await;
    // A change log written before the state tables existed (or whose syncs all failed): two days, an update.
    let t0 = (chrono::Utc::now().timestamp() - 3600) * 1000;
    let changes = [
        stat_change("c", t0, 1, "TU-1", "2026-11-23", 5.0),
        stat_change("u", t0 + 1000, 2, "TU-1", "2026-11-23", 6.0),
        stat_change("c", t0, 3, "TU-2", "2026-11-24", 7.0),
    ];
    commit_stat_changes(&env.settings, 0, &changes).await;
    let mut vars = env.moto.env();
    vars.push(("LAKE_BUCKET".into(), env.bucket.clone()));
    let mut maintainer = env.maintainer(&vars).await;

    // WHEN asked to build the missing state partitions of the change log
    let ask = json!({"task": "states", "table": "performance_stats"});
    let first = maintainer.invoke(&ask).await.outcome.unwrap_or_else(|e| panic!("{e}\n{}", maintainer.stderr()));
    // THEN both days of both state tables are built, and readers see the current figures
    assert_eq!(first["tables"]["performance_stats"]["state_partitions_built"], json!(4), "{first}");
    let mut current: Vec<(String, f64)> = env
        .rows_of("performance_stats_current")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["stat_date"].as_str().unwrap().to_owned(), r["fuel_used_l"].as_f64().unwrap()))
        .collect();
    current.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(current, [("2026-11-23".to_owned(), 6.0), ("2026-11-24".to_owned(), 7.0)]);
    assert_eq!(env.rows_of("performance_stats_history").as_array().unwrap().len(), 3);
    // AND a second run finds them built and builds nothing
    let again = maintainer.invoke(&ask).await.outcome.unwrap();
    assert_eq!(again["tables"]["performance_stats"]["state_partitions_built"], json!(0), "{again}");
}

/// The day the compaction tests' positions are on.
const DAY: &str = "2026-11-24";

/// Appends one commit of positions to `bronze/locations`: `units` units, one position each at `DAY` 00:00 plus
/// `slot` quarter hours, Kafka offsets of partition 0 from `first`; returns what the append did.
async fn positions(settings: &DeltaSettings, first: i64, units: i64, slot: i64) -> (Option<u64>, AppendStats) {
    let table = open_or_create(settings, &LOCATIONS).await.unwrap();
    let mut appender = Appender::new(&LOCATIONS, table, 128 << 20).unwrap();
    let mut converter = Converter::new(&LOCATIONS);
    let at = chrono::NaiveDate::parse_from_str(DAY, "%Y-%m-%d").unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc()
        + chrono::Duration::minutes(15 * slot);
    for u in 0..units {
        // Units in no particular order within a commit, as MSK batches hold them.
        let unit = (u * 7 + slot) % units;
        let line = json!({"transport_unit_id": format!("TU-{unit:03}"), "transport_type": "terrestrial",
            "ts": at.to_rfc3339(), "lat": 40.0 + unit as f64 / 100.0, "lon": -3.0 + slot as f64 / 100.0,
            "speed_kmh": 50.0, "weather_status": "ok",
            "_source": {"topic": "fleet.locations", "partition": 0, "offset": first + u, "timestamp": 1}});
        let origin = LineOrigin { key: "k", etag: "", line: 1, lineage: Lineage::Vouched };
        converter.push(line.to_string().as_bytes(), origin).unwrap();
    }
    let (batch, ids) = converter.finish().unwrap();
    appender.write(batch, ids).await.unwrap();
    let done = appender.commit(vec![]).await.unwrap();
    (done.version, done.stats)
}

/// `bronze/locations` as the Python `deltalake` package reads it: rows by Kafka offset, and the number of files.
fn locations_by_offset(env: &Env) -> (BTreeMap<i64, Value>, usize) {
    let table = read_delta(&env.moto.endpoint, &format!("s3://{}/bronze/locations", env.bucket));
    let rows = table["rows"].as_array().unwrap();
    let by_offset: BTreeMap<i64, Value> =
        rows.iter().map(|r| (r["_source_offset"].as_i64().unwrap(), r.clone())).collect();
    assert_eq!(by_offset.len(), rows.len(), "no offset twice");
    (by_offset, table["files"].as_array().unwrap().len())
}

/// The data files of `bronze/locations` in S3 (not the log).
async fn locations_objects(env: &Env) -> BTreeSet<String> {
    env.moto.keys(&env.bucket, "bronze/locations/event_date=").await.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_beside_running_appends_loses_and_duplicates_nothing_and_redelivery_adds_nothing() {
    let env = Env::new().await;
    const UNITS: i64 = 25;
    for slot in 0..30 {
        positions(&env.settings, slot * UNITS, UNITS, slot).await;
    }
    let (before, files) = locations_by_offset(&env);
    assert_eq!((before.len(), files), (750, 30));
    let mut vars = env.moto.env();
    vars.push(("LAKE_BUCKET".into(), env.bucket.clone()));
    let mut maintainer = env.maintainer(&vars).await;

    // WHEN the partition is compacted while a writer keeps appending to it
    let ask = json!({"task": "compact", "table": "locations", "partition": DAY});
    let compaction = tokio::spawn(async move {
        let inv = maintainer.invoke(&ask).await;
        (inv.outcome, maintainer.stderr())
    });
    let mut slot = 30;
    while !compaction.is_finished() || slot < 33 {
        positions(&env.settings, slot * UNITS, UNITS, slot).await;
        slot += 1;
    }
    let (outcome, stderr) = compaction.await.unwrap();
    let answer = outcome.unwrap_or_else(|e| panic!("{e}\n{stderr}"));
    let done = &answer["tables"]["locations"]["compaction"];
    let removed = done["files_removed"].as_u64().unwrap();
    assert!(removed >= 30, "{answer}");
    assert_eq!(done["files_added"], json!(1), "{answer}");

    // THEN an independent reader finds every row it found before, unchanged, plus every appended row, once
    let (after, files) = locations_by_offset(&env);
    assert_eq!(after.len() as i64, slot * UNITS, "every appended row is there");
    for (offset, row) in &before {
        assert_eq!(after.get(offset), Some(row), "offset {offset}");
    }
    // AND the appends the compaction did not take stay as they were: one compacted file plus those
    assert_eq!(files as u64, 1 + (slot as u64 - removed), "{answer}");

    // WHEN the first objects are delivered again after the compaction
    for slot in 0..3 {
        let (version, stats) = positions(&env.settings, slot * UNITS, UNITS, slot).await;
        // THEN nothing is appended: the compacted file's identities still say they are there
        assert_eq!((version, stats.rows_written, stats.duplicates), (None, 0, UNITS as u64), "slot {slot}");
        assert_eq!(stats.files_checked, 1, "statistics still prune to the one compacted file");
    }
    assert_eq!(locations_by_offset(&env).0.len() as i64, slot * UNITS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_that_lost_the_race_commits_on_top_of_an_append_and_gives_up_when_its_files_are_gone() {
    let env = Env::new().await;
    const UNITS: i64 = 10;
    for slot in 0..6 {
        positions(&env.settings, slot * UNITS, UNITS, slot).await;
    }
    let partition = Some(("event_date", DAY));
    // A compaction that read the table before an append committed.
    let mut stale = open_or_create(&env.settings, &LOCATIONS).await.unwrap();
    let read_at = stale.version().unwrap();
    positions(&env.settings, 6 * UNITS, UNITS, 6).await;

    // WHEN it commits
    let report = compact_partition(&mut stale, &LOCATIONS, partition, 128 << 20, None).await.unwrap();
    // THEN it commits on top of the append, the appended file untouched
    assert_eq!((report.bins_committed, report.files_removed, report.files_added), (1, 6, 1), "{report:?}");
    assert_eq!(report.versions, [read_at + 2]);
    let (rows, files) = locations_by_offset(&env);
    assert_eq!((rows.len(), files), (70, 2));
    let history = read_delta(&env.moto.endpoint, &format!("s3://{}/bronze/locations", env.bucket))["history"].clone();
    assert_eq!(history[0], json!("OPTIMIZE"), "{history}");

    // WHEN two compactions read the same files and one commits first
    positions(&env.settings, 7 * UNITS, UNITS, 7).await;
    let mut first = open_or_create(&env.settings, &LOCATIONS).await.unwrap();
    let mut second = open_or_create(&env.settings, &LOCATIONS).await.unwrap();
    let done = compact_partition(&mut first, &LOCATIONS, partition, 128 << 20, None).await.unwrap();
    assert_eq!((done.bins_committed, done.files_removed), (1, 3), "{done:?}");
    let objects = locations_objects(&env).await;
    let late = compact_partition(&mut second, &LOCATIONS, partition, 128 << 20, None).await.unwrap();
    // THEN the later one gives up and leaves no file of its own behind
    assert_eq!((late.bins_committed, late.bins_given_up), (0, 1), "{late:?}");
    assert_eq!(locations_objects(&env).await, objects);

    // AND the one file left holds every row, ordered by unit, then time
    let table = read_delta(&env.moto.endpoint, &format!("s3://{}/bronze/locations", env.bucket));
    assert_eq!(table["files"].as_array().unwrap().len(), 1);
    let order: Vec<(String, String)> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["transport_unit_id"].as_str().unwrap().to_owned(), r["ts"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(order.len(), 80);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_file_compaction_cannot_read_costs_only_its_own_bin() {
    use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
    use deltalake::kernel::{Action, Add};
    use deltalake::protocol::{DeltaOperation, SaveMode};
    let env = Env::new().await;
    for slot in (0..4).chain(96..100) {
        positions(&env.settings, slot * 10, 10, slot).await;
    }
    // A data file of the first day that is not Parquet, committed as the table's (another tool gone wrong).
    let bad = format!("event_date={DAY}/part-00000-not-parquet-c000.zstd.parquet");
    env.put(&format!("bronze/locations/{bad}"), "PAR1 this is not parquet").await;
    let mut table = open_or_create(&env.settings, &LOCATIONS).await.unwrap();
    let add = Add {
        path: bad.clone(),
        partition_values: [("event_date".to_owned(), Some(DAY.to_owned()))].into(),
        size: 24,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        ..Add::default()
    };
    let operation = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
    CommitBuilder::from(CommitProperties::default())
        .with_actions(vec![Action::Add(add)])
        .build(Some(table.snapshot().unwrap()), table.log_store(), operation)
        .await
        .unwrap();
    table.update_incremental(None).await.unwrap();
    let mut vars = env.moto.env();
    vars.push(("LAKE_BUCKET".into(), env.bucket.clone()));
    let mut maintainer = env.maintainer(&vars).await;

    // WHEN every idle partition is compacted
    let inv = maintainer.invoke(&json!({"task": "compact", "table": "locations", "idle_minutes": 0})).await;
    // THEN the run fails naming the file
    let error = inv.outcome.unwrap_err();
    let message = error["errorMessage"].as_str().unwrap();
    assert!(message.contains("compaction left data files it cannot read") && message.contains(&bad), "{error}");
    // AND the other day was compacted, while the first keeps its files as they were
    table.update_incremental(None).await.unwrap();
    let mut per_day: BTreeMap<String, usize> = BTreeMap::new();
    for f in fleetlake_delta::active_files(&table, &LOCATIONS).unwrap() {
        *per_day.entry(f.partition.unwrap()).or_default() += 1;
    }
    assert_eq!(per_day, BTreeMap::from([(DAY.to_owned(), 5), ("2026-11-25".to_owned(), 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_a_bin_behind_another_never_rewrites_rows_twice() {
    let env = Env::new().await;
    for slot in 0..6 {
        positions(&env.settings, slot * 10, 10, slot).await;
    }
    let partition = Some(("event_date", DAY));
    // Two runs that listed the partition at the same version; bins of two files each.
    let mut behind = open_or_create(&env.settings, &LOCATIONS).await.unwrap();
    let mut ahead = open_or_create(&env.settings, &LOCATIONS).await.unwrap();
    let listed =
        env.moto.s3().list_objects_v2().bucket(&env.bucket).prefix("bronze/locations/event_date=").send().await;
    let biggest = listed.unwrap().contents().iter().filter_map(|o| o.size()).max().unwrap() as u64;
    let target = 2 * biggest + 1;

    // WHEN one run compacts every bin, then the other, which still sees the files it listed, runs
    let done = compact_partition(&mut ahead, &LOCATIONS, partition, target, None).await.unwrap();
    assert_eq!((done.bins_committed, done.files_removed, done.files_added), (3, 6, 3), "{done:?}");
    let objects = locations_objects(&env).await;
    let late = compact_partition(&mut behind, &LOCATIONS, partition, target, None).await.unwrap();
    // THEN it commits none of them (its first bin loses the race, the others were rewritten already) and leaves
    // no file of its own behind
    assert_eq!((late.bins_committed, late.bins_given_up), (0, 3), "{late:?}");
    assert_eq!(locations_objects(&env).await, objects);
    // AND every row is there once
    let (rows, files) = locations_by_offset(&env);
    assert_eq!((rows.len(), files), (60, 3));
}
