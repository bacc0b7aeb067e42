//! The predictor end to end: bronze tables written by the shared Delta adapter on moto's S3, the real binary behind
//! a Lambda runtime API, moto's DynamoDB, and onnxruntime (Python) as the independent check of the model's answers.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test helpers, like the tests themselves, fail loudly

use std::collections::BTreeMap;
use std::path::Path;

use aws_sdk_dynamodb::types::AttributeValue;
use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, TableSpec, LOCATIONS, PERFORMANCE_STATS};
use fleetlake_core::features::{haversine_km, Contract, SHIPPED_CONTRACT};
use fleetlake_delta::{open_or_create, Appender, DeltaSettings};
use fleetlake_testkit::{unique_name, venv_bin, workspace_root, Invocation, LambdaHarness, Moto};
use serde_json::{json, Value};

struct Env {
    moto: Moto,
    bucket: String,
    table: String,
    dynamodb: aws_sdk_dynamodb::Client,
    settings: DeltaSettings,
    offset: i64,
}

/// One position: unit, type, ts, lat, lon, speed, wind, precipitation.
type Pos = (&'static str, &'static str, &'static str, f64, f64, f64, f64, f64);

/// One change of a daily performance row: op, ts_ms, lsn, unit, stat_date, distance, fuel, engine hours.
type Stat = (&'static str, i64, i64, &'static str, &'static str, f64, f64, f64);

impl Env {
    async fn new() -> Env {
        let moto = Moto::start().await;
        let bucket = moto.bucket("lake").await;
        let table = unique_name("predictions");
        let dynamodb = moto.predictions_table(&table).await;
        let settings = moto.delta_settings(&bucket);
        Env { moto, bucket, table, dynamodb, settings, offset: 0 }
    }

    async fn start(&self, extra: &[(&str, &str)]) -> LambdaHarness {
        let mut env = self.moto.env();
        env.push(("LAKE_BUCKET".into(), self.bucket.clone()));
        env.push(("PREDICTIONS_TABLE".into(), self.table.clone()));
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        LambdaHarness::start(Path::new(env!("CARGO_BIN_EXE_predictor")), "predictor", &env).await
    }

    async fn append(&mut self, spec: &'static TableSpec, lines: Vec<Value>) -> u64 {
        let table = open_or_create(&self.settings, spec).await.unwrap();
        let mut appender = Appender::new(spec, table, 128 << 20).unwrap();
        let mut converter = Converter::new(spec);
        for mut line in lines {
            self.offset += 1;
            line["_source"] =
                json!({"topic": format!("t.{}", spec.name), "partition": 0, "offset": self.offset, "timestamp": 1});
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

    async fn positions(&mut self, rows: &[Pos]) -> u64 {
        let lines = rows
            .iter()
            .map(|(unit, kind, ts, lat, lon, speed, wind, rain)| {
                json!({"transport_unit_id": unit, "transport_type": kind, "ts": ts, "lat": lat, "lon": lon,
                       "speed_kmh": speed, "wind_speed_kmh": wind, "precipitation_mm": rain, "weather_status": "ok"})
            })
            .collect();
        self.append(&LOCATIONS, lines).await
    }

    async fn stats(&mut self, rows: &[Stat]) -> u64 {
        let lines = rows
            .iter()
            .map(|(op, ts_ms, lsn, unit, date, distance, fuel, hours)| {
                json!({"op": op, "ts_ms": ts_ms, "lsn": lsn, "row": {"transport_unit_id": unit, "stat_date": date,
                       "distance_km": distance, "fuel_used_l": fuel, "engine_hours": hours}})
            })
            .collect();
        self.append(&PERFORMANCE_STATS, lines).await
    }

    /// An SQS batch with one message per commit, each an S3 notification as moto sends it (key encoded).
    fn commits_event(&self, commits: &[(&str, u64)]) -> Value {
        let records: Vec<Value> = commits
            .iter()
            .enumerate()
            .map(|(i, (table, v))| {
                let key = format!("bronze/{table}/_delta_log/{v:020}.json").replace('/', "%2F");
                let body = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                  "s3": {"bucket": {"name": self.bucket}, "object": {"key": key}}}]});
                json!({"messageId": format!("m{i}"), "eventSource": "aws:sqs", "body": body.to_string()})
            })
            .collect();
        json!({"Records": records})
    }

    /// The record of what was served: every object under `landing/predictions/`, with its ETag and its lines as
    /// (unit, predicted_at, value, source_version).
    async fn records(&self) -> BTreeMap<String, (String, Vec<(String, String, f64, u64)>)> {
        use std::io::Read as _;
        let s3 = self.moto.s3();
        let listed = s3.list_objects_v2().bucket(&self.bucket).prefix("landing/predictions/").send().await.unwrap();
        let mut out = BTreeMap::new();
        for o in listed.contents() {
            let key = o.key().unwrap().to_owned();
            let got = s3.get_object().bucket(&self.bucket).key(&key).send().await.unwrap();
            let etag = got.e_tag().unwrap().to_owned();
            let gz = got.body.collect().await.unwrap().into_bytes();
            let mut text = String::new();
            flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
            let lines = text
                .lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    let s = |k: &str| v[k].as_str().unwrap().to_owned();
                    (
                        s("transport_unit_id"),
                        s("predicted_at"),
                        v["value"].as_f64().unwrap(),
                        v["source_version"].as_u64().unwrap(),
                    )
                })
                .collect();
            out.insert(key, (etag, lines));
        }
        out
    }

    /// Every item: (unit, predicted_at) → item.
    async fn items(&self) -> BTreeMap<(String, String), BTreeMap<String, AttributeValue>> {
        let out = self.dynamodb.scan().table_name(&self.table).send().await.unwrap();
        out.items()
            .iter()
            .map(|i| {
                let s = |k: &str| i[k].as_s().unwrap().clone();
                ((s("transport_unit_id"), s("predicted_at")), i.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            })
            .collect()
    }
}

fn num(v: &AttributeValue) -> f64 {
    v.as_n().unwrap().parse().unwrap()
}

fn metric(inv: &Invocation, name: &str) -> u64 {
    inv.stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|m| m.get(name).and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("no metric {name} in {:?}", inv.stdout))
}

/// The model's answers for these feature rows, from onnxruntime.
fn onnxruntime(rows: &[Vec<f64>]) -> Vec<f64> {
    use std::io::Write;
    let mut child = std::process::Command::new(venv_bin("python"))
        .arg(workspace_root().join("infra/testkit/py/onnx_predict.py"))
        .arg(workspace_root().join("models/fuel-24h/model.onnx"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(serde_json::to_string(rows).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The features of an item in contract order.
fn feature_row(item: &BTreeMap<String, AttributeValue>) -> Vec<f64> {
    let contract = Contract::parse(SHIPPED_CONTRACT).unwrap();
    let map = item["features"].as_m().unwrap();
    contract.features.iter().map(|f| num(&map[&f.name])).collect()
}

/// Day one: TU-A (maritime) sails along the equator, with one position the day before (outside the 24 h window
/// of its 10:00 position); TU-C (terrestrial) reports once.
const EARLIER: [Pos; 4] = [
    ("TU-A", "maritime", "2026-11-23T08:00:00Z", 10.0, 10.0, 99.0, 99.0, 9.0),
    ("TU-A", "maritime", "2026-11-24T08:00:00Z", 0.0, 0.0, 20.0, 10.0, 0.5),
    ("TU-A", "maritime", "2026-11-24T09:00:00Z", 0.0, 0.5, 22.0, 14.0, 0.25),
    ("TU-C", "terrestrial", "2026-11-24T08:00:00Z", 48.1, 11.5, 60.0, 5.0, 0.0),
];

/// The commit predicted from: TU-A's next position and TU-B (aerial), new.
const LATEST: [Pos; 3] = [
    ("TU-A", "maritime", "2026-11-24T10:00:00Z", 0.0, 1.0, 24.0, 12.0, 0.0),
    ("TU-B", "aerial", "2026-11-24T09:30:00Z", 50.0, 8.0, 800.0, 40.0, 0.0),
    ("TU-B", "aerial", "2026-11-24T10:00:00Z", 50.0, 9.0, 820.0, 60.0, 1.0),
];

/// TU-A: the 23rd inserted then updated, the 24th inserted then deleted. TU-B: the 22nd, and the 25th (after the
/// prediction's day, so not used).
const STATS: [Stat; 6] = [
    ("c", 1_000, 1, "TU-A", "2026-11-23", 480.0, 5_200.0, 20.0),
    ("u", 2_000, 2, "TU-A", "2026-11-23", 490.0, 5_300.0, 21.0),
    ("c", 3_000, 3, "TU-A", "2026-11-24", 1.0, 9_999.0, 1.0),
    ("d", 4_000, 4, "TU-A", "2026-11-24", 1.0, 9_999.0, 1.0),
    ("c", 1_000, 5, "TU-B", "2026-11-22", 7_000.0, 21_000.0, 9.0),
    ("c", 5_000, 6, "TU-B", "2026-11-25", 1.0, 1.0, 1.0),
];

#[tokio::test]
async fn a_commit_predicts_its_units_from_their_window_and_daily_figures_and_a_replay_writes_nothing() {
    let mut env = Env::new().await;
    env.stats(&STATS).await;
    let earlier = env.positions(&EARLIER).await;
    let latest = env.positions(&LATEST).await;
    assert_eq!(latest, earlier + 1);
    let mut predictor = env.start(&[]).await;

    let inv = predictor.invoke(&env.commits_event(&[("locations", latest)])).await;
    assert_eq!(inv.outcome, Ok(json!({"batchItemFailures": []})), "{}", predictor.stderr());
    assert_eq!(metric(&inv, "predictions_written"), 2);
    let items = env.items().await;
    let keys: Vec<(&str, &str)> = items.keys().map(|(u, t)| (u.as_str(), t.as_str())).collect();
    assert_eq!(
        keys,
        [("TU-A", "2026-11-24T10:00:00.000000Z"), ("TU-B", "2026-11-24T10:00:00.000000Z")],
        "TU-C is not in the commit"
    );

    let a = &items[&("TU-A".to_owned(), "2026-11-24T10:00:00.000000Z".to_owned())];
    let f = a["features"].as_m().unwrap();
    // 08:00 → 09:00 → 10:00 along the equator: one degree of longitude; the 23rd's position is outside the window.
    assert!((num(&f["distance_km"]) - 111.195_08).abs() < 1e-3, "{f:?}");
    assert_eq!(num(&f["hours_observed"]), 2.0);
    assert_eq!(num(&f["mean_speed_kmh"]), 22.0);
    assert_eq!(num(&f["mean_wind_kmh"]), 12.0);
    assert_eq!(num(&f["precipitation_mm"]), 0.75);
    assert_eq!((num(&f["is_maritime"]), num(&f["is_aerial"]), num(&f["is_terrestrial"])), (1.0, 0.0, 0.0));
    // The 23rd as updated; the 24th was deleted.
    assert_eq!(
        (num(&f["last_fuel_l"]), num(&f["last_distance_km"]), num(&f["last_engine_hours"])),
        (5_300.0, 490.0, 21.0)
    );
    assert_eq!(a["source_version"].as_n().unwrap(), &latest.to_string());
    assert_eq!(a["target"].as_s().unwrap(), "fuel_next_24h");
    assert_eq!(a["unit"].as_s().unwrap(), "l");
    assert!(a["model_version"].as_s().unwrap().starts_with("fuel-24h-"));
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().timestamp();
    assert_eq!(num(&a["expires_at"]) as i64, at + 7 * 86_400);

    let b = &items[&("TU-B".to_owned(), "2026-11-24T10:00:00.000000Z".to_owned())];
    let f = b["features"].as_m().unwrap();
    assert!((num(&f["distance_km"]) - haversine_km(50.0, 8.0, 50.0, 9.0)).abs() < 1e-3);
    assert_eq!(num(&f["is_aerial"]), 1.0);
    assert_eq!(num(&f["last_fuel_l"]), 21_000.0, "the 25th is after the prediction's day");

    // The values are what onnxruntime answers for the same features.
    let rows: Vec<Vec<f64>> = items.values().map(feature_row).collect();
    let want = onnxruntime(&rows);
    for (item, w) in items.values().zip(&want) {
        let got = num(&item["value"]);
        assert!((got - w).abs() <= 1e-4 * w.abs().max(1.0), "tract {got} vs onnxruntime {w}");
    }

    // The same commit again (SQS redelivery): its record is landed, so every item is in from this version; the
    // replay reads no position and writes nothing.
    let replay = predictor.invoke(&env.commits_event(&[("locations", latest)])).await;
    assert_eq!(replay.outcome, Ok(json!({"batchItemFailures": []})));
    assert_eq!(metric(&replay, "commits_replayed"), 1);
    assert_eq!((metric(&replay, "positions_read"), metric(&replay, "predictions_written")), (0, 0));
    assert_eq!(env.items().await, items);

    // Without its record (an attempt that stopped between DynamoDB and the landing), the commit is predicted
    // again, and every item is found in from this very version.
    for key in env.records().await.keys() {
        env.moto.s3().delete_object().bucket(&env.bucket).key(key).send().await.unwrap();
    }
    let again = predictor.invoke(&env.commits_event(&[("locations", latest)])).await;
    assert_eq!(again.outcome, Ok(json!({"batchItemFailures": []})));
    assert_eq!(metric(&again, "commits_replayed"), 0);
    assert_eq!((metric(&again, "predictions_written"), metric(&again, "predictions_kept")), (0, 2));
    assert_eq!(env.items().await, items);
    assert_eq!(env.records().await.len(), 1, "the record is landed again");
}

#[tokio::test]
async fn a_scheduled_refresh_covers_every_active_unit_and_an_older_commit_never_replaces_it() {
    let mut env = Env::new().await;
    let stats = env.stats(&STATS).await;
    let earlier = env.positions(&EARLIER).await;
    let latest = env.positions(&LATEST).await;
    let mut predictor = env.start(&[]).await;
    let schedule: Value = serde_json::from_str(include_str!("../../../events/predictor/schedule.json")).unwrap();
    let inv = predictor.invoke(&schedule).await;
    assert_eq!(
        inv.outcome,
        Ok(json!({"refresh": true, "source_version": latest, "predictions": 3})),
        "{}",
        predictor.stderr()
    );
    let items = env.items().await;
    let keys: Vec<(&str, &str)> = items.keys().map(|(u, t)| (u.as_str(), t.as_str())).collect();
    assert_eq!(
        keys,
        [
            ("TU-A", "2026-11-24T10:00:00.000000Z"),
            ("TU-B", "2026-11-24T10:00:00.000000Z"),
            ("TU-C", "2026-11-24T08:00:00.000000Z")
        ]
    );
    assert!(items.values().all(|i| i["source_version"].as_n().unwrap() == &latest.to_string()));
    let a = &items[&("TU-A".to_owned(), "2026-11-24T10:00:00.000000Z".to_owned())];
    assert!((num(&a["features"].as_m().unwrap()["distance_km"]) - 111.195_08).abs() < 1e-3);

    // The earlier commit processed late: TU-A gets an item at its 09:00 position; TU-C's 08:00 item stays the
    // refresh's.
    let late = predictor.invoke(&env.commits_event(&[("locations", earlier), ("performance_stats", stats)])).await;
    assert_eq!(late.outcome, Ok(json!({"batchItemFailures": []})));
    assert_eq!((metric(&late, "predictions_written"), metric(&late, "predictions_kept")), (1, 1));
    assert_eq!(metric(&late, "objects_ignored"), 1, "performance_stats commits are not predicted from");
    let after = env.items().await;
    assert_eq!(
        after[&("TU-C".to_owned(), "2026-11-24T08:00:00.000000Z".to_owned())],
        items[&("TU-C".to_owned(), "2026-11-24T08:00:00.000000Z".to_owned())]
    );
    let a9 = &after[&("TU-A".to_owned(), "2026-11-24T09:00:00.000000Z".to_owned())];
    assert_eq!(a9["source_version"].as_n().unwrap(), &earlier.to_string());

    // The latest prediction of a unit, as applications read it.
    let latest = env
        .dynamodb
        .query()
        .table_name(&env.table)
        .key_condition_expression("transport_unit_id = :u")
        .expression_attribute_values(":u", AttributeValue::S("TU-A".into()))
        .scan_index_forward(false)
        .limit(1)
        .send()
        .await
        .unwrap();
    assert_eq!(latest.items()[0]["predicted_at"].as_s().unwrap(), "2026-11-24T10:00:00.000000Z");
}

/// Compaction rewrites rows without changing them: its commit predicts nothing, and predictions made from the
/// compacted files are the ones made from the small files.
#[tokio::test]
async fn a_compaction_predicts_nothing_new_and_changes_no_prediction() {
    let mut env = Env::new().await;
    env.stats(&STATS).await;
    env.positions(&EARLIER).await;
    env.positions(&LATEST).await;
    let mut predictor = env.start(&[]).await;
    let schedule: Value = serde_json::from_str(include_str!("../../../events/predictor/schedule.json")).unwrap();
    let before = predictor.invoke(&schedule).await;
    assert_eq!(before.outcome.unwrap()["predictions"], json!(3), "{}", predictor.stderr());
    let items = env.items().await;

    let mut table = open_or_create(&env.settings, &LOCATIONS).await.unwrap();
    let report =
        fleetlake_delta::compact_partition(&mut table, &LOCATIONS, Some(("event_date", "2026-11-24")), 128 << 20, None)
            .await
            .unwrap();
    assert_eq!((report.bins_committed, report.files_removed), (1, 2), "{report:?}");
    let compacted = report.versions[0];

    // WHEN the compaction's commit reaches the predictor
    let inv = predictor.invoke(&env.commits_event(&[("locations", compacted)])).await;
    assert_eq!(inv.outcome, Ok(json!({"batchItemFailures": []})), "{}", predictor.stderr());
    // THEN nothing is predicted from it
    assert_eq!((metric(&inv, "predictions_written"), metric(&inv, "predictions_kept")), (0, 0));
    assert_eq!(env.items().await, items);

    // AND a refresh from the compacted files predicts the same values from the same features
    let after = predictor.invoke(&schedule).await;
    assert_eq!(after.outcome.unwrap(), json!({"refresh": true, "source_version": compacted, "predictions": 3}));
    let same = |items: &BTreeMap<(String, String), BTreeMap<String, AttributeValue>>| -> Vec<_> {
        items.iter().map(|(k, i)| (k.clone(), i["value"].clone(), i["features"].clone())).collect()
    };
    assert_eq!(same(&env.items().await), same(&items));
}

/// The record of what was served (`landing/predictions/`, appended to `bronze/predictions` by delta-writer): landed
/// after DynamoDB took the items, never for predictions DynamoDB did not take, once per commit however often it
/// is delivered.
#[tokio::test]
async fn the_record_of_what_was_served_is_landed_once_after_dynamodb_took_the_items() {
    let mut env = Env::new().await;
    env.stats(&STATS).await;
    env.positions(&EARLIER).await;
    let latest = env.positions(&LATEST).await;
    let commit = env.commits_event(&[("locations", latest)]);

    // DynamoDB unreachable (a closed port), S3 as usual: the message fails, and nothing is recorded.
    let closed = format!("http://127.0.0.1:{}", fleetlake_testkit::free_port());
    let mut broken = env.start(&[("AWS_ENDPOINT_URL_DYNAMODB", closed.as_str())]).await;
    let inv = broken.invoke(&commit).await;
    assert_eq!(inv.outcome, Ok(json!({"batchItemFailures": [{"itemIdentifier": "m0"}]})), "{}", broken.stderr());
    assert!(env.items().await.is_empty());
    assert!(env.records().await.is_empty(), "predictions DynamoDB never took are not in the record");
    drop(broken);

    // Lambda's retry, with DynamoDB back: the items, and their record.
    let mut predictor = env.start(&[]).await;
    let inv = predictor.invoke(&commit).await;
    assert_eq!(inv.outcome, Ok(json!({"batchItemFailures": []})), "{}", predictor.stderr());
    let items = env.items().await;
    let records = env.records().await;
    let key = format!("landing/predictions/dt=2026-11-24/predictor-commit-{latest:020}.ndjson.gz");
    assert_eq!(records.keys().collect::<Vec<_>>(), [&key]);
    let recorded: BTreeMap<(String, String), (f64, u64)> =
        records[&key].1.iter().map(|(u, t, v, s)| ((u.clone(), t.clone()), (*v, *s))).collect();
    let stored: BTreeMap<(String, String), (f64, u64)> = items
        .iter()
        .map(|(k, i)| (k.clone(), (num(&i["value"]), i["source_version"].as_n().unwrap().parse().unwrap())))
        .collect();
    assert_eq!(recorded, stored);

    // Delivered again: the object is left as it was, and no other is written.
    let replay = predictor.invoke(&commit).await;
    assert_eq!(replay.outcome, Ok(json!({"batchItemFailures": []})));
    assert_eq!(env.records().await, records);
}

#[tokio::test]
async fn a_model_from_s3_is_loaded_and_one_that_does_not_fit_its_contract_stops_init() {
    let env = Env::new().await;
    let s3 = env.moto.s3();
    let put = |key: &'static str, body: Vec<u8>| {
        let (s3, bucket) = (s3.clone(), env.bucket.clone());
        async move { s3.put_object().bucket(bucket).key(key).body(body.into()).send().await.unwrap() }
    };
    let model = std::fs::read(workspace_root().join("models/fuel-24h/model.onnx")).unwrap();
    put("models/good/model.onnx", model.clone()).await;
    put("models/good/contract.json", SHIPPED_CONTRACT.as_bytes().to_vec()).await;
    put("models/garbage/model.onnx", b"not an onnx file".to_vec()).await;
    put("models/garbage/contract.json", SHIPPED_CONTRACT.as_bytes().to_vec()).await;
    let mut short: Value = serde_json::from_str(SHIPPED_CONTRACT).unwrap();
    short["features"].as_array_mut().unwrap().pop();
    put("models/short/model.onnx", model).await;
    put("models/short/contract.json", short.to_string().into_bytes()).await;

    let good_uri = format!("s3://{}/models/good/model.onnx", env.bucket);
    let good = env.start(&[("MODEL_URI", &good_uri)]).await;
    assert!(good.ready_after().await.is_some(), "a valid model must load: {}", good.stderr());

    for (name, want) in [
        ("garbage", "model fuel-24h: not a readable ONNX model"),
        ("short", "model fuel-24h: does not match its feature contract: input has 11 features, the contract 10"),
        ("missing", "models/missing/contract.json"),
    ] {
        let uri = format!("s3://{}/models/{name}/model.onnx", env.bucket);
        let mut bad = env.start(&[("MODEL_URI", &uri)]).await;
        let (code, stderr) = bad.wait_exit().await;
        assert_ne!(code, Some(0), "{name}");
        assert!(stderr.contains(&format!("MODEL_URI {uri}")) && stderr.contains(want), "{name}: {stderr}");
    }
}
