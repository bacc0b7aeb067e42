//! `bench-predict`: the predictor on one commit of 100,000 positions over 2,000 units — features, inference and
//! DynamoDB writes — with the release binary behind a Lambda runtime API, on moto's S3 and a DynamoDB stand-in. Not a
//! test: it measures.
//!
//! usage: bench-predict --predictor PATH [--baseline PATH] [--units 2000] [--positions 100000] [--runs 3]
//!                      [--dynamodb dynoxide|moto] [--dynoxide PATH] [--dynamodb-latency-ms 0] [--s3-latency-ms 0]
//!                      [--log warn]
//! Each run starts the function afresh against an empty predictions table: init time (process start to its first
//! request for an invocation, the model loaded), then the commit's invocation, then the same commit again (a
//! replay: every item is kept). With `--baseline`, each run does the same with a second build (an earlier
//! commit's), in alternating order, and the ratios of the medians are printed. Prints one JSON line per run and
//! binary, and the medians.
//!
//! DynamoDB is dynoxide (`--dynoxide`, a DynamoDB emulator in Rust) or moto. moto spends milliseconds of Python per
//! item under one interpreter lock (80 BatchWriteItem calls of 25 predictions: about 740 ms, whoever calls), so on
//! moto this measures moto. The latencies are added by a proxy to every request (the function's only: the setup
//! and the checks go direct), standing in for the round trips of DynamoDB and S3 in a region.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice)] // a command-line tool that reports on stdout

use std::path::PathBuf;
use std::time::Duration;

use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, TableSpec, LOCATIONS, PERFORMANCE_STATS};
use fleetlake_delta::{open_or_create, Appender, DeltaSettings};
use fleetlake_testkit::{create_predictions_table, forwarding_proxy, through, Dynoxide, LambdaHarness, Moto};
use serde_json::{json, Value};

struct Args {
    predictor: PathBuf,
    baseline: Option<PathBuf>,
    units: usize,
    positions: usize,
    runs: usize,
    dynoxide: Option<PathBuf>,
    on_moto: bool,
    dynamodb_latency_ms: u64,
    s3_latency_ms: u64,
    /// The functions' log level; other than `warn`, their logs are printed after each run (for a profile).
    log: String,
}

fn main_args() -> Args {
    let mut a = Args {
        predictor: PathBuf::new(),
        baseline: None,
        units: 2000,
        positions: 100_000,
        runs: 3,
        dynoxide: None,
        on_moto: false,
        dynamodb_latency_ms: 0,
        s3_latency_ms: 0,
        log: "warn".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--predictor" => a.predictor = PathBuf::from(&v),
            "--baseline" => a.baseline = Some(PathBuf::from(&v)),
            "--units" => a.units = n(),
            "--positions" => a.positions = n(),
            "--runs" => a.runs = n(),
            "--dynoxide" => a.dynoxide = Some(PathBuf::from(&v)),
            "--dynamodb" => {
                a.on_moto = match v.as_str() {
                    "moto" => true,
                    "dynoxide" => false,
                    other => panic!("--dynamodb {other}: moto or dynoxide"),
                }
            }
            "--dynamodb-latency-ms" => a.dynamodb_latency_ms = n() as u64,
            "--s3-latency-ms" => a.s3_latency_ms = n() as u64,
            "--log" => a.log = v.clone(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.predictor.exists(), "--predictor {} does not exist (make bench builds it)", a.predictor.display());
    assert!(a.on_moto || a.dynoxide.is_some(), "--dynoxide PATH is needed unless --dynamodb moto");
    a
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
    let args = main_args();
    let (units, positions, runs) = (args.units, args.positions, args.runs);
    let moto = Moto::start().await;
    let dynoxide = match (&args.dynoxide, args.on_moto) {
        (Some(path), false) => Some(Dynoxide::start(path).await),
        _ => None,
    };
    let dynamodb = dynoxide.as_ref().map_or(moto.endpoint.clone(), |d| d.endpoint.clone());
    let dynamodb_config = fleetlake_testkit::config_for(&dynamodb);
    let delayed = async |endpoint: &str, ms: u64| {
        if ms == 0 {
            endpoint.to_owned()
        } else {
            forwarding_proxy(endpoint.to_owned(), Duration::from_millis(ms), None).await
        }
    };
    let function_dynamodb = delayed(&dynamodb, args.dynamodb_latency_ms).await;
    let function_s3 = delayed(&moto.endpoint, args.s3_latency_ms).await;
    eprintln!(
        "DynamoDB: {} (+{} ms a request), S3: moto (+{} ms a request)",
        if dynoxide.is_some() { "dynoxide" } else { "moto" },
        args.dynamodb_latency_ms,
        args.s3_latency_ms
    );
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

    let mut builds = vec![("predictor", args.predictor.clone(), Figures::default())];
    if let Some(b) = args.baseline.clone() {
        builds.push(("baseline", b, Figures::default()));
    }
    let n = builds.len();
    for run in 0..runs {
        for i in 0..n {
            // Alternating which build goes first: neither always meets a warmer moto.
            let (name, binary, figures) = &mut builds[(run + i) % n];
            let table = format!("predictions-{run}-{name}");
            let client = create_predictions_table(&dynamodb_config, &table).await;
            let mut env = through(&moto.env(), &function_s3);
            env.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), function_dynamodb.clone()));
            env.push(("LAKE_BUCKET".into(), bucket.clone()));
            env.push(("PREDICTIONS_TABLE".into(), table.clone()));
            // Each run lands its record of what was served apart: a record in place tells a replay.
            env.push(("LANDING_PREFIX".into(), format!("landing-{run}-{name}/")));
            env.push(("RUST_LOG".into(), args.log.clone()));
            let mut f = LambdaHarness::start(binary, "predictor", &env).await;
            let init_ms = f.ready_after().await.expect("the function never got ready").as_secs_f64() * 1000.0;
            let mut timed = async |first: bool| {
                // From handing over the event to the function's answer (Lambda's Duration); the harness's wait for
                // the last log lines afterwards is not counted.
                let out = f.invoke(&event).await;
                let ms = out.duration.as_secs_f64() * 1000.0;
                assert_eq!(out.outcome.as_ref().ok(), Some(&json!({"batchItemFailures": []})), "{}", f.stderr());
                let metrics = out.metrics().expect("the invocation printed its metrics");
                let want_written = if first { units as u64 } else { 0 };
                assert_eq!(metrics["predictions_written"].as_u64(), Some(want_written), "{metrics}");
                if first {
                    assert_eq!(metrics["positions_read"].as_u64(), Some(positions as u64), "{metrics}");
                }
                ms
            };
            let ms = timed(true).await;
            let replay_ms = timed(false).await;
            // What a user would notice: one item per unit in the table the function was given.
            let stored = client
                .scan()
                .table_name(&table)
                .select(aws_sdk_dynamodb::types::Select::Count)
                .into_paginator()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .unwrap();
            assert_eq!(stored.iter().map(|p| p.count() as usize).sum::<usize>(), units, "items in {table}");
            let peak = f.peak_rss_bytes().unwrap_or(0);
            if args.log != "warn" {
                eprintln!("{}", f.stderr());
            }
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
