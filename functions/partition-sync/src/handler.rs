//! partition-sync's handler: commit notifications → touched partitions → symlink manifests and Glue partitions.
//!
//! Per commit `bronze/<table>/_delta_log/<version>.json`: read its `add`/`remove` actions and find the partitions
//! they touched (values checked against the column type first; a bad one is reported and skipped). Then, from the
//! table's **latest** state (which includes that commit):
//! - each touched partition's manifest `<table>/_symlink_format_manifest/<col>=<value>/manifest` is rewritten with
//!   the absolute paths of the partition's active data files, in one PUT, stamped with the version it describes
//!   (`x-amz-meta-delta-version`); a manifest already stamped with that version or a later one is left alone, so
//!   commits processed late or twice change nothing;
//! - partitions with files are registered in Glue (`BatchCreatePartition`; existing ones count as done) and
//!   partitions left without files are removed (`BatchDeletePartition`).
//!
//! Working from the latest state makes out-of-order processing converge: whichever commit is processed last, the
//! manifests and partitions describe the newest version.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_glue::types::StorageDescriptor;
use fleetlake::bronze::TableSpec;
use fleetlake::delta::{open_existing, DeltaError};
use fleetlake::error::Fault;
use fleetlake::glue::{Catalog, CatalogError};
use fleetlake::partitions::{manifest_text, touched_partitions, CommitKey, Partition};
use fleetlake::s3::S3Store;
use fleetlake::s3event::{parse_trigger, EventError, ObjectRef, Trigger};
use fleetlake::telemetry::Metrics;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tracing::{error, info, instrument, warn};

use crate::config::Config;

/// The stage name in logs and metrics.
const STAGE: &str = "partition-sync";

/// The manifest folder below a table, as Delta's `GENERATE symlink_format_manifest` names it.
pub(crate) const MANIFEST_FOLDER: &str = "_symlink_format_manifest";

/// User metadata of a manifest: the table version it lists.
const VERSION_META: &str = "delta-version";

/// Clients, configuration, open tables and Glue storage descriptors, kept across invocations.
#[derive(Debug)]
pub(crate) struct Deps {
    config: Config,
    store: S3Store,
    catalog: Catalog,
    tables: Mutex<HashMap<&'static str, deltalake::DeltaTable>>,
    descriptors: Mutex<HashMap<String, StorageDescriptor>>,
}

impl Deps {
    pub(crate) fn new(config: Config, s3: aws_sdk_s3::Client, glue: aws_sdk_glue::Client) -> Self {
        let store = S3Store::new(s3, config.bucket.as_str());
        let catalog = Catalog::new(glue, config.glue_database.clone());
        Self { config, store, catalog, tables: Mutex::new(HashMap::new()), descriptors: Mutex::new(HashMap::new()) }
    }

    fn table_root(&self, spec: &TableSpec) -> String {
        format!("s3://{}/{}{}/", self.config.bucket, self.config.bronze_prefix, spec.name)
    }
}

/// The invocation failed as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandlerError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("{failed} commit(s) not synced; first error: {first}")]
    Commits { failed: usize, first: String },
}

impl From<HandlerError> for Diagnostic {
    fn from(e: HandlerError) -> Self {
        let fault = match &e {
            HandlerError::Event(_) => Fault::Permanent,
            HandlerError::Commits { .. } => Fault::Retryable,
        };
        Diagnostic { error_type: fault.error_type().to_owned(), error_message: e.to_string() }
    }
}

/// A failure that Lambda should retry: storage, Delta log or Glue.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Lake(#[from] fleetlake::Error),
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What syncing one commit did.
#[derive(Debug, Default)]
struct Synced {
    manifests_written: u64,
    manifests_current: u64,
    partitions_created: u64,
    partitions_deleted: u64,
    partitions_refused: u64,
    commits_missing: u64,
    commits_unreadable: u64,
}

impl Synced {
    fn add(&mut self, o: &Synced) {
        self.manifests_written += o.manifests_written;
        self.manifests_current += o.manifests_current;
        self.partitions_created += o.partitions_created;
        self.partitions_deleted += o.partitions_deleted;
        self.partitions_refused += o.partitions_refused;
        self.commits_missing += o.commits_missing;
        self.commits_unreadable += o.commits_unreadable;
    }
}

#[instrument(skip_all)]
pub(crate) async fn handle(event: LambdaEvent<Value>, deps: &Deps) -> Result<Value, HandlerError> {
    let mut metrics = Metrics::new(STAGE);
    metrics.property("requestId", event.context.request_id.clone());
    let trigger = parse_trigger(&event.payload).inspect_err(|e| error!(error = %e, "event not understood"))?;
    let (messages, reports_items) = match trigger {
        Trigger::Sqs(messages) => (messages.into_iter().map(|m| (m.message_id, m.objects)).collect(), true),
        Trigger::Direct(objects) | Trigger::EventBridge(objects) => (vec![(String::new(), Ok(objects))], false),
    };
    let mut totals = Synced::default();
    let mut failures = Vec::new();
    let mut first_error = None;
    let mut commits = 0;
    for (message_id, objects) in messages {
        let objects = match objects {
            Ok(o) => o,
            Err(reason) => {
                error!(message_id = %message_id, reason, "SQS message not understood");
                failures.push(message_id);
                continue;
            }
        };
        let mut failed = false;
        for obj in &objects {
            let Some(commit) = commit_of(&deps.config, obj) else {
                warn!(key = %obj.key, "not a commit of a bronze table; ignored");
                continue;
            };
            commits += 1;
            match Box::pin(sync_commit(deps, &obj.key, &commit)).await {
                Ok(s) => totals.add(&s),
                Err(e) => {
                    error!(key = %obj.key, error = %e, "commit not synced");
                    first_error.get_or_insert_with(|| e.to_string());
                    failed = true;
                }
            }
        }
        if failed {
            failures.push(message_id);
        }
    }
    for (name, n) in [
        ("commits", commits),
        ("manifests_written", totals.manifests_written),
        ("manifests_current", totals.manifests_current),
        ("partitions_created", totals.partitions_created),
        ("partitions_deleted", totals.partitions_deleted),
        ("partitions_refused", totals.partitions_refused),
        ("commits_missing", totals.commits_missing),
        ("commits_unreadable", totals.commits_unreadable),
        ("messages_failed", failures.len() as u64),
    ] {
        metrics.add(name, n);
    }
    metrics.emit();
    if reports_items {
        return Ok(
            json!({"batchItemFailures": failures.iter().map(|id| json!({"itemIdentifier": id})).collect::<Vec<_>>()}),
        );
    }
    match first_error {
        None => Ok(json!({"commits": commits})),
        Some(first) => Err(HandlerError::Commits { failed: failures.len().max(1), first }),
    }
}

fn commit_of(cfg: &Config, obj: &ObjectRef) -> Option<CommitKey> {
    (obj.bucket == cfg.bucket.as_str()).then(|| CommitKey::parse(cfg.bronze_prefix.as_str(), &obj.key)).flatten()
}

#[instrument(skip(deps, commit), fields(table = commit.table.name, version = commit.version))]
async fn sync_commit(deps: &Deps, key: &str, commit: &CommitKey) -> Result<Synced, SyncError> {
    let spec = commit.table;
    let mut out = Synced::default();
    let bytes = match deps.store.get_bytes(key).await {
        Ok(b) => b,
        Err(fleetlake::Error::NotFound { .. }) => {
            // The log was cleaned up past this commit (logRetentionDuration): nothing to read, and a later
            // commit's sync covers the partitions. Reported, not retried.
            error!(key, "the commit file is gone (log cleaned up?); nothing to sync for it");
            out.commits_missing = 1;
            return Ok(out);
        }
        Err(e) => return Err(e.into()),
    };
    let (touched, refused) = match touched_partitions(spec, &bytes) {
        Ok(t) => t,
        Err(reason) => {
            error!(key, reason, "the commit file is not a Delta commit; skipped");
            out.commits_unreadable = 1;
            return Ok(out);
        }
    };
    for r in &refused {
        error!(column = %r.column, value = ?r.value, reason = %r.reason, "partition value refused; not synced");
    }
    out.partitions_refused = refused.len() as u64;
    if touched.is_empty() {
        return Ok(out);
    }
    let glue_table = deps.config.glue_tables.get(spec.name).cloned();

    // The latest state: every touched partition's active files.
    let (version, files) = {
        let mut tables = deps.tables.lock().await;
        let table = match tables.remove(spec.name) {
            Some(mut t) => {
                t.update_incremental(None).await.map_err(|source| DeltaError::Delta { table: spec.name, source })?;
                t
            }
            None => {
                let url = deltalake::table::builder::ensure_table_uri(deps.table_root(spec))
                    .map_err(|source| DeltaError::Delta { table: spec.name, source })?;
                open_existing(spec, url, deps.config.storage_options.clone()).await?
            }
        };
        let version = table.version().unwrap_or(0);
        let files = active_files(deps, spec, &table, &touched)?;
        tables.insert(spec.name, table);
        (version, files)
    };

    let root = deps.table_root(spec);
    let mut to_create = Vec::new();
    let mut to_delete = Vec::new();
    for partition in &touched {
        let paths = files.get(partition).cloned().unwrap_or_default();
        let has_files = !paths.is_empty();
        let manifest_key =
            format!("{}{}/{MANIFEST_FOLDER}/{}manifest", deps.config.bronze_prefix, spec.name, partition.folder());
        let current = deps.store.metadata(&manifest_key).await?;
        let stamped = current.as_ref().and_then(|m| m.get(VERSION_META)).and_then(|v| v.parse::<u64>().ok());
        if stamped.is_some_and(|v| v >= version) {
            out.manifests_current += 1;
        } else {
            let v = version.to_string();
            deps.store
                .put_object(
                    &manifest_key,
                    manifest_text(paths).into_bytes(),
                    "text/plain",
                    &[(VERSION_META, &v)],
                    false,
                )
                .await?;
            out.manifests_written += 1;
        }
        if let Partition::Value { .. } = partition {
            let location = format!("{root}{MANIFEST_FOLDER}/{}", partition.folder());
            if has_files {
                to_create.push((partition.values(), location));
            } else {
                to_delete.push(partition.values());
            }
        }
    }
    if let Some(glue_table) = glue_table.filter(|_| spec.partitioning.is_some()) {
        if !to_create.is_empty() {
            let template = descriptor(deps, &glue_table).await?;
            out.partitions_created = deps.catalog.create_partitions(&glue_table, &template, &to_create).await? as u64;
        }
        if !to_delete.is_empty() {
            out.partitions_deleted = deps.catalog.delete_partitions(&glue_table, &to_delete).await? as u64;
        }
    }
    info!(
        version,
        touched = touched.len(),
        written = out.manifests_written,
        current = out.manifests_current,
        created = out.partitions_created,
        deleted = out.partitions_deleted,
        "synced"
    );
    Ok(out)
}

/// The Glue table's storage descriptor, read once per execution environment.
async fn descriptor(deps: &Deps, glue_table: &str) -> Result<StorageDescriptor, CatalogError> {
    if let Some(sd) = deps.descriptors.lock().await.get(glue_table) {
        return Ok(sd.clone());
    }
    let sd = deps.catalog.storage_descriptor(glue_table).await?;
    deps.descriptors.lock().await.insert(glue_table.to_owned(), sd.clone());
    Ok(sd)
}

/// The absolute paths of the active data files of each touched partition.
fn active_files(
    deps: &Deps,
    spec: &TableSpec,
    table: &deltalake::DeltaTable,
    touched: &BTreeSet<Partition>,
) -> Result<BTreeMap<Partition, Vec<String>>, DeltaError> {
    let snapshot = table.snapshot().map_err(|source| DeltaError::Delta { table: spec.name, source })?;
    let root = deps.table_root(spec);
    let column = spec.partitioning.map(|p| p.column);
    let mut out: BTreeMap<Partition, Vec<String>> = BTreeMap::new();
    for f in snapshot.log_data().iter() {
        let partition = match column {
            None => Partition::Whole,
            Some(col) => match f.partition_values_map().get(col).cloned().flatten() {
                Some(value) => Partition::Value { column: col.to_owned(), value },
                None => continue,
            },
        };
        if touched.contains(&partition) {
            out.entry(partition).or_default().push(format!("{root}{}", f.object_store_path()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetlake::config::Env;

    #[test]
    fn the_sample_event_names_two_commits_and_a_key_to_ignore() {
        let event: Value = serde_json::from_str(include_str!("../../../events/partition-sync/sqs.json")).unwrap();
        let Trigger::Sqs(messages) = parse_trigger(&event).unwrap() else { panic!("not an SQS event") };
        let cfg = Config::from_env(&Env::from_pairs([
            ("LAKE_BUCKET", "fleetlake-lake-123456789012-us-east-1"),
            ("GLUE_DATABASE", "fleetlake"),
        ]))
        .unwrap();
        let commits: Vec<Vec<(&str, u64)>> = messages
            .iter()
            .map(|m| {
                m.objects
                    .as_ref()
                    .unwrap()
                    .iter()
                    .filter_map(|o| commit_of(&cfg, o))
                    .map(|c| (c.table.name, c.version))
                    .collect()
            })
            .collect();
        // A real S3 notification, a moto one (every character encoded), and a .json key that is no commit.
        assert_eq!(commits, [vec![("locations", 1)], vec![("performance_stats", 1)], vec![]]);
    }
}
