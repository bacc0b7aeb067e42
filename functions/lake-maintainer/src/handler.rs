//! lake-maintainer's handler: one request (the daily schedule, or an on-demand invocation naming tables and tasks)
//! → per table, in the order of the request, while the invocation has time: the state table partitions of a change
//! log that were never built, log hygiene, vacuum.
//!
//! Every step is safe beside delta-writer, partition-sync and the predictor running at the same time, and safe to
//! run twice or late: log hygiene only writes a checkpoint of a committed version and removes log entries that
//! deltalake's retention lets go (never one after the newest checkpoint); vacuum deletes only files that the
//! current version does not reference, that were removed (or, never committed, uploaded) longer than the retention
//! ago, and that no symlink manifest names (see [`fleetlake_delta::maintain`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetlake_core::bronze::{Layout, TableSpec, TABLES};
use fleetlake_core::fault::{Classify, Fault};
use fleetlake_delta::{active_files, log_hygiene, refresh_partition, vacuum, DeltaError, DeltaSettings, TableCache};
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
    /// The daily schedule (an EventBridge `Scheduled Event`) asks for everything; an on-demand invocation may name
    /// `task` (`all`, `log`, `vacuum`, `states`), `table` or `tables`, and `dry_run`.
    pub(crate) fn parse(payload: &Value, config: &Config) -> Result<Self, String> {
        let everything =
            Request { tables: TABLES.to_vec(), log: true, vacuum: true, states: true, dry_run: config.dry_run };
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
                    (request.log, request.vacuum, request.states) = match t.as_str() {
                        "all" => (true, true, true),
                        "log" => (true, false, false),
                        "vacuum" => (false, true, false),
                        "states" => (false, false, true),
                        other => return Err(format!("task {other:?} is not all, log, vacuum or states")),
                    }
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
        let Some(table) = self.tables.latest(spec).await? else {
            info!(table = spec.name, "no such table yet; nothing to maintain");
            invocation.add("tables_missing", 1);
            return Ok(None);
        };
        let settings = self.tables.settings();
        let out_of_time = || Instant::now() + TABLE_MARGIN > invocation.deadline();
        let mut out = Map::new();
        out.insert("version".into(), json!(table.version()));
        if request.states && matches!(spec.layout, Layout::Change { .. }) {
            let (built, unfinished) = self.build_missing_states(spec, &table, invocation.deadline()).await?;
            invocation.add("state_partitions_built", built);
            out.insert("state_partitions_built".into(), json!(built));
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
        Ok(Some((out, false)))
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
            (all.tables.len(), all.log, all.vacuum, all.states, all.dry_run),
            (TABLES.len(), true, true, true, false)
        );
        let asked: Value =
            serde_json::from_str(include_str!("../../../events/lake-maintainer/vacuum-dry-run.json")).unwrap();
        let one = Request::parse(&asked, &config()).unwrap();
        assert_eq!(one.tables.iter().map(|t| t.name).collect::<Vec<_>>(), ["locations"]);
        assert_eq!((one.log, one.vacuum, one.states, one.dry_run), (false, true, false, true));
        for bad in [
            json!({"table": "nope"}),
            json!({"task": "compact"}),
            json!({"dry_run": "yes"}),
            json!({"tables": ["locations", 3]}),
            json!({"retention_hours": 1}),
            json!([1]),
        ] {
            assert!(Request::parse(&bad, &config()).is_err(), "{bad}");
        }
    }
}
