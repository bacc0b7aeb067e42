//! lake-maintainer's handler: one request (the daily schedule, the hourly compaction schedule, or an on-demand
//! invocation naming tables, a partition and tasks) → per table, in the order of the request, while the invocation
//! has time: the state table partitions of a change log that were never built, compaction of the partitions idle
//! for a while, log hygiene, vacuum.
//!
//! Every step is safe beside delta-writer, partition-sync and the predictor running at the same time, and safe to
//! run twice or late: compaction commits only while every file it rewrites is still active (see
//! [`fleetlake_delta::compact`]); log hygiene only writes a checkpoint of a committed version and removes log entries that
//! deltalake's retention lets go (never one after the newest checkpoint); vacuum deletes only files that the
//! current version does not reference, that were removed (or, never committed, uploaded) longer than the retention
//! ago, and that no symlink manifest names (see [`fleetlake_delta::maintain`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetlake_core::bronze::{Layout, TableSpec, TABLES};
use fleetlake_core::fault::{Classify, Fault};
use fleetlake_delta::{
    active_files, compact_partition, last_appends, log_hygiene, refresh_partition, vacuum, CompactReport, DeltaError,
    DeltaSettings, TableCache,
};
use fleetlake_runner::Invocation;
use serde_json::{json, Map, Value};
use tracing::{error, info, warn};

use crate::config::Config;

/// The stage name in logs and metrics.
pub(crate) const STAGE: &str = "lake-maintainer";

/// Time kept back at the end of an invocation: a table is not started with less left.
const TABLE_MARGIN: Duration = Duration::from_secs(60);

/// Most file names a dry run lists per table in its answer (all are counted; the log has them all).
const LISTED_FILES: usize = 1000;

/// Configuration and open tables, kept across invocations.
#[derive(Debug)]
pub(crate) struct Deps {
    pub(crate) config: Config,
    /// The tables, read at their latest version; the state tables are also taken from it to be written.
    tables: TableCache,
}

impl Deps {
    pub(crate) fn new(config: Config) -> Result<Self, url::ParseError> {
        let settings = DeltaSettings::reader(
            config.bucket.as_str(),
            config.bronze_prefix.as_str(),
            config.storage_options.clone(),
        )?;
        Ok(Self { config, tables: TableCache::new(settings) })
    }
}

/// What one invocation is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    pub(crate) tables: Vec<&'static TableSpec>,
    pub(crate) log: bool,
    pub(crate) vacuum: bool,
    /// Build the state table partitions of the change logs among `tables` that were never built.
    pub(crate) states: bool,
    /// Compact the partitions idle for `idle_minutes` (or only `partition`, idle or not).
    pub(crate) compact: bool,
    /// One partition value of the one table named: compaction looks at it only, idle or not.
    pub(crate) partition: Option<String>,
    pub(crate) idle_minutes: u32,
    pub(crate) dry_run: bool,
}

/// A failure: a request that cannot be done as asked (permanent), or the lake's (retried by Lambda's async retries).
#[derive(Debug, thiserror::Error)]
pub(crate) enum MaintainError {
    #[error("request refused: {0}")]
    Request(String),
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error("tables failed: {message}")]
    Tables { message: String, retry: bool },
}

impl Classify for MaintainError {
    fn fault(&self) -> Fault {
        match self {
            MaintainError::Request(_) => Fault::Permanent,
            MaintainError::Delta(e) => e.fault(),
            MaintainError::Tables { retry: true, .. } => Fault::Retryable,
            MaintainError::Tables { retry: false, .. } => Fault::Permanent,
        }
    }
}

impl Request {
    /// The daily schedule (an EventBridge `Scheduled Event`) asks for everything; the hourly one and an on-demand
    /// invocation may name `task` (`all`, `compact`, `log`, `vacuum`, `states`), `table` or `tables`, `partition`
    /// (with one table), `idle_minutes` and `dry_run`.
    pub(crate) fn parse(payload: &Value, config: &Config) -> Result<Self, String> {
        let everything = Request {
            tables: TABLES.to_vec(),
            log: true,
            vacuum: true,
            states: true,
            compact: true,
            partition: None,
            idle_minutes: config.compact_idle_minutes,
            dry_run: config.dry_run,
        };
        if payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
            return Ok(everything);
        }
        let Some(fields) = payload.as_object() else {
            return Err("the event is neither a scheduled event nor a JSON object".into());
        };
        let mut request = everything;
        for (name, value) in fields {
            match (name.as_str(), value) {
                ("task", Value::String(t)) => {
                    (request.log, request.vacuum, request.states, request.compact) = match t.as_str() {
                        "all" => (true, true, true, true),
                        "compact" => (false, false, false, true),
                        "log" => (true, false, false, false),
                        "vacuum" => (false, true, false, false),
                        "states" => (false, false, true, false),
                        other => return Err(format!("task {other:?} is not all, compact, log, vacuum or states")),
                    }
                }
                ("partition", Value::String(p)) => request.partition = Some(p.clone()),
                ("idle_minutes", Value::Number(n)) => {
                    request.idle_minutes = n
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| format!("idle_minutes: {n} is not a number of minutes"))?;
                }
                ("table", Value::String(t)) => request.tables = vec![table(t)?],
                ("tables", Value::Array(names)) => {
                    request.tables = names
                        .iter()
                        .map(|n| n.as_str().ok_or_else(|| format!("tables: {n} is not a name")).and_then(table))
                        .collect::<Result<_, _>>()?;
                }
                ("dry_run", Value::Bool(d)) => request.dry_run = *d,
                (other, value) => return Err(format!("{other}: {value} is not a field this function takes")),
            }
        }
        if let Some(p) = &request.partition {
            let [spec] = request.tables[..] else {
                return Err("partition: name exactly one table with it".into());
            };
            let Some(partitioning) = spec.partitioning else {
                return Err(format!("partition: {} is not partitioned", spec.name));
            };
            if chrono::NaiveDate::parse_from_str(p, "%Y-%m-%d").is_err() {
                return Err(format!("partition: {p:?} is not a {} value (YYYY-MM-DD)", partitioning.column));
            }
        }
        Ok(request)
    }
}

fn table(name: &str) -> Result<&'static TableSpec, String> {
    TABLES.into_iter().find(|t| t.name == name).ok_or_else(|| format!("{name:?} is not a bronze table"))
}

impl Deps {
    /// Runs the request table by table; returns what was done per table and the tables left for lack of time.
    pub(crate) async fn maintain(
        &'static self,
        request: Result<Request, String>,
        invocation: Arc<Invocation>,
    ) -> Result<Value, MaintainError> {
        let request = request.map_err(MaintainError::Request)?;
        let mut done = Map::new();
        let mut left = Vec::new();
        let mut failed: Vec<(&'static str, MaintainError)> = Vec::new();
        let now_ms = chrono::Utc::now().timestamp_millis();
        for spec in &request.tables {
            if Instant::now() + TABLE_MARGIN > invocation.deadline() {
                left.push(spec.name);
                continue;
            }
            // One table failing does not keep the others from being maintained; the run fails at the end.
            match self.maintain_table(spec, &request, now_ms, &invocation).await {
                Ok(Some((out, unfinished))) => {
                    invocation.add("tables_maintained", 1);
                    done.insert(spec.name.into(), Value::Object(out));
                    if unfinished {
                        left.push(spec.name);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    error!(table = spec.name, error = %e, "maintenance of the table failed");
                    invocation.add("tables_failed", 1);
                    failed.push((spec.name, e));
                }
            }
        }
        if !left.is_empty() {
            warn!(tables = ?left, "out of time; the next run picks them up");
            invocation.add("tables_left", left.len() as u64);
        }
        let answer = json!({"tables": done, "tables_left": left, "dry_run": request.dry_run});
        if failed.is_empty() {
            return Ok(answer);
        }
        info!(%answer, "what the run did before failing");
        let retry = failed.iter().any(|(_, e)| e.fault() == Fault::Retryable);
        let message = failed.iter().map(|(t, e)| format!("{t}: {e}")).collect::<Vec<_>>().join("; ");
        Err(MaintainError::Tables { message, retry })
    }

    /// One table: its state partitions never built (a change log), log hygiene, vacuum, each while there is time;
    /// `None` when the table does not exist. The `bool` says a step was left for lack of time.
    async fn maintain_table(
        &self,
        spec: &'static TableSpec,
        request: &Request,
        now_ms: i64,
        invocation: &Invocation,
    ) -> Result<Option<(Map<String, Value>, bool)>, MaintainError> {
        let Some(mut table) = self.tables.latest(spec).await? else {
            info!(table = spec.name, "no such table yet; nothing to maintain");
            invocation.add("tables_missing", 1);
            return Ok(None);
        };
        let settings = self.tables.settings();
        let out_of_time = || Instant::now() + TABLE_MARGIN > invocation.deadline();
        let mut out = Map::new();
        out.insert("version".into(), json!(table.version()));
        // Bins compaction could not read: the other steps still run, then the table fails naming them.
        let mut unreadable: Option<String> = None;
        if request.states && matches!(spec.layout, Layout::Change { .. }) {
            let (built, unfinished) = self.build_missing_states(spec, &table, invocation.deadline()).await?;
            invocation.add("state_partitions_built", built);
            out.insert("state_partitions_built".into(), json!(built));
            if unfinished {
                return Ok(Some((out, true)));
            }
        }
        if request.compact && !matches!(spec.layout, Layout::State(_)) {
            let (report, unfinished) = self.compact(spec, &mut table, request, now_ms, invocation.deadline()).await?;
            invocation.add("files_compacted", report.files_removed as u64);
            invocation.add("compacted_files_written", report.files_added as u64);
            invocation.add("compacted_bytes", report.bytes_read);
            invocation.add("compaction_bins_given_up", report.bins_given_up as u64);
            invocation.add("compaction_bins_unreadable", report.unreadable.len() as u64);
            if !report.unreadable.is_empty() {
                unreadable = Some(report.unreadable.join("; "));
            }
            out.insert(
                "compaction".into(),
                json!({
                    "partitions": report.partitions, "files_removed": report.files_removed,
                    "files_added": report.files_added, "bytes_read": report.bytes_read,
                    "bytes_written": report.bytes_written, "rows": report.rows,
                    "bins_given_up": report.bins_given_up, "versions": report.versions,
                    "unreadable": report.unreadable,
                }),
            );
            if unfinished {
                return Ok(Some((out, true)));
            }
        }
        if request.log {
            if out_of_time() {
                return Ok(Some((out, true)));
            }
            let log = log_hygiene(settings, &table, spec, self.config.checkpoint_interval).await?;
            invocation.add("checkpoints_written", u64::from(log.checkpoint_written));
            invocation.add("log_entries_removed", log.log_entries_removed as u64);
            out.insert("checkpoint_before".into(), json!(log.checkpoint_before));
            out.insert("checkpoint_written".into(), json!(log.checkpoint_written));
            out.insert("log_entries_removed".into(), json!(log.log_entries_removed));
        }
        if request.vacuum {
            if out_of_time() {
                return Ok(Some((out, true)));
            }
            let report = vacuum(settings, &table, spec, self.config.retention_hours, now_ms, request.dry_run).await?;
            let counter = if request.dry_run { "files_to_vacuum" } else { "files_vacuumed" };
            invocation.add(counter, report.deleted.len() as u64);
            invocation.add("files_kept_for_manifests", report.kept_for_manifests.len() as u64);
            out.insert(counter.into(), json!(report.deleted.len()));
            out.insert("kept_for_manifests".into(), json!(report.kept_for_manifests.len()));
            if request.dry_run {
                out.insert("files".into(), json!(report.deleted.iter().take(LISTED_FILES).collect::<Vec<_>>()));
            }
        }
        if let Some(message) = unreadable {
            let done = Value::Object(out);
            info!(table = spec.name, %done, "what was done before the table failed");
            return Err(MaintainError::Delta(DeltaError::Broken {
                table: spec.name,
                message: format!("compaction left data files it cannot read: {message}"),
            }));
        }
        Ok(Some((out, false)))
    }

    /// Compacts the partitions of `table` that had no append for `request.idle_minutes` (or the one the request
    /// names, idle or not), newest first; returns the sum of what was done and whether time ran out first.
    async fn compact(
        &self,
        spec: &'static TableSpec,
        table: &mut deltalake::DeltaTable,
        request: &Request,
        now_ms: i64,
        deadline: Instant,
    ) -> Result<(Compacted, bool), MaintainError> {
        let idle_ms = i64::from(request.idle_minutes) * 60_000;
        let column = spec.partitioning.map(|p| p.column);
        let partitions: Vec<Option<String>> = match &request.partition {
            Some(p) => vec![Some(p.clone())],
            None => last_appends(table, spec)?
                .into_iter()
                .rev()
                .filter(|(_, last)| now_ms.saturating_sub(*last) >= idle_ms)
                .map(|(p, _)| p)
                .collect(),
        };
        let mut sum = Compacted::default();
        for value in partitions {
            if Instant::now() + TABLE_MARGIN > deadline {
                return Ok((sum, true));
            }
            let partition = match (column, value.as_deref()) {
                (Some(c), Some(v)) => Some((c, v)),
                (Some(_), None) => continue, // a null partition value: nothing a reader can name
                (None, _) => None,
            };
            let report = compact_partition(
                table,
                spec,
                partition,
                self.config.compact_target_bytes,
                deadline.checked_sub(TABLE_MARGIN).or(Some(deadline)),
            )
            .await?;
            let unfinished = report.bins_left > 0;
            sum.add(&report);
            if unfinished {
                return Ok((sum, true));
            }
        }
        Ok((sum, false))
    }

    /// Builds, for every partition of the change log `spec`, the partitions of its state tables that were never
    /// built (partitions whose changes all predate the state tables, or whose every partition-sync attempt failed);
    /// returns how many were built and whether time ran out first. A partition built already is left to
    /// partition-sync, which rewrites it on each commit that touches it.
    async fn build_missing_states(
        &self,
        spec: &'static TableSpec,
        table: &deltalake::DeltaTable,
        deadline: Instant,
    ) -> Result<(u64, bool), MaintainError> {
        let partitions: Vec<Option<(&str, String)>> = match spec.partitioning {
            None => vec![None],
            Some(p) => {
                let values: std::collections::BTreeSet<String> =
                    active_files(table, spec)?.into_iter().filter_map(|f| f.partition).collect();
                values.into_iter().map(|v| Some((p.column, v))).collect()
            }
        };
        let mut built = 0;
        for (i, partition) in partitions.iter().enumerate() {
            if Instant::now() + TABLE_MARGIN > deadline {
                warn!(table = spec.name, done = i, "out of time building state partitions");
                return Ok((built, true));
            }
            let partition = partition.as_ref().map(|(c, v)| (*c, v.as_str()));
            built += refresh_partition(&self.tables, table, spec, partition, true).await?.replaced;
        }
        Ok((built, false))
    }
}

/// What compaction did in a table's partitions, summed.
#[derive(Debug, Default)]
pub(crate) struct Compacted {
    partitions: u64,
    files_removed: usize,
    files_added: usize,
    bytes_read: u64,
    bytes_written: u64,
    rows: u64,
    bins_given_up: usize,
    unreadable: Vec<String>,
    versions: Vec<u64>,
}

impl Compacted {
    fn add(&mut self, r: &CompactReport) {
        self.partitions += u64::from(r.bins_committed > 0);
        self.files_removed += r.files_removed;
        self.files_added += r.files_added;
        self.bytes_read += r.bytes_read;
        self.bytes_written += r.bytes_written;
        self.rows += r.rows;
        self.bins_given_up += r.bins_given_up;
        self.unreadable.extend(r.unreadable.iter().cloned());
        self.versions.extend(&r.versions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetlake_core::config::Env;

    fn config() -> Config {
        Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake")])).unwrap()
    }

    #[test]
    fn the_schedule_asks_for_everything_and_a_request_for_what_it_names() {
        let schedule: Value =
            serde_json::from_str(include_str!("../../../events/lake-maintainer/schedule.json")).unwrap();
        let all = Request::parse(&schedule, &config()).unwrap();
        assert_eq!(
            (all.tables.len(), all.log, all.vacuum, all.states, all.compact, all.dry_run),
            (TABLES.len(), true, true, true, true, false)
        );
        let hourly: Value = serde_json::from_str(include_str!("../../../events/lake-maintainer/compact.json")).unwrap();
        let compact = Request::parse(&hourly, &config()).unwrap();
        assert_eq!((compact.log, compact.vacuum, compact.states, compact.compact), (false, false, false, true));
        assert_eq!((compact.tables.len(), compact.partition, compact.idle_minutes), (TABLES.len(), None, 60));
        let one = Request::parse(
            &json!({"task": "compact", "table": "locations", "partition": "2026-11-24", "idle_minutes": 0}),
            &config(),
        )
        .unwrap();
        assert_eq!((one.partition.as_deref(), one.idle_minutes), (Some("2026-11-24"), 0));
        let asked: Value =
            serde_json::from_str(include_str!("../../../events/lake-maintainer/vacuum-dry-run.json")).unwrap();
        let one = Request::parse(&asked, &config()).unwrap();
        assert_eq!(one.tables.iter().map(|t| t.name).collect::<Vec<_>>(), ["locations"]);
        assert_eq!((one.log, one.vacuum, one.states, one.dry_run), (false, true, false, true));
        for bad in [
            json!({"table": "nope"}),
            json!({"task": "optimize"}),
            json!({"partition": "2026-11-24"}),
            json!({"table": "transport_units", "partition": "2026-11-24"}),
            json!({"table": "locations", "partition": "yesterday"}),
            json!({"idle_minutes": -5}),
            json!({"dry_run": "yes"}),
            json!({"tables": ["locations", 3]}),
            json!({"retention_hours": 1}),
            json!([1]),
        ] {
            assert!(Request::parse(&bad, &config()).is_err(), "{bad}");
        }
    }
}
