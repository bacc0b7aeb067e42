//! `bench-sync`: partition-sync's latency — from a commit touching 30 partitions to its Glue partitions registered
//! and manifests written — with the release binary behind a Lambda runtime API, on moto's S3 and Glue. Not a test:
//! it measures.
//!
//! usage: bench-sync --sync PATH [--baseline PATH] [--latency-ms 0] [--commits 20] [--partitions 30] [--rows 3000]
//! Each commit appends `--rows` positions spread over `--partitions` new days (so every partition is new to Glue);
//! the clock runs from sending the commit's notification to the function's answer. The function reaches moto
//! through a proxy that adds `--latency-ms` to every request (S3's and Glue's round trips; moto on loopback has
//! none). With `--baseline`, a second build of partition-sync syncs every other commit in the same run, and the
//! ratio of the medians is printed. Prints one JSON line per commit and the medians.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice)] // a command-line tool that reports on stdout

use std::path::PathBuf;
use std::time::Instant;

use chrono::{Duration, NaiveDate};
use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, LOCATIONS};
use fleetlake_delta::{open_or_create, Appender};
use fleetlake_testkit::{forwarding_proxy, LambdaHarness, Moto};
use serde_json::json;

struct Args {
    sync: PathBuf,
    baseline: Option<PathBuf>,
    latency_ms: u64,
    commits: usize,
    partitions: usize,
    rows: usize,
}

fn main_args() -> Args {
    let (mut sync, mut baseline, mut latency_ms) = (PathBuf::new(), None, 0);
    let (mut commits, mut partitions, mut rows) = (20, 30, 3000);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--sync" => sync = PathBuf::from(&v),
            "--baseline" => baseline = Some(PathBuf::from(&v)),
            "--latency-ms" => latency_ms = n() as u64,
            "--commits" => commits = n(),
            "--partitions" => partitions = n(),
            "--rows" => rows = n(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(sync.exists(), "--sync {} does not exist (make bench builds it)", sync.display());
    if let Some(b) = &baseline {
        assert!(b.exists(), "--baseline {} does not exist", b.display());
    }
    Args { sync, baseline, latency_ms, commits, partitions, rows }
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

#[tokio::main]
async fn main() {
    let Args { sync: binary, baseline, latency_ms, commits, partitions, rows } = main_args();
    let moto = Moto::start().await;
    let bucket = moto.bucket("lake").await;
    let glue = moto.glue_bronze_tables("fleetlake", &bucket).await;

    let settings = moto.delta_settings(&bucket);
    let proxy = forwarding_proxy(moto.endpoint.clone(), std::time::Duration::from_millis(latency_ms), None).await;
    let mut env = fleetlake_testkit::through(&moto.env(), &proxy);
    env.push(("LAKE_BUCKET".into(), bucket.clone()));
    env.push(("GLUE_DATABASE".into(), "fleetlake".into()));
    env.push(("RUST_LOG".into(), "warn".into()));
    let mut candidates = vec![("sync", LambdaHarness::start(&binary, "partition-sync", &env).await, Vec::new())];
    if let Some(b) = &baseline {
        candidates.push(("baseline", LambdaHarness::start(b, "partition-sync", &env).await, Vec::new()));
    }

    let first_day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    for c in 0..commits {
        // Every other commit goes to the baseline: the same shape of work, interleaved through the run.
        let n = candidates.len();
        let (name, f, times) = &mut candidates[c % n];
        // A commit whose rows fall on `partitions` days not seen before.
        let table = open_or_create(&settings, &LOCATIONS).await.unwrap();
        let mut appender = Appender::new(&LOCATIONS, table, 128 << 20).unwrap();
        let mut converter = Converter::new(&LOCATIONS);
        for r in 0..rows {
            let day = first_day + Duration::days((c * partitions + r % partitions) as i64);
            let offset = (c * rows + r) as i64;
            let line = json!({"transport_unit_id": format!("TU-{}", r % 50), "ts": format!("{day}T12:00:00Z"), "lat": 1.0, "lon": 2.0,
                              "_source": {"topic": "fleet.locations", "partition": 0, "offset": offset, "timestamp": 1}});
            converter
                .push(
                    line.to_string().as_bytes(),
                    LineOrigin { key: "bench", etag: "", line: 1, lineage: Lineage::Vouched },
                )
                .unwrap();
        }
        let (batch, ids) = converter.finish().unwrap();
        appender.write(batch, ids).await.unwrap();
        let version = appender.commit(vec![]).await.unwrap().version.unwrap();
        let key = format!("bronze/locations/_delta_log/{version:020}.json");
        let body = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                        "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]});
        let started = Instant::now();
        let out = f
            .invoke(&json!({"Records": [{"messageId": "m", "eventSource": "aws:sqs", "body": body.to_string()}]}))
            .await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(out.outcome.as_ref().ok(), Some(&json!({"batchItemFailures": []})), "{}", f.stderr());
        let metrics = out.metrics().expect("the invocation printed its metrics");
        assert_eq!(metrics["partitions_created"].as_u64(), Some(partitions as u64));
        assert_eq!(metrics["manifests_written"].as_u64(), Some(partitions as u64));
        println!(
            "{}",
            json!({"binary": name, "commit": version, "partitions": partitions, "sync_ms": (ms * 10.0).round() / 10.0})
        );
        times.push(ms);
    }
    let registered =
        glue.get_partitions().database_name("fleetlake").table_name("bronze_locations").send().await.unwrap();
    assert_eq!(registered.partitions().len(), commits * partitions);
    for (name, f, times) in &mut candidates {
        let (lo, hi) = (times.iter().copied().fold(f64::MAX, f64::min), times.iter().copied().fold(0.0, f64::max));
        println!(
            "{name}: {} commits of {rows} rows each touching {partitions} new partitions, {latency_ms} ms per S3/Glue request: median {:.1} ms from notification to {partitions} Glue partitions and manifests (min {lo:.1}, max {hi:.1}); peak RSS {:.1} MiB",
            times.len(),
            median(times),
            f.peak_rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0)
        );
    }
    if let [(_, _, new), (_, _, old)] = &mut candidates[..] {
        println!("baseline median / sync median: {:.2}x", median(old) / median(new));
    }
}
