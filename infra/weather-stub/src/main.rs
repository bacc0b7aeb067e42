//! `weather-stub`: serves the Open-Meteo-compatible stub on loopback.
//!
//! Flags: `--host 127.0.0.1 --port 8089` (0 picks a free port), `--latency-ms N`, `--failure-rate F`,
//! `--failure-status S`, `--seed N`, `--rate-limit-per-minute N`, `--api-key K`, `--min-date D`, `--max-date D`.
//! Prints `weather-stub listening on http://HOST:PORT` on stdout once it accepts connections.

// A test and benchmark tool, not Lambda code: a failed setup stops it with its reason.
#![allow(clippy::expect_used, clippy::panic, clippy::string_slice)]

use std::io::Write;

use chrono::NaiveDate;
use weather_stub::{Options, Stub};

fn parse_args() -> Result<(String, u16, Options), String> {
    let mut args = std::env::args().skip(1);
    let (mut host, mut port, mut options) = ("127.0.0.1".to_owned(), 8089_u16, Options::default());
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        let date = |v: &str| NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|e| bad(&e));
        match flag.as_str() {
            "--host" => host = value.clone(),
            "--port" => port = value.parse().map_err(|e| bad(&e))?,
            "--latency-ms" => options.faults.latency_ms = value.parse().map_err(|e| bad(&e))?,
            "--failure-rate" => options.faults.failure_rate = value.parse().map_err(|e| bad(&e))?,
            "--failure-status" => options.faults.failure_status = value.parse().map_err(|e| bad(&e))?,
            "--seed" => options.faults.seed = value.parse().map_err(|e| bad(&e))?,
            "--rate-limit-per-minute" => options.faults.rate_limit_per_minute = value.parse().map_err(|e| bad(&e))?,
            "--api-key" => options.api_key = Some(value.clone()),
            "--min-date" => options.min_date = date(&value)?,
            "--max-date" => options.max_date = date(&value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok((host, port, options))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (host, port, options) = parse_args()?;
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "weather-stub listening on http://{addr}")?;
        out.flush()?;
    }
    axum::serve(listener, Stub::new(options).router()).await?;
    Ok(())
}
