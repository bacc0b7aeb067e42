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
            this.advance_watermarks(before).await?;
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

    /// Brings the Kafka watermarks read so far up to the reloaded table from the commits after version `after`: the
    /// few that won the race, read once, instead of every group's watermark read again by replaying the log since
    /// its checkpoint. A commit's `txn` of a group is its new watermark. A commit that adds rows a group's Kafka
    /// partition may hold without a `txn` of that group (its writer found the `txn` gone to retention) leaves that
    /// group's watermark to be read again from the table, as do all of them when a commit is gone (log cleanup).
    pub(crate) async fn advance_watermarks(&mut self, after: Option<u64>) -> Result<(), DeltaError> {
        let (Some(after), Some(now)) = (after, self.read_version()) else {
            self.watermarks.clear();
            return Ok(());
        };
        if self.watermarks.is_empty() {
            return Ok(());
        }
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
            let commit = CommitLines::parse(&commit);
            let cached: Vec<u32> = self.watermarks.keys().copied().collect();
            for group in cached {
                let name = &self.groups.names[group as usize];
                let app_id = txn_app_id(name);
                if let Some(&(_, version)) = commit.txns.iter().rev().find(|(id, _)| *id == app_id) {
                    self.watermarks.insert(group, Some(version));
                } else {
                    let partition = kafka_partition(name);
                    let may_hold = |stats: &Option<String>| {
                        !matches!(offset_ceiling(stats.as_deref(), partition), OffsetCeiling::None)
                    };
                    if commit.added_stats.iter().any(may_hold) {
                        self.watermarks.remove(&group);
                    }
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

/// What a commit's JSON lines say of Kafka watermarks. A line that does not parse says nothing.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct CommitLines {
    /// The `txn` actions (app id, version), in order.
    pub(crate) txns: Vec<(String, i64)>,
    /// The statistics of the files added with new rows (`dataChange`; a compaction's rewrites are not), in order.
    pub(crate) added_stats: Vec<Option<String>>,
}

impl CommitLines {
    pub(crate) fn parse(commit: &[u8]) -> CommitLines {
        let mut out = CommitLines::default();
        for line in commit.split(|&b| b == b'\n') {
            let Ok(action) = serde_json::from_slice::<Value>(line) else { continue };
            if let Some(txn) = action.get("txn") {
                if let (Some(app_id), Some(version)) =
                    (txn.get("appId").and_then(Value::as_str), txn.get("version").and_then(Value::as_i64))
                {
                    out.txns.push((app_id.to_owned(), version));
                }
            } else if let Some(add) = action.get("add") {
                if add.get("dataChange").and_then(Value::as_bool) != Some(false) {
                    out.added_stats.push(add.get("stats").and_then(Value::as_str).map(str::to_owned));
                }
            }
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A commit as deltalake writes it (commitInfo, adds with and without new rows, txns of any app id text, in
        /// any order) gives back its txns and the statistics of its added rows in order; a torn or foreign line among
        /// them gives nothing and hides nothing.
        #[test]
        fn a_commit_gives_back_exactly_its_txns_and_added_rows(
            actions in proptest::collection::vec(
                prop_oneof![
                    ("\\PC{0,40}", any::<i64>()).prop_map(|(id, v)| Err((id, v))),
                    (any::<bool>(), proptest::option::of("\\PC{0,40}")).prop_map(|(change, stats)| Ok((change, stats))),
                ],
                0..10,
            ),
            junk in proptest::collection::vec("\\PC{0,30}", 0..3),
        ) {
            let mut lines = vec![serde_json::to_string(&Action::commit_info(HashMap::new())).unwrap()];
            let mut want = CommitLines::default();
            for (i, action) in actions.iter().enumerate() {
                let action = match action {
                    Err((app_id, version)) => {
                        want.txns.push((app_id.clone(), *version));
                        Action::Txn(Transaction::new(app_id, *version))
                    }
                    Ok((data_change, stats)) => {
                        if *data_change {
                            want.added_stats.push(stats.clone());
                        }
                        let path = format!("part-{i}.parquet");
                        Action::Add(Add { path, size: 1, data_change: *data_change, stats: stats.clone(), ..Default::default() })
                    }
                };
                lines.push(serde_json::to_string(&action).unwrap());
            }
            for j in &junk {
                lines.push(j.clone());
                lines.push(format!("{{\"txn\": {j}"));
            }
            prop_assert_eq!(CommitLines::parse(lines.join("\n").as_bytes()), want);
        }
    }
}
