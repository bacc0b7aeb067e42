//! partition-sync end to end: bronze tables written by the shared Delta adapter on moto's S3, the real binary
//! behind a Lambda runtime API, moto's Glue, and the Python `deltalake` package as the independent reader.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test helpers, like the tests themselves, fail loudly

use std::collections::BTreeMap;
use std::path::Path;

use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, LOCATIONS};
use fleetlake_delta::{open_or_create, Appender, DeltaSettings};
use fleetlake_testkit::lake::{commit_stat_changes, read_delta, stat_change};
use fleetlake_testkit::{Invocation, LambdaHarness, Moto};
use serde_json::{json, Value};

const DB: &str = "fleetlake";
const GLUE_TABLE: &str = "bronze_locations";

struct Env {
    moto: Moto,
    bucket: String,
    glue: aws_sdk_glue::Client,
    sync: LambdaHarness,
    settings: DeltaSettings,
    /// The function's environment.
    vars: Vec<(String, String)>,
}

impl Env {
    async fn new() -> Env {
        Env::start(false).await
    }

    /// With `race`, the function reaches moto through [`racing_proxy`].
    async fn start(race: bool) -> Env {
        let moto = Moto::start().await;
        let bucket = moto.bucket("lake").await;
        let glue = moto.glue_bronze_tables(DB, &bucket).await;
        let mut env = moto.env();
        env.push(("LAKE_BUCKET".into(), bucket.clone()));
        env.push(("GLUE_DATABASE".into(), DB.into()));
        if race {
            let proxy = racing_proxy(moto.endpoint.clone(), moto.s3(), bucket.clone()).await;
            env = fleetlake_testkit::through(&env, &proxy);
        }
        let sync = LambdaHarness::start(Path::new(env!("CARGO_BIN_EXE_partition-sync")), "partition-sync", &env).await;

        let settings = moto.delta_settings(&bucket);
        Env { moto, bucket, glue, sync, settings, vars: env }
    }

    /// Appends positions at offsets `offsets` of partition 0, on the given days; returns the version.
    async fn commit(&self, offsets: std::ops::Range<i64>, days: &[&str]) -> u64 {
        let table = open_or_create(&self.settings, &LOCATIONS).await.unwrap();
        let mut appender = Appender::new(&LOCATIONS, table, 128 << 20).unwrap();
        let mut converter = Converter::new(&LOCATIONS);
        for o in offsets {
            let day = days[(o as usize) % days.len()];
            let line = json!({"transport_unit_id": format!("TU-{}", o % 7), "ts": format!("{day}T10:00:00Z"), "lat": 1.5, "lon": 2.5,
                              "_source": {"topic": "fleet.locations", "partition": 0, "offset": o, "timestamp": 1}});
            converter
                .push(
                    line.to_string().as_bytes(),
                    LineOrigin { key: "k", etag: "", line: 1, lineage: Lineage::Vouched },
                )
                .unwrap();
        }
        let (batch, ids) = converter.finish().unwrap();
        appender.write(batch, ids).await.unwrap();
        appender.commit(vec![]).await.unwrap().version.unwrap()
    }

    async fn commit_changes(&self, first_offset: i64, changes: &[Value]) -> u64 {
        commit_stat_changes(&self.settings, first_offset, changes).await
    }

    /// A bronze table as the Python `deltalake` package reads it (`read_delta.py`).
    fn reader(&self, table: &str) -> Value {
        read_delta(&self.moto.endpoint, &format!("s3://{}/bronze/{table}", self.bucket))
    }

    /// The rows of a bronze table as the Python `deltalake` package reads them, sorted.
    fn reader_rows(&self, table: &str, columns: &[&str]) -> Vec<Vec<Value>> {
        let table = self.reader(table);
        let mut rows: Vec<Vec<Value>> =
            table["rows"].as_array().unwrap().iter().map(|r| columns.iter().map(|c| r[*c].clone()).collect()).collect();
        rows.sort_by_key(|r| r.iter().map(Value::to_string).collect::<Vec<_>>());
        rows
    }

    async fn invoke(&mut self, versions: &[u64]) -> Invocation {
        self.invoke_table("locations", versions).await
    }

    async fn invoke_table(&mut self, table: &str, versions: &[u64]) -> Invocation {
        let event = self.event(table, versions);
        let inv = self.sync.invoke(&event).await;
        assert_eq!(inv.outcome.as_ref().ok(), Some(&json!({"batchItemFailures": []})), "{}", self.sync.stderr());
        inv
    }

    /// An SQS event of one message naming commits of `table`.
    fn event(&self, table: &str, versions: &[u64]) -> Value {
        let records: Vec<Value> = versions
            .iter()
            .map(|v| {
                let key = format!("bronze/{table}/_delta_log/{v:020}.json").replace('/', "%2F");
                json!({"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                       "s3": {"bucket": {"name": self.bucket}, "object": {"key": key}}})
            })
            .collect();
        let body = json!({"Records": records}).to_string();
        json!({"Records": [{"messageId": "m1", "eventSource": "aws:sqs", "body": body}]})
    }

    /// Glue partitions: value → location.
    async fn partitions(&self) -> BTreeMap<String, String> {
        let out = self.glue.get_partitions().database_name(DB).table_name(GLUE_TABLE).send().await.unwrap();
        out.partitions()
            .iter()
            .map(|p| (p.values()[0].clone(), p.storage_descriptor().unwrap().location().unwrap().to_owned()))
            .collect()
    }

    /// A manifest's lines and its version stamp.
    async fn manifest(&self, day: &str) -> (Vec<String>, String) {
        let key = format!("bronze/locations/_symlink_format_manifest/event_date={day}/manifest");
        let out = self.moto.s3().get_object().bucket(&self.bucket).key(&key).send().await.unwrap();
        let stamp = out.metadata().unwrap()["delta-version"].clone();
        let body = out.body.collect().await.unwrap().into_bytes();
        (String::from_utf8(body.to_vec()).unwrap().lines().map(str::to_owned).collect(), stamp)
    }

    /// The active files of a day, as the Python `deltalake` package lists them.
    fn reader_files(&self, day: &str) -> Vec<String> {
        let table = self.reader("locations");
        let mut files: Vec<String> = table["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .filter(|f| f.contains(&format!("/event_date={day}/")))
            .collect();
        files.sort();
        files
    }
}

/// A proxy to moto that forwards every call as it is, except that just before the function's first manifest PUT
/// reaches moto, another sync's write of the same manifest, stamped with a newer version (999), lands first: the
/// race of two syncs between one's HEAD and its PUT. Returns its endpoint.
async fn racing_proxy(moto: String, s3: aws_sdk_s3::Client, bucket: String) -> String {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let raced = Arc::new(AtomicBool::new(false));
    let race: fleetlake_testkit::BeforeForward = Arc::new(move |method, uri| {
        let (raced, s3, bucket) = (raced.clone(), s3.clone(), bucket.clone());
        Box::pin(async move {
            let path = uri.path().replace("%3D", "=");
            if method == "PUT" && path.contains("/_symlink_format_manifest/") && !raced.swap(true, Ordering::SeqCst) {
                let key = path.trim_start_matches('/').strip_prefix(&format!("{bucket}/")).unwrap().to_owned();
                s3.put_object()
                    .bucket(&bucket)
                    .key(&key)
                    .body(b"s3://newer/file.parquet\n".to_vec().into())
                    .metadata("delta-version", "999")
                    .send()
                    .await
                    .unwrap();
            }
        })
    });
    fleetlake_testkit::forwarding_proxy(moto, std::time::Duration::ZERO, Some(race)).await
}

fn metric(inv: &Invocation, name: &str) -> u64 {
    inv.stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|m| m.get(name).and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("no metric {name} in {:?}", inv.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_become_glue_partitions_and_manifests_and_replays_change_nothing() {
    let mut env = Env::new().await;
    let v1 = env.commit(0..40, &["2026-11-23", "2026-11-24"]).await;

    // WHEN the commit is synced
    let inv = env.invoke(&[v1]).await;
    // THEN both days are Glue partitions located at their manifest folders
    let manifests = format!("s3://{}/bronze/locations/_symlink_format_manifest", env.bucket);
    assert_eq!(
        env.partitions().await,
        BTreeMap::from([
            ("2026-11-23".to_owned(), format!("{manifests}/event_date=2026-11-23/")),
            ("2026-11-24".to_owned(), format!("{manifests}/event_date=2026-11-24/")),
        ])
    );
    assert_eq!(metric(&inv, "partitions_created"), 2);
    // AND each manifest lists exactly the files an independent reader sees, stamped with the version
    for day in ["2026-11-23", "2026-11-24"] {
        let (lines, stamp) = env.manifest(day).await;
        assert_eq!(lines, env.reader_files(day), "{day}");
        assert_eq!(stamp, v1.to_string());
    }

    // WHEN the same commit is processed again: nothing is written
    let inv = env.invoke(&[v1]).await;
    assert_eq!((metric(&inv, "manifests_written"), metric(&inv, "partitions_created")), (0, 0));

    // WHEN two more commits land and are processed newest first
    let v2 = env.commit(40..60, &["2026-11-24"]).await;
    let v3 = env.commit(60..70, &["2026-11-25"]).await;
    env.invoke(&[v3]).await;
    let inv = env.invoke(&[v2]).await;
    // THEN every manifest describes the newest version, the late commit's files included
    for day in ["2026-11-23", "2026-11-24", "2026-11-25"] {
        let (lines, _) = env.manifest(day).await;
        assert_eq!(lines, env.reader_files(day), "{day}");
    }
    assert_eq!(env.manifest("2026-11-25").await.1, v3.to_string());
    assert_eq!(env.manifest("2026-11-24").await.1, v3.to_string(), "the late v2 wrote the state at v3");
    assert_eq!(metric(&inv, "manifests_written"), 1);
    assert_eq!(env.partitions().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_partition_values_and_missing_commits_are_reported_not_synced() {
    let mut env = Env::new().await;
    let v1 = env.commit(0..10, &["2026-11-24"]).await;
    // A crafted commit whose partition values would leave their folder or their SQL literal.
    let crafted = [
        json!({"add": {"path": "x.parquet", "partitionValues": {"event_date": "2026-11-24'/../x"}, "size": 1, "modificationTime": 1, "dataChange": true}}),
        json!({"add": {"path": "y.parquet", "partitionValues": {"event_date": "2026-13-40"}, "size": 1, "modificationTime": 1, "dataChange": true}}),
    ]
    .map(|a| a.to_string())
    .join("\n");
    let crafted_version = v1 + 1;
    let key = format!("bronze/locations/_delta_log/{crafted_version:020}.json");
    env.moto.s3().put_object().bucket(&env.bucket).key(&key).body(crafted.into_bytes().into()).send().await.unwrap();

    let inv = env.invoke(&[crafted_version]).await;
    assert_eq!(metric(&inv, "partitions_refused"), 2);
    assert_eq!(env.partitions().await.len(), 0, "nothing registered from refused values");
    let manifests = env.moto.keys(&env.bucket, "bronze/locations/_symlink_format_manifest/").await;
    assert!(manifests.is_empty(), "{manifests:?}");

    // A commit that is gone (the log was cleaned up): reported, not retried forever.
    let inv = env.invoke(&[v1 + 50]).await;
    assert_eq!(metric(&inv, "commits_missing"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_that_loses_a_race_leaves_the_newer_manifest_and_its_partition_alone() {
    // GIVEN a commit touching two days, and another sync of a newer version writing one of the manifests between
    // this sync's HEAD and its PUT
    let mut env = Env::start(true).await;
    let v1 = env.commit(0..40, &["2026-11-23", "2026-11-24"]).await;
    // WHEN the commit is synced
    let inv = env.invoke(&[v1]).await;
    // THEN the newer manifest stays, this sync's Glue change for that day is left to the newer sync, and the other
    // day is synced as usual
    let stamps: Vec<String> = [env.manifest("2026-11-23").await.1, env.manifest("2026-11-24").await.1].into();
    let raced = stamps.iter().position(|s| s == "999").expect("one manifest is the newer sync's");
    assert_eq!(stamps[1 - raced], v1.to_string());
    let raced_day = ["2026-11-23", "2026-11-24"][raced];
    assert_eq!(env.manifest(raced_day).await.0, ["s3://newer/file.parquet"]);
    assert_eq!(
        (metric(&inv, "manifests_written"), metric(&inv, "manifests_current"), metric(&inv, "partitions_superseded")),
        (1, 1, 1)
    );
    let partitions = env.partitions().await;
    assert_eq!(partitions.keys().cloned().collect::<Vec<_>>(), [["2026-11-24", "2026-11-23"][raced]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_log_commits_rewrite_the_touched_partitions_of_the_state_tables_as_of_the_newest_version() {
    let mut env = Env::new().await;
    let t0 = (chrono::Utc::now().timestamp() - 3600) * 1000;
    let iso =
        |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%dT%H:%M:%S+00:00").to_string();
    let (d1, d2) = ("2026-11-23", "2026-11-24");
    let v1 = env
        .commit_changes(
            0,
            &[
                stat_change("c", t0, 10, "TU-X", d1, 1.0),
                stat_change("c", t0, 11, "TU-Y", d1, 2.0),
                stat_change("c", t0, 12, "TU-X", d2, 3.0),
            ],
        )
        .await;
    // An update and a delete of day 1, in a later commit.
    let v2 = env
        .commit_changes(
            3,
            &[stat_change("u", t0 + 200_000, 20, "TU-X", d1, 1.5), stat_change("d", t0 + 300_000, 30, "TU-Y", d1, 2.0)],
        )
        .await;

    // WHEN the later commit is synced first, then the earlier one (late), then the earlier one again
    let first = env.invoke_table("performance_stats", &[v2]).await;
    let late = env.invoke_table("performance_stats", &[v1]).await;
    let again = env.invoke_table("performance_stats", &[v1]).await;

    // THEN the current state holds each key's latest change and no deleted key, in every touched partition
    let current = ["transport_unit_id", "stat_date", "fuel_used_l", "updated_at"];
    assert_eq!(
        env.reader_rows("performance_stats_current", &current),
        [
            vec![json!("TU-X"), json!(d1), json!(1.5), json!(iso(t0 + 200_000))],
            vec![json!("TU-X"), json!(d2), json!(3.0), json!(iso(t0))],
        ]
    );
    // AND the history holds every version with its span
    let history = ["transport_unit_id", "stat_date", "fuel_used_l", "valid_from", "valid_to", "is_current"];
    assert_eq!(
        env.reader_rows("performance_stats_history", &history),
        [
            vec![json!("TU-X"), json!(d1), json!(1.0), json!(iso(t0)), json!(iso(t0 + 200_000)), json!(false)],
            vec![json!("TU-X"), json!(d1), json!(1.5), json!(iso(t0 + 200_000)), Value::Null, json!(true)],
            vec![json!("TU-X"), json!(d2), json!(3.0), json!(iso(t0)), Value::Null, json!(true)],
            vec![json!("TU-Y"), json!(d1), json!(2.0), json!(iso(t0)), json!(iso(t0 + 300_000)), json!(false)],
        ]
    );
    // AND day 1 was written once (by the first sync, from the newest version): the late sync only added day 2, and
    // the replay nothing
    let counts = |inv: &Invocation| (metric(inv, "states_replaced"), metric(inv, "states_superseded"));
    assert_eq!(counts(&first), (2, 0));
    assert_eq!(counts(&late), (2, 2));
    assert_eq!(counts(&again), (0, 4));
    // WHEN a later commit touches day 2 only, and the first commit is delivered once more after it
    let v3 = env.commit_changes(5, &[stat_change("u", t0 + 400_000, 40, "TU-X", d2, 3.5)]).await;
    assert_eq!(counts(&env.invoke_table("performance_stats", &[v3]).await), (2, 0));
    let replay = env.invoke_table("performance_stats", &[v1]).await;
    // THEN day 1, which no commit after its rewrite touched, is not written again; nor is day 2
    assert_eq!(counts(&replay), (0, 4));

    // WHEN the state table's own commits are synced
    let state_version = env.reader("performance_stats_current")["version"].as_u64().unwrap();
    let versions: Vec<u64> = (0..=state_version).collect();
    env.invoke_table("performance_stats_current", &versions).await;
    // THEN its Glue table has both days as partitions
    let glue = env
        .glue
        .get_partitions()
        .database_name(DB)
        .table_name("bronze_performance_stats_current")
        .send()
        .await
        .unwrap();
    let mut days: Vec<String> = glue.partitions().iter().map(|p| p.values()[0].clone()).collect();
    days.sort();
    assert_eq!(days, [d1, d2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_at_the_same_time_leave_the_state_of_the_newest_change_log() {
    let env = Env::new().await;
    let t0 = (chrono::Utc::now().timestamp() - 3600) * 1000;
    let days = ["2026-11-23", "2026-11-24"];
    // Four commits, each changing every unit of both days again.
    let mut versions = Vec::new();
    for round in 0..4i64 {
        let changes: Vec<Value> = (0..6i64)
            .map(|u| {
                let op = if round == 0 { "c" } else { "u" };
                let day = days[(u % 2) as usize];
                stat_change(op, t0 + round * 1000, round * 100 + u, &format!("TU-{u}"), day, (round * 10 + u) as f64)
            })
            .collect();
        versions.push(env.commit_changes(round * 6, &changes).await);
    }
    // WHEN four syncs (one per commit, through the proxy that makes create-only PUTs atomic, as S3 does) run at once
    let proxy = fleetlake_testkit::serialising_proxy(env.moto.endpoint.clone()).await;
    let vars = fleetlake_testkit::through(&env.vars, &proxy);
    let mut syncs = Vec::new();
    for _ in &versions {
        syncs
            .push(LambdaHarness::start(Path::new(env!("CARGO_BIN_EXE_partition-sync")), "partition-sync", &vars).await);
    }
    let runs = syncs.iter_mut().zip(&versions).map(|(s, v)| {
        let event = env.event("performance_stats", &[*v]);
        async move { s.invoke(&event).await }
    });
    let results = futures::future::join_all(runs).await;
    for inv in &results {
        assert_eq!(inv.outcome.as_ref().ok(), Some(&json!({"batchItemFailures": []})));
    }
    // THEN the current state is the last round's, and the history holds all four versions of each key
    let current = env.reader_rows("performance_stats_current", &["transport_unit_id", "fuel_used_l"]);
    let want: Vec<Vec<Value>> = (0..6i64).map(|u| vec![json!(format!("TU-{u}")), json!((30 + u) as f64)]).collect();
    assert_eq!(current, want);
    let history = env.reader_rows("performance_stats_history", &["transport_unit_id", "fuel_used_l", "is_current"]);
    assert_eq!(history.len(), 24);
    assert_eq!(history.iter().filter(|r| r[2] == json!(true)).count(), 6);
    // AND the 16 rewrites asked for (4 syncs × 2 days × 2 tables) came to at most 16 commits and at least the 4 of
    // the newest version; the rest found a rewrite as of the same or a newer version in place
    let replaced: u64 = results.iter().map(|inv| metric(inv, "states_replaced")).sum();
    let superseded: u64 = results.iter().map(|inv| metric(inv, "states_superseded")).sum();
    assert_eq!(replaced + superseded, 16);
    assert!(replaced >= 4, "{replaced}");
}
