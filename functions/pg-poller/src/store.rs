//! The S3 side: cursor states written create-only (two runs from one state cannot both record the next), key
//! snapshots, and the landed objects of a run.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};

use flate2::write::GzEncoder;
use flate2::Compression;
use fleetlake_aws::s3::{PutOutcome, S3Store};
use fleetlake_aws::Error as S3Error;
use fleetlake_core::config::Prefix;
use fleetlake_core::poll::{PollState, STATE_FORMAT};
use tracing::{info, warn};

/// Where one table's states and key snapshots live: `<state prefix><schema>.<table>/`.
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    store: S3Store,
    folder: String,
}

/// Why a state could not be read or recorded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("S3 ListObjectsV2 s3://{bucket}/{prefix} failed: {message}")]
    List { bucket: String, prefix: String, message: String },
    #[error("the state s3://{bucket}/{key} is unreadable ({message}): fix or remove it by hand; nothing was polled")]
    Corrupt { bucket: String, key: String, message: String },
}

impl StateStore {
    pub(crate) fn new(store: S3Store, prefix: &Prefix, table: &str) -> Self {
        Self { store, folder: format!("{prefix}{table}/") }
    }

    fn state_key(&self, seq: u64) -> String {
        format!("{}state-{seq:016}.json", self.folder)
    }

    /// The key of a new key snapshot recorded with state `seq` by `run`.
    pub(crate) fn key_snapshot_key(&self, seq: u64, run: &str) -> String {
        format!("{}keys-{seq:016}-{run}.ndjson.gz", self.folder)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .store
                .client()
                .list_objects_v2()
                .bucket(self.store.bucket())
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| StateError::List {
                    bucket: self.store.bucket().to_owned(),
                    prefix: prefix.to_owned(),
                    message: aws_sdk_s3::Error::from(e).to_string(),
                })?;
            keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(keys),
            }
        }
    }

    /// The latest recorded state, or the initial one.
    pub(crate) async fn latest(&self, table: &str) -> Result<PollState, StateError> {
        let prefix = format!("{}state-", self.folder);
        let Some(key) = self.list(&prefix).await?.into_iter().max() else {
            return Ok(PollState::initial(table));
        };
        let bytes = self.store.get_bytes(&key).await?;
        let corrupt =
            |message: String| StateError::Corrupt { bucket: self.store.bucket().to_owned(), key: key.clone(), message };
        let state: PollState = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if state.format != STATE_FORMAT || state.table != table || self.state_key(state.seq) != key {
            return Err(corrupt(format!(
                "format {}, table {:?}, sequence {} do not match its name and this code",
                state.format, state.table, state.seq
            )));
        }
        Ok(state)
    }

    /// Records `state` (its `seq` one more than the state it started from): `false` when another run recorded that
    /// sequence number first (this run's cursor is then not recorded).
    pub(crate) async fn record(&self, state: &PollState) -> Result<bool, StateError> {
        let body = serde_json::to_vec(state).map_err(|e| S3Error::Encode(e.into()))?;
        let key = self.state_key(state.seq);
        match self.store.put_if_absent(&key, body, "application/json").await? {
            PutOutcome::Created => Ok(true),
            PutOutcome::AlreadyExists => Ok(false),
        }
    }

    /// Deletes states older than the newest `keep`, and key snapshots none of the kept states names. Best effort:
    /// a failure is logged, and the next run tries again.
    pub(crate) async fn prune(&self, newest: &PollState, keep: u64) {
        let result: Result<usize, StateError> = async {
            let mut deleted = 0;
            let keys = self.list(&self.folder).await?;
            let oldest_kept = newest.seq.saturating_sub(keep - 1);
            let mut named = HashSet::new();
            for key in keys.iter().filter(|k| k.starts_with(&format!("{}state-", self.folder))) {
                let seq = key
                    .rsplit('-')
                    .next()
                    .and_then(|s| s.strip_suffix(".json"))
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(u64::MAX);
                if seq < oldest_kept {
                    self.delete(key).await?;
                    deleted += 1;
                } else if let Ok(bytes) = self.store.get_bytes(key).await {
                    if let Ok(s) = serde_json::from_slice::<PollState>(&bytes) {
                        named.extend(s.key_snapshot);
                    }
                }
            }
            for key in keys.iter().filter(|k| k.starts_with(&format!("{}keys-", self.folder))) {
                // A snapshot newer than the newest state may belong to a run still going: left alone.
                let newer = key.get(self.folder.len() + 5..self.folder.len() + 21).and_then(|s| s.parse::<u64>().ok());
                if !named.contains(key) && newer.is_some_and(|seq| seq <= newest.seq) {
                    self.delete(key).await?;
                    deleted += 1;
                }
            }
            Ok(deleted)
        }
        .await;
        match result {
            Ok(n) if n > 0 => info!(deleted = n, "old states and key snapshots deleted"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning old states failed; the next run tries again"),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.store.client().delete_object().bucket(self.store.bucket()).key(key).send().await.map_err(|e| {
            StateError::List {
                bucket: self.store.bucket().to_owned(),
                prefix: key.to_owned(),
                message: aws_sdk_s3::Error::from(e).to_string(),
            }
        })?;
        Ok(())
    }

    /// The keys of a snapshot, each with its `updated_at` (µs) when it was listed.
    pub(crate) async fn read_keys(&self, key: &str) -> Result<HashMap<String, i64>, StateError> {
        let bytes = self.store.get_bytes(key).await?;
        let corrupt = |message: String| StateError::Corrupt {
            bucket: self.store.bucket().to_owned(),
            key: key.to_owned(),
            message,
        };
        let mut keys = HashMap::new();
        for line in std::io::BufReader::new(flate2::read::GzDecoder::new(&bytes[..])).lines() {
            let line = line.map_err(|e| corrupt(e.to_string()))?;
            if line.is_empty() {
                continue;
            }
            let (k, us) =
                line.rsplit_once('\t').ok_or_else(|| corrupt(format!("a line without its time: {line:?}")))?;
            keys.insert(k.to_owned(), us.parse().map_err(|_| corrupt(format!("not a time: {us:?}")))?);
        }
        Ok(keys)
    }

    /// Writes a key snapshot (create-only).
    pub(crate) async fn write_keys(&self, key: &str, body: Vec<u8>) -> Result<(), StateError> {
        self.store.put_if_absent(key, body, "application/gzip").await?;
        Ok(())
    }
}

/// Lines gathered into one gzip NDJSON body.
#[derive(Debug)]
pub(crate) struct GzLines {
    gz: GzEncoder<Vec<u8>>,
    pub(crate) lines: usize,
}

impl GzLines {
    pub(crate) fn new() -> Self {
        Self { gz: GzEncoder::new(Vec::new(), Compression::default()), lines: 0 }
    }

    pub(crate) fn push(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.gz.write_all(line)?;
        self.gz.write_all(b"\n")?;
        self.lines += 1;
        Ok(())
    }

    pub(crate) fn finish(self) -> std::io::Result<Vec<u8>> {
        self.gz.finish()
    }
}
