//! `bench-delta`: delta-writer end to end — enriched objects in moto's S3, the release binary behind a Lambda
//! runtime API, one SQS-triggered invocation naming every object — beside the Python baseline on the same objects
//! and an in-memory ceiling. Not a test: it measures.
//!
//! usage: bench-delta --writer PATH [--records 1000000] [--files 100] [--runs 3] [--peers DIR] [--idioms pyarrow,awswrangler]
//!
//! The measurements run in `--runs` rounds, each round one of every kind in turn (delta-writer, ceiling, each
//! baseline idiom), so that a slower or faster spell of the machine falls on all of them alike.
//! - delta-writer: each run is a fresh process writing a fresh table; records/s = records / invocation wall time.
//! - ceiling: the same records, already in memory, gunzipped, parsed into Arrow with delta-writer's converter and
//!   encoded to Parquet (delta-writer's writer properties) in memory with arrow-rs: no S3, no Delta log.
//! - baseline: `peer_convert.py` (convert-only mode) from `--peers` (default `../shared/peers` beside the project),
//!   each idiom in its own process; its peak RSS is read with getrusage.
//!
//! Prints one JSON line per measurement and a summary with medians, and ratios of medians.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice)] // a command-line tool that reports on stdout

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use deltalake::parquet::arrow::ArrowWriter;
use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, LOCATIONS};
use fleetlake_testkit::{venv_bin, workspace_root, LambdaHarness, Moto};

mod enriched;
use enriched::{enriched_key, enriched_object};
use serde_json::{json, Value};

struct Args {
    writer: PathBuf,
    records: usize,
    files: usize,
    runs: usize,
    peers: PathBuf,
    idioms: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        writer: PathBuf::new(),
        records: 1_000_000,
        files: 100,
        runs: 3,
        peers: workspace_root().join("../shared/peers"),
        idioms: vec!["pyarrow".into(), "awswrangler".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--writer" => a.writer = PathBuf::from(&v),
            "--records" => a.records = n(),
            "--files" => a.files = n(),
            "--runs" => a.runs = n(),
            "--peers" => a.peers = PathBuf::from(&v),
            "--idioms" => a.idioms = v.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.writer.exists(), "--writer {} does not exist (make bench builds it)", a.writer.display());
    a
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// The ceiling: gunzip, convert and encode to Parquet in memory; returns (records, seconds, parquet bytes).
fn ceiling(objects: &[(String, Vec<u8>)]) -> (usize, f64, usize) {
    let started = Instant::now();
    let mut converter = Converter::new(&LOCATIONS);
    let props = fleetlake_delta::writer_properties();
    let mut writer = ArrowWriter::try_new(Vec::new(), LOCATIONS.arrow_schema(), Some(props)).unwrap();
    let mut records = 0;
    for (key, gz) in objects {
        let name = fleetlake_core::lake::BatchName::from_key(key);
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(gz.as_slice()).read_to_string(&mut text).unwrap();
        for (i, line) in text.lines().enumerate() {
            let origin = LineOrigin { key, etag: "", line: i as u64 + 1, lineage: Lineage::of(name.as_ref()) };
            converter.push(line.as_bytes(), origin).unwrap();
            if converter.len() == 20_000 {
                let (batch, _) = converter.finish().unwrap();
                records += batch.num_rows();
                writer.write(&batch).unwrap();
            }
        }
    }
    let (batch, _) = converter.finish().unwrap();
    records += batch.num_rows();
    writer.write(&batch).unwrap();
    let bytes = writer.into_inner().unwrap().len();
    (records, started.elapsed().as_secs_f64(), bytes)
}

/// One delta-writer run: a fresh process appends every object to a fresh table. Returns (records/s, peak RSS MiB,
/// CPU s).
async fn writer_run(a: &Args, moto: &Moto, bucket: &str, objects: &[(String, Vec<u8>)], run: usize) -> (f64, f64, f64) {
    let s3 = moto.s3();
    let records = objects.len() * (a.records / a.files);
    let prefix = format!("bronze-run{run}/");
    let mut env = moto.env();
    for (k, v) in [("LAKE_BUCKET", bucket), ("BRONZE_PREFIX", prefix.as_str()), ("RUST_LOG", "warn")] {
        env.push((k.to_owned(), v.to_owned()));
    }
    let mut f = LambdaHarness::start(&a.writer, "delta-writer", &env).await;
    let messages: Vec<Value> = objects
        .iter()
        .enumerate()
        .map(|(i, (key, _))| {
            let s3_event = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                                "s3": {"bucket": {"name": bucket}, "object": {"key": key.replace('=', "%3D")}}}]});
            json!({"messageId": format!("m{i}"), "eventSource": "aws:sqs", "body": s3_event.to_string()})
        })
        .collect();
    let started = Instant::now();
    let out = f.invoke(&json!({"Records": messages})).await;
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(out.outcome.as_ref().ok(), Some(&json!({"batchItemFailures": []})), "{:?}\n{}", out.outcome, f.stderr());
    let metrics = out.metrics().expect("the invocation printed its metrics");
    let written = metrics["records_written"].as_u64().unwrap();
    assert_eq!(written, records as u64, "every record written");
    let files = moto.keys(bucket, &format!("{prefix}locations/event_date=")).await;
    let mut parquet_bytes = 0;
    for key in &files {
        let head = s3.head_object().bucket(bucket).key(key).send().await.unwrap();
        parquet_bytes += head.content_length().unwrap_or(0);
    }
    let commits = moto
        .keys(bucket, &format!("{prefix}locations/_delta_log/"))
        .await
        .iter()
        .filter(|k| k.ends_with(".json"))
        .count()
        - 1;
    let peak = f.peak_rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    let cpu = f.cpu_seconds().unwrap_or(0.0);
    let rate = written as f64 / wall;
    println!(
        "{}",
        json!({"what": "delta-writer", "run": run, "records": written, "wall_s": round(wall, 3),
               "records_per_s": rate.round(), "peak_rss_mib": round(peak, 1), "function_cpu_s": cpu,
               "parquet_files": files.len(), "parquet_bytes": parquet_bytes, "commits": commits})
    );
    (rate, peak, cpu)
}

/// One run of the Python baseline in `idiom`, in its own process. Returns (records/s, peak RSS MiB), or `None` when
/// it failed (its error is printed).
async fn peer_run(a: &Args, moto: &Moto, bucket: &str, idiom: &str, run: usize) -> Option<(f64, f64)> {
    // Peak RSS of the child process, from getrusage.
    let launcher = "import json,resource,subprocess,sys\nr=subprocess.run(sys.argv[1:],capture_output=True,text=True)\nsys.stderr.write(r.stderr)\nprint(json.dumps({'out':r.stdout.strip(),'code':r.returncode,'peak_rss_mib':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))";
    let out = tokio::process::Command::new(venv_bin("python"))
        .args(["-c", launcher])
        .arg(venv_bin("python"))
        .arg(a.peers.join("peer_convert.py"))
        .args(["--endpoint", &moto.endpoint, "--bucket", bucket, "--prefix", "enriched/locations/"])
        .args(["--table", &format!("s3://{bucket}/peer-{idiom}-{run}/locations"), "--idiom", idiom])
        .output()
        .await
        .expect("run the Python baseline");
    let wrapper: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let Ok(result) = serde_json::from_str::<Value>(wrapper["out"].as_str().unwrap_or("")) else {
        eprintln!("Python baseline ({idiom}) failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    };
    let rate = result["records_per_s"].as_f64().unwrap_or(f64::NAN);
    let peak = wrapper["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
    println!(
        "{}",
        json!({"what": format!("python-{idiom}"), "run": run, "records": result["records"], "wall_s": result["wall_s"],
               "records_per_s": rate, "peak_rss_mib": round(peak, 1)})
    );
    Some((rate, peak))
}

#[tokio::main]
async fn main() {
    let a = args();
    let moto = Moto::start().await;
    let bucket = moto.bucket("bench").await;
    let s3 = moto.s3();
    let per_file = a.records / a.files;
    let t = Instant::now();
    let mut objects = Vec::new();
    for f in 0..a.files {
        let key = enriched_key(f, per_file);
        let body = enriched_object(f, per_file);
        s3.put_object().bucket(&bucket).key(&key).body(body.clone().into()).send().await.expect("upload");
        objects.push((key, body));
    }
    let gz_bytes: usize = objects.iter().map(|(_, b)| b.len()).sum();
    let records = per_file * a.files;
    eprintln!(
        "generated {records} records in {} objects ({:.1} MB gzip) in {:.1} s",
        a.files,
        gz_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let idioms = if a.peers.join("peer_convert.py").exists() {
        a.idioms.clone()
    } else {
        eprintln!("no Python baseline at {} (pass --peers DIR)", a.peers.join("peer_convert.py").display());
        Vec::new()
    };

    let (mut rates, mut rss, mut cpu, mut ceilings) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut peers: Vec<(String, Vec<f64>, Vec<f64>)> =
        idioms.iter().map(|i| (i.clone(), Vec::new(), Vec::new())).collect();
    for run in 0..a.runs {
        let (rate, peak, cpu_s) = writer_run(&a, &moto, &bucket, &objects, run).await;
        rates.push(rate);
        rss.push(peak);
        cpu.push(cpu_s);
        let (n, secs, bytes) = ceiling(&objects);
        println!(
            "{}",
            json!({"what": "ceiling", "run": run, "records": n, "wall_s": round(secs, 3), "records_per_s": (n as f64 / secs).round(), "parquet_bytes": bytes})
        );
        ceilings.push(n as f64 / secs);
        for (idiom, prates, ppeaks) in &mut peers {
            if let Some((prate, ppeak)) = peer_run(&a, &moto, &bucket, idiom, run).await {
                prates.push(prate);
                ppeaks.push(ppeak);
            }
        }
    }

    let (rate, peak, ceil) = (median(rates), median(rss), median(ceilings));
    println!(
        "delta-writer, {records} enriched records in {} objects, one invocation, {} runs (median): {rate:.0} records/s, peak RSS {peak:.1} MiB, function CPU {:.2} s; in-memory ceiling {ceil:.0} records/s (delta-writer at {:.0}% of it)",
        a.files,
        a.runs,
        median(cpu),
        100.0 * rate / ceil
    );
    for (idiom, prates, ppeaks) in peers.into_iter().filter(|(_, r, _)| !r.is_empty()) {
        let runs = prates.len();
        let (prate, ppeak) = (median(prates), median(ppeaks));
        println!(
            "Python baseline ({idiom}), same objects, same rounds, {runs} runs (median): {prate:.0} records/s, peak RSS {ppeak:.1} MiB; delta-writer is {:.1}x its records/s with {:.2}x its peak RSS",
            rate / prate,
            peak / ppeak
        );
    }
}
