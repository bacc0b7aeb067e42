//! partition-sync's handler: commit notifications → touched partitions → symlink manifests and Glue partitions.
//!
//! Per commit `bronze/<table>/_delta_log/<version>.json`: read its `add`/`remove` actions and find the partitions
//! they touched (values checked against the column type first; a bad one is reported and skipped). Then, from the
//! table's **latest** state (which includes that commit):
//! - each touched partition's manifest `<table>/_symlink_format_manifest/<col>=<value>/manifest` is rewritten with
//!   the absolute paths of the partition's active data files, in one PUT, stamped with the version it describes
//!   (`x-amz-meta-delta-version`), conditional on the HEAD that read it (`If-Match` / `If-None-Match`); a manifest
//!   already stamped with that version or a later one is left alone, so commits processed late or twice change
//!   nothing, and two syncs racing cannot put an older version's manifest over a newer one;
//! - partitions with files are registered in Glue (`BatchCreatePartition`; existing ones count as done) and
//!   partitions left without files are removed (`BatchDeletePartition`), by the sync whose version wrote the
//!   manifest (an older one leaves them alone).
//!
//! Working from the latest state makes out-of-order processing converge: whichever commit is processed last, the
//! manifests and partitions describe the newest version.
//!
//! A commit of a change log (`performance_stats`, `transport_units`) also rewrites the touched partitions of its
//! state tables (`<table>_current`, `<table>_history`; `STATE_TABLES`): each partition of the change log, read
//! whole at the latest version, gives the partition's rows ([`fleetlake_core::state`]), which replace the state
//! table's partition in one commit recording that version ([`fleetlake_delta::state`]): a sync from an older or the
//! same version changes nothing. The state tables' own commits come back here for their manifests and partitions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_glue::types::StorageDescriptor;
use fleetlake_aws::glue::{Catalog, CatalogError};
use fleetlake_aws::s3::S3Store;
use fleetlake_aws::s3event::ObjectRef;
use fleetlake_core::bronze::{Layout, TableSpec};
use fleetlake_core::fault::{Classify, Fault};
use fleetlake_core::lake::{manifest_key, manifest_location, table_root};
use fleetlake_core::partitions::{manifest_text, touched_partitions, CommitKey, Partition};
use fleetlake_delta::{active_files, refresh_partition, DeltaError, DeltaSettings, Refreshed, TableCache};
use fleetlake_runner::{Invocation, ObjectHandler};
use futures::stream::{self, StreamExt};
use tokio::sync::Mutex;
use tracing::{error, info, instrument, warn};

use crate::config::Config;

/// The stage name in logs and metrics.
pub(crate) const STAGE: &str = "partition-sync";

/// Time kept back at the end of an invocation: no state table partition is started with less left.
const STATE_MARGIN: Duration = Duration::from_secs(20);

/// User metadata of a manifest: the table version it lists.
const VERSION_META: &str = "delta-version";

/// Clients, configuration, open tables and Glue storage descriptors, kept across invocations.
#[derive(Debug)]
pub(crate) struct Deps {
    config: Config,
    store: S3Store,
    catalog: Catalog,
    /// The tables, read at their latest version; the state tables are also taken from it to be written.
    tables: TableCache,
    descriptors: Mutex<HashMap<String, StorageDescriptor>>,
}

impl Deps {
    pub(crate) fn new(
        config: Config,
        s3: aws_sdk_s3::Client,
        glue: aws_sdk_glue::Client,
    ) -> Result<Self, url::ParseError> {
        let store = S3Store::new(s3, config.bucket.as_str());
        let catalog = Catalog::new(glue, config.glue_database.clone());
        let settings = DeltaSettings::reader(
            config.bucket.as_str(),
            config.bronze_prefix.as_str(),
            config.storage_options.clone(),
        )?;
        Ok(Self { config, store, catalog, tables: TableCache::new(settings), descriptors: Mutex::new(HashMap::new()) })
    }

    fn table_root(&self, spec: &TableSpec) -> String {
        table_root(self.config.bucket.as_str(), &self.config.bronze_prefix, spec.name)
    }
}

/// A failure that Lambda should retry: storage, Delta log or Glue.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error(transparent)]
    Lake(#[from] fleetlake_aws::Error),
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("delta table {0} does not exist, yet a commit of it was notified")]
    NoTable(&'static str),
    #[error("manifest {0}: other syncs kept changing it")]
    ManifestContention(String),
    #[error("{table} version {version}: {left} touched partitions of its state tables left for lack of time")]
    StatesLeft { table: &'static str, left: usize, version: u64 },
}

impl Classify for SyncError {
    fn fault(&self) -> Fault {
        // Even a table not found is the environment's: its first commit may not be visible yet.
        Fault::Retryable
    }
}

/// What syncing one commit did.
#[derive(Debug, Default)]
struct Synced {
    manifests_written: u64,
    manifests_current: u64,
    partitions_created: u64,
    partitions_deleted: u64,
    partitions_refused: u64,
    /// Touched partitions whose manifest a newer table version had written already: Glue is left to that sync.
    partitions_superseded: u64,
    commits_missing: u64,
    commits_unreadable: u64,
    /// State table partitions rewritten, and those a sync of a newer change log version had rewritten already.
    states_replaced: u64,
    states_superseded: u64,
}

impl Synced {
    fn count(&self, invocation: &Invocation) {
        invocation.add("commits", 1);
        invocation.add("manifests_written", self.manifests_written);
        invocation.add("manifests_current", self.manifests_current);
        invocation.add("partitions_created", self.partitions_created);
        invocation.add("partitions_deleted", self.partitions_deleted);
        invocation.add("partitions_refused", self.partitions_refused);
        invocation.add("partitions_superseded", self.partitions_superseded);
        invocation.add("commits_missing", self.commits_missing);
        invocation.add("commits_unreadable", self.commits_unreadable);
        invocation.add("states_replaced", self.states_replaced);
        invocation.add("states_superseded", self.states_superseded);
    }
}

impl ObjectHandler for Deps {
    type Error = SyncError;

    /// Each commit of a bronze table on its own; any other key is not ours.
    fn group(&self, obj: &ObjectRef) -> Option<String> {
        commit_of(&self.config, obj).map(|_| obj.key.clone())
    }

    async fn process(
        &'static self,
        objects: Vec<ObjectRef>,
        invocation: Arc<Invocation>,
    ) -> Vec<Result<(), SyncError>> {
        let mut results = Vec::with_capacity(objects.len());
        for obj in &objects {
            let result = match commit_of(&self.config, obj) {
                Some(commit) => Box::pin(sync_commit(self, &obj.key, &commit, invocation.deadline()))
                    .await
                    .map(|s| s.count(&invocation)),
                None => Ok(()),
            };
            results.push(result);
        }
        results
    }
}

fn commit_of(cfg: &Config, obj: &ObjectRef) -> Option<CommitKey> {
    CommitKey::in_lake(cfg.bucket.as_str(), cfg.bronze_prefix.as_str(), &obj.bucket, &obj.key)
}

#[instrument(skip(deps, commit), fields(table = commit.table.name, version = commit.version))]
async fn sync_commit(deps: &Deps, key: &str, commit: &CommitKey, deadline: Instant) -> Result<Synced, SyncError> {
    let spec = commit.table;
    let mut out = Synced::default();
    let bytes = match deps.store.get_bytes(key).await {
        Ok(b) => b,
        Err(fleetlake_aws::Error::NotFound { .. }) => {
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
    let table = deps.tables.latest(spec).await?.ok_or(SyncError::NoTable(spec.name))?;
    let version = table.version().unwrap_or(0);
    let files = touched_files(deps, spec, &table, &touched)?;

    let root = deps.table_root(spec);
    // The manifests are independent objects: written concurrently (S3_CONCURRENCY at a time), their outcomes
    // taken in the partitions' order.
    let mut writes = Vec::with_capacity(touched.len());
    for partition in &touched {
        let paths = files.get(partition).cloned().unwrap_or_default();
        let manifest_key = manifest_key(&deps.config.bronze_prefix, spec.name, &partition.folder());
        writes.push(async move {
            let has_files = !paths.is_empty();
            write_manifest(deps, &manifest_key, version, manifest_text(paths)).await.map(|m| (has_files, m))
        });
    }
    let written: Vec<Result<(bool, Manifest), SyncError>> =
        stream::iter(writes).buffered(deps.config.s3_concurrency).collect().await;
    let mut to_create = Vec::new();
    let mut to_delete = Vec::new();
    for (partition, result) in touched.iter().zip(written) {
        let (has_files, manifest) = result?;
        let newest = match manifest {
            Manifest::Written => {
                out.manifests_written += 1;
                true
            }
            Manifest::Current { stamped } => {
                out.manifests_current += 1;
                stamped == version
            }
        };
        // Glue follows the version that wrote the manifest: a sync of an older version leaves the partition to it.
        if !newest {
            out.partitions_superseded += 1;
            continue;
        }
        if let Partition::Value { .. } = partition {
            let location = manifest_location(&root, &partition.folder());
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
    if deps.config.state_tables && matches!(spec.layout, Layout::Change { .. }) {
        // Partitions STATE_CONCURRENCY at a time, none started within STATE_MARGIN of the deadline: what is left
        // fails the message, and its retry skips the partitions done (their state holds this version).
        let stop = deadline.checked_sub(STATE_MARGIN).unwrap_or_else(Instant::now);
        let mut rewrites = Vec::with_capacity(touched.len());
        for partition in &touched {
            rewrites.push(rewrite_states(deps, spec, &table, partition, stop));
        }
        let results: Vec<Result<Option<Refreshed>, SyncError>> =
            stream::iter(rewrites).buffer_unordered(deps.config.state_concurrency).collect().await;
        let mut left = 0;
        for result in results {
            match result? {
                Some(done) => {
                    out.states_replaced += done.replaced;
                    out.states_superseded += done.superseded;
                }
                None => left += 1,
            }
        }
        if left > 0 {
            return Err(SyncError::StatesLeft { table: spec.name, left, version });
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

/// Rewrites one partition of each state table of the change log `spec` from the change log's version `table`;
/// `None` when the time to start it had passed.
async fn rewrite_states(
    deps: &Deps,
    spec: &'static TableSpec,
    table: &deltalake::DeltaTable,
    partition: &Partition,
    stop: Instant,
) -> Result<Option<Refreshed>, SyncError> {
    if Instant::now() >= stop {
        return Ok(None);
    }
    let done = refresh_partition(&deps.tables, table, spec, partition.as_pair(), false).await?;
    info!(partition = %partition.folder(), replaced = done.replaced, superseded = done.superseded, "state tables");
    Ok(Some(done))
}

/// What writing a manifest came to.
enum Manifest {
    /// This version's manifest is in place.
    Written,
    /// A manifest of this version or a newer one was there already.
    Current { stamped: u64 },
}

/// Most rounds of read, decide and conditional write of one manifest against other syncs.
const MANIFEST_ATTEMPTS: u32 = 8;

/// Writes the manifest of `version` unless one of this version or a newer one is there. The write is conditional on
/// what was read (`If-Match` its ETag, `If-None-Match` when there was none): two syncs racing cannot leave an older
/// version's manifest over a newer one. A lost race reads again and decides again.
async fn write_manifest(deps: &Deps, key: &str, version: u64, text: String) -> Result<Manifest, SyncError> {
    let v = version.to_string();
    for attempt in 1..=MANIFEST_ATTEMPTS {
        let head = deps.store.head(key).await?;
        let stamped = head.as_ref().and_then(|h| h.metadata.get(VERSION_META)).and_then(|v| v.parse::<u64>().ok());
        if let Some(stamped) = stamped.filter(|s| *s >= version) {
            return Ok(Manifest::Current { stamped });
        }
        let body = text.clone().into_bytes();
        if deps.store.put_if_unchanged(key, body, "text/plain", &[(VERSION_META, &v)], head.as_ref()).await? {
            return Ok(Manifest::Written);
        }
        warn!(key, attempt, "the manifest changed while it was being written; reading it again");
    }
    Err(SyncError::ManifestContention(key.to_owned()))
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
fn touched_files(
    deps: &Deps,
    spec: &'static TableSpec,
    table: &deltalake::DeltaTable,
    touched: &BTreeSet<Partition>,
) -> Result<BTreeMap<Partition, Vec<String>>, DeltaError> {
    let root = deps.table_root(spec);
    let mut out: BTreeMap<Partition, Vec<String>> = BTreeMap::new();
    for f in active_files(table, spec)? {
        let partition = match (spec.partitioning, f.partition) {
            (None, _) => Partition::Whole,
            (Some(p), Some(value)) => Partition::Value { column: p.column.to_owned(), value },
            (Some(_), None) => continue,
        };
        if touched.contains(&partition) {
            out.entry(partition).or_default().push(format!("{root}{}", f.path));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetlake_aws::s3event::{parse_trigger, Trigger};
    use fleetlake_core::config::Env;
    use serde_json::Value;

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
