//! The enricher's handler: find the landed objects a trigger names, enrich each, write the enriched object.
//!
//! Per object: stream-decode the gzip NDJSON in chunks of `CHUNK_RECORDS`, validate each line (bad ones to
//! quarantine), look up the chunk's cell-days (cache first, then batched requests), add the weather fields, and
//! gzip the lines into the output. The quarantine object is written before the enriched object, and the enriched
//! object is written create-only and checked for first: a redelivered event finds it and does nothing, and no
//! retry can skip the quarantine. Weather that cannot be had flags the record (`weather_status`), never fails it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{NaiveDate, Utc};
use fleetlake_aws::quarantine::{QuarantineLine, QuarantineParts, QuarantineWriter};
use fleetlake_aws::s3::{GzipUpload, ObjectLines, PutOutcome, S3Store};
use fleetlake_aws::s3event::ObjectRef;
use fleetlake_core::enrich::{prepare, write_enriched, LineSource, Pending, WeatherStatus, STAGE};
use fleetlake_core::fault::Fault;
use fleetlake_core::lake::{enriched_key, key_date, quarantine_source_name, BatchName};
use fleetlake_core::ndjson::{Line, MAX_LINE_BYTES};
use fleetlake_runner::{Invocation, ObjectHandler, Runner};
use fleetlake_weather::{WeatherClient, WeatherStats};
use serde_json::json;
use tracing::{info, instrument};

use crate::config::Config;

/// Objects enriched at once within one invocation.
const OBJECT_CONCURRENCY: usize = 4;

/// User metadata of an enriched object: the ETag of the landed object it was made from.
const SOURCE_ETAG: &str = "source-etag";

/// Clients and configuration built once at init; the weather cache lives as long as the execution environment.
#[derive(Debug)]
pub(crate) struct Deps {
    config: Config,
    store: S3Store,
    quarantine: QuarantineWriter,
    weather: WeatherClient,
    /// The weather client's counters when the current invocation began.
    weather_at_start: Mutex<WeatherStats>,
}

impl Deps {
    pub(crate) fn new(config: Config, s3: aws_sdk_s3::Client) -> Result<Self, reqwest::Error> {
        let store = S3Store::new(s3, config.lake.bucket.as_str());
        let quarantine = QuarantineWriter::new(store.clone(), config.lake.quarantine_prefix.clone(), STAGE);
        let weather = WeatherClient::new(config.weather.clone())?;
        Ok(Self { config, store, quarantine, weather, weather_at_start: Mutex::new(WeatherStats::default()) })
    }

    /// The runner: objects on up to `OBJECT_CONCURRENCY` tasks (decoding and gzip are CPU work: tasks spread it
    /// over the cores Lambda gives larger memory sizes); unreadable objects quarantined by reference.
    pub(crate) fn runner(&self) -> Runner {
        Runner::new(STAGE).quarantine(self.quarantine.clone()).concurrency(OBJECT_CONCURRENCY)
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
    /// The landed object was replaced after the event was sent: the event of the new version enriches it.
    Superseded,
}

impl ObjectHandler for Deps {
    type Error = fleetlake_aws::Error;

    /// Landed positions objects of the lake, each on its own; anything else is not ours.
    fn group(&self, obj: &ObjectRef) -> Option<String> {
        source_rel(&self.config, obj).map(|_| obj.key.clone())
    }

    fn begin(&'static self, _invocation: &Invocation) {
        *self.weather_at_start.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = self.weather.stats();
    }

    fn end(&'static self, invocation: &Invocation) {
        let before = *self.weather_at_start.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let after = self.weather.stats();
        invocation.add("weather_requests", after.requests - before.requests);
        invocation.add("weather_cache_hits", after.cache_hits - before.cache_hits);
        invocation.add("weather_failed_requests", after.failed_requests - before.failed_requests);
        invocation.add("weather_short_circuited", after.short_circuited - before.short_circuited);
    }

    async fn process(
        &'static self,
        objects: Vec<ObjectRef>,
        invocation: Arc<Invocation>,
    ) -> Vec<Result<(), Self::Error>> {
        let mut results = Vec::with_capacity(objects.len());
        for obj in &objects {
            let outcome = process(obj, self, Some(invocation.deadline())).await;
            results.push(outcome.map(|o| match o {
                Outcome::Enriched { records, degraded, quarantined } => {
                    invocation.add("objects_enriched", 1);
                    invocation.add("records_enriched", records);
                    invocation.add("records_degraded", degraded);
                    invocation.add("records_quarantined", quarantined);
                }
                Outcome::AlreadyEnriched => invocation.add("objects_already_enriched", 1),
                Outcome::Superseded => invocation.add("objects_superseded", 1),
            }));
        }
        results
    }
}

/// The key below `landing/locations/` of a landed positions object of the lake, or `None`.
fn source_rel<'a>(cfg: &Config, obj: &'a ObjectRef) -> Option<&'a str> {
    let rel = obj.key.strip_prefix(cfg.lake.landing_prefix.as_str())?.strip_prefix("locations/")?;
    (obj.bucket == cfg.lake.bucket.as_str() && rel.ends_with(".ndjson.gz")).then_some(rel)
}

#[instrument(skip(deps, deadline), fields(key = %obj.key))]
async fn process(obj: &ObjectRef, deps: &Deps, deadline: Option<Instant>) -> Result<Outcome, fleetlake_aws::Error> {
    let cfg = &deps.config;
    let Some(rel) = source_rel(cfg, obj) else {
        // group() let only these through.
        return Err(fleetlake_aws::Error::NotFound { bucket: obj.bucket.clone(), key: obj.key.clone() });
    };
    let out_key = enriched_key(&cfg.enriched_prefix, "locations", rel);
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
    let source_name = quarantine_source_name(&obj.key, obj.etag.as_deref());

    // Read exactly the version the event named: content replaced since is the later event's to enrich, and its
    // lines must not be written under this event's identity. Gone or not gzip: a permanent error, which the
    // runner quarantines by reference.
    let mut lines = match deps.store.gzip_lines(&obj.key, obj.etag.as_deref()).await {
        Err(fleetlake_aws::Error::Superseded { .. }) => {
            info!("the object was replaced since this event; the newer event enriches it");
            return Ok(Outcome::Superseded);
        }
        read => read?,
    };
    // The enriched object streams out in multipart parts as chunks are enriched; it becomes visible only when
    // completed, after the quarantine parts are written.
    let meta: Vec<(&str, &str)> = obj.etag.as_deref().map(|e| (SOURCE_ETAG, e)).into_iter().collect();
    let mut out = GzipUpload::new(&deps.store, &out_key, "application/gzip", &meta, !replace, cfg.output_part_bytes);
    let mut bad = QuarantineParts::new(&deps.quarantine, dt, source_name, cfg.quarantine_part_bytes);
    let streamed = enrich_lines(obj, deps, &mut lines, &mut out, &mut bad, today, deadline).await;
    let (records, degraded) = match streamed {
        Ok(Ok(counts)) => counts,
        Ok(Err(unreadable_error)) => {
            out.abort().await;
            return Err(unreadable_error);
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
    bad: &mut QuarantineParts,
    today: NaiveDate,
    deadline: Option<Instant>,
) -> Result<Result<(u64, u64), fleetlake_aws::Error>, fleetlake_aws::Error> {
    let cfg = &deps.config;
    let mut pending = Vec::with_capacity(cfg.chunk_records);
    let mut pending_bytes = 0;
    let (mut records, mut degraded) = (0_u64, 0_u64);
    let window = Some((cfg.lake.event_window, Utc::now().timestamp_micros()));
    // Kafka lineage is believed only within the batch the lander named this object after.
    let batch = BatchName::from_key(&obj.key);
    loop {
        let next = match lines.next_line().await {
            Ok(next) => next,
            Err(e) if e.fault() == Fault::Permanent => return Ok(Err(e)),
            Err(e) => return Err(e),
        };
        let done = next.is_none();
        match next {
            Some(Line::Text { number, bytes }) => {
                let src = LineSource { key: &obj.key, etag: obj.etag.as_deref(), line: number, batch: batch.as_ref() };
                match prepare(&bytes, src, cfg.weather.grid_deg, window) {
                    Ok(p) => {
                        pending_bytes += p.line.len();
                        pending.push(p);
                    }
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
        let full = pending.len() >= cfg.chunk_records || pending_bytes >= cfg.chunk_bytes;
        if full || (done && !pending.is_empty()) {
            pending_bytes = 0;
            let (n, d) = enrich_chunk(&mut pending, out, obj, &deps.weather, today, deadline).await?;
            records += n;
            degraded += d;
        }
        if done {
            return Ok(Ok((records, degraded)));
        }
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
) -> Result<(u64, u64), fleetlake_aws::Error> {
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

#[cfg(test)]
mod tests {
    use fleetlake_aws::s3event::{parse_trigger, Trigger};
    use serde_json::Value;

    const SAMPLES: [(&str, &str); 3] = [
        ("s3-direct.json", include_str!("../../../events/weather-enricher/s3-direct.json")),
        ("sqs.json", include_str!("../../../events/weather-enricher/sqs.json")),
        ("eventbridge.json", include_str!("../../../events/weather-enricher/eventbridge.json")),
    ];

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
