//! delta-writer's handler: S3 notifications (on SQS) → objects → one exactly-once append per bronze table.
//!
//! Per invocation: the notified objects are grouped by table (`enriched/locations/` → `locations`,
//! `landing/performance_stats/` → `performance_stats`, `landing/transport_units/` → `transport_units`). Each
//! table's objects are streamed line by line, converted in chunks of `CHUNK_RECORDS` rows, checked for records the
//! table already holds, written as Parquet and committed as one Delta version (see `fleetlake_delta` for the
//! rule). A line that does not fit the schema goes to `quarantine/delta-writer/…` with its reason. An object that
//! cannot be read (gone, not gzip) is quarantined by reference by the runner; one whose append fails for the
//! environment's reasons fails only the SQS messages that named it (`batchItemFailures`); the rest commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use deltalake::arrow::record_batch::RecordBatch;
use fleetlake_aws::quarantine::{QuarantineLine, QuarantineParts, QuarantineWriter};
use fleetlake_aws::s3::S3Store;
use fleetlake_aws::s3event::ObjectRef;
use fleetlake_core::bronze::{Converter, Identities, LineOrigin, Lineage, TableSpec, Zone};
use fleetlake_core::fault::{Classify, Fault};
use fleetlake_core::lake::{key_date, quarantine_source_name, BatchName};
use fleetlake_core::ndjson::Line;
use fleetlake_delta::{AppendStats, Appender, DeltaError, TableCache};
use fleetlake_runner::{Invocation, ObjectHandler, Runner};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{error, info, instrument, warn};

use crate::config::Config;

/// The stage name in quarantine keys, logs and metrics.
pub(crate) const STAGE: &str = "delta-writer";

/// Times one table's append is redone after a concurrent writer committed some of the same records.
const MAX_REDOS: u32 = 3;

/// Clients, configuration and the open tables, built once at init and kept across invocations (a warm
/// invocation only reads the log entries committed since).
#[derive(Debug)]
pub(crate) struct Deps {
    config: Config,
    store: S3Store,
    quarantine: QuarantineWriter,
    tables: TableCache,
}

impl Deps {
    pub(crate) fn new(config: Config, s3: aws_sdk_s3::Client) -> Self {
        let store = S3Store::new(s3, config.lake.bucket.as_str());
        let quarantine = QuarantineWriter::new(store.clone(), config.lake.quarantine_prefix.clone(), STAGE);
        let tables = TableCache::new(config.delta.clone());
        Self { config, store, quarantine, tables }
    }

    /// The runner: one table at a time (each append already converts on every core); objects that cannot be
    /// read are quarantined by reference.
    pub(crate) fn runner(&self) -> Runner {
        Runner::new(STAGE).quarantine(self.quarantine.clone())
    }
}

/// Why an object was not appended.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ObjectFailure {
    message: String,
    fault: Fault,
}

impl Classify for ObjectFailure {
    fn fault(&self) -> Fault {
        self.fault
    }
}

/// Counts of one table's append.
#[derive(Debug, Default)]
struct TableResult {
    version: Option<u64>,
    stats: AppendStats,
    quarantined: u64,
    /// Objects replaced since their event (acknowledged: the newer event appends the current version).
    superseded: u64,
    /// Objects (by key) that could not be appended.
    failed: BTreeMap<String, ObjectFailure>,
}

impl ObjectHandler for Deps {
    type Error = ObjectFailure;

    /// Objects are grouped by the table they feed: one append, one commit per table.
    fn group(&self, obj: &ObjectRef) -> Option<String> {
        table_for(&self.config, obj).map(|spec| spec.name.to_owned())
    }

    async fn process(
        &'static self,
        objects: Vec<ObjectRef>,
        invocation: Arc<Invocation>,
    ) -> Vec<Result<(), ObjectFailure>> {
        let Some(spec) = objects.first().and_then(|o| table_for(&self.config, o)) else {
            return Vec::new();
        };
        // Boxed: deltalake's futures are deep and large.
        let mut result = Box::pin(append_table(self, spec, &objects)).await;
        invocation.add("records_in", result.stats.rows_in);
        invocation.add("records_written", result.stats.rows_written);
        invocation.add("records_duplicate", result.stats.duplicates);
        invocation.add("records_quarantined", result.quarantined);
        invocation.add("objects_superseded", result.superseded);
        invocation.add("files_checked", result.stats.files_checked);
        invocation.add("objects_appended", objects.len() as u64 - result.failed.len() as u64 - result.superseded);
        if let Some(v) = result.version {
            invocation.add("commits", 1);
            invocation.property(&format!("{}_version", spec.name), v);
        }
        info!(table = spec.name, version = ?result.version, stats = ?result.stats, quarantined = result.quarantined,
              failed = result.failed.len(), "table done");
        objects.iter().map(|o| result.failed.remove(&o.key).map_or(Ok(()), Err)).collect()
    }
}

/// The table an object feeds: `<enriched>locations/…` or `<landing><dataset>/…`, `.ndjson.gz`, in the lake bucket.
fn table_for(cfg: &Config, obj: &ObjectRef) -> Option<&'static TableSpec> {
    if obj.bucket != cfg.lake.bucket.as_str() || !obj.key.ends_with(".ndjson.gz") {
        return None;
    }
    let (zone, rest) = if let Some(rest) = obj.key.strip_prefix(cfg.enriched_prefix.as_str()) {
        (Zone::Enriched, rest)
    } else {
        (Zone::Landing, obj.key.strip_prefix(cfg.lake.landing_prefix.as_str())?)
    };
    let dataset = rest.split('/').next()?;
    TableSpec::for_input(zone, dataset)
}

/// Appends one table's objects, redoing the append if a concurrent writer committed some of the same records.
#[instrument(skip(deps, objects), fields(table = spec.name, objects = objects.len()))]
async fn append_table(deps: &'static Deps, spec: &'static TableSpec, objects: &[ObjectRef]) -> TableResult {
    let mut failed: BTreeMap<String, ObjectFailure> = BTreeMap::new();
    let mut redo = 0;
    loop {
        match Box::pin(try_append(deps, spec, objects, &mut failed)).await {
            Ok(mut result) => {
                result.failed.append(&mut failed);
                return result;
            }
            Err(DeltaError::Overlap { .. }) if redo < MAX_REDOS => {
                redo += 1;
                warn!(redo, "a concurrent commit holds some of these records; redoing the append");
            }
            Err(e) => {
                // The table itself failed (storage, contention): every object not yet failed fails with it.
                error!(error = %e, "append failed");
                let failure = ObjectFailure { message: e.to_string(), fault: e.fault() };
                for obj in objects {
                    failed.entry(obj.key.clone()).or_insert_with(|| failure.clone());
                }
                return TableResult { failed, ..TableResult::default() };
            }
        }
    }
}

/// One attempt at a table's append. Objects that fail are added to `failed` and left out; an object that fails
/// after some of its rows were written makes the attempt start over without it.
///
/// Objects are read and converted on tasks of their own (one per core) while this one checks the previous chunk's
/// identities and hands it to the appender's Parquet writers (`ENCODERS`, one by default), which encode and upload
/// on tasks of their own.
async fn try_append(
    deps: &'static Deps,
    spec: &'static TableSpec,
    objects: &[ObjectRef],
    failed: &mut BTreeMap<String, ObjectFailure>,
) -> Result<TableResult, DeltaError> {
    'attempt: loop {
        let table = deps.tables.take_or_create(spec).await?;
        let mut appender = Appender::with_encoders(spec, table, deps.config.target_file_bytes, deps.config.encoders)?;
        let todo: Vec<ObjectRef> = objects.iter().filter(|o| !failed.contains_key(&o.key)).cloned().collect();
        let (tx, mut rx) = mpsc::channel(PIPELINE_CHUNKS);
        // One converting task per core (objects dealt round-robin), all feeding this one.
        let tasks = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, todo.len().max(1));
        let producers: Vec<AbortOnDrop> = (0..tasks)
            .map(|k| {
                let share: Vec<(usize, ObjectRef)> = todo.iter().cloned().enumerate().skip(k).step_by(tasks).collect();
                AbortOnDrop(tokio::spawn(convert_objects(deps, spec, share, tx.clone())))
            })
            .collect();
        drop(tx);
        let (mut quarantined, mut superseded) = (0, 0_usize);
        let mut with_rows = vec![false; todo.len()];
        while let Some(produced) = rx.recv().await {
            match produced {
                Produced::Chunk { object, batch, ids } => {
                    appender.write(batch, ids).await?;
                    with_rows[object] = true;
                }
                Produced::Done { quarantine } => quarantined += quarantine,
                Produced::Superseded => superseded += 1,
                Produced::Failed { object, failure } => {
                    warn!(key = %todo[object].key, error = %failure.message, "object failed");
                    failed.insert(todo[object].key.clone(), failure);
                    if with_rows[object] {
                        // Some of its rows are in this attempt's files: start over without it (those files are
                        // never committed).
                        continue 'attempt;
                    }
                }
            }
        }
        for producer in producers {
            if let Err(e) = producer.join().await {
                // A panic while converting: fail the table's objects, which Lambda retries.
                return Err(DeltaError::Data {
                    table: spec.name,
                    message: format!("conversion task failed: {e}"),
                    source: Some(Box::new(e)),
                });
            }
        }
        let metadata = vec![
            ("fleetlake.writer".to_owned(), json!(STAGE)),
            ("fleetlake.objects".to_owned(), json!(objects.len() - failed.len() - superseded)),
        ];
        let committed = Box::pin(appender.commit(metadata)).await?;
        // Keep the table open for the next invocation.
        deps.tables.put(spec, committed.table).await;
        return Ok(TableResult {
            version: committed.version,
            stats: committed.stats,
            quarantined,
            superseded: superseded as u64,
            failed: BTreeMap::new(),
        });
    }
}

/// Converted chunks in flight between the converting task and the writing one.
const PIPELINE_CHUNKS: usize = 2;

/// What the converting task hands over.
enum Produced {
    /// Rows of the `object`-th object.
    Chunk { object: usize, batch: RecordBatch, ids: Identities },
    /// An object was read to its end; its bad lines (this many) are in quarantine.
    Done { quarantine: u64 },
    /// An object was replaced since its event: nothing of it is appended, and nothing fails.
    Superseded,
    /// An object could not be read, or its quarantine not written.
    Failed { object: usize, failure: ObjectFailure },
}

/// A task that is aborted when the handle is dropped (the writing side gave up).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    async fn join(mut self) -> Result<(), tokio::task::JoinError> {
        let handle = std::mem::replace(&mut self.0, tokio::spawn(async {}));
        handle.await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads and converts the objects (each with its index) in order, sending chunks of rows; stops when the receiver
/// is gone.
async fn convert_objects(
    deps: &'static Deps,
    spec: &'static TableSpec,
    objects: Vec<(usize, ObjectRef)>,
    tx: mpsc::Sender<Produced>,
) {
    // One converter for all of them: its buffers and its guess of the key order carry over.
    let mut converter =
        Converter::new(spec).with_window(deps.config.lake.event_window, chrono::Utc::now().timestamp_micros());
    for (i, obj) in &objects {
        let i = *i;
        let sent = match convert_object(deps, &mut converter, i, obj, &tx).await {
            Ok(quarantine) => tx.send(Produced::Done { quarantine }).await,
            Err(fleetlake_aws::Error::Superseded { .. }) => {
                info!(key = %obj.key, "the object was replaced since this event; the newer event appends it");
                tx.send(Produced::Superseded).await
            }
            Err(e) => {
                converter.clear();
                let failure = ObjectFailure { message: e.to_string(), fault: e.fault() };
                tx.send(Produced::Failed { object: i, failure }).await
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Streams the `index`-th object into chunks of rows; returns the lines quarantined. A closed channel ends it
/// quietly (the writing side gave up).
#[instrument(skip(deps, converter, tx), fields(key = %obj.key))]
async fn convert_object(
    deps: &Deps,
    converter: &mut Converter,
    index: usize,
    obj: &ObjectRef,
    tx: &mpsc::Sender<Produced>,
) -> Result<u64, fleetlake_aws::Error> {
    // Exactly the version the event named: rows are identified by its ETag.
    let mut lines = deps.store.gzip_lines(&obj.key, obj.etag.as_deref()).await?;
    let etag = obj.etag.as_deref().unwrap_or_default();
    // Kafka lineage is believed only within the batch the lander named this object after.
    let batch = BatchName::from_key(&obj.key);
    let dt = key_date(&obj.key).unwrap_or_else(|| Utc::now().date_naive());
    let name = quarantine_source_name(&obj.key, obj.etag.as_deref());
    // Bad lines are written out in parts as they add up: an object of bad lines never sits in memory whole.
    let mut bad = QuarantineParts::new(&deps.quarantine, dt, name, deps.config.quarantine_part_bytes);
    let send = |converter: &mut Converter| -> Result<Produced, fleetlake_aws::Error> {
        let (batch, ids) = converter.finish().map_err(|e| {
            fleetlake_aws::Error::Encode(std::io::Error::other(format!("building a record batch: {e}")))
        })?;
        Ok(Produced::Chunk { object: index, batch, ids })
    };
    while let Some(line) = lines.next_line().await? {
        match line {
            Line::Text { number, bytes } => {
                let origin = LineOrigin {
                    key: &obj.key,
                    etag,
                    line: number,
                    lineage: Lineage::of_key(&obj.key, batch.as_ref()),
                };
                if let Err(reason) = converter.push(&bytes, origin) {
                    bad.push(QuarantineLine::new(
                        reason.to_string(),
                        STAGE,
                        &json!({"key": obj.key, "line": number}),
                        Some(String::from_utf8_lossy(&bytes).into_owned()),
                    ));
                }
            }
            Line::TooLong { number, head } => bad.push(QuarantineLine::new(
                format!("line longer than {} bytes", fleetlake_core::ndjson::MAX_LINE_BYTES),
                STAGE,
                &json!({"key": obj.key, "line": number}),
                Some(String::from_utf8_lossy(&head).into_owned()),
            )),
        }
        // The quarantine is written before the commit: a failed write fails the object, never loses the lines.
        bad.flush_if_full().await?;
        let full = converter.len() >= deps.config.chunk_records || converter.bytes() >= deps.config.chunk_bytes;
        if full && tx.send(send(converter)?).await.is_err() {
            return Ok(0);
        }
    }
    if !converter.is_empty() && tx.send(send(converter)?).await.is_err() {
        return Ok(0);
    }
    bad.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetlake_aws::s3event::{parse_trigger, Trigger};
    use fleetlake_core::config::Env;
    use serde_json::Value;

    fn cfg() -> Config {
        Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake")])).unwrap()
    }

    fn obj(key: &str) -> ObjectRef {
        ObjectRef { bucket: "lake".into(), key: key.into(), etag: None }
    }

    #[test]
    fn objects_map_to_their_tables() {
        let cfg = cfg();
        let name = |k: &str| table_for(&cfg, &obj(k)).map(|t| t.name);
        assert_eq!(name("enriched/locations/dt=2026-11-24/fleet.locations-0-1-9.ndjson.gz"), Some("locations"));
        assert_eq!(name("landing/performance_stats/dt=2026-11-24/x.ndjson.gz"), Some("performance_stats"));
        assert_eq!(name("landing/transport_units/dt=2026-11-24/x.ndjson.gz"), Some("transport_units"));
        assert_eq!(name("landing/locations/dt=2026-11-24/x.ndjson.gz"), None, "raw positions go through enrichment");
        assert_eq!(name("enriched/locations/dt=2026-11-24/x.json"), None);
        let other = ObjectRef { bucket: "other".into(), ..obj("enriched/locations/dt=2026-11-24/x.ndjson.gz") };
        assert_eq!(table_for(&cfg, &other), None);
    }

    #[test]
    fn the_sample_event_names_two_tables_and_a_test_event() {
        let event: Value = serde_json::from_str(include_str!("../../../events/delta-writer/sqs.json")).unwrap();
        let Trigger::Sqs(messages) = parse_trigger(&event).unwrap() else { panic!("not an SQS event") };
        let mut cfg = cfg();
        cfg.lake.bucket =
            fleetlake_core::config::BucketName::parse("B", "fleetlake-lake-123456789012-us-east-1").unwrap();
        let tables: Vec<Vec<&str>> = messages
            .iter()
            .map(|m| m.objects.as_ref().unwrap().iter().filter_map(|o| table_for(&cfg, o)).map(|t| t.name).collect())
            .collect();
        // A real S3 notification, a moto one (every character encoded, no sequencer), and S3's test event.
        assert_eq!(tables, [vec!["locations"], vec!["performance_stats"], vec![]]);
    }
}
