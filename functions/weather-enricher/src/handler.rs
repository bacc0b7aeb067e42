//! The enricher's handler: find the landed objects a trigger names, enrich each, write the enriched object.
//!
//! Per object: stream-decode the gzip NDJSON in chunks of `CHUNK_RECORDS`, validate each line (bad ones to
//! quarantine), look up the chunk's cell-days (cache first, then batched requests), add the weather fields, and
//! gzip the lines into the output. The quarantine object is written before the enriched object, and the enriched
//! object is written create-only and checked for first: a redelivered event finds it and does nothing, and no
//! retry can skip the quarantine. Weather that cannot be had flags the record (`weather_status`), never fails it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use fleetlake::enrich::{key_date, prepare, write_enriched, LineSource, Pending, WeatherStatus, STAGE};
use fleetlake::error::Fault;
use fleetlake::ndjson::{Line, MAX_LINE_BYTES};
use fleetlake::quarantine::{QuarantineLine, QuarantineWriter};
use fleetlake::s3::{GzipUpload, ObjectLines, PutOutcome, S3Store};
use fleetlake::s3event::{parse_trigger, EventError, ObjectRef, Trigger};
use fleetlake::telemetry::Metrics;
use fleetlake::weather::{WeatherClient, WeatherStats};
use futures::StreamExt;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{error, info, instrument, warn};

use crate::config::Config;

/// Objects enriched at once within one invocation.
const OBJECT_CONCURRENCY: usize = 4;

/// User metadata of an enriched object: the ETag of the landed object it was made from.
const SOURCE_ETAG: &str = "source-etag";

/// The quarantine object's name for a landed object: its path below the `dt=` folder, without `.ndjson.gz`, and
/// the source ETag when known — so two files of one name in different folders, or a file dropped again with
/// other content, each keep their own quarantine object.
fn quarantine_name(rel: &str, etag: Option<&str>) -> String {
    let below_dt = match rel.split_once('/') {
        Some((first, rest)) if first.starts_with("dt=") => rest,
        _ => rel,
    };
    let name = below_dt.trim_end_matches(".ndjson.gz");
    match etag {
        Some(etag) => format!("{name}.{}", &etag[..etag.len().min(16)]),
        None => name.to_owned(),
    }
}

/// Clients and configuration built once at init; the weather cache lives as long as the execution environment.
#[derive(Debug)]
pub(crate) struct Deps {
    config: Config,
    store: S3Store,
    quarantine: QuarantineWriter,
    weather: WeatherClient,
}

impl Deps {
    pub(crate) fn new(config: Config, s3: aws_sdk_s3::Client) -> Result<Self, reqwest::Error> {
        let store = S3Store::new(s3, config.lake.bucket.as_str());
        let quarantine = QuarantineWriter::new(store.clone(), config.lake.quarantine_prefix.clone(), STAGE);
        let weather = WeatherClient::new(config.weather.clone())?;
        Ok(Self { config, store, quarantine, weather })
    }
}

/// The invocation failed: an unrecognised event (permanent) or an S3 failure (retryable).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandlerError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Lake(#[from] fleetlake::Error),
}

impl From<HandlerError> for Diagnostic {
    fn from(e: HandlerError) -> Self {
        let fault = match &e {
            HandlerError::Lake(inner) => inner.fault(),
            HandlerError::Event(_) => Fault::Permanent,
        };
        Diagnostic { error_type: fault.error_type().to_owned(), error_message: e.to_string() }
    }
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Enriched {
        records: u64,
        degraded: u64,
        quarantined: u64,
    },
    AlreadyEnriched,
    /// Not a landed positions object of the lake (logged).
    Ignored,
    /// Gone or not gzip: quarantined by reference.
    Unreadable,
}

/// Counts of one invocation, returned for direct and EventBridge triggers.
#[derive(Debug, Default, Serialize)]
struct Totals {
    objects_enriched: u64,
    objects_already_enriched: u64,
    objects_ignored: u64,
    objects_unreadable: u64,
    records_enriched: u64,
    records_degraded: u64,
    records_quarantined: u64,
}

impl Totals {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Enriched { records, degraded, quarantined } => {
                self.objects_enriched += 1;
                self.records_enriched += records;
                self.records_degraded += degraded;
                self.records_quarantined += quarantined;
            }
            Outcome::AlreadyEnriched => self.objects_already_enriched += 1,
            Outcome::Ignored => self.objects_ignored += 1,
            Outcome::Unreadable => self.objects_unreadable += 1,
        }
    }
}

#[instrument(skip_all)]
pub(crate) async fn handle(event: LambdaEvent<Value>, deps: &'static Deps) -> Result<Value, HandlerError> {
    let mut metrics = Metrics::new(STAGE);
    metrics.property("requestId", event.context.request_id.clone());
    let weather_before = deps.weather.stats();
    let trigger = parse_trigger(&event.payload).inspect_err(|e| error!(error = %e, "event not understood"))?;
    // The invocation's deadline, as an Instant: no weather retry starts that could not finish before it.
    let left_ms = event.context.deadline.saturating_sub(Utc::now().timestamp_millis().max(0) as u64);
    let deadline = (event.context.deadline > 0).then(|| Instant::now() + Duration::from_millis(left_ms));
    let mut totals = Totals::default();
    let result = match trigger {
        Trigger::Direct(objects) | Trigger::EventBridge(objects) => {
            let outcomes = process_all(objects.iter(), deps, deadline).await;
            let mut first_error = None;
            for outcome in outcomes {
                match outcome {
                    Ok(o) => totals.add(&o),
                    Err(e) => first_error = first_error.or(Some(e)),
                }
            }
            match first_error {
                Some(e) => Err(HandlerError::from(e)),
                None => Ok(serde_json::to_value(&totals).unwrap_or_default()),
            }
        }
        Trigger::Sqs(messages) => {
            let mut failures = Vec::new();
            for msg in messages {
                let objects = match msg.objects {
                    Ok(objects) => objects,
                    Err(reason) => {
                        // Not an S3 notification: retried until it reaches the dead-letter queue, never dropped.
                        error!(message_id = %msg.message_id, reason, "SQS message not understood");
                        failures.push(msg.message_id);
                        continue;
                    }
                };
                let mut failed = false;
                for outcome in process_all(objects.iter(), deps, deadline).await {
                    match outcome {
                        Ok(o) => totals.add(&o),
                        Err(_) => failed = true,
                    }
                }
                if failed {
                    failures.push(msg.message_id);
                }
            }
            metrics.add("messages_failed", failures.len() as u64);
            Ok(
                json!({"batchItemFailures": failures.iter().map(|id| json!({"itemIdentifier": id})).collect::<Vec<_>>()}),
            )
        }
    };
    emit_metrics(&mut metrics, &totals, weather_before, deps.weather.stats());
    info!(?totals, "invocation done");
    result
}

fn emit_metrics(metrics: &mut Metrics, t: &Totals, before: WeatherStats, after: WeatherStats) {
    metrics.add("objects_enriched", t.objects_enriched);
    metrics.add("objects_already_enriched", t.objects_already_enriched);
    metrics.add("objects_unreadable", t.objects_unreadable);
    metrics.add("objects_ignored", t.objects_ignored);
    metrics.add("records_enriched", t.records_enriched);
    metrics.add("records_degraded", t.records_degraded);
    metrics.add("records_quarantined", t.records_quarantined);
    metrics.add("weather_requests", after.requests - before.requests);
    metrics.add("weather_cache_hits", after.cache_hits - before.cache_hits);
    metrics.add("weather_failed_requests", after.failed_requests - before.failed_requests);
    metrics.add("weather_short_circuited", after.short_circuited - before.short_circuited);
    metrics.emit();
}

/// Enriches objects on up to `OBJECT_CONCURRENCY` tasks (decoding and gzip are CPU work: tasks spread it over
/// the cores Lambda gives larger memory sizes).
async fn process_all<'a>(
    objects: impl Iterator<Item = &'a ObjectRef>,
    deps: &'static Deps,
    deadline: Option<Instant>,
) -> Vec<Result<Outcome, fleetlake::Error>> {
    futures::stream::iter(objects.cloned())
        .map(|obj| async move {
            tokio::spawn(async move { process(&obj, deps, deadline).await }).await.unwrap_or_else(|e| {
                // A panic in one object's task: report it as a failure of that object, which Lambda retries.
                Err(fleetlake::Error::Encode(std::io::Error::other(format!("enrichment task failed: {e}"))))
            })
        })
        .buffered(OBJECT_CONCURRENCY)
        .collect()
        .await
}

#[instrument(skip(deps, deadline), fields(key = %obj.key))]
async fn process(obj: &ObjectRef, deps: &Deps, deadline: Option<Instant>) -> Result<Outcome, fleetlake::Error> {
    let cfg = &deps.config;
    let source_prefix = format!("{}locations/", cfg.lake.landing_prefix);
    let rel = match obj.key.strip_prefix(&source_prefix) {
        Some(rel) if obj.bucket == cfg.lake.bucket.as_str() && rel.ends_with(".ndjson.gz") => rel,
        _ => {
            warn!(bucket = %obj.bucket, expected = %source_prefix, "not a landed positions object of the lake; ignored");
            return Ok(Outcome::Ignored);
        }
    };
    let out_key = format!("{}locations/{rel}", cfg.enriched_prefix);
    // Done already, for this very content? The enriched object records the ETag of the object it came from; a
    // file dropped again under the same key with other content is enriched again and replaces it.
    let replace = match deps.store.metadata(&out_key).await? {
        Some(meta) if obj.etag.is_none() || meta.get(SOURCE_ETAG) == obj.etag.as_ref() => {
            info!(out_key, "already enriched");
            return Ok(Outcome::AlreadyEnriched);
        }
        Some(_) => true,
        None => false,
    };
    let today = Utc::now().date_naive();
    let dt = key_date(&obj.key).unwrap_or(today);
    let source_name = quarantine_name(rel, obj.etag.as_deref());

    let mut lines = match deps.store.gzip_lines(&obj.key).await {
        Ok(lines) => lines,
        Err(e) if e.fault() == Fault::Permanent => return unreadable(obj, &e, dt, &source_name, deps).await,
        Err(e) => return Err(e),
    };
    // The enriched object streams out in multipart parts as chunks are enriched; it becomes visible only when
    // completed, after the quarantine parts are written.
    let meta: Vec<(&str, &str)> = obj.etag.as_deref().map(|e| (SOURCE_ETAG, e)).into_iter().collect();
    let mut out = GzipUpload::new(&deps.store, &out_key, "application/gzip", &meta, !replace, cfg.output_part_bytes);
    let mut bad = QuarantineParts::new(&deps.quarantine, dt, &source_name, cfg.quarantine_part_bytes);
    let streamed = enrich_lines(obj, deps, &mut lines, &mut out, &mut bad, today, deadline).await;
    let (records, degraded) = match streamed {
        Ok(Ok(counts)) => counts,
        Ok(Err(unreadable_error)) => {
            out.abort().await;
            return unreadable(obj, &unreadable_error, dt, &source_name, deps).await;
        }
        Err(e) => {
            out.abort().await;
            return Err(e);
        }
    };
    // Quarantine first: once the enriched object exists a redelivery does nothing, so it must come last.
    let quarantined = match bad.finish().await {
        Ok(n) => n,
        Err(e) => {
            out.abort().await;
            return Err(e);
        }
    };
    if records > 0 {
        let outcome = out.finish().await?;
        info!(out_key, records, degraded, quarantined, already = outcome == PutOutcome::AlreadyExists, "enriched");
    } else {
        out.abort().await;
    }
    Ok(Outcome::Enriched { records, degraded, quarantined })
}

/// Reads, validates and enriches every line of an object into `out`; bad lines go to `bad`. The inner error is
/// an object that turned out unreadable (not gzip, truncated); the outer one an environment failure.
async fn enrich_lines(
    obj: &ObjectRef,
    deps: &Deps,
    lines: &mut ObjectLines,
    out: &mut GzipUpload,
    bad: &mut QuarantineParts<'_>,
    today: NaiveDate,
    deadline: Option<Instant>,
) -> Result<Result<(u64, u64), fleetlake::Error>, fleetlake::Error> {
    let cfg = &deps.config;
    let mut pending = Vec::with_capacity(cfg.chunk_records);
    let (mut records, mut degraded) = (0_u64, 0_u64);
    loop {
        let next = match lines.next_line().await {
            Ok(next) => next,
            Err(e) if e.fault() == Fault::Permanent => return Ok(Err(e)),
            Err(e) => return Err(e),
        };
        let done = next.is_none();
        match next {
            Some(Line::Text { number, bytes }) => {
                let src = LineSource { key: &obj.key, etag: obj.etag.as_deref(), line: number };
                match prepare(&bytes, src, cfg.weather.grid_deg) {
                    Ok(p) => pending.push(p),
                    Err(q) => bad.push(*q),
                }
            }
            Some(Line::TooLong { number, head }) => bad.push(QuarantineLine::new(
                format!("line longer than {MAX_LINE_BYTES} bytes (raw holds its start)"),
                STAGE,
                &json!({"key": obj.key, "line": number}),
                Some(String::from_utf8_lossy(&head).into_owned()),
            )),
            None => {}
        }
        bad.flush_if_full().await?;
        if pending.len() >= cfg.chunk_records || (done && !pending.is_empty()) {
            let (n, d) = enrich_chunk(&mut pending, out, obj, &deps.weather, today, deadline).await?;
            records += n;
            degraded += d;
        }
        if done {
            return Ok(Ok((records, degraded)));
        }
    }
}

/// The quarantine lines of one object, written in parts of about `part_bytes` so that an object full of bad lines
/// never sits in memory whole: `<name>.ndjson`, then `<name>.part-2.ndjson`, `<name>.part-3.ndjson`, … The cut
/// points depend only on the input, so a retry writes the same parts (create-only, as every quarantine object).
struct QuarantineParts<'a> {
    writer: &'a QuarantineWriter,
    dt: NaiveDate,
    name: &'a str,
    part_bytes: usize,
    lines: Vec<QuarantineLine>,
    bytes: usize,
    parts: u32,
    total: u64,
}

impl<'a> QuarantineParts<'a> {
    fn new(writer: &'a QuarantineWriter, dt: NaiveDate, name: &'a str, part_bytes: usize) -> Self {
        Self { writer, dt, name, part_bytes, lines: Vec::new(), bytes: 0, parts: 0, total: 0 }
    }

    fn push(&mut self, line: QuarantineLine) {
        self.bytes += line.reason.len() + line.raw.as_ref().map_or(0, String::len) + 64;
        self.lines.push(line);
    }

    async fn flush_if_full(&mut self) -> Result<(), fleetlake::Error> {
        if self.bytes >= self.part_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), fleetlake::Error> {
        let name = match self.parts {
            0 => self.name.to_owned(),
            n => format!("{}.part-{}", self.name, n + 1),
        };
        self.writer.write(self.dt, &name, &self.lines).await?;
        self.parts += 1;
        self.total += self.lines.len() as u64;
        self.lines.clear();
        self.bytes = 0;
        Ok(())
    }

    /// Writes what is left; returns how many lines were quarantined in all.
    async fn finish(mut self) -> Result<u64, fleetlake::Error> {
        if !self.lines.is_empty() {
            self.flush().await?;
        }
        Ok(self.total)
    }
}

/// Looks up the weather of a chunk, adds it, and gzips the lines into `out`; returns (records, degraded).
async fn enrich_chunk(
    pending: &mut Vec<Pending>,
    out: &mut GzipUpload,
    obj: &ObjectRef,
    weather: &WeatherClient,
    today: NaiveDate,
    deadline: Option<Instant>,
) -> Result<(u64, u64), fleetlake::Error> {
    let cells: BTreeSet<_> = pending.iter().map(|p| p.cell).collect();
    let answers = weather.lookup(&cells, today, deadline).await;
    let mut text = Vec::with_capacity(pending.iter().map(|p| p.line.len() + 160).sum());
    let mut degraded = 0;
    for p in pending.iter() {
        if write_enriched(&mut text, p, answers.get(&p.cell), &obj.key, obj.etag.as_deref()) != WeatherStatus::Ok {
            degraded += 1;
        }
    }
    out.write(&text).await?;
    let n = pending.len() as u64;
    pending.clear();
    Ok((n, degraded))
}

/// A landed object that cannot be read (gone, or not gzip): recorded in quarantine with the reason, so it is
/// reported and traceable; retrying would not help.
async fn unreadable(
    obj: &ObjectRef,
    e: &fleetlake::Error,
    dt: NaiveDate,
    source_name: &str,
    deps: &Deps,
) -> Result<Outcome, fleetlake::Error> {
    error!(error = %e, "landed object cannot be read; quarantined by reference");
    let line =
        QuarantineLine::new(format!("object unreadable: {e}"), STAGE, &json!({"key": obj.key, "etag": obj.etag}), None);
    deps.quarantine.write(dt, source_name, std::slice::from_ref(&line)).await?;
    Ok(Outcome::Unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: [(&str, &str); 3] = [
        ("s3-direct.json", include_str!("../../../events/weather-enricher/s3-direct.json")),
        ("sqs.json", include_str!("../../../events/weather-enricher/sqs.json")),
        ("eventbridge.json", include_str!("../../../events/weather-enricher/eventbridge.json")),
    ];

    #[test]
    fn quarantine_names_keep_folders_and_content_apart() {
        assert_eq!(quarantine_name("dt=2026-11-24/fleet.locations-0-1-9.ndjson.gz", None), "fleet.locations-0-1-9");
        assert_eq!(
            quarantine_name("dt=2026-11-24/a/x.ndjson.gz", Some("0ad3c6d1b1f2e3d4c5b6a7980a1b2c3d")),
            "a/x.0ad3c6d1b1f2e3d4"
        );
        assert_eq!(quarantine_name("b/x.ndjson.gz", Some("e1")), "b/x.e1");
    }

    #[test]
    fn every_sample_event_names_the_same_landed_object() {
        for (name, text) in SAMPLES {
            let event: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let objects = match parse_trigger(&event).unwrap() {
                Trigger::Direct(o) | Trigger::EventBridge(o) => o,
                Trigger::Sqs(m) => m.into_iter().flat_map(|m| m.objects.unwrap()).collect(),
            };
            let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
            assert_eq!(keys, ["landing/locations/dt=2026-11-24/fleet.locations-0-1200-1202.ndjson.gz"], "{name}");
        }
    }
}
