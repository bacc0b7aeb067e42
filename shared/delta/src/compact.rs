//! Compaction: a partition's small data files bin-packed into files of about a target size, rows ordered by unit
//! and time within each, committed as an `OPTIMIZE` (`dataChange: false`) beside writers that keep appending.
//!
//! - **Bins.** The files of the partition smaller than the target, in the order they were written, are cut into
//!   bins of at most the target's bytes; a bin of one file is left alone. Consecutive files of a partition hold
//!   consecutive offsets of each Kafka partition, so an output file covers the offsets of the stretch of time its
//!   inputs did (of every Kafka partition they held), and the identity statistics delta-writer checks
//!   redeliveries against still rule out the files of other stretches (see [`crate`]).
//! - **One bin at a time.** A bin is read whole, sorted by [`sort_columns`] and written out: memory is bounded by
//!   the target file's rows, not by the partition.
//! - **Commit.** Each bin is committed on its own: `remove` of its files and `add` of the new ones, both
//!   `dataChange: false`, create-only on top of the snapshot the bin was read from. When another writer committed
//!   first, the table is read again: if every file of the bin is still active, the commit is tried again on top
//!   (an append only adds files, so it never conflicts); if one is gone (another compaction, a state rewrite), the
//!   bin is given up and its new files deleted (left to vacuum when an attempt's answer may have been lost). The
//!   check runs before every attempt, the first too: a run one bin behind another never commits a bin the other
//!   already rewrote. A writer whose commit loses the race to a compaction retries once
//!   and reads only the compacted files' identities that its statistics cannot rule out.

use super::*;

use deltalake::arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn, SortOptions};
use deltalake::kernel::{PrimitiveType, Remove};
use deltalake::logstore::object_store::ObjectStoreExt;
use futures::TryStreamExt;

/// The default target size of a compacted file.
pub const DEFAULT_TARGET_BYTES: u64 = 128 << 20;

/// Files of a bin read at the same time.
const READ_CONCURRENCY: usize = 8;

/// Rows taken from a sorted bin per write: the sorted copy is built a slice at a time.
const WRITE_SLICE_ROWS: usize = 64 * 1024;

/// What [`compact_partition`] found and did in one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Active files of the partition, before.
    pub files_before: usize,
    /// Files smaller than the target.
    pub small_files: usize,
    /// Bins committed: files removed, files added, bytes read, rows rewritten.
    pub bins_committed: usize,
    /// Files removed by the committed bins.
    pub files_removed: usize,
    /// Files the committed bins added.
    pub files_added: usize,
    /// Bytes of the files removed.
    pub bytes_read: u64,
    /// Bytes of the files added.
    pub bytes_written: u64,
    /// Rows rewritten.
    pub rows: u64,
    /// Bins given up because one of their files was removed by another commit meanwhile.
    pub bins_given_up: usize,
    /// Bins left for lack of time.
    pub bins_left: usize,
    /// Bins left as they are because a file of theirs could not be read as the table's Parquet (what failed, per
    /// bin): the partition's other bins and the other partitions go on.
    pub unreadable: Vec<String>,
    /// Versions committed.
    pub versions: Vec<u64>,
}

/// The columns a compacted file's rows are ordered by: the unit, then the event time (a change log's source time
/// and log position), then the delivery, for a stable order.
pub fn sort_columns(spec: &TableSpec) -> Vec<&'static str> {
    let names: Vec<&'static str> = spec.columns().into_iter().map(|c| c.0).collect();
    let time: Vec<&'static str> = match (spec.layout, spec.partitioning) {
        (Layout::Change { .. }, _) => vec!["ts_ms", "lsn"],
        (_, Some(p)) => vec![p.from],
        (_, None) => Vec::new(),
    };
    std::iter::once("transport_unit_id")
        .chain(time)
        .chain(["_source_partition", "_source_offset", "_source_key", "_line"])
        .filter(|c| names.contains(c) && spec.partitioning.is_none_or(|p| p.column != *c))
        .collect()
}

/// One active file of the partition.
#[derive(Debug, Clone)]
struct Small {
    path: String,
    location: deltalake::Path,
    size: u64,
    modified: i64,
    /// The earliest event time of its rows (µs), from its statistics: see [`first_event_us`].
    first_event: Option<i64>,
    remove: Remove,
}

/// Sorts files in the order they were written, and the files of one commit (one modification time, random
/// names) by the earliest event time their statistics give: a bin then holds a stretch of offsets, so its file's
/// statistics still rule it out for a duplicate check of another stretch. Event time alone would put a late file
/// holding one straggler among files hours older, and stretch its bin's offsets over the day.
fn in_event_order(files: &mut [Small]) {
    files.sort_by(|a, b| (a.modified, a.first_event, &a.path).cmp(&(b.modified, b.first_event, &b.path)));
}

/// The earliest event time (µs since the epoch) a data file's statistics give for `column` (RFC 3339 text, as Delta
/// writes timestamps, or an integer), if they give one.
fn first_event_us(stats: Option<&str>, column: Option<&str>) -> Option<i64> {
    let stats: Value = serde_json::from_str(stats?).ok()?;
    let v = stats.get("minValues")?.get(column?)?;
    v.as_i64().or_else(|| chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.timestamp_micros()))
}

/// Cuts `files` (in the order to keep) into bins of at most `target` bytes; bins of one file are dropped.
fn bins(files: Vec<Small>, target: u64) -> Vec<Vec<Small>> {
    let mut out = Vec::new();
    let mut bin: Vec<Small> = Vec::new();
    let mut bytes = 0u64;
    for f in files {
        if !bin.is_empty() && bytes + f.size > target {
            out.push(std::mem::take(&mut bin));
            bytes = 0;
        }
        bytes += f.size;
        bin.push(f);
    }
    out.push(bin);
    out.retain(|b| b.len() > 1);
    out
}

/// The newest modification time (epoch ms) of the active files of each partition of `table` (`None` for an
/// unpartitioned table): when it last had an append.
pub fn last_appends(table: &DeltaTable, spec: &'static TableSpec) -> Result<BTreeMap<Option<String>, i64>, DeltaError> {
    let snapshot = table.snapshot().map_err(|source| DeltaError::Delta { table: spec.name, source })?;
    let column = spec.partitioning.map(|p| p.column);
    let mut out: BTreeMap<Option<String>, i64> = BTreeMap::new();
    for f in snapshot.log_data().iter() {
        let value = column.and_then(|c| f.partition_values_map().get(c).cloned().flatten());
        let t = out.entry(value).or_insert(i64::MIN);
        *t = (*t).max(f.modification_time());
    }
    Ok(out)
}

/// Compacts one partition (`(column, value)`, `None` for an unpartitioned table) of `table`: see the module's
/// documentation. Stops before a bin when `deadline` is near (the bins left are counted). `table` is left at the
/// version it last read or committed.
#[instrument(skip(table, deadline), fields(table = spec.name))]
pub async fn compact_partition(
    table: &mut DeltaTable,
    spec: &'static TableSpec,
    partition: Option<(&str, &str)>,
    target: u64,
    deadline: Option<std::time::Instant>,
) -> Result<CompactReport, DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    if matches!(spec.layout, Layout::State(_)) {
        return Err(DeltaError::Broken {
            table: spec.name,
            message: "a state table is rewritten whole per partition; it has nothing to compact".into(),
        });
    }
    let mut report = CompactReport::default();
    let files: Vec<Small> = {
        let snapshot = table.snapshot().map_err(err)?;
        let time = sort_columns(spec).get(1).copied();
        let mut all: Vec<Small> = snapshot
            .log_data()
            .iter()
            .filter(|f| in_partition(&f.partition_values_map(), partition))
            .map(|f| Small {
                path: f.path().into_owned(),
                location: f.object_store_path(),
                size: u64::try_from(f.size()).unwrap_or(0),
                modified: f.modification_time(),
                first_event: first_event_us(f.stats().as_deref(), time),
                remove: f.remove_action(false),
            })
            .collect();
        report.files_before = all.len();
        all.retain(|f| f.size < target);
        in_event_order(&mut all);
        all
    };
    report.small_files = files.len();
    let bins = bins(files, target);
    let total = bins.len();
    for (i, bin) in bins.into_iter().enumerate() {
        if deadline.is_some_and(|d| std::time::Instant::now() + bin_time(&bin) > d) {
            report.bins_left = total - i;
            warn!(left = report.bins_left, "out of time; the next run compacts the rest");
            break;
        }
        let paths: Vec<String> = bin.iter().map(|f| f.path.clone()).collect();
        match compact_bin(table, spec, partition, bin, target, &mut report).await {
            Ok(()) => {}
            // A file that is not the table's Parquet: readers fail on it too; the bin stays, the rest goes on.
            Err(DeltaError::Data { message, .. }) => {
                error!(files = ?paths, error = message, "a bin could not be read; it is left as it is");
                report.unreadable.push(format!("a bin of {} files: {message}", paths.len()));
            }
            Err(e) => return Err(e),
        }
    }
    info!(?report, "compacted");
    Ok(report)
}

/// A generous guess of how long a bin takes (10 MB/s and a second), to stop before the deadline.
fn bin_time(bin: &[Small]) -> Duration {
    Duration::from_secs(1 + bin.iter().map(|f| f.size).sum::<u64>() / 10_000_000)
}

async fn compact_bin(
    table: &mut DeltaTable,
    spec: &'static TableSpec,
    partition: Option<(&str, &str)>,
    bin: Vec<Small>,
    target: u64,
    report: &mut CompactReport,
) -> Result<(), DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    // A bin another compaction took since the partition was listed is not read at all.
    let active = active_paths(table, spec)?;
    if !bin.iter().all(|f| active.contains(&f.path)) {
        report.bins_given_up += 1;
        return Ok(());
    }
    drop(active);
    let mut writer = RecordBatchWriter::for_table(table)
        .map_err(err)?
        .with_writer_properties(writer_properties())
        .with_target_file_size(target);
    // What the files store: the table's columns but the partition column.
    let stored: SchemaRef = {
        let full = writer.arrow_schema();
        let fields: Vec<_> = full
            .fields()
            .iter()
            .filter(|f| partition.is_none_or(|(c, _)| f.name() != c))
            .map(|f| f.as_ref().clone())
            .collect();
        Arc::new(deltalake::arrow::datatypes::Schema::new(fields))
    };
    // The bin's files, read a few at a time (each is a footer and a few column chunks: round trips, not bytes),
    // in their order. The futures are made before the stream runs them: a closure held across the awaits would
    // make the invocation's future lose `Send` (a known limit of the compiler with higher-ranked closures).
    let store = table.object_store();
    let reads: Vec<_> = bin
        .iter()
        .map(|f| {
            let (store, stored) = (Arc::clone(&store), Arc::clone(&stored));
            async move {
                // A file that does not read as the table's Parquet is named in the error.
                let unreadable = |e: &dyn std::fmt::Display| DeltaError::Data {
                    table: spec.name,
                    message: format!("{}: {e}", f.path),
                    source: None,
                };
                #[allow(deprecated)]
                // The size is the log's: no HEAD request before the footer's.
                let reader = ParquetObjectReader::new(store, f.location.clone()).with_file_size(f.size);
                let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(|e| unreadable(&e))?;
                let mut stream = builder.build().map_err(|e| unreadable(&e))?;
                let mut batches = Vec::new();
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| unreadable(&e))?;
                    batches.push(conform_cast(&batch, &stored).map_err(|e| unreadable(&e))?);
                }
                Ok::<_, DeltaError>(batches)
            }
        })
        .collect();
    let batches: Vec<RecordBatch> = futures::stream::iter(reads)
        .buffered(READ_CONCURRENCY)
        .try_collect::<Vec<Vec<RecordBatch>>>()
        .await?
        .into_iter()
        .flatten()
        .collect();
    let all = concat_batches(&stored, &batches).map_err(|e| data_error(spec, e))?;
    drop(batches);
    let rows = all.num_rows();
    let keys: Vec<SortColumn> = sort_columns(spec)
        .into_iter()
        .filter_map(|c| all.column_by_name(c))
        .map(|values| SortColumn {
            values: Arc::clone(values),
            options: Some(SortOptions { descending: false, nulls_first: true }),
        })
        .collect();
    let order =
        if keys.is_empty() { None } else { Some(lexsort_to_indices(&keys, None).map_err(|e| data_error(spec, e))?) };
    drop(keys);
    let values = match partition {
        Some((column, value)) => {
            let kind = table
                .snapshot()
                .map_err(err)?
                .schema()
                .field(column)
                .and_then(|f| f.data_type().as_primitive_opt().cloned())
                .unwrap_or(PrimitiveType::String);
            let scalar = kind.parse_scalar(value).map_err(|e| DeltaError::Data {
                table: spec.name,
                message: format!("partition value {column}={value}: {e}"),
                source: None,
            })?;
            Some(IndexMap::from([(column.to_owned(), scalar)]))
        }
        None => None,
    };
    let mut start = 0;
    while start < rows {
        let len = WRITE_SLICE_ROWS.min(rows - start);
        let slice = match &order {
            Some(order) => take_record_batch(&all, &order.slice(start, len)).map_err(|e| data_error(spec, e))?,
            None => all.slice(start, len),
        };
        match &values {
            Some(values) => {
                writer.write_partition(slice, values, WriteMode::Default).await.map_err(err)?;
            }
            None => writer.write(slice).await.map_err(err)?,
        }
        start += len;
    }
    let mut keys = KeyBounds::default();
    keys.observe(&all);
    drop(all);
    let mut adds = writer.flush().await.map_err(err)?;
    keys.apply(&mut adds);
    for a in &mut adds {
        a.data_change = false;
    }
    let ours: HashSet<String> = adds.iter().map(|a| a.path.clone()).collect();
    let theirs: HashSet<&str> = bin.iter().map(|f| f.path.as_str()).collect();
    let predicate = partition.map(|(column, value)| format!("{column} = '{value}'"));
    let operation = DeltaOperation::Optimize { predicate, target_size: i64::try_from(target).unwrap_or(i64::MAX) };
    let actions: Vec<Action> =
        bin.iter().map(|f| Action::Remove(f.remove.clone())).chain(adds.iter().cloned().map(Action::Add)).collect();
    // Whether a failed attempt may have landed with its answer lost: then the new files may be in the log's
    // history, and a given-up bin leaves them to vacuum instead of deleting them.
    let mut uncertain = false;
    for attempt in 1..=MAX_COMMIT_ATTEMPTS {
        // Checked on every attempt, the first too: the table may have moved past another compaction since the
        // partition's files were listed (a run a bin ahead of this one, a run started at the same time).
        let active = active_paths(table, spec)?;
        if attempt > 1 && ours.iter().any(|p| active.contains(p)) {
            let version = table.version().unwrap_or_default();
            info!(version, "the compaction had landed");
            record(report, &bin, &adds, rows, version);
            return Ok(());
        }
        if !theirs.iter().all(|p| active.contains(*p)) {
            warn!(files = bin.len(), uncertain, "a file of the bin was removed meanwhile; the bin is given up");
            report.bins_given_up += 1;
            if !uncertain {
                let store = table.log_store().object_store(None);
                for a in &adds {
                    let path =
                        deltalake::Path::parse(&a.path).unwrap_or_else(|_| deltalake::Path::from(a.path.as_str()));
                    if let Err(e) = store.delete(&path).await {
                        // Never committed: vacuum removes it after the retention.
                        warn!(path = a.path, error = %e, "an uncommitted compacted file could not be deleted");
                    }
                }
            }
            return Ok(());
        }
        let result = {
            let snapshot = table.snapshot().map_err(err)?;
            CommitBuilder::from(CommitProperties::default().with_max_retries(0))
                .with_actions(actions.clone())
                .build(Some(snapshot), table.log_store(), operation.clone())
                .await
        };
        let error = match result {
            Ok(done) => {
                record(report, &bin, &adds, rows, done.version());
                table.update_incremental(None).await.map_err(err)?;
                return Ok(());
            }
            Err(e) if retryable(&e) => e,
            Err(e) => return Err(err(e)),
        };
        uncertain |= answer_may_be_lost(&error);
        warn!(attempt, error = %error, "the compaction did not commit; reading the table again");
        tokio::time::sleep(backoff(attempt)).await;
        table.update_incremental(None).await.map_err(err)?;
    }
    Err(DeltaError::Contention { table: spec.name, attempts: MAX_COMMIT_ATTEMPTS })
}

/// The paths of the active files of `table` as loaded.
fn active_paths(table: &DeltaTable, spec: &'static TableSpec) -> Result<HashSet<String>, DeltaError> {
    let snapshot = table.snapshot().map_err(|source| DeltaError::Delta { table: spec.name, source })?;
    Ok(snapshot.log_data().iter().map(|f| f.path().into_owned()).collect())
}

/// Whether a failed commit may have written its log entry all the same (storage failed, not a version taken by
/// another writer).
fn answer_may_be_lost(e: &DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    match e {
        DeltaTableError::VersionAlreadyExists(_) => false,
        DeltaTableError::Transaction { source } => !matches!(
            source,
            TransactionError::VersionAlreadyExists(_)
                | TransactionError::MaxCommitAttempts(_)
                | TransactionError::CommitConflict(_)
        ),
        _ => true,
    }
}

fn record(report: &mut CompactReport, bin: &[Small], adds: &[Add], rows: usize, version: u64) {
    report.bins_committed += 1;
    report.files_removed += bin.len();
    report.files_added += adds.len();
    report.bytes_read += bin.iter().map(|f| f.size).sum::<u64>();
    report.bytes_written += adds.iter().map(|a| u64::try_from(a.size).unwrap_or(0)).sum::<u64>();
    report.rows += rows as u64;
    report.versions.push(version);
    info!(version, removed = bin.len(), added = adds.len(), rows, "compacted a bin");
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetlake_core::bronze::{LOCATIONS, PERFORMANCE_STATS, PREDICTIONS};

    fn small(path: &str, size: u64) -> Small {
        Small {
            path: path.into(),
            location: deltalake::Path::from(path),
            size,
            modified: 0,
            first_event: None,
            remove: Remove { path: path.into(), data_change: false, ..Remove::default() },
        }
    }

    #[test]
    fn files_are_binned_in_event_time_as_their_statistics_give_it() {
        let stats = |ts: &str| format!(r#"{{"numRecords":2,"minValues":{{"ts":"{ts}","_source_offset":7}}}}"#);
        let early = first_event_us(Some(&stats("2026-01-01T00:00:00.000Z")), Some("ts"));
        let late = first_event_us(Some(&stats("2026-01-01T00:15:00.000Z")), Some("ts"));
        assert_eq!(late.zip(early).map(|(l, e)| l - e), Some(15 * 60 * 1_000_000));
        assert_eq!(first_event_us(Some(&stats("x")), Some("_source_offset")), Some(7), "an integer column");
        assert_eq!(first_event_us(None, Some("ts")), None);
        assert_eq!(first_event_us(Some("{}"), Some("ts")), None);
        // One commit's files: one modification time, names in random order; the statistics order them.
        let mut files = vec![small("b", 1), small("a", 1), small("c", 1)];
        (files[0].first_event, files[1].first_event, files[2].first_event) = (early, late, None);
        in_event_order(&mut files);
        assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["c", "b", "a"]);
    }

    #[test]
    fn bins_hold_at_most_the_target_and_more_than_one_file() {
        let files = [("a", 40), ("b", 40), ("c", 40), ("d", 90), ("e", 5), ("f", 5)];
        let cut = bins(files.iter().map(|(p, s)| small(p, *s)).collect(), 100);
        let names: Vec<Vec<&str>> = cut.iter().map(|b| b.iter().map(|f| f.path.as_str()).collect()).collect();
        // c + d would pass 100: c is alone and stays as it is.
        assert_eq!(names, vec![vec!["a", "b"], vec!["d", "e", "f"]]);
        assert!(bins(vec![small("x", 10)], 100).is_empty(), "one file: nothing to gain");
        assert!(bins(Vec::new(), 100).is_empty());
    }

    #[test]
    fn rows_are_ordered_by_unit_then_time_never_by_the_partition_column() {
        assert_eq!(
            sort_columns(&LOCATIONS),
            ["transport_unit_id", "ts", "_source_partition", "_source_offset", "_source_key", "_line"]
        );
        assert_eq!(sort_columns(&PREDICTIONS)[..2], ["transport_unit_id", "predicted_at"]);
        assert_eq!(sort_columns(&PERFORMANCE_STATS)[..3], ["transport_unit_id", "ts_ms", "lsn"]);
    }
}
