//! Committing an append create-only on top of the snapshot its checks ran against, retried against concurrent writers.

use super::*;

/// Data files written and closed, not yet committed.
#[derive(Debug)]
pub struct Prepared {
    pub(crate) appender: Appender,
    pub(crate) adds: Vec<Add>,
}

impl Prepared {
    /// The data files, as `add` actions.
    pub fn files(&self) -> &[Add] {
        &self.adds
    }

    /// Commits the files as one version; `None` when there was nothing to commit (every row a duplicate).
    /// `metadata` goes into the commit's `commitInfo`.
    #[instrument(skip_all, fields(table = self.appender.spec.name))]
    pub async fn commit(self, metadata: Vec<(String, Value)>) -> Result<Committed, DeltaError> {
        let Prepared { appender: mut this, adds } = self;
        if adds.is_empty() {
            return Ok(Committed { version: None, stats: this.stats, table: this.table });
        }
        let ours: HashSet<String> = adds.iter().map(|a| a.path.clone()).collect();
        let partition_by = (!this.spec.partition_columns().is_empty()).then(|| this.spec.partition_columns());
        for attempt in 1..=MAX_COMMIT_ATTEMPTS {
            let txns = this.transactions().await?;
            let props = CommitProperties::default()
                .with_max_retries(0)
                .with_application_transactions(txns)
                .with_metadata(metadata.clone());
            let actions: Vec<Action> = adds.iter().cloned().map(Action::Add).collect();
            let operation =
                DeltaOperation::Write { mode: SaveMode::Append, partition_by: partition_by.clone(), predicate: None };
            let result = {
                let snapshot = this.table.snapshot().map_err(this.err())?;
                CommitBuilder::from(props)
                    .with_actions(actions)
                    .build(Some(snapshot), this.table.log_store(), operation)
                    .await
            };
            let error = match result {
                Ok(done) => {
                    info!(
                        version = done.version(),
                        attempt,
                        files = adds.len(),
                        rows = this.stats.rows_written,
                        "committed"
                    );
                    return Ok(Committed { version: Some(done.version()), stats: this.stats, table: this.table });
                }
                Err(e) if retryable(&e) => e,
                Err(e) => return Err(this.err()(e)),
            };
            warn!(attempt, error = %error, "commit did not go through; reloading");
            tokio::time::sleep(backoff(attempt)).await;
            this.table.update_incremental(None).await.map_err(this.err())?;
            this.watermarks.clear();
            // The files other commits added since the last look.
            let new: HashSet<String> = this
                .table
                .snapshot()
                .map_err(this.err())?
                .log_data()
                .iter()
                .map(|f| f.path().into_owned())
                .filter(|p| !this.known.contains(p))
                .collect();
            if new.iter().any(|p| ours.contains(p)) {
                let version = this.read_version();
                info!(version, "the commit had landed");
                return Ok(Committed { version, stats: this.stats, table: this.table });
            }
            if !new.is_empty() && this.overlaps(&new).await? {
                return Err(DeltaError::Overlap { table: this.spec.name });
            }
            this.known.extend(new);
        }
        Err(DeltaError::Contention { table: this.spec.name, attempts: MAX_COMMIT_ATTEMPTS })
    }
}

impl Appender {
    /// Whether the data files `new` hold any identity of this append.
    pub(crate) async fn overlaps(&mut self, new: &HashSet<String>) -> Result<bool, DeltaError> {
        let mut probe = Probe::default();
        for ((kind, group), runs) in &self.ours.runs {
            if let (Some((&lo, _)), Some((_, &hi))) = (runs.0.first_key_value(), runs.0.last_key_value()) {
                probe.add_run(*kind, &self.groups.names[*group as usize], lo, hi);
            }
        }
        let before = std::mem::take(&mut self.existing);
        self.load_candidates(&probe, Some(new)).await?;
        let found = std::mem::replace(&mut self.existing, before);
        let hit = found
            .runs
            .iter()
            .any(|(key, runs)| runs.0.iter().any(|(&s, &e)| (s..=e).any(|seq| self.ours.contains(*key, seq))));
        // What the new files hold counts as existing from now on.
        for (key, runs) in found.runs {
            for (s, e) in runs.0 {
                for seq in s..=e {
                    self.existing.insert(key, seq);
                }
            }
        }
        Ok(hit)
    }

    /// The `txn` actions of this commit: the new Kafka watermarks, read against the current snapshot.
    pub(crate) async fn transactions(&mut self) -> Result<Vec<Transaction>, DeltaError> {
        let now = chrono::Utc::now().timestamp_millis();
        let groups: Vec<(u32, i64)> = self.kafka_max.iter().map(|(g, m)| (*g, *m)).collect();
        let mut txns = Vec::new();
        for (group, max) in groups {
            let w = self.watermark(group).await?;
            let name = &self.groups.names[group as usize];
            // Without a txn (retention dropped it), the table's files say how far the partition already reaches:
            // a txn of only this append's offsets could move the watermark backwards.
            let ceilings: Vec<OffsetCeiling> = if w.is_none() {
                let partition = kafka_partition(name);
                let snapshot = self.table.snapshot().map_err(self.err())?;
                snapshot.log_data().iter().map(|f| offset_ceiling(f.stats().as_deref(), partition)).collect()
            } else {
                Vec::new()
            };
            if let Some(version) = next_watermark(w, max, ceilings) {
                txns.push(Transaction::new_with_last_update(txn_app_id(name), version, Some(now)));
            }
        }
        Ok(txns)
    }
}

/// Whether a commit error may go away on another attempt (a concurrent commit, a storage hiccup, a PUT whose
/// answer was lost).
pub(crate) fn retryable(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction { .. }
            | DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::ObjectStore { .. }
    )
}

/// Full-jitter backoff: up to 50 ms doubling per attempt, capped at 2 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap = 50u64.saturating_mul(1 << attempt.min(6)).min(2_000);
    Duration::from_millis(fastrand::u64(cap / 4..=cap))
}
