//! What a table's loaded version holds: its active data files, with their partition value and statistics.

use deltalake::DeltaTable;
use fleetlake_core::bronze::TableSpec;

use crate::DeltaError;

/// One active data file of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveFile {
    /// The path relative to the table root, as the log records it.
    pub path: String,
    /// The value of the table's partition column (`None` for an unpartitioned table, or a null value).
    pub partition: Option<String>,
    /// The file's statistics as JSON (`numRecords`, `minValues`, `maxValues`), when recorded.
    pub stats: Option<String>,
    /// Its size in bytes, as the log records it (a reader that knows it needs no HEAD request first).
    pub size: u64,
}

/// The active data files of `table` at its loaded version.
pub fn active_files(table: &DeltaTable, spec: &'static TableSpec) -> Result<Vec<ActiveFile>, DeltaError> {
    let snapshot = table.snapshot().map_err(|source| DeltaError::Delta { table: spec.name, source })?;
    let column = spec.partitioning.map(|p| p.column);
    Ok(snapshot
        .log_data()
        .iter()
        .map(|f| ActiveFile {
            path: f.object_store_path().to_string(),
            partition: column.and_then(|c| f.partition_values_map().get(c).cloned().flatten()),
            stats: f.stats(),
            size: u64::try_from(f.size()).unwrap_or(0),
        })
        .collect())
}
