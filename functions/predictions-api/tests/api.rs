//! predictions-api's real binary under the Lambda runtime API, with Function URL and API Gateway HTTP API events,
//! reading predictions the predictor's own writer put into moto's DynamoDB. DynamoDB is reached through a proxy
//! that counts the calls (a refused request must make none) and can throttle or fail them, which moto cannot.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::io::Read as _;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use fleetlake_aws::predictions::{predicted_at_key, Prediction, PredictionStore};
use fleetlake_testkit::http::{http_event, Front, HttpAnswer};
use fleetlake_testkit::{unique_name, LambdaHarness, Moto};
use serde_json::Value;

const KEY: &str = "test-pagination-key-of-at-least-32-bytes";
const UNIT: &str = "TU-000001";
/// The first prediction of [`UNIT`]; one every hour after it.
const FIRST_S: i64 = 1_796_000_400;
const HOURS: i64 = 7;

/// Pass, throttle or fail every DynamoDB call.
#[derive(Clone, Default)]
struct Proxy {
    calls: Arc<AtomicU32>,
    mode: Arc<AtomicU8>,
}

const PASS: u8 = 0;
const THROTTLE: u8 = 1;
const FAIL: u8 = 2;

async fn proxy(moto: String) -> (String, Proxy) {
    let state = Proxy::default();
    let s = state.clone();
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let (s, client, moto) = (s.clone(), client.clone(), moto.clone());
        async move {
            s.calls.fetch_add(1, Ordering::SeqCst);
            match s.mode.load(Ordering::SeqCst) {
                THROTTLE => {
                    let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"throttled"}"#;
                    return (StatusCode::BAD_REQUEST, body.to_owned());
                }
                FAIL => return (StatusCode::INTERNAL_SERVER_ERROR, "{}".to_owned()),
                _ => {}
            }
            let mut req = client.post(&moto).body(body);
            for (k, v) in &headers {
                if k != "host" && k != "content-length" {
                    req = req.header(k.as_str(), v.as_bytes());
                }
            }
            let resp = req.send().await.unwrap();
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
            (status, resp.text().await.unwrap())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), state)
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn prediction(unit: &str, at_s: i64, version: u64, expires_at: i64) -> Prediction {
    Prediction {
        transport_unit_id: unit.into(),
        predicted_at: predicted_at_key(at_s * 1_000_000).unwrap(),
        target: "fuel_next_24h".into(),
        value: 100.0 + at_s as f64 / 3600.0 % 100.0,
        unit: "l".into(),
        model_version: "fuel-24h-0123456789abcdef".into(),
        features: (0..12).map(|i| (format!("feature_{i:02}"), i as f64 * 1.5)).collect(),
        source_version: version,
        expires_at,
    }
}

fn key(at_s: i64) -> String {
    predicted_at_key(at_s * 1_000_000).unwrap()
}

struct Api {
    harness: LambdaHarness,
    proxy: Proxy,
    _moto: Moto,
}

impl Api {
    async fn start(extra: &[(&str, &str)]) -> Api {
        let moto = Moto::start().await;
        let table = unique_name("predictions");
        let client = moto.predictions_table(&table).await;
        let alive = now_s() + 86_400;
        let mut items: Vec<Prediction> =
            (0..HOURS).map(|h| prediction(UNIT, FIRST_S + h * 3600, 10 + h as u64, alive)).collect();
        items.push(prediction("TU-expired", FIRST_S, 3, now_s() - 60));
        items.push(prediction("TU 000002/β", FIRST_S, 4, alive));
        let deadline = Instant::now() + Duration::from_secs(30);
        PredictionStore::new(client, &table).write(&items, deadline).await.unwrap();
        let (endpoint, proxy) = proxy(moto.endpoint.clone()).await;
        let mut env = fleetlake_testkit::through(&moto.env(), &endpoint);
        env.push(("PREDICTIONS_TABLE".into(), table));
        env.push(("PAGINATION_KEY".into(), KEY.into()));
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let bin = Path::new(env!("CARGO_BIN_EXE_predictions-api"));
        let harness = LambdaHarness::start(bin, "predictions-api", &env).await;
        Api { harness, proxy, _moto: moto }
    }

    async fn request(&mut self, front: Front, method: &str, target: &str, headers: &[(&str, &str)]) -> HttpAnswer {
        let out = self.harness.invoke(&http_event(front, method, target, headers)).await;
        let answer = out.outcome.unwrap_or_else(|e| panic!("{method} {target}: invocation failed: {e}"));
        HttpAnswer::from_response(&answer).unwrap_or_else(|| panic!("{method} {target}: not an HTTP answer: {answer}"))
    }

    async fn get(&mut self, target: &str) -> HttpAnswer {
        self.request(Front::FunctionUrl, "GET", target, &[]).await
    }

    fn calls(&self) -> u32 {
        self.proxy.calls.load(Ordering::SeqCst)
    }
}

fn predicted_at(v: &Value) -> &str {
    v["predicted_at"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_from_a_function_url_and_an_http_api() {
    let mut api = Api::start(&[]).await;
    let last = FIRST_S + (HOURS - 1) * 3600;
    for front in [Front::FunctionUrl, Front::HttpApi] {
        let health = api.request(front, "GET", "/health", &[]).await;
        assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("ok")));
        assert_eq!(health.header("cache-control"), Some("no-store"));

        let calls = api.calls();
        let latest = api.request(front, "GET", &format!("/units/{UNIT}/prediction"), &[]).await;
        assert_eq!(api.calls(), calls + 1, "one Query for the latest");
        assert_eq!(latest.status, 200);
        assert_eq!(latest.header("content-type"), Some("application/json"));
        assert_eq!(latest.header("cache-control"), Some("private, max-age=300"));
        let body = latest.json();
        assert_eq!(predicted_at(&body), key(last));
        assert_eq!(body["source_version"], 10 + HOURS - 1);
        assert_eq!(body["target"], "fuel_next_24h");
        assert_eq!(body["unit"], "l");
        assert_eq!(body["features"].as_object().unwrap().len(), 12);
    }
    // The same prediction from either front has the same ETag; If-None-Match gives 304 without a body.
    let latest = api.get(&format!("/units/{UNIT}/prediction")).await;
    let etag = latest.header("etag").unwrap().to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    let again =
        api.request(Front::HttpApi, "GET", &format!("/units/{UNIT}/prediction"), &[("if-none-match", &etag)]).await;
    assert_eq!((again.status, again.body.len(), again.header("etag")), (304, 0, Some(etag.as_str())));
    let other = api
        .request(Front::FunctionUrl, "GET", &format!("/units/{UNIT}/prediction"), &[("if-none-match", "W/\"other\"")])
        .await;
    assert_eq!(other.status, 200);
    let head = api.request(Front::FunctionUrl, "HEAD", &format!("/units/{UNIT}/prediction"), &[]).await;
    assert_eq!((head.status, head.body.len(), head.header("etag")), (200, 0, Some(etag.as_str())));
    let strong = api.get(&format!("/units/{UNIT}/prediction?consistent=true")).await;
    assert_eq!(predicted_at(&strong.json()), key(last));

    // In force at a time: the latest at or before it.
    let at = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap().to_rfc3339().replace('+', "%2B");
    let exact = api.get(&format!("/units/{UNIT}/predictions?at={}", at(FIRST_S + 3600))).await;
    assert_eq!(predicted_at(&exact.json()), key(FIRST_S + 3600));
    let between = api.get(&format!("/units/{UNIT}/predictions?at={}", at(FIRST_S + 2 * 3600 + 1799))).await;
    assert_eq!(predicted_at(&between.json()), key(FIRST_S + 2 * 3600));
    let before = api.get(&format!("/units/{UNIT}/predictions?at={}", at(FIRST_S - 1))).await;
    assert_eq!((before.status, before.header("content-type")), (404, Some("application/problem+json")));

    // Pages of 3, newest first, until `next` is null: every prediction once, and no empty last page.
    let mut seen = Vec::new();
    let mut target = format!("/units/{UNIT}/predictions?limit=3");
    let mut pages = 0;
    loop {
        let page = api.get(&target).await;
        assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
        let body = page.json();
        let items = body["predictions"].as_array().unwrap();
        assert!(!items.is_empty());
        seen.extend(items.iter().map(|i| predicted_at(i).to_owned()));
        pages += 1;
        match body["next"].as_str() {
            Some(next) => target = format!("/units/{UNIT}/predictions?limit=3&next={next}"),
            None => break,
        }
    }
    let want: Vec<String> = (0..HOURS).rev().map(|h| key(FIRST_S + h * 3600)).collect();
    assert_eq!((seen, pages), (want, 3));

    // A range: from and to inclusive.
    let range =
        api.get(&format!("/units/{UNIT}/predictions?from={}&to={}", at(FIRST_S + 3600), at(FIRST_S + 3 * 3600))).await;
    let got: Vec<String> =
        range.json()["predictions"].as_array().unwrap().iter().map(|i| predicted_at(i).to_owned()).collect();
    assert_eq!(got, vec![key(FIRST_S + 3 * 3600), key(FIRST_S + 2 * 3600), key(FIRST_S + 3600)]);

    // gzip when asked and the body is large enough; the same JSON once decompressed.
    let plain = api.get(&format!("/units/{UNIT}/predictions")).await;
    let zipped = api
        .request(Front::FunctionUrl, "GET", &format!("/units/{UNIT}/predictions"), &[("accept-encoding", "gzip, br")])
        .await;
    assert_eq!((zipped.header("content-encoding"), zipped.header("vary")), (Some("gzip"), Some("Accept-Encoding")));
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&zipped.body[..]).read_to_end(&mut unzipped).unwrap();
    assert_eq!(unzipped, plain.body);
    assert!(zipped.body.len() < plain.body.len() / 2);
    assert_eq!(plain.header("content-encoding"), None);

    // Units with no prediction, or whose only one has expired (TTL deletes lazily): 404. Any id the schema allows.
    let none = api.get("/units/TU-999999/prediction").await;
    assert_eq!((none.status, none.json()["type"].as_str()), (404, Some("urn:fleetlake:problem:no-prediction")));
    assert_eq!(api.get("/units/TU-expired/prediction").await.status, 404);
    let odd = api.get("/units/TU%20000002%2F%CE%B2/prediction").await;
    assert_eq!((odd.status, odd.json()["transport_unit_id"].as_str()), (200, Some("TU 000002/β")));
    let empty = api.get("/units/TU-999999/predictions").await;
    assert_eq!((empty.status, empty.json()["predictions"].as_array().map(Vec::len)), (200, Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_4xx_problems_that_never_reach_dynamodb() {
    let mut api = Api::start(&[]).await;
    let good = api.get(&format!("/units/{UNIT}/predictions?limit=2")).await.json();
    let token = good["next"].as_str().unwrap().to_owned();
    let mut flipped: Vec<char> = token.chars().collect();
    flipped[3] = if flipped[3] == 'A' { 'B' } else { 'A' };
    let flipped: String = flipped.into_iter().collect();
    let long_id = "x".repeat(65);
    let calls = api.calls();
    let cases: Vec<(String, &str, u16)> = vec![
        ("/".into(), "GET", 404),
        ("/units".into(), "GET", 404),
        (format!("/units/{UNIT}"), "GET", 404),
        (format!("/units/{UNIT}/prediction/extra"), "GET", 404),
        ("/../etc/passwd".into(), "GET", 404),
        (format!("/units/{UNIT}/prediction"), "POST", 405),
        (format!("/units/{UNIT}/prediction"), "DELETE", 405),
        (format!("/units/{UNIT}/prediction"), "OPTIONS", 405),
        ("/health".into(), "PUT", 405),
        (format!("/units/{long_id}/prediction"), "GET", 400),
        ("/units/%20%20%09/prediction".into(), "GET", 400),
        ("/units/%FF%FE/prediction".into(), "GET", 400),
        ("/units/%/prediction".into(), "GET", 400),
        (format!("/units/{}/prediction", "%41".repeat(400)), "GET", 414),
        (format!("/units/{UNIT}/predictions?at=yesterday"), "GET", 400),
        (format!("/units/{UNIT}/predictions?at=2026-11-30T12:00:00"), "GET", 400),
        (format!("/units/{UNIT}/predictions?at=10000-01-01T00:00:00Z"), "GET", 400),
        (format!("/units/{UNIT}/predictions?at=0000-01-01T00:00:00Z"), "GET", 400),
        (format!("/units/{UNIT}/predictions?from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z"), "GET", 400),
        (format!("/units/{UNIT}/predictions?limit=0"), "GET", 400),
        (format!("/units/{UNIT}/predictions?limit=-1"), "GET", 400),
        (format!("/units/{UNIT}/predictions?limit=501"), "GET", 400),
        (format!("/units/{UNIT}/predictions?limit=99999999999999999999"), "GET", 400),
        (format!("/units/{UNIT}/predictions?limit=1&limit=2"), "GET", 400),
        (format!("/units/{UNIT}/predictions?at=2026-11-30T12:00:00Z&next={token}"), "GET", 400),
        (format!("/units/{UNIT}/predictions?sort=asc"), "GET", 400),
        (format!("/units/{UNIT}/prediction?limit=1"), "GET", 400),
        (format!("/units/{UNIT}/predictions?consistent=1"), "GET", 400),
        (format!("/units/{UNIT}/predictions?next={flipped}"), "GET", 400),
        (format!("/units/{UNIT}/predictions?next=%00%01"), "GET", 400),
        (format!("/units/{UNIT}/predictions?next={}", "A".repeat(300)), "GET", 400),
        (format!("/units/TU-000002/predictions?next={token}"), "GET", 400),
        (format!("/units/{UNIT}/predictions?next={token}&to=2026-12-01T00:00:00Z"), "GET", 400),
        (format!("/units/{UNIT}/predictions?{}", "a=1&".repeat(300)), "GET", 414),
        (format!("/units/{UNIT}/predictions?%FF=1"), "GET", 400),
    ];
    for (target, method, status) in &cases {
        for front in [Front::FunctionUrl, Front::HttpApi] {
            let answer = api.request(front, method, target, &[]).await;
            assert_eq!(answer.status, *status, "{method} {target}: {}", String::from_utf8_lossy(&answer.body));
            assert_eq!(answer.header("content-type"), Some("application/problem+json"), "{method} {target}");
            assert_eq!(answer.header("cache-control"), Some("no-store"));
            let problem = answer.json();
            assert_eq!(problem["status"], *status);
            assert!(problem["type"].as_str().unwrap().starts_with("urn:fleetlake:problem:"));
            assert!(!problem["detail"].as_str().unwrap().is_empty());
            if *status == 405 {
                assert_eq!(answer.header("allow"), Some("GET, HEAD"));
            }
        }
    }
    assert_eq!(api.calls(), calls, "no refused request reached DynamoDB");
    // The good token still works where it belongs.
    let next = api.get(&format!("/units/{UNIT}/predictions?limit=2&next={token}")).await;
    assert_eq!(next.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_or_failing_table_is_a_503_or_502_and_cors_is_configurable() {
    let mut api =
        Api::start(&[("CORS_ALLOW_ORIGINS", "https://dispatch.example.com"), ("CACHE_MAX_AGE_SECONDS", "60")]).await;
    api.proxy.mode.store(THROTTLE, Ordering::SeqCst);
    let busy = api.get(&format!("/units/{UNIT}/prediction")).await;
    assert_eq!((busy.status, busy.header("retry-after")), (503, Some("1")));
    assert_eq!(busy.header("content-type"), Some("application/problem+json"));
    api.proxy.mode.store(FAIL, Ordering::SeqCst);
    let failed = api.get(&format!("/units/{UNIT}/predictions")).await;
    assert_eq!((failed.status, failed.json()["type"].as_str()), (502, Some("urn:fleetlake:problem:store-unavailable")));
    api.proxy.mode.store(PASS, Ordering::SeqCst);

    let origin = [("origin", "https://dispatch.example.com")];
    let ok = api.request(Front::HttpApi, "GET", &format!("/units/{UNIT}/prediction"), &origin).await;
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://dispatch.example.com"));
    assert_eq!(ok.header("cache-control"), Some("private, max-age=60"));
    assert_eq!(ok.header("vary"), Some("Accept-Encoding, Origin"));
    let stranger = api.request(Front::HttpApi, "GET", "/health", &[("origin", "https://evil.example.com")]).await;
    assert_eq!(stranger.header("access-control-allow-origin"), None);
    let preflight = api
        .request(
            Front::HttpApi,
            "OPTIONS",
            &format!("/units/{UNIT}/prediction"),
            &[origin[0], ("access-control-request-method", "GET")],
        )
        .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-methods"), Some("GET, HEAD, OPTIONS"));
    assert_eq!(
        api.request(Front::FunctionUrl, "PATCH", "/health", &[]).await.header("allow"),
        Some("GET, HEAD, OPTIONS")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_stops_the_function_at_init() {
    let moto = Moto::start().await;
    let mut env = moto.env();
    env.push(("PREDICTIONS_TABLE".into(), "predictions".into()));
    env.push(("PAGINATION_KEY".into(), "too short".into()));
    let bin = Path::new(env!("CARGO_BIN_EXE_predictions-api"));
    let mut harness = LambdaHarness::start(bin, "predictions-api", &env).await;
    let (code, stderr) = harness.wait_exit().await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("PAGINATION_KEY"), "{stderr}");
}
