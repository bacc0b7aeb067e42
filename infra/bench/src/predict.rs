//! `bench-predict`: the predictor on one commit of 100,000 positions over 2,000 units — features, inference and
//! DynamoDB writes — with the release binary behind a Lambda runtime API, on moto's S3 and DynamoDB. Not a test:
//! it measures.
//!
//! usage: bench-predict --predictor PATH [--baseline PATH] [--units 2000] [--positions 100000] [--runs 3]
//! Each run starts the function afresh against an empty predictions table: init time (process start to its first
//! request for an invocation, the model loaded), then the commit's invocation, then the same commit again (a
//! replay: every item is kept). With `--baseline`, each run does the same with a second build (an earlier
//! commit's), in alternating order, and the ratios of the medians are printed. Prints one JSON line per run and
//! binary, and the medians.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice)] // a command-line tool that reports on stdout

use std::path::PathBuf;
use std::time::Instant;

use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, TableSpec, LOCATIONS, PERFORMANCE_STATS};
use fleetlake_delta::{open_or_create, Appender, DeltaSettings};
use fleetlake_testkit::{LambdaHarness, Moto};
use serde_json::{json, Value};

fn main_args() -> (PathBuf, Option<PathBuf>, usize, usize, usize) {
    let (mut predictor, mut baseline, mut units, mut positions, mut runs) = (PathBuf::new(), None, 2000, 100_000, 3);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--predictor" => predictor = PathBuf::from(&v),
            "--baseline" => baseline = Some(PathBuf::from(&v)),
            "--units" => units = n(),
            "--positions" => positions = n(),
            "--runs" => runs = n(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(predictor.exists(), "--predictor {} does not exist (make bench builds it)", predictor.display());
    (predictor, baseline, units, positions, runs)
}

/// One build's figures over the runs.
#[derive(Default)]
struct Figures {
    inits: Vec<f64>,
    commits: Vec<f64>,
    replays: Vec<f64>,
    rss: u64,
}

async fn append(settings: &DeltaSettings, spec: &'static TableSpec, lines: impl Iterator<Item = Value>) -> u64 {
    let table = open_or_create(settings, spec).await.unwrap();
    let mut appender = Appender::new(spec, table, 128 << 20).unwrap();
    let mut converter = Converter::new(spec);
    for (offset, mut line) in lines.enumerate() {
        line["_source"] = json!({"topic": spec.name, "partition": 0, "offset": offset, "timestamp": 1});
        converter
            .push(
                line.to_string().as_bytes(),
                LineOrigin { key: "bench", etag: "", line: 1, lineage: Lineage::Vouched },
            )
            .unwrap();
    }
    let (batch, ids) = converter.finish().unwrap();
    appender.write(batch, ids).await.unwrap();
    appender.commit(vec![]).await.unwrap().version.unwrap()
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() {
    let (binary, baseline, units, positions, runs) = main_args();
    let moto = Moto::start().await;
    let bucket = moto.bucket("lake").await;
    let settings = moto.delta_settings(&bucket);
    let kinds = ["aerial", "maritime", "terrestrial"];
    let stats = (0..units).flat_map(|u| {
        ["2026-11-22", "2026-11-23"].into_iter().enumerate().map(move |(d, day)| {
            json!({"op": "c", "ts_ms": 1_795_000_000_000_i64 + d as i64, "lsn": (u * 2 + d) as i64,
                   "row": {"transport_unit_id": format!("TU-{u:06}"), "stat_date": day,
                           "distance_km": 300.0 + u as f64 % 500.0, "fuel_used_l": 1000.0 + u as f64 % 3000.0, "engine_hours": 12.0}})
        })
    });
    append(&settings, &PERFORMANCE_STATS, stats).await;
    // Every unit reports every 15 minutes from midnight, moving along its own heading.
    let per_unit = positions.div_ceil(units);
    let lines = (0..positions).map(|i| {
        let (u, step) = (i % units, i / units);
        let minutes = step * 15;
        json!({"transport_unit_id": format!("TU-{u:06}"), "transport_type": kinds[u % 3],
               "ts": format!("2026-11-24T{:02}:{:02}:00Z", minutes / 60, minutes % 60),
               "lat": -60.0 + (u as f64 * 0.06) % 120.0 + step as f64 * 0.01, "lon": -170.0 + (u as f64 * 0.17) % 340.0 + step as f64 * 0.02,
               "speed_kmh": 20.0 + (u % 50) as f64, "wind_speed_kmh": (step % 30) as f64, "precipitation_mm": 0.1, "weather_status": "ok"})
    });
    let version = append(&settings, &LOCATIONS, lines).await;
    let key = format!("bronze/locations/_delta_log/{version:020}.json");
    let body = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                    "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]});
    let event = json!({"Records": [{"messageId": "m", "eventSource": "aws:sqs", "body": body.to_string()}]});
    eprintln!("{positions} positions of {units} units ({per_unit} each) committed as version {version}");

    let mut builds = vec![("predictor", binary, Figures::default())];
    if let Some(b) = baseline {
        builds.push(("baseline", b, Figures::default()));
    }
    let n = builds.len();
    for run in 0..runs {
        for i in 0..n {
            // Alternating which build goes first: neither always meets a warmer moto.
            let (name, binary, figures) = &mut builds[(run + i) % n];
            let table = format!("predictions-{run}-{name}");
            moto.predictions_table(&table).await;
            let mut env = moto.env();
            env.push(("LAKE_BUCKET".into(), bucket.clone()));
            env.push(("PREDICTIONS_TABLE".into(), table));
            env.push(("RUST_LOG".into(), "warn".into()));
            let mut f = LambdaHarness::start(binary, "predictor", &env).await;
            let init_ms = f.ready_after().await.expect("the function never got ready").as_secs_f64() * 1000.0;
            let mut timed = async |want_written: u64| {
                let started = Instant::now();
                let out = f.invoke(&event).await;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(out.outcome.as_ref().ok(), Some(&json!({"batchItemFailures": []})), "{}", f.stderr());
                let metrics = out.metrics().expect("the invocation printed its metrics");
                assert_eq!(metrics["predictions_written"].as_u64(), Some(want_written), "{metrics}");
                assert_eq!(metrics["positions_read"].as_u64(), Some(positions as u64));
                ms
            };
            let ms = timed(units as u64).await;
            let replay_ms = timed(0).await;
            let peak = f.peak_rss_bytes().unwrap_or(0);
            figures.rss = figures.rss.max(peak);
            println!(
                "{}",
                json!({"binary": name, "run": run, "init_ms": (init_ms * 10.0).round() / 10.0, "commit_ms": ms.round(), "replay_ms": replay_ms.round(),
                       "predictions_per_s": (units as f64 / (ms / 1000.0)).round(), "peak_rss_mib": (peak as f64 / 1048576.0 * 10.0).round() / 10.0})
            );
            figures.inits.push(init_ms);
            figures.commits.push(ms);
            figures.replays.push(replay_ms);
        }
    }
    let mut medians = Vec::new();
    for (name, _, f) in &mut builds {
        let (init, ms, replay) = (median(&mut f.inits), median(&mut f.commits), median(&mut f.replays));
        println!(
            "{name}, one commit of {positions} positions over {units} units: median {ms:.0} ms → {:.0} predictions/s ({:.0} positions/s) written to DynamoDB; replay (all kept) {replay:.0} ms ({:.2} of the first write); init with the model loaded {init:.1} ms; peak RSS {:.1} MiB; {runs} runs",
            units as f64 / (ms / 1000.0),
            positions as f64 / (ms / 1000.0),
            replay / ms,
            f.rss as f64 / 1048576.0
        );
        medians.push((ms, replay));
    }
    if let [(new, new_replay), (old, old_replay)] = medians[..] {
        println!("baseline / predictor, medians: commit {:.2}x, replay {:.2}x", old / new, old_replay / new_replay);
    }
}
