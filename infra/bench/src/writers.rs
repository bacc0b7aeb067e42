//! `bench-writers`: N delta-writers appending to one table at once, on moto behind S3-like latency. Not a test: it
//! measures.
//!
//! usage: bench-writers --writer PATH [--baseline PATH] [--writers 1,2,4,8,16] [--commits 8] [--objects 10] [--records 1000]
//!                      [--latency-ms 20] [--races 20]
//!
//! The writers reach moto through three proxies: one counts the requests (and the create-only PUTs that lost a race,
//! `412`), one adds `--latency-ms` to every request (S3's round trip; moto on loopback answers in well under a
//! millisecond, so writers would hardly ever meet), and one makes conditional PUTs one at a time (S3 makes them
//! atomic; moto checks the condition, then writes). First, `--races` races of 16 concurrent create-only PUTs of one
//! key through that chain must each have exactly one winner; the same races straight against moto are reported
//! beside them. Then for each N: N fresh delta-writer processes (the release binary behind a Lambda runtime API),
//! each invoked `--commits` times in a row with an SQS event naming `--objects` enriched objects of `--records`
//! records of its own (a full batch is one commit); all N at once, on a fresh table. A failed invocation is sent
//! again, as SQS would. Reports commits/s, lost commit races per commit (each a reload of the log and another
//! attempt), invocation latency p50/p99 (a commit's latency: the invocation commits once), records/s in total, and
//! checks that the table holds every record once. With `--baseline`, each N runs first with that binary (an earlier
//! commit's delta-writer), on a table of its own, and a line of ratios follows.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice)] // a command-line tool that reports on stdout

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use fleetlake_testkit::{counting_proxy, forwarding_proxy, serialising_proxy, through, LambdaHarness, Moto};
use serde_json::{json, Value};

mod enriched;
use enriched::{enriched_key, enriched_object};

struct Args {
    writer: PathBuf,
    baseline: Option<PathBuf>,
    writers: Vec<usize>,
    commits: usize,
    objects: usize,
    records: usize,
    latency_ms: u64,
    races: usize,
}

fn args() -> Args {
    let mut a = Args {
        writer: PathBuf::new(),
        baseline: None,
        writers: vec![1, 2, 4, 8, 16],
        commits: 8,
        objects: 10,
        records: 1000,
        latency_ms: 20,
        races: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--writer" => a.writer = PathBuf::from(&v),
            "--baseline" => a.baseline = Some(PathBuf::from(&v)),
            "--writers" => a.writers = v.split(',').map(|x| x.parse().expect("--writers: numbers")).collect(),
            "--commits" => a.commits = n(),
            "--objects" => a.objects = n(),
            "--records" => a.records = n(),
            "--latency-ms" => a.latency_ms = n() as u64,
            "--races" => a.races = n(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.writer.exists(), "--writer {} does not exist (make bench-writers builds it)", a.writer.display());
    a
}

/// `races` races of 16 concurrent create-only PUTs of one key each; returns how many races had exactly one winner.
async fn races(s3: &aws_sdk_s3::Client, bucket: &str, races: usize, tag: &str) -> usize {
    let mut single = 0;
    for race in 0..races {
        let key = format!("races/{tag}/{race}");
        let puts = (0..16).map(|w| {
            let (s3, key) = (s3.clone(), key.clone());
            let bucket = bucket.to_owned();
            tokio::spawn(async move {
                s3.put_object()
                    .bucket(bucket)
                    .key(key)
                    .if_none_match("*")
                    .body(ByteStream::from(format!("writer {w}").into_bytes()))
                    .send()
                    .await
                    .is_ok()
            })
        });
        let winners = futures::future::join_all(puts).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
        if winners == 1 {
            single += 1;
        }
    }
    single
}

fn percentile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main]
async fn main() {
    let a = args();
    let moto = Moto::start().await;
    let bucket = moto.bucket("writers").await;
    let serial = serialising_proxy(moto.endpoint.clone()).await;
    let slow = forwarding_proxy(serial, Duration::from_millis(a.latency_ms), None).await;
    let (counted, counts) = counting_proxy(slow.clone()).await;

    // Create-only PUTs: one winner per race, through the chain the writers use; straight to moto for comparison.
    let through_chain = {
        let conf =
            aws_sdk_s3::config::Builder::from(&fleetlake_testkit::config_for(&slow)).force_path_style(true).build();
        aws_sdk_s3::Client::from_conf(conf)
    };
    let chain = races(&through_chain, &bucket, a.races, "chain").await;
    let direct = races(&moto.s3(), &bucket, a.races, "moto").await;
    println!(
        "{}",
        json!({"what": "create-only races of 16 writers", "races": a.races, "one_winner_through_the_chain": chain, "one_winner_straight_to_moto": direct})
    );
    assert_eq!(chain, a.races, "a race through the serialising proxy had more or fewer than one winner");

    // Every writer's objects, for the largest N; a smaller N uses the first ones.
    let most = a.writers.iter().copied().max().unwrap_or(1);
    let s3 = moto.s3();
    let t = Instant::now();
    let files = most * a.commits * a.objects;
    for f in 0..files {
        let key = enriched_key(f, a.records);
        s3.put_object().bucket(&bucket).key(&key).body(enriched_object(f, a.records).into()).send().await.unwrap();
    }
    eprintln!("{files} objects of {} records uploaded in {:.0} s", a.records, t.elapsed().as_secs_f64());

    // Each N with the baseline binary first when there is one, then the writer under test: the same moto, proxies
    // and machine minutes apart.
    let mut summary = Vec::new();
    for &n in &a.writers {
        let binaries = a.baseline.iter().map(|b| ("baseline", b)).chain([("writer", &a.writer)]);
        let mut lines: Vec<Value> = Vec::new();
        for (label, binary) in binaries {
            let line = run(&a, &moto, &bucket, &counted, &counts, n, label, binary).await;
            println!("{line}");
            lines.push(line);
        }
        if let [base, ours] = lines.as_slice() {
            let ratio = |k: &str| match (ours[k].as_f64(), base[k].as_f64()) {
                (Some(o), Some(b)) if b > 0.0 => json!((o / b * 100.0).round() / 100.0),
                _ => Value::Null,
            };
            let line = json!({"writers": n, "what": "writer / baseline", "commits_per_s": ratio("commits_per_s"),
                              "latency_p99_ms": ratio("latency_p99_ms"), "records_per_s": ratio("records_per_s")});
            println!("{line}");
            lines.push(line);
        }
        summary.extend(lines);
    }
    println!(
        "{}",
        json!({"what": "summary", "latency_ms": a.latency_ms, "records_per_commit": a.objects * a.records, "runs": summary})
    );
}

/// `n` writers running `binary` at once on a fresh table; the line of figures (`label` names the binary). A writer
/// whose invocation does not answer within the harness's 120 s (Lambda would time it out) ends the run for that N:
/// the line says so and holds no figures.
#[allow(clippy::too_many_arguments)]
async fn run(
    a: &Args,
    moto: &Moto,
    bucket: &str,
    counted: &str,
    counts: &fleetlake_testkit::RequestCounts,
    n: usize,
    label: &str,
    binary: &std::path::Path,
) -> Value {
    let prefix = format!("bronze-{label}-n{n}/");
    let mut env = through(&moto.env(), counted);
    for (k, v) in [("LAKE_BUCKET", bucket), ("BRONZE_PREFIX", prefix.as_str()), ("RUST_LOG", "warn")] {
        env.push((k.to_owned(), v.to_owned()));
    }
    let mut harnesses = Vec::new();
    for _ in 0..n {
        let h = LambdaHarness::start(binary, "delta-writer", &env).await;
        h.ready_after().await.expect("delta-writer never got ready");
        harnesses.push(h);
    }
    counts.lock().unwrap().clear();
    let started = Instant::now();
    let tasks: Vec<_> = harnesses
        .into_iter()
        .enumerate()
        .map(|(w, mut h)| {
            let (a_commits, a_objects, a_records, bucket) = (a.commits, a.objects, a.records, bucket.to_owned());
            tokio::spawn(async move {
                let (mut latencies, mut resent, mut written) = (Vec::new(), 0u64, 0u64);
                for c in 0..a_commits {
                    let messages: Vec<Value> = (0..a_objects)
                        .map(|o| {
                            let f = (w * a_commits + c) * a_objects + o;
                            let key = enriched_key(f, a_records).replace('=', "%3D");
                            let s3_event = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                                                "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]});
                            json!({"messageId": format!("w{w}-c{c}-o{o}"), "eventSource": "aws:sqs", "body": s3_event.to_string()})
                        })
                        .collect();
                    let mut tries = 0;
                    loop {
                        let out = h.invoke(&json!({"Records": messages})).await;
                        latencies.push(out.duration.as_secs_f64() * 1000.0);
                        if out.outcome.as_ref().ok() == Some(&json!({"batchItemFailures": []})) {
                            let m = out.metrics().unwrap_or(Value::Null);
                            written += m["records_written"].as_u64().unwrap_or(0);
                            break;
                        }
                        // As SQS would: the batch again (the function leaves what is already in), up to its
                        // maxReceiveCount (5 in the template) and then some: a writer that fails more is broken.
                        resent += 1;
                        tries += 1;
                        assert!(tries < 10, "writer {w}: commit {c} failed {tries} times in a row: {:?}", out.outcome);
                        eprintln!("writer {w}: commit {c} failed, sent again: {:?}", out.outcome);
                    }
                }
                (latencies, resent, written)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let (mut resent, mut written) = (0, 0);
    let mut unfinished = Vec::new();
    for t in tasks {
        match t.await {
            Ok((l, r, wr)) => {
                latencies.extend(l);
                resent += r;
                written += wr;
            }
            Err(e) => {
                let why = e.try_into_panic().ok().and_then(|p| {
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                });
                // The first line: the harness's reason (no answer within 120 s, the process exited, ...).
                let why = why.unwrap_or_else(|| "cancelled".to_owned());
                unfinished.push(why.lines().next().unwrap_or_default().to_owned());
            }
        }
    }
    if !unfinished.is_empty() {
        return json!({"writers": n, "binary": label, "writers_not_finished": unfinished.len(), "why": unfinished});
    }
    let wall = started.elapsed().as_secs_f64();
    let counted_now = counts.lock().unwrap().clone();
    let lost = counted_now.iter().filter(|(k, _)| k.starts_with("s3:PutObject 4")).map(|(_, v)| v).sum::<u64>();

    // What a reader sees: every record once.
    let settings =
        fleetlake_delta::DeltaSettings::reader(bucket, &prefix, moto.delta_storage_options()).expect("a bucket URL");
    let table = fleetlake_delta::open_or_create(&settings, &fleetlake_core::bronze::LOCATIONS).await.unwrap();
    let rows: u64 = fleetlake_delta::active_files(&table, &fleetlake_core::bronze::LOCATIONS)
        .unwrap()
        .iter()
        .filter_map(|f| f.stats.as_deref())
        .filter_map(|s| serde_json::from_str::<Value>(s).ok()?["numRecords"].as_u64())
        .sum();
    let expected = (n * a.commits * a.objects * a.records) as u64;
    assert_eq!((rows, written), (expected, expected), "every record once in the table (N = {n})");
    let commits = (n * a.commits) as f64;
    json!({"writers": n, "binary": label, "commits": commits, "wall_s": (wall * 100.0).round() / 100.0,
                      "commits_per_s": (commits / wall * 100.0).round() / 100.0,
                      "lost_races_per_commit": (lost as f64 / commits * 100.0).round() / 100.0,
                      "invocations_sent_again": resent,
                      "latency_p50_ms": percentile(&mut latencies, 0.5).round(),
                      "latency_p99_ms": percentile(&mut latencies, 0.99).round(),
                      "records_per_s": (expected as f64 / wall).round(), "table_version": table.version()})
}
