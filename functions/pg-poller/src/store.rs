//! The S3 side: cursor states written create-only (two runs from one state cannot both record the next), key
//! snapshots, and the landed objects of a run.

use std::collections::HashMap;
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

    /// The sequence number in a state's or a key snapshot's name (`state-<seq>.json`, `keys-<seq>-<run>…`).
    fn seq_of(&self, key: &str) -> Option<u64> {
        let name = key.strip_prefix(&self.folder)?;
        let digits = name.strip_prefix("state-").or_else(|| name.strip_prefix("keys-"))?;
        digits.get(..16)?.parse().ok()
    }

    /// Deletes states older than the newest `keep`, and the key snapshots older than the one the oldest kept state
    /// names (each state names its table's latest snapshot, so no kept state names an older one); a snapshot newer
    /// than `newest` may belong to a run still going and is left alone. Best effort: a failure is logged, and the
    /// next run tries again.
    pub(crate) async fn prune(&self, newest: &PollState, keep: u64) {
        let result: Result<usize, StateError> = async {
            let keys = self.list(&self.folder).await?;
            let oldest_kept = newest.seq.saturating_sub(keep - 1);
            let states = keys.iter().filter(|k| k.starts_with(&format!("{}state-", self.folder)));
            let (old, kept): (Vec<&String>, Vec<&String>) =
                states.partition(|k| self.seq_of(k).is_some_and(|seq| seq < oldest_kept));
            let Some(oldest) = kept.iter().min_by_key(|k| self.seq_of(k)) else { return Ok(0) };
            let oldest: PollState =
                serde_json::from_slice(&self.store.get_bytes(oldest).await?).map_err(|e| StateError::Corrupt {
                    bucket: self.store.bucket().to_owned(),
                    key: (*oldest).clone(),
                    message: e.to_string(),
                })?;
            let floor = oldest.key_snapshot.as_deref().and_then(|k| self.seq_of(k)).unwrap_or(oldest.seq);
            let snapshots = keys.iter().filter(|k| {
                k.starts_with(&format!("{}keys-", self.folder))
                    && self.seq_of(k).is_some_and(|seq| seq < floor && seq <= newest.seq)
            });
            let doomed: Vec<&String> = old.into_iter().chain(snapshots).collect();
            for key in &doomed {
                self.delete(key).await?;
            }
            Ok(doomed.len())
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

    /// Writes `keys` (create-only) as the key snapshot of the state `next` will record
    /// (`keys-<seq>-<run>.ndjson.gz`), and folds the keys landed or deleted since the last one into it.
    pub(crate) async fn record_keys(&self, next: &mut PollState, keys: GzLines) -> Result<(), StateError> {
        let key = format!("{}keys-{:016}-{}.ndjson.gz", self.folder, next.seq, next.run);
        let body = keys.finish().map_err(S3Error::Encode)?;
        self.store.put_if_absent(&key, body, "application/gzip").await?;
        next.key_snapshot = Some(key);
        next.keys_since.clear();
        next.deleted_since.clear();
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

    /// A key snapshot's line: the key (a JSON array, which never holds a raw tab) and its `updated_at` in µs, as
    /// [`StateStore::read_keys`] reads it.
    pub(crate) fn push_key(&mut self, key: &str, updated_at_us: i64) -> std::io::Result<()> {
        self.push(format!("{key}\t{updated_at_us}").as_bytes())
    }

    pub(crate) fn finish(self) -> std::io::Result<Vec<u8>> {
        self.gz.finish()
    }
}
