//! lake-maintainer against moto's S3: tables written by the shared Delta adapter, the real binary behind a Lambda
//! runtime API, the vacuum's time rule exercised at a time past the retention, and the Python `deltalake` package
//! as the independent reader.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test helpers, like the tests themselves, fail loudly

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use fleetlake_core::bronze::{TableSpec, TRANSPORT_UNITS_CURRENT};
use fleetlake_delta::{log_hygiene, open_or_create, replace_partition, vacuum, DeltaSettings, Replaced};
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
    let refused = maintainer.invoke(&json!({"task": "compact"})).await;
    let error = refused.outcome.unwrap_err();
    assert!(error["errorMessage"].as_str().unwrap().contains(r#"task "compact" is not"#), "{error}");
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
