//! The state tables of the change logs: a partition of a change log read whole, and a partition of a state table
//! replaced by new rows in one commit.
//!
//! A replacement removes every active file of the partition and adds the new ones in one create-only commit, on top
//! of exactly the snapshot it read (no rebase: a concurrent commit of the same table makes it read again). The
//! commit records a `txn` whose app id names the partition and whose version is the change log's version the rows
//! were computed from; a replacement from an older or the same version of the change log than the one recorded
//! changes nothing. So syncs that run late, twice or at the same time converge on the newest change log.

use super::*;

/// What [`replace_partition`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// The partition now holds the rows: this version committed them.
    Committed {
        /// The state table's version.
        version: u64,
        /// Files removed and added.
        removed: usize,
        /// Files added.
        added: usize,
    },
    /// The table already held the partition as of this version of the change log or a newer one.
    Superseded {
        /// The change log's version it holds the partition as of.
        held: i64,
    },
    /// The partition had no rows and gets none.
    Empty,
}

/// The app id of a state table partition's `txn`: `state:<partition folder>` (`state:` for an unpartitioned table).
pub fn state_app_id(partition: Option<(&str, &str)>) -> String {
    match partition {
        Some((column, value)) => format!("state:{column}={value}"),
        None => "state:".to_owned(),
    }
}

/// Every row of one partition (`(column, value)`, `None` for an unpartitioned table) of `table` at its loaded
/// version, with the columns `columns` of `spec` (the partition column filled in from the partition's value; a
/// column a file lacks is null).
pub async fn read_partition(
    table: &DeltaTable,
    spec: &'static TableSpec,
    partition: Option<(&str, &str)>,
    columns: &[&str],
) -> Result<Vec<RecordBatch>, DeltaError> {
    let data = |message: String| DeltaError::Data { table: spec.name, message, source: None };
    let full = spec.arrow_schema();
    // Nullable while read: the partition column is filled in after a file's columns are.
    let fields: Vec<_> = columns
        .iter()
        .map(|c| full.field_with_name(c).map(|f| f.clone().with_nullable(true)))
        .collect::<Result<_, _>>()
        .map_err(|e| DeltaError::Data { table: spec.name, message: e.to_string(), source: Some(Box::new(e)) })?;
    let target: SchemaRef = Arc::new(deltalake::arrow::datatypes::Schema::new(fields));
    let partition_column = partition.map(|(c, _)| c);
    let day = match partition {
        Some((column, value)) => Some(
            chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .ok()
                .zip(chrono::NaiveDate::from_ymd_opt(1970, 1, 1))
                .map(|(d, epoch)| (d - epoch).num_days())
                .and_then(|d| i32::try_from(d).ok())
                .ok_or_else(|| data(format!("partition value {column}={value} is not a date")))?,
        ),
        None => None,
    };
    let files: Vec<deltalake::Path> = {
        let snapshot = table.snapshot().map_err(|source| DeltaError::Delta { table: spec.name, source })?;
        snapshot
            .log_data()
            .iter()
            .filter(|f| in_partition(&f.partition_values_map(), partition))
            .map(|f| f.object_store_path())
            .collect()
    };
    let mut out = Vec::new();
    for location in files {
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(table.object_store(), location);
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(|e| data_error(spec, e))?;
        let stored = columns.iter().copied().filter(|c| Some(*c) != partition_column);
        let mask = ProjectionMask::columns(builder.parquet_schema(), stored);
        let mut stream = builder.with_projection(mask).build().map_err(|e| data_error(spec, e))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| data_error(spec, e))?;
            let rows = batch.num_rows();
            let mut batch = conform_cast(&batch, &target).map_err(|e| data_error(spec, e))?;
            if let (Some(column), Some(day)) = (partition_column, day) {
                if let Ok(i) = target.index_of(column) {
                    let mut columns = batch.columns().to_vec();
                    columns[i] = Arc::new(PrimitiveArray::<Date32Type>::from_value(day, rows));
                    batch = RecordBatch::try_new(Arc::clone(&target), columns).map_err(|e| data_error(spec, e))?;
                }
            }
            out.push(batch);
        }
    }
    Ok(out)
}

/// `batch` with the columns of `target`, in its order, cast to its types (a file written by another engine may
/// store a timestamp with another unit or zone label); a column the batch lacks is null.
pub(crate) fn conform_cast(
    batch: &RecordBatch,
    target: &SchemaRef,
) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    let columns: Vec<ArrayRef> = target
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(Arc::clone(c)),
            Some(c) => deltalake::arrow::compute::cast(c, f.data_type()),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(Arc::clone(target), columns)
}

/// Whether a file with these partition values is in `partition` (every file of an unpartitioned table is).
pub(crate) fn in_partition(values: &HashMap<String, Option<String>>, partition: Option<(&str, &str)>) -> bool {
    match partition {
        Some((column, value)) => values.get(column).cloned().flatten().as_deref() == Some(value),
        None => true,
    }
}

/// The change log version a state table holds a partition as of (its `txn` version).
pub async fn held(
    table: &DeltaTable,
    spec: &'static TableSpec,
    partition: Option<(&str, &str)>,
) -> Result<Option<i64>, DeltaError> {
    held_version(table, spec, &state_app_id(partition)).await
}

async fn held_version(table: &DeltaTable, spec: &TableSpec, app_id: &str) -> Result<Option<i64>, DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    let snapshot = table.snapshot().map_err(err)?;
    snapshot.transaction_version(table.log_store().as_ref(), app_id).await.map_err(err)
}

pub(crate) fn data_error<E: std::error::Error + Send + Sync + 'static>(spec: &TableSpec, e: E) -> DeltaError {
    DeltaError::Data { table: spec.name, message: e.to_string(), source: Some(Box::new(e)) }
}

/// Replaces the rows of one partition of the state table `table` (opened with [`open_or_create`]) with `rows`
/// (the table's schema), as computed from version `source_version` of its change log. See the module's
/// documentation for the rules; `table` is left at the version it last read or committed.
#[instrument(skip(table, rows), fields(table = spec.name))]
pub async fn replace_partition(
    table: &mut DeltaTable,
    spec: &'static TableSpec,
    partition: Option<(&str, &str)>,
    rows: RecordBatch,
    source_version: i64,
) -> Result<Replaced, DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    let app_id = state_app_id(partition);
    if let Some(held) = held_version(table, spec, &app_id).await?.filter(|h| *h >= source_version) {
        return Ok(Replaced::Superseded { held });
    }

    // The new files, written once: they belong to no snapshot until a commit names them.
    let mut adds: Vec<Add> = Vec::new();
    if rows.num_rows() > 0 {
        let mut writer = RecordBatchWriter::for_table(table).map_err(err)?.with_writer_properties(writer_properties());
        let rows = conform(&rows, &writer.arrow_schema()).map_err(|e| data_error(spec, e))?;
        match partition {
            Some((column, _)) => {
                let array = rows.column_by_name(column).ok_or_else(|| DeltaError::Data {
                    table: spec.name,
                    message: format!("the rows have no partition column {column}"),
                    source: None,
                })?;
                let value = ScalarExt::from_array(array.as_ref(), 0).ok_or_else(|| DeltaError::Data {
                    table: spec.name,
                    message: format!("{column}: not a partition value"),
                    source: None,
                })?;
                let values = IndexMap::from([(column.to_owned(), value)]);
                writer.write_partition(rows, &values, WriteMode::Default).await.map_err(err)?;
            }
            None => writer.write(rows).await.map_err(err)?,
        }
        adds = writer.flush().await.map_err(err)?;
    }
    let ours: HashSet<String> = adds.iter().map(|a| a.path.clone()).collect();
    let partition_by = (!spec.partition_columns().is_empty()).then(|| spec.partition_columns());
    let predicate = partition.map(|(column, value)| format!("{column} = '{value}'"));

    for attempt in 1..=MAX_COMMIT_ATTEMPTS {
        let removes: Vec<Action> = {
            let snapshot = table.snapshot().map_err(err)?;
            snapshot
                .log_data()
                .iter()
                .filter(|f| in_partition(&f.partition_values_map(), partition))
                .map(|f| Action::Remove(f.remove_action(true)))
                .collect()
        };
        if removes.is_empty() && adds.is_empty() {
            return Ok(Replaced::Empty);
        }
        let removed = removes.len();
        let txn =
            Transaction::new_with_last_update(&app_id, source_version, Some(chrono::Utc::now().timestamp_millis()));
        let props = CommitProperties::default().with_max_retries(0).with_application_transaction(txn);
        let actions: Vec<Action> = removes.into_iter().chain(adds.iter().cloned().map(Action::Add)).collect();
        let operation = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: partition_by.clone(),
            predicate: predicate.clone(),
        };
        let result = {
            let snapshot = table.snapshot().map_err(err)?;
            CommitBuilder::from(props).with_actions(actions).build(Some(snapshot), table.log_store(), operation).await
        };
        let error = match result {
            Ok(done) => {
                info!(version = done.version(), attempt, removed, added = adds.len(), "replaced the partition");
                table.update_incremental(None).await.map_err(err)?;
                return Ok(Replaced::Committed { version: done.version(), removed, added: adds.len() });
            }
            Err(e) if retryable(&e) => e,
            Err(e) => return Err(err(e)),
        };
        warn!(attempt, error = %error, "the replacement did not go through; reading the table again");
        tokio::time::sleep(backoff(attempt)).await;
        table.update_incremental(None).await.map_err(err)?;
        // A commit that landed although its answer was lost shows as our files.
        let landed = !ours.is_empty()
            && table.snapshot().map_err(err)?.log_data().iter().any(|f| ours.contains(f.path().as_ref()));
        if landed {
            let version = table.version().unwrap_or_default();
            info!(version, "the replacement had landed");
            return Ok(Replaced::Committed { version, removed, added: adds.len() });
        }
        if let Some(held) = held_version(table, spec, &app_id).await?.filter(|h| *h >= source_version) {
            return Ok(Replaced::Superseded { held });
        }
    }
    Err(DeltaError::Contention { table: spec.name, attempts: MAX_COMMIT_ATTEMPTS })
}

/// The change log columns the state rules read: `op`, `ts_ms`, `lsn`, the row's columns and the delivery
/// (`_source_partition`, `_source_offset`, then `_file`, `_line` for changes landed from files).
pub fn change_columns(change_log: &'static TableSpec) -> Vec<&'static str> {
    CHANGE_COLUMNS
        .iter()
        .chain(change_log.data)
        .map(|c| c.name)
        .chain(["_source_partition", "_source_offset", "_file", "_line"])
        .collect()
}

/// What [`refresh_partition`] did, per state table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// State table partitions replaced.
    pub replaced: u64,
    /// State table partitions already as of this change log version or a newer one, or as of a version after
    /// which no commit touched the partition (a late or repeated sync of an older commit).
    pub superseded: u64,
    /// State table partitions left as they are: `only_missing` found them built.
    pub present: u64,
}

/// Brings one partition of each state table of the change log `spec` up to `change_log`'s version: the partition
/// of the change log is read whole (only when some state table needs it) and its state rows replace the state
/// tables' partition ([`replace_partition`]). With `only_missing`, a state table that holds the partition as of any
/// version is left alone (a backfill of partitions never built).
pub async fn refresh_partition(
    tables: &TableCache,
    change_log: &DeltaTable,
    spec: &'static TableSpec,
    partition: Option<(&str, &str)>,
    only_missing: bool,
) -> Result<Refreshed, DeltaError> {
    let version = i64::try_from(change_log.version().unwrap_or(0)).unwrap_or(i64::MAX);
    let mut out = Refreshed::default();
    let mut pending = Vec::new();
    // Whether a commit after a version touched the partition, by version (both state tables usually hold the same).
    let mut touched: HashMap<i64, bool> = HashMap::new();
    for state in spec.states() {
        let table = tables.take_or_create(state).await?;
        // Built before: a `txn` for the partition, or (its `txn` expired with setTransactionRetentionDuration) files
        // in it. A partition whose every key was deleted has neither and is read again: its rewrite is empty.
        let built = |held: Option<i64>| -> Result<bool, DeltaError> {
            Ok(held.is_some()
                || table
                    .snapshot()
                    .map_err(|source| DeltaError::Delta { table: state.name, source })?
                    .log_data()
                    .iter()
                    .any(|f| in_partition(&f.partition_values_map(), partition)))
        };
        let h = held(&table, state, partition).await?;
        let current = match h {
            Some(h) if h >= version => true,
            Some(h) => match touched.get(&h) {
                Some(t) => !*t,
                None => {
                    let t = touched_since(change_log, spec, partition, h, version).await?;
                    touched.insert(h, t);
                    !t
                }
            },
            None => false,
        };
        if current {
            out.superseded += 1;
        } else if only_missing && built(h)? {
            out.present += 1;
        } else {
            pending.push((state, table));
            continue;
        }
        tables.put(state, table).await;
    }
    if pending.is_empty() {
        return Ok(out);
    }
    let changes = read_partition(change_log, spec, partition, &change_columns(spec)).await?;
    let ordered = fleetlake_core::state::order(spec, &changes).map_err(|e| data_error(spec, e))?;
    for (state, mut table) in pending {
        let rows = ordered.state(state).map_err(|e| data_error(state, e));
        let replaced = match rows {
            Ok(rows) => replace_partition(&mut table, state, partition, rows, version).await,
            Err(e) => Err(e),
        };
        tables.put(state, table).await;
        match replaced? {
            Replaced::Committed { .. } => out.replaced += 1,
            Replaced::Superseded { .. } => out.superseded += 1,
            Replaced::Empty => {}
        }
    }
    Ok(out)
}

/// Most change log commits [`touched_since`] reads before it answers yes: rewriting a partition costs less than
/// reading more commits.
const MAX_COMMITS_READ: i64 = 200;

/// Whether a commit of the change log after version `after`, up to `version`, added or removed a file of
/// `partition` with rows changed (a compaction changes none). Yes when a commit cannot be read (log cleanup removed it) or there are too many to read.
async fn touched_since(
    change_log: &DeltaTable,
    spec: &'static TableSpec,
    partition: Option<(&str, &str)>,
    after: i64,
    version: i64,
) -> Result<bool, DeltaError> {
    if version - after > MAX_COMMITS_READ {
        return Ok(true);
    }
    let store = change_log.log_store();
    for v in (after + 1).max(0)..=version {
        let v = u64::try_from(v).unwrap_or_default();
        let Some(commit) =
            store.read_commit_entry(v).await.map_err(|source| DeltaError::Delta { table: spec.name, source })?
        else {
            return Ok(true);
        };
        // A compaction rewrites rows without changing them.
        if !fleetlake_core::partitions::changes_rows(&commit) {
            continue;
        }
        let Ok((partitions, refused)) = fleetlake_core::partitions::touched_partitions(spec, &commit) else {
            return Ok(true);
        };
        // An unpartitioned table's commits touch all of it.
        let hit =
            partitions.iter().any(|p| partition.is_none() || p.as_pair().is_none_or(|pair| Some(pair) == partition));
        if hit || !refused.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}
