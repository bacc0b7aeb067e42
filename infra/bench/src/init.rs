//! `bench-init`: each function's cold start, measured as Lambda reports `Init Duration`: from starting the process
//! to its first request for an invocation, with its configuration read, its clients built (and, for the
//! predictor, its model loaded). Release binaries behind a local Lambda runtime API, against moto. Not a test: it
//! measures.
//!
//! usage: bench-init --dir TARGET/release [--runs 5] [NAME ...]
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice)] // a command-line tool that reports on stdout

use std::path::PathBuf;

use fleetlake_testkit::{LambdaHarness, Moto};
use serde_json::json;

#[tokio::main]
async fn main() {
    let (mut dir, mut runs, mut names) = (PathBuf::new(), 5usize, Vec::new());
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = PathBuf::from(it.next().expect("--dir needs a value")),
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs needs a number"),
            _ => names.push(a),
        }
    }
    if names.is_empty() {
        names = ["msk-lander", "weather-enricher", "delta-writer", "partition-sync", "predictor", "predictions-api"]
            .map(String::from)
            .to_vec();
    }
    let moto = Moto::start().await;
    let bucket = moto.bucket("lake").await;
    moto.predictions_table("predictions").await;
    let mut env = moto.env();
    for (k, v) in
        [("LAKE_BUCKET", bucket.as_str()), ("GLUE_DATABASE", "fleetlake"), ("PREDICTIONS_TABLE", "predictions")]
    {
        env.push((k.into(), v.into()));
    }
    env.push(("PAGINATION_KEY".into(), "bench-pagination-key-of-at-least-32-bytes".into()));
    env.push(("RUST_LOG".into(), "warn".into()));
    for name in names {
        let binary = dir.join(&name);
        assert!(binary.exists(), "{} does not exist (make bench-init builds it)", binary.display());
        let mut times = Vec::new();
        for _ in 0..runs {
            let f = LambdaHarness::start(&binary, &name, &env).await;
            let init = f.ready_after().await.unwrap_or_else(|| panic!("{name} never got ready: {}", f.stderr()));
            times.push(init.as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let size = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);
        println!(
            "{}",
            json!({"function": name, "init_ms_median": (times[times.len() / 2] * 10.0).round() / 10.0,
                   "init_ms_min": (times[0] * 10.0).round() / 10.0, "init_ms_max": (times[times.len() - 1] * 10.0).round() / 10.0,
                   "runs": runs, "binary_bytes": size})
        );
    }
}
