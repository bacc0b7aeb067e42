//! `bench-poll`: pg-poller against a real PostgreSQL (a throwaway cluster, TLS on) — one poll of a table whose rows
//! all changed (the first poll of a new table, then every row updated), and a poll of the same table unchanged.
//! The release binary behind a Lambda runtime API, on moto's S3 and Secrets Manager. Not a test: it measures.
//!
//! usage: bench-poll --poller PATH [--rows 1000000] [--units 2000]
//! `performance_stats` gets `--rows` rows (`--units` units, one row per unit and day), inserted in one transaction.
//! Each poll runs in a fresh process, so its peak RSS is that poll's.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a command-line tool that reports on stdout

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleetlake_testkit::{unique_name, LambdaHarness, Moto, Postgres};
use serde_json::{json, Value};

struct Args {
    poller: PathBuf,
    rows: usize,
    units: usize,
}

fn main_args() -> Args {
    let mut a = Args { poller: PathBuf::new(), rows: 1_000_000, units: 2_000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--poller" => a.poller = PathBuf::from(&v),
            "--rows" => a.rows = n(),
            "--units" => a.units = n().max(1),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.poller.exists(), "--poller {} does not exist (make bench-poll builds it)", a.poller.display());
    a
}

struct Run {
    seconds: f64,
    rss_mib: f64,
    report: Value,
}

async fn poll(args: &Args, env: &[(String, String)]) -> Run {
    let mut f = LambdaHarness::start(&args.poller, "pg-poller", env).await;
    f.ready_after().await.expect("the poller started");
    let started = Instant::now();
    let answer = f.answer(&json!({})).await.unwrap_or_else(|e| panic!("poll failed: {e}\n{}", f.stderr()));
    let seconds = started.elapsed().as_secs_f64();
    let rss_mib = f.peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64;
    Run { seconds, rss_mib, report: answer["tables"][0].clone() }
}

fn show(name: &str, run: &Run, rows: usize) {
    let r = &run.report;
    println!(
        "{name}: {:.2} s, {:.0} rows/s, peak RSS {:.1} MiB; read {}, landed {}, skipped {}, objects {}, keys compared {}",
        run.seconds,
        rows as f64 / run.seconds,
        run.rss_mib,
        r["rows_read"],
        r["changes_landed"],
        r["versions_skipped"],
        r["objects"].as_array().map_or(0, Vec::len),
        r["keys_compared"],
    );
}

#[tokio::main]
async fn main() {
    let args = main_args();
    let moto = Moto::start().await;
    let bucket = moto.bucket("bench-poll").await;
    let pg = Postgres::start().await;
    pg.admin("postgres").await.batch_execute("CREATE DATABASE fleet").await.unwrap();
    let db = pg.admin("fleet").await;
    db.batch_execute(
        "CREATE TABLE performance_stats (
             transport_unit_id text NOT NULL, stat_date date NOT NULL, distance_km float8, fuel_used_l float8,
             engine_hours float8, updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (transport_unit_id, stat_date));
         CREATE INDEX ON performance_stats (updated_at);
         CREATE ROLE poller LOGIN PASSWORD 'poller-pw';
         GRANT pg_read_all_stats TO poller;
         GRANT SELECT ON performance_stats TO poller;",
    )
    .await
    .unwrap();
    let load = Instant::now();
    db.execute(
        "INSERT INTO performance_stats
           SELECT 'TU-' || lpad((i % $1::int8)::text, 6, '0'), date '2024-01-01' + (i / $1::int8)::int4,
                  100 + i % 700, 20 + (i % 97) * 1.5, 8 + i % 9
             FROM generate_series(0::int8, $2::int8 - 1) i",
        &[&(args.units as i64), &(args.rows as i64)],
    )
    .await
    .unwrap();
    db.batch_execute("VACUUM ANALYZE performance_stats").await.unwrap();
    println!("loaded {} rows in {:.1} s", args.rows, load.elapsed().as_secs_f64());

    let sm = moto.secrets_manager();
    let secret = sm
        .create_secret()
        .name(unique_name("bench-pg"))
        .secret_string(
            json!({"username": "poller", "password": "poller-pw", "host": "127.0.0.1", "port": pg.port, "dbname": "fleet"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let mut env = moto.env();
    for (k, v) in [
        ("LAKE_BUCKET", bucket.as_str()),
        ("PG_SECRET_ARN", secret.arn().unwrap()),
        ("PG_CA_BUNDLE", &pg.ca_file.display().to_string()),
        ("POLL_TABLES", "public.performance_stats=performance_stats"),
        ("POLL_OVERLAP_SECONDS", "1"),
        ("RUST_LOG", "warn"),
    ] {
        env.push((k.to_owned(), v.to_owned()));
    }

    let first = poll(&args, &env).await;
    show("first poll (every row new, keys compared)", &first, args.rows);
    tokio::time::sleep(Duration::from_secs(2)).await;
    db.batch_execute("UPDATE performance_stats SET fuel_used_l = fuel_used_l + 1, updated_at = now()").await.unwrap();
    db.batch_execute("VACUUM ANALYZE performance_stats").await.unwrap();
    let changed = poll(&args, &env).await;
    show("every row updated", &changed, args.rows);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet = poll(&args, &env).await;
    println!(
        "unchanged table: {:.3} s, peak RSS {:.1} MiB; read {}, recorded {}",
        quiet.seconds, quiet.rss_mib, quiet.report["rows_read"], quiet.report["recorded"]
    );
    let states = moto.keys(&bucket, "state/pg-poller/").await;
    let mut sizes = Vec::new();
    for k in &states {
        sizes.push(format!("{} {} B", k.rsplit('/').next().unwrap(), moto.get(&bucket, k).await.len()));
    }
    println!("state objects: {}", sizes.join(", "));
}
