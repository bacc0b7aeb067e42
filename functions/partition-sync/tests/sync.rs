//! partition-sync end to end: bronze tables written by the shared Delta adapter on moto's S3, the real binary
//! behind a Lambda runtime API, moto's Glue, and the Python `deltalake` package as the independent reader.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test helpers, like the tests themselves, fail loudly

use std::collections::BTreeMap;
use std::path::Path;

use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, LOCATIONS};
use fleetlake_delta::{open_or_create, Appender, DeltaSettings};
use fleetlake_testkit::{venv_bin, workspace_root, Invocation, LambdaHarness, Moto};
use serde_json::{json, Value};

const DB: &str = "fleetlake";
const GLUE_TABLE: &str = "bronze_locations";

struct Env {
    moto: Moto,
    bucket: String,
    glue: aws_sdk_glue::Client,
    sync: LambdaHarness,
    settings: DeltaSettings,
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
            env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
            env.push(("AWS_ENDPOINT_URL".into(), proxy));
        }
        let sync = LambdaHarness::start(Path::new(env!("CARGO_BIN_EXE_partition-sync")), "partition-sync", &env).await;
        let settings = DeltaSettings {
            bronze_url: format!("s3://{bucket}/bronze/").parse().unwrap(),
            storage_options: moto.delta_storage_options(),
            checkpoint_interval: 100,
            log_retention: "interval 30 days".into(),
            txn_retention: "interval 7 days".into(),
        };
        Env { moto, bucket, glue, sync, settings }
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

    async fn invoke(&mut self, versions: &[u64]) -> Invocation {
        let records: Vec<Value> = versions
            .iter()
            .map(|v| {
                let key = format!("bronze/locations/_delta_log/{v:020}.json").replace('/', "%2F");
                json!({"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                       "s3": {"bucket": {"name": self.bucket}, "object": {"key": key}}})
            })
            .collect();
        let body = json!({"Records": records}).to_string();
        let inv =
            self.sync.invoke(&json!({"Records": [{"messageId": "m1", "eventSource": "aws:sqs", "body": body}]})).await;
        assert_eq!(inv.outcome.as_ref().ok(), Some(&json!({"batchItemFailures": []})), "{}", self.sync.stderr());
        inv
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
        let out = std::process::Command::new(venv_bin("python"))
            .arg(workspace_root().join("infra/testkit/py/read_delta.py"))
            .arg(&self.moto.endpoint)
            .arg(format!("s3://{}/bronze/locations", self.bucket))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let table: Value = serde_json::from_slice(&out.stdout).unwrap();
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
