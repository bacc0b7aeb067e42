//! `bench-delta`: delta-writer end to end — enriched objects in moto's S3, the release binary behind a Lambda
//! runtime API, one SQS-triggered invocation naming every object — beside the Python baseline on the same objects
//! and an in-memory ceiling. Not a test: it measures.
//!
//! usage: bench-delta --writer PATH [--records 1000000] [--files 100] [--runs 3] [--peers DIR] [--idioms pyarrow,awswrangler]
//!                    [--cpu-quotas 0.5,1,2] [--encoders 0,1]
//!
//! The measurements run in `--runs` rounds, each round one of every kind in turn (delta-writer, ceiling, each
//! baseline idiom), so that a slower or faster spell of the machine falls on all of them alike.
//! - delta-writer: each run is a fresh process writing a fresh table; records/s = records / invocation wall time.
//! - ceiling: the same records, already in memory, gunzipped, parsed into Arrow with delta-writer's converter and
//!   encoded to Parquet (delta-writer's writer properties) in memory with arrow-rs: no S3, no Delta log.
//! - baseline: `peer_convert.py` (convert-only mode) from `--peers` (default `../shared/peers` beside the project),
//!   each idiom in its own process; its peak RSS is read with getrusage.
//!
//! - `--cpu-quotas`: delta-writer runs once per quota in each round, in a CPU cgroup of its own limited to that many
//!   CPUs (cgroup v1 `cpu.cfs_quota_us` or v2 `cpu.max`; root only), as Lambda limits a function to the share of
//!   CPU its memory size buys (one vCPU at 1,769 MB). Each quota is priced as that memory size: the cost of a million
//!   records in arm64 GB-seconds and requests, from `infra/cost/prices.json`. Without it, delta-writer runs
//!   unconstrained.
//! - `--encoders`: delta-writer's `ENCODERS` settings to run (default 1, the function's default; 0: one Parquet
//!   writer per CPU it may use), each under every quota.
//!
//! Prints one JSON line per measurement and a summary with medians, and ratios of medians. moto serves the objects
//! and takes the uploads on the same cores: the summary gives the CPU it used during the invocation, and the most
//! delta-writer could reach with that CPU use (its CPU over its quota, and its CPU and moto's over the machine's
//! cores, as the shortest wall time).
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
    /// CPU quotas to run delta-writer under; empty: unconstrained.
    quotas: Vec<f64>,
    /// `ENCODERS` settings to run delta-writer with.
    encoders: Vec<usize>,
}

fn args() -> Args {
    let mut a = Args {
        writer: PathBuf::new(),
        records: 1_000_000,
        files: 100,
        runs: 3,
        peers: workspace_root().join("../shared/peers"),
        idioms: vec!["pyarrow".into(), "awswrangler".into()],
        quotas: Vec::new(),
        encoders: vec![1],
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
            "--encoders" => {
                a.encoders =
                    v.split(',').map(|e| e.parse().unwrap_or_else(|_| panic!("--encoders {e}: not a number"))).collect()
            }
            "--cpu-quotas" => {
                a.quotas = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|q| {
                        q.parse::<f64>()
                            .ok()
                            .filter(|q| *q > 0.0)
                            .unwrap_or_else(|| panic!("--cpu-quotas {q}: not a positive number"))
                    })
                    .collect()
            }
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

/// Lambda's memory size for one vCPU's worth of CPU time.
const MB_PER_VCPU: f64 = 1769.0;

/// A CPU cgroup limited to `cpus` CPUs, and a script that starts delta-writer in it; removed when dropped.
struct CpuQuota {
    cpus: f64,
    dir: PathBuf,
    script: PathBuf,
}

impl CpuQuota {
    fn new(cpus: f64, writer: &std::path::Path) -> Self {
        let period = 100_000_u64;
        let quota = (cpus * period as f64).round() as u64;
        let name = format!("fleetlake-bench-delta-{}-{quota}", std::process::id());
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let dir = if v2 {
            PathBuf::from("/sys/fs/cgroup").join(&name)
        } else {
            PathBuf::from("/sys/fs/cgroup/cpu").join(&name)
        };
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!("--cpu-quotas needs a writable CPU cgroup (root, cgroup v1 cpu or v2): {}: {e}", dir.display())
        });
        if v2 {
            std::fs::write(dir.join("cpu.max"), format!("{quota} {period}")).expect("set cpu.max");
        } else {
            std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string()).expect("set cpu.cfs_period_us");
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).expect("set cpu.cfs_quota_us");
        }
        let script = std::env::temp_dir().join(format!("{name}.sh"));
        let procs = dir.join("cgroup.procs");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho $$ > '{}' || exit 1\nexec '{}'\n", procs.display(), writer.display()),
        )
        .expect("write the cgroup launcher");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        Self { cpus, dir, script }
    }

    /// Lambda's memory size that buys this much CPU.
    fn memory_mb(&self) -> f64 {
        self.cpus * MB_PER_VCPU
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.script);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The US dollars of a million records at `memory_mb`: arm64 GB-seconds for the wall time, and the request.
fn usd_per_million(memory_mb: f64, wall_s: f64, records: f64) -> f64 {
    let prices: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace_root().join("infra/cost/prices.json")).unwrap())
            .unwrap();
    let price = |item: &str| {
        let i = &prices["items"][item];
        i["usd"].as_f64().unwrap() / i["per"].as_f64().unwrap()
    };
    let invocation = memory_mb / 1024.0 * wall_s * price("lambda_arm64_gb_second") + price("lambda_request");
    invocation * 1e6 / records
}

/// One delta-writer run: a fresh process appends every object to a fresh table. Returns (records/s, peak RSS MiB,
/// CPU s, wall s, moto's CPU s during the invocation).
async fn writer_run(
    a: &Args,
    moto: &Moto,
    bucket: &str,
    objects: &[(String, Vec<u8>)],
    run: usize,
    quota: Option<&CpuQuota>,
    encoders: usize,
) -> (f64, f64, f64, f64, f64) {
    let s3 = moto.s3();
    let records = objects.len() * (a.records / a.files);
    let prefix = format!("bronze-run{run}-{}-{encoders}/", quota.map_or("all".to_owned(), |q| q.cpus.to_string()));
    let mut env = moto.env();
    let encoders_var = encoders.to_string();
    for (k, v) in
        [("LAKE_BUCKET", bucket), ("BRONZE_PREFIX", prefix.as_str()), ("RUST_LOG", "warn"), ("ENCODERS", &encoders_var)]
    {
        env.push((k.to_owned(), v.to_owned()));
    }
    let binary = quota.map_or(&a.writer, |q| &q.script);
    let mut f = LambdaHarness::start(binary, "delta-writer", &env).await;
    let messages: Vec<Value> = objects
        .iter()
        .enumerate()
        .map(|(i, (key, _))| {
            let s3_event = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                                "s3": {"bucket": {"name": bucket}, "object": {"key": key.replace('=', "%3D")}}}]});
            json!({"messageId": format!("m{i}"), "eventSource": "aws:sqs", "body": s3_event.to_string()})
        })
        .collect();
    let moto_before = moto.cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let out = f.invoke(&json!({"Records": messages})).await;
    let wall = started.elapsed().as_secs_f64();
    let moto_cpu = moto.cpu_seconds().unwrap_or(0.0) - moto_before;
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
        json!({"what": "delta-writer", "run": run, "cpu_quota": quota.map(|q| q.cpus), "encoders": encoders, "records": written, "wall_s": round(wall, 3),
               "records_per_s": rate.round(), "peak_rss_mib": round(peak, 1), "function_cpu_s": cpu,
               "moto_cpu_s": round(moto_cpu, 2), "parquet_files": files.len(), "parquet_bytes": parquet_bytes, "commits": commits})
    );
    (rate, peak, cpu, wall, moto_cpu)
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

    let quotas: Vec<Option<CpuQuota>> = if a.quotas.is_empty() {
        vec![None]
    } else {
        a.quotas.iter().map(|q| Some(CpuQuota::new(*q, &a.writer))).collect()
    };
    // Every quota with every encoders setting.
    let quotas: Vec<(Option<&CpuQuota>, usize)> =
        quotas.iter().flat_map(|q| a.encoders.iter().map(move |e| (q.as_ref(), *e))).collect();
    // Per quota: records/s, peak RSS, CPU s, wall s, moto's CPU s of each round.
    let mut writers: Vec<[Vec<f64>; 5]> = quotas.iter().map(|_| Default::default()).collect();
    let mut ceilings = Vec::new();
    let mut peers: Vec<(String, Vec<f64>, Vec<f64>)> =
        idioms.iter().map(|i| (i.clone(), Vec::new(), Vec::new())).collect();
    for run in 0..a.runs {
        for ((quota, encoders), figures) in quotas.iter().zip(&mut writers) {
            let (rate, peak, cpu_s, wall, moto_s) =
                writer_run(&a, &moto, &bucket, &objects, run, *quota, *encoders).await;
            for (v, x) in figures.iter_mut().zip([rate, peak, cpu_s, wall, moto_s]) {
                v.push(x);
            }
        }
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

    let ceil = median(ceilings);
    let mut rate = 0.0;
    let mut peak = 0.0;
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    for ((quota, encoders), [rates, rss, cpu, walls, moto_cpu]) in quotas.iter().zip(writers) {
        let (r, p, c, w, m) = (median(rates), median(rss), median(cpu), median(walls), median(moto_cpu));
        // The shortest wall time this CPU use allows: delta-writer's CPU spread over its quota, and delta-writer's
        // and moto's together over the machine's cores (the benchmark's own work between invocations aside).
        let shortest = (c / quota.map_or(cores, |q| q.cpus.min(cores))).max((c + m) / cores);
        let most = records as f64 / shortest / ceil;
        let limit = quota.map_or("no CPU quota".to_owned(), |q| {
            format!(
                "CPU quota {} ({:.0} MB on Lambda: {:.7} USD per million records)",
                q.cpus,
                q.memory_mb(),
                usd_per_million(q.memory_mb(), w, records as f64)
            )
        });
        println!(
            "delta-writer, {records} enriched records in {} objects, one invocation, {limit}, ENCODERS={encoders}, {} runs (median): {r:.0} records/s, peak RSS {p:.1} MiB, function CPU {c:.2} s, moto CPU {m:.2} s; in-memory ceiling (one thread) {ceil:.0} records/s: delta-writer at {:.2}x it, at most {most:.2}x with this CPU use on {cores} cores",
            a.files,
            a.runs,
            r / ceil
        );
        // The baselines are compared with the fastest configuration.
        if r > rate {
            (rate, peak) = (r, p);
        }
    }
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
