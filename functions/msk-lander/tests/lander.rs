//! msk-lander end to end: the real binary behind a Lambda runtime API, against moto's S3.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test helpers, like the tests themselves, fail loudly

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use fleetlake_testkit::{LambdaHarness, Moto};
use serde_json::{json, Value};

const BATCH: &str = include_str!("../../../events/msk-lander/batch.json");
const DAY: &str = "dt=2026-11-24";

async fn start(moto: &Moto, extra: &[(&str, &str)]) -> LambdaHarness {
    let mut env = moto.env();
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    LambdaHarness::start(Path::new(env!("CARGO_BIN_EXE_msk-lander")), "msk-lander", &env).await
}

fn gunzip(bytes: &[u8]) -> Vec<Value> {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_string(&mut text).expect("landing objects are gzip");
    text.lines().map(|l| serde_json::from_str(l).expect("landed lines are JSON")).collect()
}

fn ndjson(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes).expect("utf-8").lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn decode(b64: &str) -> Value {
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")).expect("JSON")
}

/// Every object of the bucket, by key.
async fn snapshot(moto: &Moto, bucket: &str) -> BTreeMap<String, Vec<u8>> {
    let mut objects = BTreeMap::new();
    for key in moto.keys(bucket, "").await {
        let body = moto.get(bucket, &key).await;
        objects.insert(key, body);
    }
    objects
}

/// The sample record at `topic`/`offset` as the producer sent it, plus the lineage msk-lander adds.
fn expected_position(event: &Value, group: &str, offset: i64, ingested_at: &Value) -> Value {
    let rec = event["records"][group].as_array().unwrap().iter().find(|r| r["offset"] == json!(offset)).unwrap();
    let mut want = decode(rec["value"].as_str().unwrap());
    want["_source"] =
        json!({"topic": rec["topic"], "partition": rec["partition"], "offset": offset, "timestamp": rec["timestamp"]});
    want["_ingested_at"] = ingested_at.clone();
    want
}

#[tokio::test]
async fn sample_batch_lands_exactly_and_a_replay_changes_nothing() {
    let moto = Moto::start().await;
    let bucket = moto.bucket("lake").await;
    let mut lander = start(&moto, &[("LAKE_BUCKET", &bucket)]).await;
    let event: Value = serde_json::from_str(BATCH).unwrap();

    // WHEN the sample batch is invoked
    let first = lander.invoke(&event).await;
    let summary = first.outcome.clone().unwrap_or_else(|e| panic!("invocation failed: {e}\n{}", lander.stderr()));

    // THEN the summary accounts for every record
    assert_eq!(summary["records"], json!(11));
    assert_eq!(summary["landed"], json!(7));
    assert_eq!(summary["quarantined"], json!(3));
    assert_eq!(summary["tombstones"], json!(1));

    // AND exactly these objects exist
    let objects = snapshot(&moto, &bucket).await;
    let keys: Vec<&str> = objects.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            format!("landing/locations/{DAY}/fleet.locations-0-1200-1202.ndjson.gz"),
            format!("landing/locations/{DAY}/fleet.locations-1-877-878.ndjson.gz"),
            format!("landing/performance_stats/{DAY}/pg.public.performance_stats-0-40-41.ndjson.gz"),
            format!("landing/transport_units/{DAY}/pg.public.transport_units-0-9-11.ndjson.gz"),
            format!("quarantine/msk-lander/{DAY}/fleet.locations-0-1200-1202.ndjson"),
            format!("quarantine/msk-lander/{DAY}/fleet.locations-1-877-878.ndjson"),
            format!("quarantine/msk-lander/{DAY}/fleet.unknown-0-5-5.ndjson"),
        ]
    );

    // AND positions land as sent, in offset order, with lineage and one ingestion time
    let p0 = gunzip(&objects[&format!("landing/locations/{DAY}/fleet.locations-0-1200-1202.ndjson.gz")]);
    let ingested_at = p0[0]["_ingested_at"].clone();
    assert!(chrono::DateTime::parse_from_rfc3339(ingested_at.as_str().unwrap()).is_ok(), "{ingested_at}");
    assert_eq!(
        p0,
        [
            expected_position(&event, "fleet.locations-0", 1200, &ingested_at),
            expected_position(&event, "fleet.locations-0", 1202, &ingested_at)
        ]
    );
    assert_eq!(p0[1]["flight_level"], json!("FL350"), "unknown fields are kept");
    let p1 = gunzip(&objects[&format!("landing/locations/{DAY}/fleet.locations-1-877-878.ndjson.gz")]);
    assert_eq!(p1, [expected_position(&event, "fleet.locations-1", 877, &ingested_at)]);

    // AND Debezium changes land as {op, ts_ms, lsn, row} from either converter format
    let perf =
        gunzip(&objects[&format!("landing/performance_stats/{DAY}/pg.public.performance_stats-0-40-41.ndjson.gz")]);
    assert_eq!(perf.len(), 2);
    assert_eq!(
        (&perf[0]["op"], &perf[0]["lsn"], &perf[0]["ts_ms"]),
        (&json!("c"), &json!(24_023_128), &json!(1_795_507_195_000_i64))
    );
    assert_eq!(
        (&perf[1]["op"], &perf[1]["lsn"], &perf[1]["row"]["fuel_used_l"]),
        (&json!("u"), &json!(24_023_512), &json!(3180.0))
    );
    assert_eq!(perf[1]["_source"]["offset"], json!(41));
    let units = gunzip(&objects[&format!("landing/transport_units/{DAY}/pg.public.transport_units-0-9-11.ndjson.gz")]);
    let ops: Vec<(&Value, &Value)> = units.iter().map(|u| (&u["op"], &u["row"]["transport_unit_id"])).collect();
    assert_eq!(
        ops,
        [(&json!("r"), &json!("TU-000042")), (&json!("d"), &json!("TU-000999"))],
        "the delete lands its before image; the tombstone is skipped"
    );

    // AND each refused record is in quarantine with its reason, source and raw value
    let q0 = ndjson(&objects[&format!("quarantine/msk-lander/{DAY}/fleet.locations-0-1200-1202.ndjson")]);
    assert_eq!(q0.len(), 1);
    assert_eq!(q0[0]["reason"], json!("field `lat` must be between -90 and 90, got 123.4"));
    assert_eq!(q0[0]["stage"], json!("msk-lander"));
    assert_eq!(
        q0[0]["source"],
        json!({"topic": "fleet.locations", "partition": 0, "offset": 1201, "timestamp": 1_795_507_200_001_i64})
    );
    assert_eq!(
        serde_json::from_str::<Value>(q0[0]["raw"].as_str().unwrap()).unwrap()["transport_unit_id"],
        json!("TU-000077")
    );
    let q1 = ndjson(&objects[&format!("quarantine/msk-lander/{DAY}/fleet.locations-1-877-878.ndjson")]);
    assert!(q1[0]["reason"].as_str().unwrap().starts_with("value is not JSON"), "{}", q1[0]);
    assert_eq!(q1[0]["raw"], json!("lat=40.41,lon=-3.70 (not json)"));
    let q2 = ndjson(&objects[&format!("quarantine/msk-lander/{DAY}/fleet.unknown-0-5-5.ndjson")]);
    assert_eq!(q2[0]["reason"], json!("topic \"fleet.unknown\" is not mapped to a dataset (TOPIC_DATASETS)"));

    // AND one EMF metrics line reports the counts
    let emf: Vec<Value> = first
        .stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect();
    assert_eq!(emf.len(), 1, "{:?}", first.stdout);
    assert_eq!(
        (&emf[0]["records_in"], &emf[0]["records_quarantined"], &emf[0]["objects_written"]),
        (&json!(11), &json!(3), &json!(4))
    );

    // AND the JSON logs carry the invocation's request id
    assert!(
        lander.stderr().lines().any(|l| l.contains("\"requestId\":\"msk-lander-req-1\"") && l.contains("batch landed")),
        "{}",
        lander.stderr()
    );

    // WHEN the same batch is delivered again (Lambda retry)
    let mut second = lander.invoke(&event).await.outcome.unwrap();
    assert_eq!(summary["already_landed"], json!(0));
    assert_eq!(second["already_landed"], json!(4), "the retry finds the first try's objects");
    second["already_landed"] = json!(0);
    assert_eq!(second, summary);
    // THEN every object is byte-for-byte what it was
    assert_eq!(snapshot(&moto, &bucket).await, objects);
}

#[tokio::test]
async fn ten_thousand_records_land_once_each() {
    let moto = Moto::start().await;
    let bucket = moto.bucket("lake").await;
    let mut lander = start(&moto, &[("LAKE_BUCKET", &bucket)]).await;

    // GIVEN 10,000 positions over 4 partitions, every 97th invalid and every 500th a tombstone
    let b64 = |v: &Value| base64::engine::general_purpose::STANDARD.encode(v.to_string());
    let mut records = serde_json::Map::new();
    let (mut valid, mut invalid) = (Vec::new(), Vec::new());
    for partition in 0..4_i64 {
        let mut recs = Vec::new();
        for i in 0..2_500_i64 {
            let offset = 10_000 + i;
            let value = if i % 500 == 499 {
                Value::Null
            } else {
                let lat = if i % 97 == 0 { 100.0 } else { 45.0 + (i as f64) / 1e4 };
                if i % 97 == 0 {
                    invalid.push((partition, offset));
                } else {
                    valid.push((partition, offset));
                }
                json!(b64(
                    &json!({"transport_unit_id": format!("TU-{:06}", i % 300), "ts": "2026-11-24T06:00:00Z", "lat": lat, "lon": 7.5})
                ))
            };
            recs.push(json!({"topic": "fleet.locations", "partition": partition, "offset": offset, "timestamp": 1_795_507_200_000_i64 + i,
                             "timestampType": "CREATE_TIME", "key": null, "value": value, "headers": []}));
        }
        records.insert(format!("fleet.locations-{partition}"), Value::Array(recs));
    }
    let event = json!({"eventSource": "aws:kafka", "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/c/x", "records": records});

    let summary = lander.invoke(&event).await.outcome.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary["records"], json!(10_000));
    assert_eq!(summary["tombstones"], json!(20));

    // THEN the landed identities are exactly the valid ones, each once; the invalid ones are all in quarantine
    let (mut landed, mut quarantined) = (Vec::new(), Vec::new());
    for key in moto.keys(&bucket, "landing/").await {
        for line in gunzip(&moto.get(&bucket, &key).await) {
            landed.push((line["_source"]["partition"].as_i64().unwrap(), line["_source"]["offset"].as_i64().unwrap()));
        }
    }
    for key in moto.keys(&bucket, "quarantine/").await {
        for line in ndjson(&moto.get(&bucket, &key).await) {
            quarantined
                .push((line["source"]["partition"].as_i64().unwrap(), line["source"]["offset"].as_i64().unwrap()));
        }
    }
    landed.sort_unstable();
    quarantined.sort_unstable();
    assert_eq!(landed, valid);
    assert_eq!(quarantined, invalid);
}

/// Where cargo unpacked the aws_lambda_events crate, to read its own Kafka fixture.
fn lambda_events_fixture() -> PathBuf {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ])
        .output()
        .expect("cargo metadata");
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == json!("aws_lambda_events"))
        .expect("aws_lambda_events")["manifest_path"]
        .as_str()
        .unwrap()
        .to_owned();
    Path::new(&manifest).parent().unwrap().join("src/fixtures/example-kafka-event.json")
}

#[tokio::test]
async fn the_aws_lambda_events_fixture_is_quarantined_not_lost() {
    let moto = Moto::start().await;
    let fixture: Value = serde_json::from_slice(&std::fs::read(lambda_events_fixture()).unwrap()).unwrap();
    let day = "dt=2020-07-18";

    // An unmapped topic: quarantined as such.
    let bucket = moto.bucket("lake").await;
    let mut lander = start(&moto, &[("LAKE_BUCKET", &bucket)]).await;
    assert_eq!(lander.invoke(&fixture).await.outcome.unwrap()["quarantined"], json!(1));
    let lines = ndjson(&moto.get(&bucket, &format!("quarantine/msk-lander/{day}/AWSKafkaTopic-0-0-0.ndjson")).await);
    assert_eq!(lines[0]["reason"], json!("topic \"AWSKafkaTopic\" is not mapped to a dataset (TOPIC_DATASETS)"));
    assert_eq!(lines[0]["raw"], json!("8d5596b4-1813-4238-b24b-6dad8e3d1c0c"));

    // Mapped to the positions dataset: its value (a UUID string) is not a JSON object, so it is quarantined.
    let bucket = moto.bucket("lake").await;
    let mut lander = start(&moto, &[("LAKE_BUCKET", &bucket), ("TOPIC_DATASETS", "AWSKafkaTopic=locations")]).await;
    assert_eq!(lander.invoke(&fixture).await.outcome.unwrap()["landed"], json!(0));
    let lines = ndjson(&moto.get(&bucket, &format!("quarantine/msk-lander/{day}/AWSKafkaTopic-0-0-0.ndjson")).await);
    assert!(lines[0]["reason"].as_str().unwrap().starts_with("value is not JSON"), "{}", lines[0]);
    assert!(moto.keys(&bucket, "landing/").await.is_empty());
}

#[tokio::test]
async fn an_s3_failure_fails_the_invocation_so_lambda_retries() {
    let moto = Moto::start().await;
    // The bucket does not exist: every put fails.
    let mut lander = start(&moto, &[("LAKE_BUCKET", "no-such-lake-bucket")]).await;
    let outcome = lander.invoke(&serde_json::from_str(BATCH).unwrap()).await.outcome;
    let err = outcome.expect_err("a batch that could not be written must not succeed");
    assert_eq!(err["errorType"], json!("fleetlake.Retryable"));
    assert!(err["errorMessage"].as_str().unwrap().contains("PutObject s3://no-such-lake-bucket/"), "{err}");
}

#[tokio::test]
async fn a_missing_bucket_variable_stops_init_and_names_it() {
    let moto = Moto::start().await;
    let mut lander = start(&moto, &[]).await;
    let (code, stderr) = lander.wait_exit().await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("configuration variable LAKE_BUCKET: required but not set"), "{stderr}");
}
