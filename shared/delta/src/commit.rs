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
            let before = this.read_version();
            this.table.update_incremental(None).await.map_err(this.err())?;
            if this.read_version() == before {
                // Nothing new in the log: a storage hiccup, not a lost race. Wait before the next try.
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            // A lost race: the next try goes at once. The reload has already spaced the writers out, and a pause
            // here would only let writers that have not lost yet go first, again and again.
            this.advance_watermarks(before).await?;
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

    /// Brings the Kafka watermarks read so far up to the reloaded table with the `txn` actions of the commits
    /// after version `after`: the few that won the race, read once, instead of every group's watermark read again
    /// by replaying the log since its checkpoint. Read again lazily when a commit is gone (log cleanup removed it).
    pub(crate) async fn advance_watermarks(&mut self, after: Option<u64>) -> Result<(), DeltaError> {
        let (Some(after), Some(now)) = (after, self.read_version()) else {
            self.watermarks.clear();
            return Ok(());
        };
        if self.watermarks.is_empty() {
            return Ok(());
        }
        let groups: HashMap<String, u32> =
            self.watermarks.keys().map(|&g| (txn_app_id(&self.groups.names[g as usize]), g)).collect();
        let log_store = self.table.log_store();
        let reads = (after + 1..=now).map(|v| {
            let log_store = Arc::clone(&log_store);
            async move { log_store.read_commit_entry(v).await }
        });
        let commits: Vec<Option<Bytes>> =
            futures::stream::iter(reads).buffered(WATERMARK_LOOKUPS).try_collect().await.map_err(self.err())?;
        for commit in commits {
            let Some(commit) = commit else {
                self.watermarks.clear();
                return Ok(());
            };
            for (app_id, version) in commit_txns(&commit) {
                if let Some(&group) = groups.get(&app_id) {
                    self.watermarks.insert(group, Some(version));
                }
            }
        }
        Ok(())
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

/// The `txn` actions (app id, version) of a commit's JSON lines, in order. A line that does not parse holds none.
pub(crate) fn commit_txns(commit: &[u8]) -> Vec<(String, i64)> {
    commit
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let action: Value = serde_json::from_slice(line).ok()?;
            let txn = action.get("txn")?;
            Some((txn.get("appId")?.as_str()?.to_owned(), txn.get("version")?.as_i64()?))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A commit as deltalake writes it (commitInfo, adds, txns in any order, any app id text) gives back its
        /// txns in order; a torn or foreign line among them gives nothing and hides none.
        #[test]
        fn a_commit_gives_back_exactly_its_txns(
            txns in proptest::collection::vec(("\\PC{0,40}", any::<i64>()), 0..8),
            adds in 0usize..4,
            junk in proptest::collection::vec("\\PC{0,30}", 0..3),
        ) {
            let mut lines = vec![serde_json::to_string(&Action::commit_info(HashMap::new())).unwrap()];
            for a in 0..adds {
                let add = Add { path: format!("part-{a}.parquet"), size: 1, data_change: true, ..Default::default() };
                lines.push(serde_json::to_string(&Action::Add(add)).unwrap());
            }
            for (app_id, version) in &txns {
                lines.push(serde_json::to_string(&Action::Txn(Transaction::new(app_id, *version))).unwrap());
            }
            for j in &junk {
                lines.push(j.clone());
                lines.push(format!("{{\"txn\": {j}"));
            }
            let commit = lines.join("\n");
            prop_assert_eq!(commit_txns(commit.as_bytes()), txns);
        }
    }
}
