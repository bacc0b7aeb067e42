//! Table maintenance beside running writers: log hygiene (checkpoints verified, expired log entries removed) and
//! vacuum (data files no version needs, past a retention, and named by no symlink manifest).

use super::*;

use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::operations::vacuum::{Clock, VacuumMode};
use deltalake::table::config::TablePropertiesExt;
use deltalake::{ObjectStore, Path as StorePath};

/// The shortest vacuum retention: symlink manifests can lag (a partition-sync message waiting in its queue or
/// DLQ) and Athena queries in flight may still name a removed file, and an append's data files exist before its
/// commit does.
pub const MIN_RETENTION_HOURS: u32 = 24;

/// The folder of a table's symlink manifests (written by partition-sync).
pub const MANIFEST_FOLDER: &str = "_symlink_format_manifest";

/// What [`log_hygiene`] found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogReport {
    /// The table's version.
    pub version: u64,
    /// The newest checkpoint's version before, if any.
    pub checkpoint_before: Option<u64>,
    /// A checkpoint was written at `version` (there was none, or the newest was `interval` versions old or more).
    pub checkpoint_written: bool,
    /// Log entries older than the table's log retention removed (only before the newest checkpoint).
    pub log_entries_removed: usize,
}

/// Checks that the newest checkpoint loads (the table opened from it at the held version has the held table's
/// active files) and is less than `interval` versions old, writing one at the current version when there is none
/// or it is that old; then removes the log entries the table's `delta.logRetentionDuration` lets go (deltalake never
/// removes one at or after the newest checkpoint). A checkpoint that does not load is reported, never deleted or
/// written over: readers of the table fail on it too, and a person decides ([`DeltaError::Broken`]).
#[instrument(skip(settings, table), fields(table = spec.name))]
pub async fn log_hygiene(
    settings: &DeltaSettings,
    table: &DeltaTable,
    spec: &'static TableSpec,
    interval: u64,
) -> Result<LogReport, DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    let version = table.version().unwrap_or(0);
    let store = table.log_store().object_store(None);
    let last: Option<u64> = match store.get(&StorePath::from("_delta_log/_last_checkpoint")).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|e| err(e.into()))?;
            serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| v.get("version")?.as_u64())
        }
        Err(deltalake::ObjectStoreError::NotFound { .. }) => None,
        Err(e) => return Err(err(e.into())),
    };
    let mut report = LogReport { version, checkpoint_before: last, ..LogReport::default() };
    // A checkpoint newer than the held version was written by a writer since: nothing to check against, nothing due.
    if last.is_some_and(|c| c > version) {
        return Ok(report);
    }
    if last.is_some() && !checkpoint_loads(settings, table, spec).await? {
        return Err(DeltaError::Broken {
            table: spec.name,
            message: format!(
                "checkpoint {} does not give the table's state: readers fail on it; write a checkpoint from the \
                 commits with a Delta tool, or remove it if every commit before it is still in the log",
                last.unwrap_or_default()
            ),
        });
    }
    if version + 1 >= interval && last.is_none_or(|c| version - c >= interval) {
        deltalake::checkpoints::create_checkpoint(table, None).await.map_err(err)?;
        report.checkpoint_written = true;
    }
    if report.checkpoint_written || last.is_some() {
        report.log_entries_removed = deltalake::checkpoints::cleanup_metadata(table, None).await.map_err(err)?;
    }
    info!(?report, "log hygiene");
    Ok(report)
}

/// Whether the table loaded afresh (from its newest checkpoint and the entries after it) holds the same active
/// files as `table`; storage failures are errors (retried), anything else that stops the load means no.
async fn checkpoint_loads(
    settings: &DeltaSettings,
    table: &DeltaTable,
    spec: &'static TableSpec,
) -> Result<bool, DeltaError> {
    let mut fresh = DeltaTableBuilder::from_url(settings.table_url(spec)?)
        .map_err(|source| DeltaError::Delta { table: spec.name, source })?
        .with_storage_options(settings.storage_options.clone())
        .with_version(table.version().unwrap_or(0))
        .build()
        .map_err(|source| DeltaError::Delta { table: spec.name, source })?;
    if let Err(e) = fresh.load().await {
        if storage_failure(&e) {
            return Err(DeltaError::Delta { table: spec.name, source: e });
        }
        warn!(error = %e, "the table does not load from its checkpoint");
        return Ok(false);
    }
    let files = |t: &DeltaTable| -> Result<HashSet<String>, DeltaError> {
        Ok(active_files(t, spec)?.into_iter().map(|f| f.path).collect())
    };
    Ok(files(&fresh)? == files(table)?)
}

/// Whether an error comes from storage (a request that failed, a file not found) rather than from what was read.
fn storage_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<deltalake::ObjectStoreError>() || c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    matches!(e.downcast_ref::<DeltaTableError>(), Some(DeltaTableError::ObjectStore { .. }))
}

/// What [`vacuum`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumReport {
    /// Files (paths relative to the table root) no version needs and older than the retention, minus those a
    /// manifest names: deleted, or listed only on a dry run.
    pub deleted: Vec<String>,
    /// Files that would have been deleted but a symlink manifest still names.
    pub kept_for_manifests: Vec<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// A fixed clock for deltalake's vacuum plan.
#[derive(Debug)]
struct At(i64);

impl Clock for At {
    fn current_timestamp_millis(&self) -> i64 {
        self.0
    }
}

/// Deletes the data files of `table` that its current version does not reference, whose removal (or, for an
/// orphan never committed, whose upload) is older than `retention_hours` before `now_ms`, and that no symlink
/// manifest of the table names. With `dry_run`, lists them and deletes nothing.
#[instrument(skip(settings, table), fields(table = spec.name))]
pub async fn vacuum(
    settings: &DeltaSettings,
    table: &DeltaTable,
    spec: &'static TableSpec,
    retention_hours: u32,
    now_ms: i64,
    dry_run: bool,
) -> Result<VacuumReport, DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    if retention_hours < MIN_RETENTION_HOURS {
        return Err(DeltaError::Broken {
            table: spec.name,
            message: format!("a vacuum retention of {retention_hours} h is below {MIN_RETENTION_HOURS} h"),
        });
    }
    // A checkpoint drops removals older than delta.deletedFileRetentionDuration; a file removed longer ago would then
    // be judged by its upload time instead, and could go before the retention asked for.
    let kept_removals = table.snapshot().map_err(err)?.table_config().deleted_file_retention_duration();
    if u128::from(retention_hours) * 3_600_000 > kept_removals.as_millis() {
        return Err(DeltaError::Broken {
            table: spec.name,
            message: format!(
                "a vacuum retention of {retention_hours} h is longer than the table keeps removals \
                 (delta.deletedFileRetentionDuration, {} h)",
                kept_removals.as_secs() / 3600
            ),
        });
    }
    // deltalake plans (a dry run of its own); the deleting is ours, after the manifests are consulted.
    let (_, planned) = table
        .clone()
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(chrono::Duration::hours(i64::from(retention_hours)))
        .with_enforce_retention_duration(false)
        .with_clock(Arc::new(At(now_ms)))
        .with_dry_run(true)
        .await
        .map_err(err)?;
    let named = manifest_paths(settings, table, spec).await?;
    let (kept, deleted): (Vec<String>, Vec<String>) =
        planned.files_deleted.into_iter().partition(|p| named.contains(p.as_str()));
    if !kept.is_empty() {
        warn!(files = kept.len(), "files past retention that a manifest still names are kept");
    }
    if !dry_run && !deleted.is_empty() {
        let store = table.log_store().object_store(None);
        // The plan's paths are printed object store paths: parsed back as they are (no second percent-encoding).
        let owned: Vec<StorePath> = deleted
            .iter()
            .map(|p| StorePath::parse(p.as_str()).unwrap_or_else(|_| StorePath::from(p.as_str())))
            .collect();
        let paths = futures::stream::iter(owned.into_iter().map(Ok)).boxed();
        let mut results = store.delete_stream(paths);
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(deltalake::ObjectStoreError::NotFound { .. }) => {}
                Err(e) => return Err(err(e.into())),
            }
        }
    }
    info!(deleted = deleted.len(), kept = kept.len(), dry_run, "vacuum");
    Ok(VacuumReport { deleted, kept_for_manifests: kept, dry_run })
}

/// The data files (relative to the table root) that the table's symlink manifests name.
async fn manifest_paths(
    settings: &DeltaSettings,
    table: &DeltaTable,
    spec: &'static TableSpec,
) -> Result<HashSet<String>, DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    let store = table.log_store().object_store(None);
    let root = settings.table_url(spec)?.to_string();
    let mut listing = store.list(Some(&StorePath::from(MANIFEST_FOLDER)));
    let mut manifests = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| err(e.into()))?;
        if meta.location.filename() == Some("manifest") {
            manifests.push(meta.location);
        }
    }
    let mut named = HashSet::new();
    for location in manifests {
        let bytes = match store.get(&location).await {
            Ok(got) => got.bytes().await.map_err(|e| err(e.into()))?,
            // Rewritten or removed since the listing: its successor names only active files.
            Err(deltalake::ObjectStoreError::NotFound { .. }) => continue,
            Err(e) => return Err(err(e.into())),
        };
        for line in String::from_utf8_lossy(&bytes).lines() {
            if let Some(relative) = line.trim().strip_prefix(&root) {
                named.insert(relative.to_owned());
            }
        }
    }
    Ok(named)
}
