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
