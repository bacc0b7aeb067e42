//! The Delta Lake adapter: opens (or creates) a bronze table and appends record batches to it exactly once, with
//! any number of writers at the same time.
//!
//! # The exactly-once rule
//! A row is appended only if its [`Identity`] is in neither the table nor the rows already appended by this
//! append. Whether the table holds an identity is decided like this:
//! 1. **Kafka watermark (Delta application transaction).** Every commit records, per Kafka topic-partition of its
//!    rows, a `txn` with app id `kafka:<topic>:<partition>` and version = the highest offset of that topic-partition
//!    in the table. A record above the watermark cannot be in the table: it is new, with no lookup (the common,
//!    in-order case). deltalake only *records* `txn`s; reading them back and skipping is ours.
//! 2. **File statistics, then the files.** For the other rows (an offset at or below the watermark, a Debezium
//!    change, a dropped file's line), the writer lists the table's data files in the rows' partitions whose
//!    min/max statistics of the identity's sequence column (`_source_offset`, `lsn`, `_line`) overlap the rows'
//!    range, reads those files' identity columns, and drops the rows found there.
//!
//! # Commits
//! Data files are written first, then committed create-only (`If-None-Match: *` on `_delta_log/<version>.json`;
//! deltalake 1.x needs no lock table) on top of exactly the snapshot the checks ran against (deltalake's own
//! conflict resolution is off: it would let two appends of the same rows both in). When another writer committed
//! first, the writer waits a jittered backoff, reloads the table and checks only the files that appeared since:
//! - if they are this append's own files, the commit had landed though the call failed (a timed-out PUT): done;
//! - if they hold some of this append's identities, the append must be redone ([`DeltaError::Overlap`]);
//! - otherwise it commits again on top of the new version.
//!
//! Files written by an append that never commits (a crash, an overlap) are not in the log: readers never see
//! them and `VACUUM` removes them.

mod append;
pub mod cache;
mod commit;
pub mod compact;
mod dedupe;
mod encode;
pub mod maintain;
pub mod scan;
mod settings;
pub mod state;
mod table;

pub use append::{
    writer_properties, AppendStats, Appender, Committed, DISTINCT_COLUMNS, ROW_GROUP_BYTES, ROW_GROUP_ROWS,
};
pub use cache::TableCache;
pub use commit::Prepared;
pub use compact::{compact_partition, last_appends, CompactReport};
pub use maintain::{log_hygiene, vacuum, LogReport, VacuumReport};
pub use scan::{active_files, ActiveFile};
pub use settings::{storage_options, DeltaSettings};
pub use state::{
    change_columns, held, read_partition, refresh_partition, replace_partition, state_app_id, Refreshed, Replaced,
};
pub use table::{delta_type, open_existing, open_or_create};

// Every module's items are in scope here, so each module reaches its siblings' through `use super::*`.
#[allow(unused_imports)]
use self::{append::*, commit::*, dedupe::*, encode::*, settings::*, state::*, table::*};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deltalake::arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, PrimitiveArray};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::{
    DataType as ArrowType, Date32Type, Field, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit,
    TimestampMicrosecondType,
};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, DataType, StructField, Transaction};
// ParquetObjectReader is deprecated in parquet 59 in favour of hand-written readers; it still reads ranged GETs
// through deltalake's own object store, which is what we want (only the identity columns of a file are fetched).
use bytes::Bytes;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
#[allow(deprecated)]
use deltalake::parquet::arrow::async_reader::ParquetObjectReader;
use deltalake::parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::metadata::ParquetMetaData;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use indexmap::IndexMap;
use serde_json::Value;
use tracing::{error, info, instrument, warn};
use url::Url;

use fleetlake_core::bronze::{
    change_group, date_text, file_group, identity_columns, kafka_group, poll_group, IdKind, Identities, Identity, Kind,
    Layout, TableSpec, CHANGE_COLUMNS,
};
use fleetlake_core::fault::{Cause, Classify, Fault};

/// Commit attempts before the append gives up and fails (Lambda retries the invocation).
const MAX_COMMIT_ATTEMPTS: u32 = 25;

/// Errors of the Delta adapter.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// deltalake failed (storage, log, commit).
    #[error("delta table {table}: {source}")]
    Delta {
        /// Table name.
        table: &'static str,
        /// The deltalake error.
        #[source]
        source: DeltaTableError,
    },
    /// Arrow or Parquet failed on data this writer built or read.
    #[error("delta table {table}: {message}")]
    Data {
        /// Table name.
        table: &'static str,
        /// What failed.
        message: String,
        /// The Arrow, Parquet or task error, when one failed.
        #[source]
        source: Option<Cause>,
    },
    /// A writer that committed at the same time appended some of the same records: redo the append.
    #[error("delta table {table}: a concurrent commit holds some of these records; the append must be redone")]
    Overlap {
        /// Table name.
        table: &'static str,
    },
    /// Other writers kept committing first.
    #[error("delta table {table}: no commit after {attempts} attempts against concurrent writers")]
    Contention {
        /// Table name.
        table: &'static str,
        /// Attempts made.
        attempts: u32,
    },
    /// The table is in a state no retry repairs (a checkpoint that does not load) or a request does not fit it.
    #[error("delta table {table}: {message}")]
    Broken {
        /// Table name.
        table: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The table's schema does not fit this writer's (a column of the table unknown here, or of another type).
    #[error("delta table {table}: {message}")]
    Schema {
        /// Table name.
        table: &'static str,
        /// The difference.
        message: String,
    },
}

impl DeltaError {
    /// Whose fault: everything here is the environment's (storage, contention) except a schema that does not fit,
    /// which a retry will not fix.
    pub fn fault(&self) -> Fault {
        match self {
            DeltaError::Schema { .. } | DeltaError::Broken { .. } => Fault::Permanent,
            _ => Fault::Retryable,
        }
    }
}

impl Classify for DeltaError {
    fn fault(&self) -> Fault {
        DeltaError::fault(self)
    }
}
