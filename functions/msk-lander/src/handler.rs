//! The MSK handler: split the batch per topic-partition, land each slice, write its objects.
//!
//! Record-level problems go to quarantine and never fail the batch (an MSK trigger retries a failed batch until
//! it succeeds or expires, so one bad record must not block its partition). Only environment failures — an S3
//! write that still fails after the SDK's retries — return an error, and Lambda retries the whole batch.
//! Retries are safe: object names derive from topic, partition and offsets, and objects are written create-only,
//! so a retried batch finds the objects of the first try in place and leaves them byte for byte as they were.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use fleetlake_aws::quarantine::QuarantineWriter;
use fleetlake_aws::s3::{PutOutcome, S3Store};
use fleetlake_core::config::LakeConfig;
use fleetlake_core::lake::landing_key;
use fleetlake_core::landing::{land_slice, KafkaMessage, LandedSlice, STAGE};
use fleetlake_core::ndjson::gzip_lines;
use fleetlake_runner::Invocation;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tracing::{info, instrument};

use crate::config::Config;
use crate::event::{MskEvent, MskRecord};

/// How many topic-partition slices are written at once.
const WRITE_CONCURRENCY: usize = 8;

/// Clients and configuration built once at init.
#[derive(Debug)]
pub(crate) struct Deps {
    config: Config,
    store: S3Store,
    quarantine: QuarantineWriter,
}

impl Deps {
    pub(crate) fn new(config: Config, s3: aws_sdk_s3::Client) -> Self {
        let LakeConfig { bucket, quarantine_prefix, .. } = &config.lake;
        let store = S3Store::new(s3, bucket.as_str());
        let quarantine = QuarantineWriter::new(store.clone(), quarantine_prefix.clone(), STAGE);
        Self { config, store, quarantine }
    }
}

/// What an invocation did; returned to the caller and mirrored in the metrics line.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Summary {
    records: u64,
    landed: u64,
    quarantined: u64,
    tombstones: u64,
    /// Landing objects found already written by an earlier try of this batch (and left untouched).
    already_landed: u64,
    /// Landing objects of this batch, whether written now or already there from an earlier try.
    objects: Vec<String>,
    quarantine_objects: Vec<String>,
}

/// Lands one MSK batch. Record problems are quarantined; an error here is the environment's (S3 unavailable) and
/// makes the runner fail the invocation, so Lambda retries the whole batch.
#[instrument(skip_all, fields(
    event_source = event.event_source.as_deref().unwrap_or_default(),
    cluster = event.event_source_arn.as_deref().unwrap_or_default(),
))]
pub(crate) async fn handle(
    event: MskEvent,
    deps: &'static Deps,
    invocation: Arc<Invocation>,
) -> Result<Summary, fleetlake_aws::Error> {
    let ingested_at = Utc::now();
    let slices: Vec<LandedSlice> = slice_messages(event)
        .into_iter()
        .filter_map(|msgs| land_slice(msgs, &deps.config.topics, ingested_at, deps.config.lake.event_window))
        .collect();

    let written: Vec<WrittenSlice> = futures::stream::iter(slices)
        .map(|slice| write_slice(slice, deps))
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_collect()
        .await?;

    let mut summary = Summary::default();
    for WrittenSlice { slice, landed, quarantine_key } in written {
        let n = (slice.lines.len() + slice.quarantined.len() + slice.tombstones) as u64;
        summary.records += n;
        summary.landed += slice.lines.len() as u64;
        summary.quarantined += slice.quarantined.len() as u64;
        summary.tombstones += slice.tombstones as u64;
        if let Some((key, outcome)) = landed {
            if outcome == PutOutcome::AlreadyExists {
                summary.already_landed += 1;
            }
            invocation
                .add(if outcome == PutOutcome::Created { "objects_written" } else { "objects_already_landed" }, 1);
            summary.objects.push(key);
        }
        summary.quarantine_objects.extend(quarantine_key);
    }
    summary.objects.sort();
    summary.quarantine_objects.sort();
    invocation.add("records_in", summary.records);
    invocation.add("records_landed", summary.landed);
    invocation.add("records_quarantined", summary.quarantined);
    invocation.add("tombstones_skipped", summary.tombstones);
    info!(
        records = summary.records,
        landed = summary.landed,
        quarantined = summary.quarantined,
        tombstones = summary.tombstones,
        "batch landed"
    );
    Ok(summary)
}

/// A slice and the objects written for it.
struct WrittenSlice {
    slice: LandedSlice,
    /// Landing object key and whether this invocation created it.
    landed: Option<(String, PutOutcome)>,
    quarantine_key: Option<String>,
}

/// Writes one slice: its landing object (if any record landed) and its quarantine object (if any was refused).
async fn write_slice(slice: LandedSlice, deps: &Deps) -> Result<WrittenSlice, fleetlake_aws::Error> {
    let landed = match (&slice.dataset, slice.lines.is_empty()) {
        (Some(dataset), false) => {
            let key = landing_key(&deps.config.lake.landing_prefix, dataset, slice.dt, &slice.name);
            let body = gzip_lines(slice.lines.iter().map(Vec::as_slice))?;
            let outcome = deps.store.put_if_absent(&key, body, "application/gzip").await?;
            info!(key = %key, records = slice.lines.len(), already_landed = outcome == PutOutcome::AlreadyExists, "landed slice");
            Some((key, outcome))
        }
        _ => None,
    };
    let quarantine_key = deps.quarantine.write(slice.dt, &slice.name.to_string(), &slice.quarantined).await?;
    Ok(WrittenSlice { slice, landed, quarantine_key })
}

/// Splits an MSK event into per-topic-partition message lists, in a stable order.
fn slice_messages(event: MskEvent) -> Vec<Vec<KafkaMessage>> {
    let mut slices: BTreeMap<(String, i64), Vec<KafkaMessage>> = BTreeMap::new();
    for (group, records) in event.records.unwrap_or_default() {
        for rec in records {
            let msg = to_message(&group, rec);
            slices.entry((msg.topic.clone(), msg.partition)).or_default().push(msg);
        }
    }
    slices.into_values().collect()
}

/// The MSK record's fields we use; the topic falls back to the `<topic>-<partition>` group key when absent.
fn to_message(group: &str, rec: MskRecord) -> KafkaMessage {
    let topic = rec.topic.unwrap_or_else(|| group.rsplit_once('-').map_or(group, |(t, _)| t).to_owned());
    KafkaMessage { topic, partition: rec.partition, offset: rec.offset, timestamp_ms: rec.timestamp, value: rec.value }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: [(&str, &str); 2] = [
        ("batch.json", include_str!("../../../events/msk-lander/batch.json")),
        ("locations.json", include_str!("../../../events/msk-lander/locations.json")),
    ];

    #[test]
    fn every_sample_event_deserialises() {
        for (name, text) in SAMPLES {
            let event: MskEvent = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!event.records.unwrap_or_default().is_empty(), "{name}");
        }
    }

    #[test]
    fn the_sample_batch_splits_per_topic_partition() {
        let event: MskEvent = serde_json::from_str(SAMPLES[0].1).unwrap();
        let slices = slice_messages(event);
        let names: Vec<(String, i64, Vec<i64>)> =
            slices.iter().map(|s| (s[0].topic.clone(), s[0].partition, s.iter().map(|m| m.offset).collect())).collect();
        assert_eq!(
            names,
            [
                // Offsets stay in delivery order here; land_slice sorts them.
                ("fleet.locations".to_owned(), 0, vec![1200, 1202, 1201]),
                ("fleet.locations".to_owned(), 1, vec![877, 878]),
                ("fleet.unknown".to_owned(), 0, vec![5]),
                ("pg.public.performance_stats".to_owned(), 0, vec![40, 41]),
                ("pg.public.transport_units".to_owned(), 0, vec![9, 10, 11]),
            ]
        );
    }

    #[test]
    fn a_record_without_topic_takes_it_from_the_group_key() {
        let rec: MskRecord =
            serde_json::from_str(r#"{"partition":4,"offset":1,"timestamp":0,"timestampType":"CREATE_TIME","key":null,"value":null,"headers":[]}"#).unwrap();
        assert_eq!(to_message("my.topic-name-4", rec).topic, "my.topic-name");
    }
}
