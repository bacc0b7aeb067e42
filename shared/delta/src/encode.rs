//! The encoders of an append: Parquet writers, each encoding and uploading on a task of its own while the appender
//! checks the next chunk's identities.
//!
//! A chunk goes whole to one writer (a free one, or the oldest one dispatched once it is done), so a partition of a
//! large append gets up to one file per writer instead of one file in all; an append of one chunk still writes one
//! file per partition. One writer is the default: two measured no faster under a quota of two CPUs
//! (`make bench-delta`), since encoding is not what the append waits for there. [`Encoders::per_core`] gives one
//! per CPU the process may use (`available_parallelism`, which follows CPU affinity and a cgroup's CPU quota), at
//! most [`MAX_ENCODERS`].

use super::*;
use std::collections::VecDeque;

/// Writers at most, whatever the machine: each holds a partly written file per partition in memory.
pub(crate) const MAX_ENCODERS: usize = 4;

/// A writer at work on a task, returning itself when done.
type Busy = tokio::task::JoinHandle<Result<RecordBatchWriter, DeltaError>>;

/// The append's writers.
pub(crate) struct Encoders {
    spec: &'static TableSpec,
    idle: Vec<RecordBatchWriter>,
    /// Writers at work, oldest first.
    busy: VecDeque<Busy>,
    /// The table's schema as the writers take it.
    schema: SchemaRef,
    /// The object keys written, for the files' statistics.
    keys: KeyBounds,
}

impl Encoders {
    /// `n` writers for `table` (at least one), each with `target_file_bytes` files.
    pub(crate) fn new(
        spec: &'static TableSpec,
        table: &DeltaTable,
        target_file_bytes: u64,
        n: usize,
    ) -> Result<Self, DeltaTableError> {
        let writer = || {
            Ok::<_, DeltaTableError>(
                RecordBatchWriter::for_table(table)?
                    .with_writer_properties(writer_properties())
                    .with_target_file_size(target_file_bytes),
            )
        };
        let idle = (0..n.max(1)).map(|_| writer()).collect::<Result<Vec<_>, _>>()?;
        let schema = idle[0].arrow_schema();
        Ok(Self { spec, idle, busy: VecDeque::new(), schema, keys: KeyBounds::default() })
    }

    /// Writers for this process: one per core it may use, at most [`MAX_ENCODERS`].
    pub(crate) fn per_core() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from).clamp(1, MAX_ENCODERS)
    }

    /// The table's schema as the writers take it.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Hands `batch` (the table's schema) to a free writer, waiting for the oldest one at work when none is free.
    /// Returns once the batch is handed over; its encoding error, if any, comes from a later call.
    pub(crate) async fn write(&mut self, batch: RecordBatch) -> Result<(), DeltaError> {
        let mut writer = match self.idle.pop() {
            Some(w) => w,
            None => self.wait_oldest().await?,
        };
        self.keys.observe(&batch);
        let spec = self.spec;
        self.busy.push_back(tokio::spawn(async move {
            write_partitions(&mut writer, spec, batch).await?;
            Ok(writer)
        }));
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<RecordBatchWriter, DeltaError> {
        let task = self.busy.pop_front().ok_or_else(|| DeltaError::Data {
            table: self.spec.name,
            message: "no writer to wait for".to_owned(),
            source: None,
        })?;
        match task.await {
            Ok(result) => result,
            // A panic while encoding fails the append (Lambda retries its objects); its files are never committed.
            Err(e) => Err(DeltaError::Data {
                table: self.spec.name,
                message: format!("encoding task failed: {e}"),
                source: Some(Box::new(e)),
            }),
        }
    }

    /// Waits for every writer and closes their files: the `add` actions of all of them, writer by writer.
    pub(crate) async fn flush(&mut self) -> Result<Vec<Add>, DeltaError> {
        while !self.busy.is_empty() {
            let writer = self.wait_oldest().await?;
            self.idle.push(writer);
        }
        let table = self.spec.name;
        let mut adds = Vec::new();
        for writer in &mut self.idle {
            adds.extend(writer.flush().await.map_err(|source| DeltaError::Delta { table, source })?);
        }
        self.keys.apply(&mut adds);
        Ok(adds)
    }
}

impl Drop for Encoders {
    /// An append given up (an object failed, an overlap): its writers stop; their files are never committed.
    fn drop(&mut self) {
        for task in &self.busy {
            task.abort();
        }
    }
}

/// Writes a batch with partition values (the table's schema) through one writer. A batch that changes partition
/// day only a few times (positions in event order) goes in as slices of one day each, sparing deltalake's
/// general split (a sort and a gather of every column); any other batch takes the general split.
pub(crate) async fn write_partitions(
    writer: &mut RecordBatchWriter,
    spec: &'static TableSpec,
    batch: RecordBatch,
) -> Result<(), DeltaError> {
    let err = |source| DeltaError::Delta { table: spec.name, source };
    let column = spec.partitioning.and_then(|p| Some((p.column, batch.column_by_name(p.column)?.clone())));
    let Some((name, column)) = column.filter(|(_, c)| c.null_count() == 0) else {
        return writer.write(batch).await.map_err(err);
    };
    let Some(days) = column.as_primitive_opt::<Date32Type>() else {
        return writer.write(batch).await.map_err(err);
    };
    let mut stretches: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for i in 1..=days.len() {
        if i == days.len() || days.value(i) != days.value(start) {
            stretches.push((start, i - start));
            start = i;
        }
    }
    if stretches.len() > MAX_STRETCHES {
        return writer.write(batch).await.map_err(err);
    }
    for (start, len) in stretches {
        let value = ScalarExt::from_array(column.as_ref(), start).ok_or_else(|| DeltaError::Data {
            table: spec.name,
            message: format!("{name}: not a partition value"),
            source: None,
        })?;
        let values = IndexMap::from([(name.to_owned(), value)]);
        writer.write_partition(batch.slice(start, len), &values, WriteMode::Default).await.map_err(err)?;
    }
    Ok(())
}
