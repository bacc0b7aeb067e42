//! The quarantine writer: records a stage could not process, kept with the reason, never dropped.

use chrono::NaiveDate;
use fleetlake_core::config::Prefix;
use fleetlake_core::lake::quarantine_key;
pub use fleetlake_core::quarantine::QuarantineLine;
use tracing::{info, instrument};

use crate::s3::{PutOutcome, S3Store};
use crate::Result;

/// Writes quarantine objects `quarantine/<stage>/dt=…/<source-name>.ndjson` for one stage.
#[derive(Debug, Clone)]
pub struct QuarantineWriter {
    store: S3Store,
    prefix: Prefix,
    stage: &'static str,
}

impl QuarantineWriter {
    /// A writer for `stage` under `prefix` of the store's bucket.
    pub fn new(store: S3Store, prefix: Prefix, stage: &'static str) -> Self {
        Self { store, prefix, stage }
    }

    /// Writes `lines` as one object named after their source; returns its key, or `None` when there is nothing
    /// to write. Names are deterministic, so a retry finds the object already there and leaves it as it is.
    /// A failed write is an error: the caller must fail the invocation rather than lose the records.
    #[instrument(skip(self, lines), fields(stage = self.stage, lines = lines.len()))]
    pub async fn write(&self, dt: NaiveDate, source_name: &str, lines: &[QuarantineLine]) -> Result<Option<String>> {
        if lines.is_empty() {
            return Ok(None);
        }
        let key = quarantine_key(&self.prefix, self.stage, dt, source_name);
        let mut body = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut body, line).map_err(std::io::Error::from)?;
            body.push(b'\n');
        }
        let outcome = self.store.put_if_absent(&key, body, "application/x-ndjson").await?;
        info!(key = %key, already_there = outcome == PutOutcome::AlreadyExists, "quarantined");
        Ok(Some(key))
    }
}

/// Default size of one quarantine part (`QUARANTINE_PART_BYTES`).
pub const DEFAULT_PART_BYTES: usize = 16 << 20;

/// The quarantine lines of one input object, written in parts of about `part_bytes` so that an object full of bad
/// lines never sits in memory whole: `<name>.ndjson`, then `<name>.part-2.ndjson`, `<name>.part-3.ndjson`, … The
/// cut points depend only on the input, so a retry writes the same parts (create-only, as every quarantine object).
#[derive(Debug)]
pub struct QuarantineParts {
    writer: QuarantineWriter,
    dt: NaiveDate,
    name: String,
    part_bytes: usize,
    lines: Vec<QuarantineLine>,
    bytes: usize,
    parts: u32,
    total: u64,
}

impl QuarantineParts {
    /// The parts of the object whose quarantine name is `name`, filed under `dt`.
    pub fn new(writer: &QuarantineWriter, dt: NaiveDate, name: String, part_bytes: usize) -> Self {
        Self { writer: writer.clone(), dt, name, part_bytes, lines: Vec::new(), bytes: 0, parts: 0, total: 0 }
    }

    /// Adds a line; call [`QuarantineParts::flush_if_full`] after it.
    pub fn push(&mut self, line: QuarantineLine) {
        self.bytes += line.reason.len() + line.raw.as_ref().map_or(0, String::len) + 64;
        self.lines.push(line);
    }

    /// Writes the lines held as the next part once they reach the part size.
    pub async fn flush_if_full(&mut self) -> Result<()> {
        if self.bytes >= self.part_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let name = match self.parts {
            0 => self.name.clone(),
            n => format!("{}.part-{}", self.name, n + 1),
        };
        self.writer.write(self.dt, &name, &self.lines).await?;
        self.parts += 1;
        self.total += self.lines.len() as u64;
        self.lines.clear();
        self.bytes = 0;
        Ok(())
    }

    /// Writes what is left; returns how many lines were quarantined in all.
    pub async fn finish(mut self) -> Result<u64> {
        if !self.lines.is_empty() {
            self.flush().await?;
        }
        Ok(self.total)
    }
}
