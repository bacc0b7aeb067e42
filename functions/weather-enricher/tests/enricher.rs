//! weather-enricher end to end: the real binary behind a Lambda runtime API, moto's S3 and the weather stub.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test helpers, like the tests themselves, fail loudly

use std::io::{Read, Write};
use std::path::Path;

use chrono::NaiveDate;
use fleetlake_testkit::{LambdaHarness, Moto};
use serde_json::{json, Value};
use weather_stub::{value_at, Faults, Options, Stub};

const DAY: &str = "2026-11-24";

struct Env {
    moto: Moto,
    bucket: String,
    stub: Stub,
    enricher: LambdaHarness,
}

async fn setup(extra: &[(&str, &str)]) -> Env {
    let moto = Moto::start().await;
    let bucket = moto.bucket("lake").await;
    let (stub, url) = weather_stub::spawn(Options::default()).await.unwrap();
    let mut env = moto.env();
    for (k, v) in [
        ("LAKE_BUCKET", bucket.as_str()),
        ("WEATHER_API_URL", url.as_str()),
        ("WEATHER_BACKOFF_BASE_MS", "10"),
        ("WEATHER_BACKOFF_CAP_MS", "100"),
        ("WEATHER_TIMEOUT_MS", "5000"),
        // The fixtures are dated (DAY) and dropped without lineage, so they are judged against the clock: a century
        // keeps them valid whenever the tests run. The window itself is tested with its defaults below.
        ("EVENT_TIME_MAX_AGE_DAYS", "36500"),
    ]
    .iter()
    .chain(extra)
    {
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    let enricher =
        LambdaHarness::start(Path::new(env!("CARGO_BIN_EXE_weather-enricher")), "weather-enricher", &env).await;
    Env { moto, bucket, stub, enricher }
}

fn gzip(lines: &[String]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in lines {
        gz.write_all(l.as_bytes()).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<Value> {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_string(&mut text).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Encodes a key as moto's S3 notifications do (every reserved character, space as `+`).
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn s3_event(bucket: &str, keys: &[&str]) -> Value {
    let records: Vec<Value> = keys
        .iter()
        .map(|k| {
            json!({"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventName": "ObjectCreated:Put",
                   "s3": {"bucket": {"name": bucket}, "object": {"key": encode(k), "size": 1}}})
        })
        .collect();
    json!({"Records": records})
}

fn sqs_event(messages: &[(&str, Value)]) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|(id, body)| json!({"messageId": id, "eventSource": "aws:sqs", "body": body.to_string()}))
        .collect();
    json!({"Records": records})
}

fn position(unit: &str, ts: &str, lat: f64, lon: f64) -> String {
    json!({"transport_unit_id": unit, "ts": ts, "lat": lat, "lon": lon, "transport_type": "maritime"}).to_string()
}

/// The stub's value for a variable at a cell centre and an hour of DAY.
fn expected(variable: &str, lat: f64, lon: f64, hour: i64) -> Value {
    let midnight =
        NaiveDate::parse_from_str(DAY, "%Y-%m-%d").unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp() / 3600;
    value_at(variable, lat, lon, midnight + hour)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_file_gets_exact_weather_and_a_rerun_changes_nothing() {
    // A day far ahead is allowed here, to see the weather API's range answered as `out_of_range`.
    let mut e = setup(&[("EVENT_TIME_MAX_AHEAD_HOURS", "876000")]).await;
    let key = format!("landing/locations/dt={DAY}/drop 1.ndjson.gz");
    let lines = vec![
        position("TU-1", &format!("{DAY}T08:15:00Z"), 53.5461, 9.9661),
        position("TU-1", &format!("{DAY}T10:45:00+02:00"), 53.52, 10.04), // same cell, 08:45 UTC
        "{not json".to_owned(),
        position("TU-2", &format!("{DAY}T23:59:59Z"), -33.91, 18.42),
        json!({"transport_unit_id": "TU-3", "ts": format!("{DAY}T12:00:00Z"), "lat": 91.0, "lon": 0.0}).to_string(),
        position("TU-4", "2090-01-01T00:00:00Z", 10.0, 10.0),
    ];
    e.moto.s3().put_object().bucket(&e.bucket).key(&key).body(gzip(&lines).into()).send().await.unwrap();

    // WHEN S3 notifies the function (key encoded as moto and S3 encode it)
    let first = e.enricher.invoke(&s3_event(&e.bucket, &[&key])).await.outcome.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(first["records_enriched"], json!(4));
    assert_eq!(first["records_quarantined"], json!(2));
    assert_eq!(first["records_degraded"], json!(1));

    // THEN the enriched object mirrors the landed name and carries the stub's exact values
    let out_key = format!("enriched/locations/dt={DAY}/drop 1.ndjson.gz");
    let out = gunzip(&e.moto.get(&e.bucket, &out_key).await);
    let units: Vec<&str> = out.iter().map(|r| r["transport_unit_id"].as_str().unwrap()).collect();
    assert_eq!(units, ["TU-1", "TU-1", "TU-2", "TU-4"]);
    for (rec, (lat, lon, hour)) in out.iter().zip([(53.5, 10.0, 8), (53.5, 10.0, 8), (-33.9, 18.4, 23)]) {
        assert_eq!(rec["temperature_c"], expected("temperature_2m", lat, lon, hour), "{rec}");
        assert_eq!(rec["wind_speed_kmh"], expected("wind_speed_10m", lat, lon, hour), "{rec}");
        assert_eq!(rec["precipitation_mm"], expected("precipitation", lat, lon, hour), "{rec}");
        assert_eq!(rec["weather_code"], expected("weather_code", lat, lon, hour), "{rec}");
        assert_eq!(rec["weather_status"], json!("ok"));
        assert_eq!(rec["_source"]["key"], json!(key), "a dropped file gets {{key, etag}} lineage");
        assert_eq!(rec["transport_type"], json!("maritime"), "fields are kept");
    }
    assert_eq!(out[3]["weather_status"], json!("out_of_range"));
    assert_eq!(out[3]["temperature_c"], Value::Null);
    // Two cells on one day: one request.
    assert_eq!(e.stub.stats().requests, 1);

    // AND the bad lines are quarantined with their reasons
    let q =
        String::from_utf8(e.moto.get(&e.bucket, &format!("quarantine/weather-enricher/dt={DAY}/drop 1.ndjson")).await)
            .unwrap();
    let q: Vec<Value> = q.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(q.len(), 2);
    assert!(q[0]["reason"].as_str().unwrap().starts_with("value is not JSON"), "{}", q[0]);
    assert_eq!(q[0]["source"], json!({"key": key, "line": 3}));
    assert_eq!(q[1]["reason"], json!("field `lat` must be between -90 and 90, got 91"));

    // WHEN the same notification arrives again
    let before = e.moto.get(&e.bucket, &out_key).await;
    let second = e.enricher.invoke(&s3_event(&e.bucket, &[&key])).await.outcome.unwrap();
    // THEN nothing is redone
    assert_eq!(second["objects_already_enriched"], json!(1));
    assert_eq!(e.moto.get(&e.bucket, &out_key).await, before);
    assert_eq!(e.stub.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_from_a_broken_clock_is_quarantined_and_its_neighbours_enriched() {
    let mut e = setup(&[]).await;
    let now = chrono::Utc::now();
    let at = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let key = format!("landing/locations/dt={DAY}/clocks.ndjson.gz");
    let lines = vec![
        position("TU-1", &at(now - chrono::Duration::hours(1)), 53.5, 9.9),
        position("TU-2", "2090-01-01T00:00:00Z", 53.5, 9.9),
        position("TU-3", &at(now + chrono::Duration::hours(2)), 53.5, 9.9),
    ];
    e.moto.s3().put_object().bucket(&e.bucket).key(&key).body(gzip(&lines).into()).send().await.unwrap();
    let out = e.enricher.invoke(&s3_event(&e.bucket, &[&key])).await.outcome.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!((out["records_enriched"].clone(), out["records_quarantined"].clone()), (json!(2), json!(1)));
    let q = e.moto.get(&e.bucket, &format!("quarantine/weather-enricher/dt={DAY}/clocks.ndjson")).await;
    let q: Value = serde_json::from_slice(&q).unwrap();
    assert_eq!(
        q["reason"],
        json!("field `ts` is more than 24 h after the record was ingested (EVENT_TIME_MAX_AHEAD_HOURS)")
    );
    assert_eq!(q["source"]["line"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_are_batched_and_cached_across_invocations() {
    let mut e = setup(&[("WEATHER_BATCH_SIZE", "100")]).await;
    // GIVEN 250 distinct cells on one day, two records each
    let lines: Vec<String> = (0..500)
        .map(|i| {
            position(&format!("TU-{i}"), &format!("{DAY}T{:02}:00:00Z", i % 24), 10.0 + f64::from(i % 250) * 0.1, 20.0)
        })
        .collect();
    for name in ["a", "b"] {
        let key = format!("landing/locations/dt={DAY}/{name}.ndjson.gz");
        e.moto.s3().put_object().bucket(&e.bucket).key(&key).body(gzip(&lines).into()).send().await.unwrap();
    }
    // WHEN the first object is enriched: ceil(250 / 100) = 3 requests
    let first = e.enricher.invoke(&s3_event(&e.bucket, &[&format!("landing/locations/dt={DAY}/a.ndjson.gz")])).await;
    assert_eq!(first.outcome.unwrap()["records_enriched"], json!(500));
    assert_eq!((e.stub.stats().requests, e.stub.stats().coordinates), (3, 250));
    // AND the second, through SQS, on the warm function: all from the cache
    let body = s3_event(&e.bucket, &[&format!("landing/locations/dt={DAY}/b.ndjson.gz")]);
    let second = e.enricher.invoke(&sqs_event(&[("m-1", body)])).await;
    assert_eq!(second.outcome.unwrap(), json!({"batchItemFailures": []}));
    assert_eq!(e.stub.stats().requests, 3, "a warm function calls the API only for cells it has not seen");
    let emf: Value = second
        .stdout
        .iter()
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(|v| v.get("_aws").is_some()))
        .unwrap();
    assert_eq!((&emf["weather_requests"], &emf["weather_cache_hits"]), (&json!(0), &json!(250)));
    let out = gunzip(&e.moto.get(&e.bucket, &format!("enriched/locations/dt={DAY}/b.ndjson.gz")).await);
    assert_eq!(out.len(), 500);
    assert!(out.iter().all(|r| r["weather_status"] == json!("ok")));
}

/// Writes one object of `n` positions in fresh cells (offset `base` keeps cells apart between calls).
async fn put_positions(e: &Env, name: &str, base: f64, n: usize) -> String {
    let key = format!("landing/locations/dt={DAY}/{name}.ndjson.gz");
    let lines: Vec<String> = (0..n)
        .map(|i| position(&format!("TU-{i}"), &format!("{DAY}T06:00:00Z"), base + i as f64 * 0.1, -40.0))
        .collect();
    e.moto.s3().put_object().bucket(&e.bucket).key(&key).body(gzip(&lines).into()).send().await.unwrap();
    key
}

async fn statuses(e: &Env, key: &str) -> Vec<String> {
    let out_key = key.replacen("landing/", "enriched/", 1);
    gunzip(&e.moto.get(&e.bucket, &out_key).await)
        .iter()
        .map(|r| r["weather_status"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_flag_records_and_lose_none() {
    // A breaker that never opens here: each fault is seen on its own. Retry-After: 1 (the stub's injected 429)
    // fits under a 2 s backoff cap, so it is honoured.
    let mut e = setup(&[
        ("WEATHER_MAX_RETRIES", "2"),
        ("WEATHER_BREAKER_THRESHOLD", "1000"),
        ("WEATHER_TIMEOUT_MS", "1000"),
        ("WEATHER_BACKOFF_CAP_MS", "2000"),
    ])
    .await;
    let faults = [
        ("http-500", Faults { failure_rate: 1.0, failure_status: 500, ..Faults::default() }),
        ("http-429", Faults { failure_rate: 1.0, failure_status: 429, ..Faults::default() }),
        ("slow", Faults { latency_ms: 3_000, ..Faults::default() }),
        ("garbage", Faults { garbage_rate: 1.0, ..Faults::default() }),
    ];
    for (i, (name, fault)) in faults.into_iter().enumerate() {
        e.stub.set_faults(fault);
        let requests_before = e.stub.stats().requests;
        let key = put_positions(&e, name, -60.0 + 10.0 * i as f64, 7).await;
        let outcome = e
            .enricher
            .invoke(&s3_event(&e.bucket, &[&key]))
            .await
            .outcome
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(outcome["records_enriched"], json!(7), "{name}");
        assert_eq!(outcome["records_degraded"], json!(7), "{name}");
        assert_eq!(statuses(&e, &key).await, vec!["unavailable"; 7], "{name}");
        assert_eq!(e.stub.stats().requests - requests_before, 3, "{name}: one request, two retries");
    }
    // Failures that pass: half of all requests fail, retries get every batch through.
    e.stub.set_faults(Faults { failure_rate: 0.5, failure_status: 503, seed: 11, ..Faults::default() });
    let key = put_positions(&e, "flaky", 30.0, 7).await;
    e.enricher.invoke(&s3_event(&e.bucket, &[&key])).await.outcome.unwrap();
    assert_eq!(statuses(&e, &key).await, vec!["ok"; 7]);
    assert!(e.stub.stats().failures_injected > 0);

    // A rate limit that asks for longer than the backoff cap (Retry-After: 60): no retry, and no call at all
    // until then — the next object's records are flagged without touching the API.
    e.stub.set_faults(Faults { rate_limit_per_minute: 1, ..Faults::default() });
    let before = e.stub.stats();
    for (name, base) in [("limited-1", 70.0), ("limited-2", 72.0), ("limited-3", 74.0)] {
        let key = put_positions(&e, name, base, 2).await;
        e.enricher.invoke(&s3_event(&e.bucket, &[&key])).await.outcome.unwrap();
    }
    let after = e.stub.stats();
    assert_eq!((after.requests - before.requests, after.rate_limited - before.rate_limited), (2, 1), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_stops_calling_a_failing_api() {
    let mut e = setup(&[
        ("WEATHER_MAX_RETRIES", "1"),
        ("WEATHER_BREAKER_THRESHOLD", "2"),
        ("WEATHER_BREAKER_COOLDOWN_MS", "60000"),
    ])
    .await;
    e.stub.set_faults(Faults { failure_rate: 1.0, ..Faults::default() });
    let first = put_positions(&e, "first", -10.0, 3).await;
    e.enricher.invoke(&s3_event(&e.bucket, &[&first])).await.outcome.unwrap();
    assert_eq!(e.stub.stats().requests, 2);
    // The API recovers, but the circuit stays open for its cooldown: no call, records flagged.
    e.stub.set_faults(Faults::default());
    let second = put_positions(&e, "second", 20.0, 3).await;
    let out = e.enricher.invoke(&s3_event(&e.bucket, &[&second])).await;
    assert_eq!(e.stub.stats().requests, 2);
    assert_eq!(statuses(&e, &second).await, vec!["unavailable"; 3]);
    let emf: Value = out
        .stdout
        .iter()
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(|v| v.get("_aws").is_some()))
        .unwrap();
    assert_eq!(emf["weather_short_circuited"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_objects_are_reported_and_s3_failures_are_retried() {
    let mut e = setup(&[]).await;
    let not_gzip = format!("landing/locations/dt={DAY}/plain.ndjson.gz");
    e.moto
        .s3()
        .put_object()
        .bucket(&e.bucket)
        .key(&not_gzip)
        .body(b"{\"a\":1}\n".to_vec().into())
        .send()
        .await
        .unwrap();
    let gone = format!("landing/locations/dt={DAY}/gone.ndjson.gz");
    let good = put_positions(&e, "good", 0.0, 2).await;

    // One SQS batch: a good object, a non-gzip one, a deleted one, and a message that is not an S3 event.
    let event = sqs_event(&[
        ("m-good", s3_event(&e.bucket, &[&good])),
        ("m-plain", s3_event(&e.bucket, &[&not_gzip])),
        ("m-gone", s3_event(&e.bucket, &[&gone])),
        ("m-junk", json!({"hello": "world"})),
    ]);
    let outcome = e.enricher.invoke(&event).await.outcome.unwrap();
    // Only the message no retry can fix *as an event* goes back to the queue (and on to its DLQ).
    assert_eq!(outcome, json!({"batchItemFailures": [{"itemIdentifier": "m-junk"}]}));
    assert_eq!(statuses(&e, &good).await, vec!["ok"; 2]);
    for name in ["plain", "gone"] {
        let q = String::from_utf8(
            e.moto.get(&e.bucket, &format!("quarantine/weather-enricher/dt={DAY}/{name}.ndjson")).await,
        )
        .unwrap();
        let line: Value = serde_json::from_str(q.trim()).unwrap();
        assert!(line["reason"].as_str().unwrap().starts_with("object refused"), "{line}");
        assert_eq!(line["source"]["key"], json!(format!("landing/locations/dt={DAY}/{name}.ndjson.gz")));
    }

    // An S3 failure (the bucket is gone) fails the item, so SQS redelivers it.
    let lost = "no-such-lake-bucket";
    let mut broken = LambdaHarness::start(
        Path::new(env!("CARGO_BIN_EXE_weather-enricher")),
        "weather-enricher",
        &[e.moto.env(), vec![("LAKE_BUCKET".to_owned(), lost.to_owned())]].concat(),
    )
    .await;
    let event = sqs_event(&[("m-1", s3_event(lost, &[&good]))]);
    assert_eq!(broken.invoke(&event).await.outcome.unwrap(), json!({"batchItemFailures": [{"itemIdentifier": "m-1"}]}));
    let direct = broken.invoke(&s3_event(lost, &[&good])).await.outcome.unwrap_err();
    assert_eq!(direct["errorType"], json!("fleetlake.Retryable"), "{direct}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_comes_from_ssm_and_never_reaches_the_logs() {
    let moto = Moto::start().await;
    let bucket = moto.bucket("lake").await;
    let (stub, url) =
        weather_stub::spawn(Options { api_key: Some("k3y-s3cr3t".into()), ..Options::default() }).await.unwrap();
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config());
    ssm.put_parameter()
        .name("/fleetlake/weather-api-key")
        .value("k3y-s3cr3t")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let env = |param: &str| {
        let mut env = moto.env();
        env.extend(
            [
                ("LAKE_BUCKET", bucket.as_str()),
                ("WEATHER_API_URL", url.as_str()),
                ("WEATHER_API_KEY_PARAM", param),
                ("RUST_LOG", "debug"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        env
    };
    let mut enricher = LambdaHarness::start(
        Path::new(env!("CARGO_BIN_EXE_weather-enricher")),
        "weather-enricher",
        &env("/fleetlake/weather-api-key"),
    )
    .await;
    let key = format!("landing/locations/dt={DAY}/k.ndjson.gz");
    let lines = [position("TU-1", &format!("{DAY}T01:00:00Z"), 1.0, 1.0)];
    moto.s3().put_object().bucket(&bucket).key(&key).body(gzip(&lines).into()).send().await.unwrap();
    let out = enricher.invoke(&s3_event(&bucket, &[&key])).await;
    assert_eq!(out.outcome.unwrap()["records_degraded"], json!(0), "the key was accepted: {}", enricher.stderr());
    assert_eq!(stub.stats().ok, 1);
    assert!(!enricher.stderr().contains("k3y-s3cr3t") && !out.stdout.concat().contains("k3y-s3cr3t"));

    // A parameter that does not exist stops init and names it.
    let mut missing = LambdaHarness::start(
        Path::new(env!("CARGO_BIN_EXE_weather-enricher")),
        "weather-enricher",
        &env("/fleetlake/nope"),
    )
    .await;
    let (code, stderr) = missing.wait_exit().await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("/fleetlake/nope"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_dropped_again_is_enriched_from_the_version_its_event_names() {
    let mut e = setup(&[]).await;
    let key = format!("landing/locations/dt={DAY}/again.ndjson.gz");
    let out_key = format!("enriched/locations/dt={DAY}/again.ndjson.gz");
    let event = |etag: &str| {
        let mut ev = s3_event(&e.bucket, &[&key]);
        ev["Records"][0]["s3"]["object"]["eTag"] = json!(etag);
        ev
    };
    let put = |lines: Vec<String>| {
        let (s3, bucket, key) = (e.moto.s3(), e.bucket.clone(), key.clone());
        async move {
            let out = s3.put_object().bucket(bucket).key(key).body(gzip(&lines).into()).send().await.unwrap();
            out.e_tag().unwrap().trim_matches('"').to_owned()
        }
    };
    let v1 = vec![position("TU-1", &format!("{DAY}T01:00:00Z"), 1.0, 1.0)];
    let etag1 = put(v1.clone()).await;
    assert_eq!(e.enricher.invoke(&event(&etag1)).await.outcome.unwrap()["objects_enriched"], json!(1));

    // WHEN the file is dropped again with more lines, and the events of both versions arrive again, newest first
    let etag2 = put(vec![v1[0].clone(), position("TU-2", &format!("{DAY}T02:00:00Z"), 2.0, 2.0)]).await;
    assert_eq!(e.enricher.invoke(&event(&etag2)).await.outcome.unwrap()["objects_enriched"], json!(1));
    let late = e.enricher.invoke(&event(&etag1)).await.outcome.unwrap();
    assert_eq!((&late["objects_superseded"], &late["objects_enriched"]), (&json!(1), &Value::Null), "{late}");

    // THEN the enriched object is the new content under the new identity, whatever the order
    let records = gunzip(&e.moto.get(&e.bucket, &out_key).await);
    assert_eq!(records.len(), 2, "the new content replaced the old");
    assert!(records.iter().all(|r| r["_source"]["etag"] == json!(etag2)), "{records:?}");
    let head = e.moto.s3().head_object().bucket(&e.bucket).key(&out_key).send().await.unwrap();
    assert_eq!(head.metadata().unwrap()["source-etag"], etag2);
    assert_eq!(e.enricher.invoke(&event(&etag2)).await.outcome.unwrap()["objects_already_enriched"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bad_lines_are_quarantined_in_parts_and_none_is_lost() {
    let mut e = setup(&[("QUARANTINE_PART_BYTES", "2000"), ("CHUNK_RECORDS", "10")]).await;
    let key = format!("landing/locations/dt={DAY}/noisy.ndjson.gz");
    let lines: Vec<String> = (0..300)
        .map(|i| {
            if i % 3 == 0 {
                position(&format!("TU-{i}"), &format!("{DAY}T03:00:00Z"), 5.0, 5.0)
            } else {
                format!("{{broken {i}")
            }
        })
        .collect();
    e.moto.s3().put_object().bucket(&e.bucket).key(&key).body(gzip(&lines).into()).send().await.unwrap();
    let out = e.enricher.invoke(&s3_event(&e.bucket, &[&key])).await.outcome.unwrap();
    assert_eq!((&out["records_enriched"], &out["records_quarantined"]), (&json!(100), &json!(200)));
    let parts = e.moto.keys(&e.bucket, &format!("quarantine/weather-enricher/dt={DAY}/noisy")).await;
    assert!(parts.len() > 1, "{parts:?}");
    let mut quarantined: Vec<u64> = Vec::new();
    for part in &parts {
        let text = String::from_utf8(e.moto.get(&e.bucket, part).await).unwrap();
        quarantined.extend(
            text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["source"]["line"].as_u64().unwrap()),
        );
    }
    quarantined.sort_unstable();
    let want: Vec<u64> = (1..=300).filter(|n| (n - 1) % 3 != 0).collect();
    assert_eq!(quarantined, want, "every bad line once, across {} parts", parts.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_streams_out_in_multipart_parts() {
    let mut e = setup(&[("OUTPUT_PART_BYTES", "5242880")]).await;
    // GIVEN 150,000 positions whose enriched form compresses to more than one 5 MiB part
    let key = format!("landing/locations/dt={DAY}/large.ndjson.gz");
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let lines: Vec<String> = (0..150_000)
        .map(|i| {
            let r = next();
            json!({"transport_unit_id": format!("TU-{:06}", r % 100_000), "ts": format!("{DAY}T{:02}:{:02}:00Z", i % 24, (i % 4) * 15),
                   "lat": (r % 1_000) as f64 / 100.0, "lon": ((r >> 20) % 1_000) as f64 / 100.0, "trace": format!("{:016x}", next())})
            .to_string()
        })
        .collect();
    e.moto.s3().put_object().bucket(&e.bucket).key(&key).body(gzip(&lines).into()).send().await.unwrap();

    let out = e.enricher.invoke(&s3_event(&e.bucket, &[&key])).await.outcome.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(out["records_enriched"], json!(150_000));

    // THEN the output was a multipart upload (its ETag ends in -<parts>) holding every record once, in order
    let out_key = format!("enriched/locations/dt={DAY}/large.ndjson.gz");
    let head = e.moto.s3().head_object().bucket(&e.bucket).key(&out_key).send().await.unwrap();
    let etag = head.e_tag().unwrap_or_default().trim_matches('"').to_owned();
    let parts: u32 = etag.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).unwrap_or(1);
    assert!(parts >= 2, "ETag {etag}");
    let records = gunzip(&e.moto.get(&e.bucket, &out_key).await);
    assert_eq!(records.len(), 150_000);
    assert!(records.iter().zip(&lines).all(|(r, l)| r["trace"] == serde_json::from_str::<Value>(l).unwrap()["trace"]));
    assert!(records.iter().all(|r| r["weather_status"] == json!("ok")));
    let uploads = e.moto.s3().list_multipart_uploads().bucket(&e.bucket).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "no upload left open");
}
