//! `bench-compact`: lake-maintainer's compaction of a `bronze/locations` table of many small files — files before
//! and after, throughput, peak RSS, a full read with the Python `deltalake` package before and after, and the cost
//! of delta-writer's duplicate check of a redelivered batch before and after. The release binary behind a Lambda
//! runtime API, on moto's S3. Not a test: it measures.
//!
//! usage: bench-compact --maintainer PATH [--files 10000] [--units 2000] [--kafka-partitions 6] [--target-mb 128]
//!        [--redeliveries 7] [--reads 3]
//! The table gets one data file per 15-minute report of every unit (`--units` rows), 96 a day, one commit a day,
//! as delta-writer's commits leave them, until `--files` files (10,000 is 105 days). Each unit reports on Kafka
//! partition `unit % --kafka-partitions`. Compaction runs partition by partition, as the hourly schedule does
//! once a day went idle. A redelivery is one report slot's rows appended again with their original identities:
//! every row is a duplicate, and the time is the append's (identity checks and no commit).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a command-line tool that reports on stdout

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use chrono::{Duration, NaiveDate};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, LOCATIONS};
use fleetlake_delta::{open_or_create, writer_properties, Appender, DeltaSettings};
use fleetlake_testkit::{venv_bin, workspace_root, LambdaHarness, Moto};
use serde_json::{json, Value};

struct Args {
    maintainer: PathBuf,
    files: usize,
    units: usize,
    kafka_partitions: usize,
    target_mb: u64,
    redeliveries: usize,
    reads: usize,
}

fn main_args() -> Args {
    let mut a = Args {
        maintainer: PathBuf::new(),
        files: 10_000,
        units: 2_000,
        kafka_partitions: 6,
        target_mb: 128,
        redeliveries: 7,
        reads: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--maintainer" => a.maintainer = PathBuf::from(&v),
            "--files" => a.files = n(),
            "--units" => a.units = n(),
            "--kafka-partitions" => a.kafka_partitions = n().max(1),
            "--target-mb" => a.target_mb = n() as u64,
            "--redeliveries" => a.redeliveries = n().max(1),
            "--reads" => a.reads = n().max(1),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.maintainer.exists(), "--maintainer {} does not exist (make bench builds it)", a.maintainer.display());
    a
}

const SLOTS_PER_DAY: usize = 96;

/// The rows of one report slot: every unit once, with the Kafka identities it had when first delivered.
fn slot_rows(
    units: usize,
    partitions: usize,
    slot: usize,
) -> (deltalake::arrow::record_batch::RecordBatch, fleetlake_core::bronze::Identities) {
    let first_day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let at = first_day + Duration::minutes(15 * slot as i64);
    let per_partition = units.div_ceil(partitions);
    let mut converter = Converter::new(&LOCATIONS);
    for u in 0..units {
        let partition = u % partitions;
        // Each slot adds `per_partition` offsets to every partition; a unit keeps its place in its partition.
        let offset = (slot * per_partition + u / partitions) as i64;
        let line = json!({"transport_unit_id": format!("TU-{u:05}"), "transport_type": "terrestrial",
            "ts": at.to_rfc3339(), "lat": 40.0 + (u % 500) as f64 / 100.0, "lon": -3.0 + (slot % 500) as f64 / 100.0,
            "speed_kmh": (u % 90) as f64, "heading_deg": (slot % 360) as f64, "temperature_c": 12.5,
            "wind_speed_kmh": 10.0, "precipitation_mm": 0.0, "weather_code": 3, "weather_status": "ok",
            "_source": {"topic": "fleet.locations", "partition": partition, "offset": offset, "timestamp": 1}});
        let origin = LineOrigin { key: "bench", etag: "", line: 1, lineage: Lineage::Vouched };
        converter.push(line.to_string().as_bytes(), origin).unwrap();
    }
    converter.finish().unwrap()
}

/// Writes `files` slots as one data file each, a day's files per commit.
async fn build_table(settings: &DeltaSettings, files: usize, units: usize, partitions: usize) -> (usize, u64) {
    let mut table = open_or_create(settings, &LOCATIONS).await.unwrap();
    let mut bytes = 0u64;
    for day_start in (0..files).step_by(SLOTS_PER_DAY) {
        let mut adds = Vec::new();
        for slot in day_start..(day_start + SLOTS_PER_DAY).min(files) {
            let (batch, _) = slot_rows(units, partitions, slot);
            let mut writer = RecordBatchWriter::for_table(&table).unwrap().with_writer_properties(writer_properties());
            writer.write(batch).await.unwrap();
            adds.extend(writer.flush().await.unwrap());
        }
        bytes += adds.iter().map(|a| a.size as u64).sum::<u64>();
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(vec!["event_date".into()]),
            predicate: None,
        };
        let snapshot = table.snapshot().unwrap();
        CommitBuilder::from(CommitProperties::default())
            .with_actions(adds.into_iter().map(Action::Add).collect())
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .unwrap();
        table.update_incremental(None).await.unwrap();
    }
    (files.div_ceil(SLOTS_PER_DAY), bytes)
}

/// A full read with the Python `deltalake` package: (median seconds, rows, files).
fn python_read(endpoint: &str, uri: &str, reads: usize) -> (f64, u64, u64) {
    let out = std::process::Command::new(venv_bin("python"))
        .arg(workspace_root().join("infra/bench/read_table.py"))
        .args([endpoint, uri, &reads.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["median_s"].as_f64().unwrap(), v["rows"].as_u64().unwrap(), v["files"].as_u64().unwrap())
}

/// Redelivers each of `slots` and times the append: (median ms, data files read per redelivery).
async fn redeliveries(settings: &DeltaSettings, slots: &[usize], units: usize, partitions: usize) -> (f64, Vec<u64>) {
    let mut times = Vec::new();
    let mut checked = Vec::new();
    for &slot in slots {
        let (batch, ids) = slot_rows(units, partitions, slot);
        let table = open_or_create(settings, &LOCATIONS).await.unwrap();
        let started = Instant::now();
        let mut appender = Appender::new(&LOCATIONS, table, 128 << 20).unwrap();
        appender.write(batch, ids).await.unwrap();
        let done = appender.commit(vec![]).await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!((done.version, done.stats.rows_written), (None, 0), "slot {slot}: a redelivery appends nothing");
        checked.push(done.stats.files_checked);
    }
    (median(&mut times), checked)
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

#[tokio::main]
async fn main() {
    let a = main_args();
    let moto = Moto::start().await;
    let bucket = moto.bucket("lake").await;
    let settings = moto.delta_settings(&bucket);
    let uri = format!("s3://{bucket}/bronze/locations");

    let started = Instant::now();
    let (days, bytes) = build_table(&settings, a.files, a.units, a.kafka_partitions).await;
    println!(
        "{}",
        json!({"built": {"files": a.files, "days": days, "rows": a.files * a.units, "mb": bytes as f64 / 1e6,
                         "seconds": started.elapsed().as_secs()}})
    );
    // Redelivered slots spread over the table, none in its last (still growing) day.
    let slots: Vec<usize> = (0..a.redeliveries).map(|i| 13 + i * (a.files - SLOTS_PER_DAY) / a.redeliveries).collect();
    let (read_before, rows_before, files_before) = python_read(&moto.endpoint, &uri, a.reads);
    let (dup_before, checked_before) = redeliveries(&settings, &slots, a.units, a.kafka_partitions).await;

    let mut env = moto.env();
    env.push(("LAKE_BUCKET".into(), bucket.clone()));
    env.push(("COMPACT_TARGET_MB".into(), a.target_mb.to_string()));
    // BENCH_RUST_LOG=info writes the function's log to bench-compact.log, to see where the time goes.
    let log = std::env::var("BENCH_RUST_LOG").ok();
    env.push(("RUST_LOG".into(), log.clone().unwrap_or_else(|| "warn".into())));
    let mut maintainer = LambdaHarness::start(&a.maintainer, "lake-maintainer", &env).await;
    let first_day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let mut totals: HashMap<&str, u64> = HashMap::new();
    let mut seconds = 0.0;
    for d in 0..days {
        let day = first_day + Duration::days(d as i64);
        let ask = json!({"task": "compact", "table": "locations", "partition": day.to_string()});
        let t = Instant::now();
        let inv = maintainer.invoke(&ask).await;
        seconds += t.elapsed().as_secs_f64();
        let answer = inv.outcome.unwrap_or_else(|e| panic!("{e}\n{}", maintainer.stderr()));
        let done = &answer["tables"]["locations"]["compaction"];
        for k in ["files_removed", "files_added", "bytes_read", "bytes_written", "rows"] {
            *totals.entry(k).or_default() += done[k].as_u64().unwrap_or(0);
        }
    }
    let rss = maintainer.peak_rss_bytes().unwrap_or(0);
    if log.is_some() {
        std::fs::write("bench-compact.log", maintainer.stderr()).unwrap();
    }
    let (read_after, rows_after, files_after) = python_read(&moto.endpoint, &uri, a.reads);
    assert_eq!(rows_after, rows_before, "compaction changes no row");
    let (dup_after, checked_after) = redeliveries(&settings, &slots, a.units, a.kafka_partitions).await;
    let mb_read = totals["bytes_read"] as f64 / 1e6;
    println!(
        "{}",
        json!({"files_before": files_before, "files_after": files_after, "rows": rows_after,
               "compaction": {"partitions": days, "seconds": (seconds * 10.0).round() / 10.0,
                              "mb_read": mb_read, "mb_written": totals["bytes_written"] as f64 / 1e6,
                              "mb_per_s": (mb_read / seconds * 10.0).round() / 10.0,
                              "mean_partition_mb": bytes as f64 / 1e6 / days as f64,
                              "peak_rss_mib": rss as f64 / (1024.0 * 1024.0), "target_mb": a.target_mb},
               "python_read_s": {"before": read_before, "after": read_after},
               "redelivery_ms": {"before": dup_before, "after": dup_after},
               "files_checked": {"before": checked_before, "after": checked_after}})
    );
    println!(
        "{files_before} files → {files_after}; compaction {:.1} MB/s ({mb_read:.0} MB in {seconds:.1} s, {days} partitions), peak RSS {:.0} MiB with a {} MB target; Python deltalake full read {:.2} s → {:.2} s ({:.1}x faster); a redelivery's duplicate check {:.1} ms → {:.1} ms ({:.2}x)",
        mb_read / seconds,
        rss as f64 / (1024.0 * 1024.0),
        a.target_mb,
        read_before,
        read_after,
        read_before / read_after,
        dup_before,
        dup_after,
        dup_after / dup_before
    );
}
