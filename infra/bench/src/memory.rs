//! `bench-memory`: peak resident memory of weather-enricher and delta-writer for one object of `--small-mb` and one
//! of `--large-mb` (decompressed), in two shapes: long lines that are valid (about 240 KB each, mostly unknown
//! fields that travel to `_extra`), and long lines that are all refused (a quarantine-only object). Not a test: it
//! measures. Memory must be bounded in bytes, so the large object should need about what the small one needs.
//!
//! usage: bench-memory --enricher PATH --writer PATH [--small-mb 50] [--large-mb 500] [--only FUNCTION]
//!                     [--env K=V ...]
//! Each measurement is a fresh function process (release binary behind a Lambda runtime API, moto's S3, the
//! weather stub), one S3 notification for one object; peak RSS is the process's `VmHWM` afterwards.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a command-line tool that reports on stdout

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use fleetlake_testkit::{LambdaHarness, Moto};
use serde_json::{json, Value};
use weather_stub::Options;

struct Args {
    enricher: PathBuf,
    writer: PathBuf,
    small_mb: usize,
    large_mb: usize,
    /// `--env K=V`: more environment for the functions (e.g. allocator settings), repeatable.
    env: Vec<(String, String)>,
    /// `--only NAME`: measure one function.
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        enricher: PathBuf::new(),
        writer: PathBuf::new(),
        small_mb: 50,
        large_mb: 500,
        env: Vec::new(),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--enricher" => a.enricher = PathBuf::from(&v),
            "--writer" => a.writer = PathBuf::from(&v),
            "--small-mb" => a.small_mb = n(),
            "--large-mb" => a.large_mb = n(),
            "--env" => {
                let (k, v) = v.split_once('=').unwrap_or_else(|| panic!("--env {v}: not K=V"));
                a.env.push((k.to_owned(), v.to_owned()));
            }
            "--only" => a.only = Some(v),
            other => panic!("unknown flag {other}"),
        }
    }
    for bin in [&a.enricher, &a.writer] {
        assert!(bin.exists(), "{} does not exist (make bench-memory builds it)", bin.display());
    }
    a
}

/// The two shapes of object measured.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// Every line a valid position with 60 unknown text fields of 4,000 characters.
    LongLines,
    /// The same lines with a latitude beyond the pole: every one refused, quarantined with its text.
    QuarantineOnly,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::LongLines => "long-lines",
            Shape::QuarantineOnly => "quarantine-only",
        }
    }
}

/// Unknown fields per line and characters per field (the bronze limit on a text is 4,096 bytes).
const FIELDS: usize = 60;
const FIELD_CHARS: usize = 4_000;

/// A gzip object of about `mb` MB decompressed; returns it and its line count. Lines are dated yesterday (within
/// the default event-time window of a line without lineage) and spread over ten weather cells.
fn object(shape: Shape, mb: usize) -> (Vec<u8>, usize) {
    let day = (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%d").to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let (mut bytes, mut lines) = (0, 0);
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ mb as u64;
    while bytes < mb * 1_000_000 {
        let lat = if shape == Shape::QuarantineOnly { 91.5 } else { 40.0 + (lines % 10) as f64 };
        let mut line = json!({
            "transport_unit_id": format!("TU-{:06}", lines % 1000), "ts": format!("{day}T{:02}:15:00Z", lines % 24),
            "lat": lat, "lon": 8.5, "transport_type": "maritime", "speed_kmh": 20.5,
        });
        for f in 0..FIELDS {
            // Hex digits of a pseudo-random stream: text that compresses about 2:1, as real payloads do, so the
            // compressed buffers (output parts, row groups) fill as they would, not 70 times later.
            let text: String = (0..FIELD_CHARS)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    char::from(b"0123456789abcdef"[(state & 15) as usize])
                })
                .collect();
            line[format!("note_{f}")] = json!(text);
        }
        let mut text = serde_json::to_vec(&line).unwrap();
        text.push(b'\n');
        bytes += text.len();
        lines += 1;
        gz.write_all(&text).unwrap();
    }
    (gz.finish().unwrap(), lines)
}

fn s3_event(bucket: &str, key: &str) -> Value {
    json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                        "s3": {"bucket": {"name": bucket}, "object": {"key": key.replace('=', "%3D")}}}]})
}

/// A metric of the invocation's EMF line.
fn metric(out: &fleetlake_testkit::Invocation, name: &str) -> u64 {
    out.stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|m| m.get(name).and_then(Value::as_u64))
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let a = args();
    let moto = Moto::start().await;
    let bucket = moto.bucket("bench-memory").await;
    let s3 = moto.s3();
    let (_stub, weather_url) = weather_stub::spawn(Options::default()).await.expect("weather stub");
    let stack: Value = serde_json::from_str(include_str!("../../local/stack.json")).unwrap();
    let mut summary = Vec::new();
    for (function, binary, zone) in
        [("weather-enricher", &a.enricher, "landing"), ("delta-writer", &a.writer, "enriched")]
    {
        if a.only.as_ref().is_some_and(|only| only != function) {
            continue;
        }
        for shape in [Shape::LongLines, Shape::QuarantineOnly] {
            let mut peaks = Vec::new();
            for mb in [a.small_mb, a.large_mb] {
                let (body, lines) = object(shape, mb);
                let day = (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%d");
                let key = format!("{zone}/locations/dt={day}/{function}-{}-{mb}mb.ndjson.gz", shape.name());
                let gz_mb = body.len() as f64 / 1e6;
                s3.put_object().bucket(&bucket).key(&key).body(body.into()).send().await.expect("upload");
                let mut env = moto.env();
                for (k, v) in
                    [("LAKE_BUCKET", bucket.as_str()), ("WEATHER_API_URL", &weather_url), ("RUST_LOG", "warn")]
                {
                    env.push((k.to_owned(), v.to_owned()));
                }
                // The function's own variables of the local stack (the template's, e.g. delta-writer's upload budget).
                let own = stack["functions"].as_array().unwrap().iter().find(|f| f["binary"] == function).unwrap();
                for (k, v) in own["environment"].as_object().unwrap() {
                    env.push((k.clone(), v.as_str().unwrap_or_default().to_owned()));
                }
                env.extend(a.env.iter().cloned());
                let mut f = LambdaHarness::start(binary, function, &env).await;
                let started = Instant::now();
                let out = f.invoke(&s3_event(&bucket, &key)).await;
                let wall = started.elapsed().as_secs_f64();
                assert!(out.outcome.is_ok(), "{function} failed: {:?}\n{}", out.outcome, f.stderr());
                let (good, bad) = match function {
                    "weather-enricher" => (metric(&out, "records_enriched"), metric(&out, "records_quarantined")),
                    _ => (metric(&out, "records_written"), metric(&out, "records_quarantined")),
                };
                let want = if shape == Shape::LongLines { (lines as u64, 0) } else { (0, lines as u64) };
                assert_eq!((good, bad), want, "{function} {}: every line accounted for\n{}", shape.name(), f.stderr());
                let peak = f.peak_rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0);
                println!(
                    "{}",
                    json!({"function": function, "shape": shape.name(), "object_mb": mb, "gzip_mb": (gz_mb * 10.0).round() / 10.0,
                           "lines": lines, "wall_s": (wall * 100.0).round() / 100.0, "peak_rss_mib": (peak * 10.0).round() / 10.0})
                );
                peaks.push(peak);
            }
            summary.push((function, shape.name(), peaks[0], peaks[1]));
        }
    }
    println!("peak RSS, one object of {} MB and one of {} MB (decompressed):", a.small_mb, a.large_mb);
    for (function, shape, small, large) in summary {
        let ratio = large / small;
        let verdict = if ratio <= 1.2 { "met" } else { "NOT met" };
        println!(
            "  {function:<17} {shape:<16} {small:>7.1} MiB  {large:>7.1} MiB  {ratio:.2}x (target <= 1.2x: {verdict})"
        );
    }
}
