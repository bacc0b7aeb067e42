//! `bench-api`: predictions-api's warm latency beside DynamoDB's own. The release binary runs behind a local
//! Lambda runtime API against moto; each round times one direct `Query` (the one the API makes for the latest
//! prediction: newest first, `Limit 1`, the same projection) from this process and one `GET
//! /units/{id}/prediction` Function URL invocation, alternating, for random units. Reports p50/p99 of both and
//! their difference (what the API adds: the runtime API hop, request checks, JSON, ETag), requests per second
//! of one warm instance, its init time and peak RSS. Not a test: it measures.
//!
//! usage: bench-api --api TARGET/release/predictions-api [--requests 2000] [--units 500] [--per-unit 24]
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice)] // a command-line tool that reports on stdout

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use fleetlake_aws::predictions::{predicted_at_key, Prediction, PredictionStore, ATTRIBUTES};
use fleetlake_testkit::http::{http_event, Front, HttpAnswer};
use fleetlake_testkit::{LambdaHarness, Moto};
use serde_json::json;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[i] * 1000.0).round() / 1000.0
}

#[tokio::main]
async fn main() {
    let (mut api, mut requests, mut units, mut per_unit) = (PathBuf::new(), 2000usize, 500usize, 24i64);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--api" => api = PathBuf::from(v()),
            "--requests" => requests = v().parse().expect("--requests: a number"),
            "--units" => units = v().parse().expect("--units: a number"),
            "--per-unit" => per_unit = v().parse().expect("--per-unit: a number"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(api.exists(), "{} does not exist (make bench-api builds it)", api.display());
    let moto = Moto::start().await;
    let client = moto.predictions_table("predictions").await;
    let now = chrono::Utc::now().timestamp();
    let first = now - per_unit * 900;
    let items: Vec<Prediction> = (0..units)
        .flat_map(|u| {
            (0..per_unit).map(move |i| Prediction {
                transport_unit_id: format!("TU-{u:06}"),
                predicted_at: predicted_at_key((first + i * 900) * 1_000_000).unwrap(),
                target: "fuel_next_24h".into(),
                value: 1000.0 + i as f64,
                unit: "l".into(),
                model_version: "fuel-24h-0123456789abcdef".into(),
                features: (0..10).map(|f| (format!("feature_{f}"), f as f64 * 0.5)).collect(),
                source_version: i as u64,
                expires_at: now + 7 * 86_400,
            })
        })
        .collect();
    PredictionStore::new(client.clone(), "predictions")
        .write(&items, Instant::now() + Duration::from_secs(600))
        .await
        .unwrap();

    let mut env = moto.env();
    env.push(("PREDICTIONS_TABLE".into(), "predictions".into()));
    env.push(("PAGINATION_KEY".into(), "bench-pagination-key-of-at-least-32-bytes".into()));
    env.push(("RUST_LOG".into(), "warn".into()));
    let mut f = LambdaHarness::start(&api, "predictions-api", &env).await;
    let init = f.ready_after().await.unwrap_or_else(|| panic!("predictions-api never got ready: {}", f.stderr()));

    let names = ATTRIBUTES;
    let direct = |unit: String| {
        let mut q = client
            .query()
            .table_name("predictions")
            .scan_index_forward(false)
            .limit(1)
            .key_condition_expression("#a0 = :u")
            .projection_expression((0..names.len()).map(|i| format!("#a{i}")).collect::<Vec<_>>().join(", "))
            .expression_attribute_values(":u", AttributeValue::S(unit));
        for (i, n) in names.iter().enumerate() {
            q = q.expression_attribute_names(format!("#a{i}"), *n);
        }
        q
    };
    let event = |unit: &str| http_event(Front::FunctionUrl, "GET", &format!("/units/{unit}/prediction"), &[]);
    // Warm both paths (connections, caches).
    for u in 0..50 {
        let unit = format!("TU-{:06}", u % units);
        direct(unit.clone()).send().await.unwrap();
        f.answer(&event(&unit)).await.unwrap();
    }
    let (mut d, mut a) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    let mut api_total = Duration::ZERO;
    for _ in 0..requests {
        let unit = format!("TU-{:06}", fastrand::usize(0..units));
        let t = Instant::now();
        let out = direct(unit.clone()).send().await.unwrap();
        d.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(out.items().len(), 1);
        let t = Instant::now();
        let answer = f.answer(&event(&unit)).await.unwrap();
        let took = t.elapsed();
        api_total += took;
        a.push(took.as_secs_f64() * 1000.0);
        let http = HttpAnswer::from_response(&answer).unwrap();
        assert_eq!(http.status, 200, "{}", String::from_utf8_lossy(&http.body));
    }
    d.sort_by(f64::total_cmp);
    a.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "requests": requests, "units": units, "predictions_per_unit": per_unit,
            "dynamodb_query_ms": {"p50": percentile(&d, 0.5), "p99": percentile(&d, 0.99)},
            "api_ms": {"p50": percentile(&a, 0.5), "p99": percentile(&a, 0.99)},
            "api_adds_ms_p50": ((percentile(&a, 0.5) - percentile(&d, 0.5)) * 1000.0).round() / 1000.0,
            "api_requests_per_s_one_instance": (requests as f64 / api_total.as_secs_f64()).round(),
            "init_ms": (init.as_secs_f64() * 10_000.0).round() / 10.0,
            "peak_rss_mib": f.peak_rss_bytes().map(|b| ((b as f64 / 1_048_576.0) * 10.0).round() / 10.0),
            "binary_bytes": std::fs::metadata(&api).map(|m| m.len()).unwrap_or(0),
        })
    );
}
