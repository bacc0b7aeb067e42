//! `bench-enricher`: weather-enricher end to end on a generated fleet — landed objects in moto's S3, the release
//! binary behind a Lambda runtime API, the weather stub answering with added latency. Not a test: it measures.
//!
//! usage: bench-enricher --enricher PATH [--records 1000000] [--files 100] [--cells 5000] [--latency-ms 20]
//!                       [--runs 3] [--batch 10]
//! Each run starts a fresh function process (cold cache) and a fresh stub, then delivers every object as SQS
//! messages, `--batch` per invocation (the SQS-triggered deployment); records/s is records over the wall time of
//! all invocations. Prints one JSON line per run and a summary with medians.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice)] // a command-line tool that reports on stdout

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use fleetlake_testkit::{LambdaHarness, Moto};
use serde_json::{json, Value};
use weather_stub::{Faults, Options};

struct Args {
    enricher: PathBuf,
    records: usize,
    files: usize,
    cells: usize,
    latency_ms: u64,
    runs: usize,
    batch: usize,
}

fn args() -> Args {
    let mut a = Args {
        enricher: PathBuf::new(),
        records: 1_000_000,
        files: 100,
        cells: 5_000,
        latency_ms: 20,
        runs: 3,
        batch: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--enricher" => a.enricher = PathBuf::from(&v),
            "--records" => a.records = n(),
            "--files" => a.files = n(),
            "--cells" => a.cells = n(),
            "--latency-ms" => a.latency_ms = n() as u64,
            "--runs" => a.runs = n(),
            "--batch" => a.batch = n(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.enricher.exists(), "--enricher {} does not exist (make bench builds it)", a.enricher.display());
    a
}

const TYPES: [&str; 3] = ["aerial", "maritime", "terrestrial"];

/// Landed positions, as msk-lander writes them: `cells` distinct 0.1° cells, one UTC day, lineage included.
fn landed_file(file: usize, per_file: usize, cells: usize) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..per_file {
        let offset = file * per_file + i;
        let cell = (offset * 7_919) % cells;
        let (lat, lon) = (-60.0 + (cell / 200) as f64 * 0.5 + 0.01, -170.0 + (cell % 200) as f64 * 0.9 + 0.02);
        let minute = (offset / cells) % 96 * 15;
        let line = json!({
            "transport_unit_id": format!("TU-{:06}", offset % 20_000),
            "ts": format!("2026-11-24T{:02}:{:02}:00Z", minute / 60, minute % 60),
            "lat": lat, "lon": lon,
            "transport_type": TYPES[offset % 3],
            "speed_kmh": (offset % 900) as f64 / 1.5, "heading_deg": (offset % 360) as f64, "altitude_m": null,
            "_source": {"topic": "fleet.locations", "partition": file % 6, "offset": offset, "timestamp": 1_795_478_400_000_i64 + offset as i64},
            "_ingested_at": "2026-11-24T12:00:00.000Z"
        });
        serde_json::to_writer(&mut gz, &line).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.finish().unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let a = args();
    let moto = Moto::start().await;
    let bucket = moto.bucket("bench").await;
    let per_file = a.records / a.files;
    let s3 = moto.s3();
    let t = Instant::now();
    let mut keys = Vec::new();
    let mut landed_bytes = 0;
    for f in 0..a.files {
        // Named as the lander names a batch (topic-partition-first-last), so the lineage is believed.
        let (first, last) = (f * per_file, (f + 1) * per_file - 1);
        let key = format!("landing/locations/dt=2026-11-24/fleet.locations-{}-{first}-{last}.ndjson.gz", f % 6);
        let body = landed_file(f, per_file, a.cells);
        landed_bytes += body.len();
        s3.put_object().bucket(&bucket).key(&key).body(body.into()).send().await.expect("upload");
        keys.push(key);
    }
    eprintln!(
        "generated {} records in {} objects ({:.1} MB gzip) in {:.1} s",
        per_file * a.files,
        a.files,
        landed_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let (mut rates, mut rss, mut reqs) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..a.runs {
        let (stub, url) = weather_stub::spawn(Options {
            faults: Faults { latency_ms: a.latency_ms, ..Faults::default() },
            ..Options::default()
        })
        .await
        .expect("weather stub");
        let mut env = moto.env();
        for (k, v) in [
            ("LAKE_BUCKET", bucket.clone()),
            ("ENRICHED_PREFIX", format!("enriched-run{run}/")),
            ("WEATHER_API_URL", url),
            ("RUST_LOG", "warn".to_owned()),
        ] {
            env.push((k.to_owned(), v));
        }
        let mut f = LambdaHarness::start(&a.enricher, "weather-enricher", &env).await;
        let started = Instant::now();
        let (mut enriched, mut degraded) = (0, 0);
        for (n, chunk) in keys.chunks(a.batch).enumerate() {
            let messages: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    let s3_event = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                                        "s3": {"bucket": {"name": bucket}, "object": {"key": key.replace('=', "%3D")}}}]});
                    json!({"messageId": format!("{n}-{i}"), "eventSource": "aws:sqs", "body": s3_event.to_string()})
                })
                .collect();
            let out = f.invoke(&json!({"Records": messages})).await;
            assert_eq!(
                out.outcome.as_ref().ok(),
                Some(&json!({"batchItemFailures": []})),
                "{:?}\n{}",
                out.outcome,
                f.stderr()
            );
            for line in out
                .stdout
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v.get("_aws").is_some())
            {
                enriched += line["records_enriched"].as_u64().unwrap_or(0);
                degraded += line["records_degraded"].as_u64().unwrap_or(0);
            }
        }
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(enriched, (per_file * a.files) as u64, "every record enriched");
        let peak = f.peak_rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0);
        let cpu = f.cpu_seconds().unwrap_or(0.0);
        let stats = stub.stats();
        let rate = enriched as f64 / wall;
        println!(
            "{}",
            json!({"run": run, "records": enriched, "degraded": degraded, "wall_s": (wall * 1000.0).round() / 1000.0,
                   "records_per_s": rate.round(), "api_requests": stats.requests, "api_coordinates": stats.coordinates,
                   "peak_rss_mib": (peak * 10.0).round() / 10.0, "function_cpu_s": cpu})
        );
        rates.push(rate);
        rss.push(peak);
        reqs.push(stats.requests as f64);
    }
    // The Python baseline, same data, same machine, same run: one process, fresh stub with the same latency.
    let (peer_stub, peer_url) = weather_stub::spawn(Options {
        faults: Faults { latency_ms: a.latency_ms, ..Faults::default() },
        ..Options::default()
    })
    .await
    .expect("weather stub");
    let root = fleetlake_testkit::workspace_root();
    let peer = tokio::process::Command::new(fleetlake_testkit::venv_bin("python"))
        .arg(root.join("infra/bench/peer_enrich.py"))
        .args([
            "--endpoint",
            &moto.endpoint,
            "--bucket",
            &bucket,
            "--prefix",
            "landing/locations/",
            "--out-prefix",
            "peer-enriched/",
        ])
        .args(["--weather-url", &peer_url])
        .output()
        .await
        .expect("run the Python baseline");
    let peer: Value = serde_json::from_slice(&peer.stdout)
        .unwrap_or_else(|_| panic!("Python baseline failed: {}", String::from_utf8_lossy(&peer.stderr)));
    println!("{peer}");
    assert_eq!(peer["api_requests"].as_u64(), Some(peer_stub.stats().requests));
    let peer_rate = peer["records_per_s"].as_f64().unwrap_or(f64::NAN);
    println!(
        "Python baseline (boto3 + json + gzip, same batching and cache): {peer_rate:.0} records/s, {} API requests, peak RSS {} MiB; weather-enricher median is {:.1}x its records/s",
        peer["api_requests"],
        peer["peak_rss_mib"],
        median(rates.clone()) / peer_rate
    );
    println!(
        "weather-enricher, {} records in {} objects, {} distinct cells, stub latency {} ms, {} runs (median): {:.0} records/s, {:.0} API requests ({:.2} per 100 cells), peak RSS {:.1} MiB",
        per_file * a.files,
        a.files,
        a.cells,
        a.latency_ms,
        a.runs,
        median(rates),
        median(reqs.clone()),
        median(reqs) * 100.0 / a.cells as f64,
        median(rss)
    );
}
