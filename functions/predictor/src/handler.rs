//! The predictor's handler: a `bronze/locations` commit (or a scheduled full refresh) → per-unit features →
//! the ONNX model → one prediction per unit in DynamoDB, and the record of what was served (`record`).
//!
//! **Commit trigger** (S3 notification of `bronze/locations/_delta_log/<version>.json`, through SNS and SQS): the
//! commit's `add` actions name the new data files. Every unit with a position in them gets a prediction, made at
//! its latest new position (`predicted_at`) from the contract's window (24 h) ending there. The window's earlier
//! positions come from the table's other data files that may hold them (date partition and `ts` statistics
//! prune the rest), so a commit of one 15-minute batch still sees a unit's whole day.
//!
//! **Scheduled refresh** (EventBridge `Scheduled Event`): the same for every unit with a position within the
//! window before the table's newest one, from the latest table version.
//!
//! The unit's last daily performance figures come from the `bronze/performance_stats` change log (latest change
//! per unit and day wins, deletes remove the day), the newest day on or before `predicted_at`'s date within
//! `STATS_LOOKBACK_DAYS`. Items carry the table version they were made from (`source_version`), so a replayed
//! commit finds its items already there and writes nothing, and an older commit never replaces a newer item.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use fleetlake_aws::predictions::{Prediction, PredictionStore, PredictionsError, Stored, WriteStats};
use fleetlake_aws::s3::S3Store;
use fleetlake_aws::s3event::ObjectRef;
use fleetlake_core::bronze::{TableSpec, LOCATIONS, PERFORMANCE_STATS};
use fleetlake_core::fault::{Classify, Fault};
use fleetlake_core::features::{unit_features, Contract};
use fleetlake_core::partitions::CommitKey;
use fleetlake_delta::{DeltaError, DeltaSettings, TableCache};
use fleetlake_model::{Model, ModelError};
use fleetlake_runner::{Invocation, ObjectHandler};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tracing::{error, info, instrument, warn};

use crate::config::Config;
use crate::record::{self, Scope};
use crate::source::{commit_adds, read_figures, read_tracks, DataFile, Figures, ReadError, Track};

/// The stage name in logs and metrics.
pub(crate) const STAGE: &str = "predictor";

/// Time kept back from the invocation's deadline for reporting.
const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

const HOUR_US: i64 = 3_600_000_000;

/// Clients, configuration, the model, open tables and resolved daily figures, kept across invocations.
#[derive(Debug)]
pub(crate) struct Deps {
    config: Config,
    store: S3Store,
    model: Model,
    contract: Contract,
    predictions: PredictionStore,
    tables: TableCache,
    figures: Mutex<Option<FiguresCache>>,
}

/// Daily figures resolved from one version of `performance_stats` over a range of days.
#[derive(Debug)]
struct FiguresCache {
    version: Option<u64>,
    from: NaiveDate,
    to: NaiveDate,
    figures: Arc<Figures>,
}

impl Deps {
    pub(crate) fn new(
        config: Config,
        s3: aws_sdk_s3::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        model: Model,
        contract: Contract,
    ) -> Result<Self, url::ParseError> {
        let store = S3Store::new(s3, config.bucket.as_str());
        let predictions = PredictionStore::new(dynamodb, config.predictions_table.clone());
        let settings = DeltaSettings::reader(
            config.bucket.as_str(),
            config.bronze_prefix.as_str(),
            config.storage_options.clone(),
        )?;
        Ok(Self {
            config,
            store,
            model,
            contract,
            predictions,
            tables: TableCache::new(settings),
            figures: Mutex::new(None),
        })
    }

    /// The table as loaded or brought up to date at `since` or later (kept open across invocations), or `None` if
    /// it does not exist yet.
    async fn table(
        &self,
        spec: &'static TableSpec,
        since: Instant,
    ) -> Result<Option<deltalake::DeltaTable>, DeltaError> {
        self.tables.latest_since(spec, since).await
    }

    /// Daily figures of every unit for days `from..=to`, from `performance_stats` as of `since` or later (read
    /// again only when the table has a new version or the days are not covered).
    async fn figures(&self, from: NaiveDate, to: NaiveDate, since: Instant) -> Result<Arc<Figures>, PredictError> {
        let Some(table) = self.table(&PERFORMANCE_STATS, since).await? else {
            warn!("bronze/performance_stats does not exist yet: predictions use no daily figures");
            return Ok(Arc::default());
        };
        let version = table.version();
        let mut cache = self.figures.lock().await;
        if let Some(c) = cache.as_ref().filter(|c| c.version == version && c.from <= from && c.to >= to) {
            return Ok(c.figures.clone());
        }
        let files = active_files(&table, &PERFORMANCE_STATS)?;
        let files: Vec<DataFile> = files.into_iter().filter(|f| f.date.is_some_and(|d| d >= from && d <= to)).collect();
        let figures = Arc::new(read_figures(&table.object_store(), &files).await?);
        info!(?version, files = files.len(), units = figures.units(), "daily figures read");
        *cache = Some(FiguresCache { version, from, to, figures: figures.clone() });
        Ok(figures)
    }
}

/// What a commit read ahead of the predictions: daily figures, and what DynamoDB held under their keys.
#[derive(Debug, Default)]
struct Ahead {
    figures: Option<Prefetched>,
    stored: Option<Stored>,
}

/// Daily figures read ahead for days `from..=to`.
#[derive(Debug)]
struct Prefetched {
    from: NaiveDate,
    to: NaiveDate,
    figures: Arc<Figures>,
}

/// The active data files of a table at its loaded version.
fn active_files(table: &deltalake::DeltaTable, spec: &'static TableSpec) -> Result<Vec<DataFile>, DeltaError> {
    Ok(fleetlake_delta::active_files(table, spec)?
        .into_iter()
        .map(|f| DataFile::new(&f.path, f.partition.as_deref(), f.stats.as_deref(), f.size))
        .collect())
}

/// A failure that Lambda should retry: storage, the Delta log, a data file, the model or DynamoDB.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PredictError {
    #[error(transparent)]
    Lake(#[from] fleetlake_aws::Error),
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Write(#[from] PredictionsError),
    #[error("bronze/locations does not exist, yet a commit of it was notified")]
    NoTable,
}

impl Classify for PredictError {
    fn fault(&self) -> Fault {
        // Storage, the log, a data file, the model or DynamoDB: each may work on a retry.
        Fault::Retryable
    }
}

/// What one commit or refresh did.
#[derive(Debug, Default)]
struct Done {
    positions: u64,
    context_files: u64,
    units: u64,
    missing: u64,
    unreadable: u64,
    /// Units left without a prediction because a feature or the model's value was not a finite number.
    skipped: u64,
    /// 1 when the commit's record was found landed: a replay, nothing read or written.
    replayed: u64,
    written: WriteStats,
}

impl Done {
    fn count(&self, invocation: &Invocation) {
        for (name, n) in [
            ("positions_read", self.positions),
            ("context_files_read", self.context_files),
            ("units", self.units),
            ("predictions_written", self.written.written),
            ("predictions_kept", self.written.kept),
            ("batch_write_calls", self.written.batch_calls),
            ("items_retried", self.written.retried_items),
            ("commits_missing", self.missing),
            ("commits_unreadable", self.unreadable),
            ("units_skipped_not_finite", self.skipped),
            ("commits_replayed", self.replayed),
        ] {
            invocation.add(name, n);
        }
    }
}

pub(crate) fn is_schedule(payload: &Value) -> bool {
    payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
}

impl Deps {
    /// When the invocation's work must end: its deadline less the time kept back for reporting.
    fn deadline(invocation: &Invocation) -> Instant {
        invocation.deadline().checked_sub(DEADLINE_MARGIN).unwrap_or_else(Instant::now)
    }

    /// The scheduled full refresh.
    pub(crate) async fn scheduled(&'static self, invocation: Arc<Invocation>) -> Result<Value, PredictError> {
        invocation.property("model_version", self.model.version());
        let (version, done) = Box::pin(refresh(self, Self::deadline(&invocation))).await?;
        done.count(&invocation);
        Ok(json!({"refresh": true, "source_version": version, "predictions": done.written.written}))
    }
}

impl ObjectHandler for Deps {
    type Error = PredictError;

    /// Each `bronze/locations` commit on its own. The topic carries every bronze commit (partition-sync needs
    /// them all); the other tables' are not ours.
    fn group(&self, obj: &ObjectRef) -> Option<String> {
        locations_commit(&self.config, obj).map(|_| obj.key.clone())
    }

    async fn process(
        &'static self,
        objects: Vec<ObjectRef>,
        invocation: Arc<Invocation>,
    ) -> Vec<Result<(), PredictError>> {
        invocation.property("model_version", self.model.version());
        let deadline = Self::deadline(&invocation);
        let mut results = Vec::with_capacity(objects.len());
        for obj in &objects {
            let Some(commit) = locations_commit(&self.config, obj) else {
                results.push(Ok(()));
                continue;
            };
            invocation.add("commits", 1);
            let done = Box::pin(predict_commit(self, &obj.key, commit.version, deadline)).await;
            results.push(done.map(|d| d.count(&invocation)));
        }
        results
    }
}

fn locations_commit(cfg: &Config, obj: &ObjectRef) -> Option<CommitKey> {
    CommitKey::in_lake(cfg.bucket.as_str(), cfg.bronze_prefix.as_str(), &obj.bucket, &obj.key)
        .filter(|c| c.table.name == LOCATIONS.name)
}

/// Predicts for the units of one `bronze/locations` commit.
///
/// The two tables are loaded (or brought up to date) while the commit and the HEAD of its record are read: a first
/// write does not wait for them before the loads, nor for the loads before reading the files the commit added (their
/// paths and sizes are in the commit). A replay stops at the HEAD of its record, and the loads are dropped.
#[instrument(skip(deps, deadline))]
async fn predict_commit(deps: &Deps, key: &str, version: u64, deadline: Instant) -> Result<Done, PredictError> {
    // The commit was notified before now: tables loaded since hold it.
    let since = Instant::now();
    let warm = async {
        // Errors are left to the calls that need the tables: they load again and report.
        let _ = tokio::join!(deps.table(&LOCATIONS, since), deps.table(&PERFORMANCE_STATS, since));
    };
    let work = predict_commit_with(deps, key, version, deadline, since);
    let mut work = std::pin::pin!(work);
    tokio::select! {
        biased;
        done = &mut work => return done,
        () = warm => {}
    }
    work.await
}

async fn predict_commit_with(
    deps: &Deps,
    key: &str,
    version: u64,
    deadline: Instant,
    since: Instant,
) -> Result<Done, PredictError> {
    let mut done = Done::default();
    let bytes = match deps.store.get_bytes(key).await {
        Ok(b) => b,
        Err(fleetlake_aws::Error::NotFound { .. }) => {
            // Cleaned up past its log retention: a later commit or the scheduled refresh covers its units.
            error!(key, "the commit file is gone (log cleaned up?); nothing to predict from it");
            done.missing = 1;
            return Ok(done);
        }
        Err(e) => return Err(e.into()),
    };
    let adds = match commit_adds(&bytes, LOCATIONS.partitioning.map_or("", |p| p.column)) {
        Ok(a) => a,
        Err(reason) => {
            error!(key, reason, "the commit file is not a Delta commit; skipped");
            done.unreadable = 1;
            return Ok(done);
        }
    };
    if adds.is_empty() {
        return Ok(done);
    }
    // The daily figures are read while the positions are: the added files' `ts` statistics bound the days the
    // predictions are made on (`predict` reads again only if they did not cover them).
    let prefetch = async {
        let (lo, hi) = adds
            .iter()
            .try_fold((i64::MAX, i64::MIN), |(lo, hi), f| f.ts_range.map(|(a, b)| (lo.min(a), hi.max(b))))?;
        let lookback = chrono::Days::new(u64::from(deps.config.stats_lookback_days));
        let (first, last) = (date_of(lo), date_of(hi));
        // A backlog of old positions in the commit would widen the days far beyond the predictions' own: read
        // ahead only for a commit of a day or two; otherwise `predict` reads what its units need.
        if (last - first).num_days() > 1 {
            return None;
        }
        let from = first.checked_sub_days(lookback).unwrap_or(first);
        Some(deps.figures(from, last, since).await.map(|f| Prefetched { from, to: last, figures: f }))
    };
    // The added files are read from the table's storage without waiting for the table, then each unit's earlier
    // positions in its window from the table's other files (`context`). What DynamoDB holds under the predictions'
    // keys (the units' latest new positions) is read last, while the daily figures are read and before the model:
    // a read made earlier would leave more time for the hourly refresh to write between it and the writes.
    let positions = async {
        let mut tracks = read_tracks(&deps.tables.store(&LOCATIONS)?, &adds, &|_, _| true).await?;
        let table = deps.table(&LOCATIONS, since).await?.ok_or(PredictError::NoTable)?;
        let new_positions: u64 = tracks.values().map(|t| t.positions.len() as u64).sum();
        let context_files = add_context(&table, &adds, &mut tracks, deps.contract.window_hours).await?;
        let keys: Vec<(String, String)> = tracks
            .iter()
            .filter_map(|(u, t)| Some((u.clone(), fleetlake_aws::predictions::predicted_at_key(t.latest()?)?)))
            .collect();
        let stored = deps.predictions.stored(keys, deadline).await?;
        Ok::<_, PredictError>((tracks, new_positions, context_files, stored))
    };
    // The files are read only once the HEAD of the record missed: a replay reads nothing more (the tables, whose
    // loads take longer than the HEAD, are what a first write waits for).
    if let Some(record) = landed_record(deps, version, &adds).await? {
        // Landed after every prediction of this commit was in DynamoDB: nothing is left to do.
        info!(record, "this commit's predictions were made and landed already; a replay");
        done.replayed = 1;
        return Ok(done);
    }
    let (positions, prefetched) = tokio::join!(positions, prefetch);
    let prefetched = prefetched.transpose()?;
    let (tracks, new_positions, context_files, stored) = positions?;
    done.positions = new_positions;
    done.context_files = context_files;
    let ahead = Ahead { figures: prefetched, stored: Some(stored) };
    let (units, skipped, written) = predict(deps, tracks, ahead, Scope::Commit, version, deadline, since).await?;
    done.units = units;
    done.skipped = skipped;
    done.written = written;
    Ok(done)
}

/// Adds to each unit of `tracks` (read from the commit's `adds`) its earlier positions within the window that ends
/// at its latest new position, from the table's other data files that may hold them; returns how many files were
/// read.
async fn add_context(
    table: &deltalake::DeltaTable,
    adds: &[DataFile],
    tracks: &mut HashMap<String, Track>,
    window_hours: u32,
) -> Result<u64, PredictError> {
    let window = i64::from(window_hours) * HOUR_US;
    let ends: HashMap<String, i64> = tracks.iter().filter_map(|(u, t)| Some((u.clone(), t.latest()?))).collect();
    let (Some(lo), Some(hi)) = (ends.values().min().map(|e| e - window), ends.values().max().copied()) else {
        return Ok(0);
    };
    let added: HashSet<&str> = adds.iter().map(|f| f.path.as_ref()).collect();
    let context: Vec<DataFile> = active_files(table, &LOCATIONS)?
        .into_iter()
        .filter(|f| !added.contains(f.path.as_ref()) && f.may_cover(lo, hi))
        .collect();
    if !context.is_empty() {
        let in_window = |unit: &str, ts: i64| ends.get(unit).is_some_and(|end| ts <= *end && ts >= end - window);
        for (unit, track) in read_tracks(&table.object_store(), &context, &in_window).await? {
            if let Some(t) = tracks.get_mut(&unit) {
                t.add_context(track);
            }
        }
    }
    Ok(context.len() as u64)
}

/// The record of this commit ([`record`]), if it has been landed. Its key is dated by the newest prediction, which
/// the added files' `ts` statistics give without reading them; when they cannot (no statistics, or the newest unit
/// got no prediction), the key misses and the commit is predicted again, which writes only what is missing. Any
/// object under the commit's key was landed by a run of this very commit (the key holds its version), after its
/// DynamoDB writes: a hit means done.
async fn landed_record(deps: &Deps, version: u64, adds: &[DataFile]) -> Result<Option<String>, PredictError> {
    let newest = adds.iter().map(|f| f.ts_range.map(|(_, hi)| hi)).collect::<Option<Vec<i64>>>();
    // The statistics keep milliseconds and the range is widened to the last microsecond of the newest one.
    let Some(newest) = newest.and_then(|n| n.into_iter().max()) else { return Ok(None) };
    let day = date_of(newest).format("%Y-%m-%d").to_string();
    let key = record::key_of_day(&deps.config.landing_prefix, Scope::Commit, version, &day);
    Ok(deps.store.head(&key).await?.map(|_| key))
}

/// Predicts for every unit seen within the window before the table's newest position.
#[instrument(skip_all)]
async fn refresh(deps: &Deps, deadline: Instant) -> Result<(u64, Done), PredictError> {
    let mut done = Done::default();
    let since = Instant::now();
    let Some(table) = deps.table(&LOCATIONS, since).await? else {
        warn!("bronze/locations does not exist yet: nothing to refresh");
        return Ok((0, done));
    };
    let version = table.version().unwrap_or(0);
    let files = active_files(&table, &LOCATIONS)?;
    let newest = files.iter().filter_map(|f| f.ts_range.map(|r| r.1)).max();
    // A clock ahead of ours must not decide which units are active for everybody: no later than now.
    let now = Utc::now().timestamp_micros();
    let newest = match newest {
        Some(n) => n.min(now),
        // Without statistics: the newest date partition, to its end.
        None => match files.iter().filter_map(|f| f.date).max().and_then(|d| d.succ_opt()) {
            Some(d) => d.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp_micros()),
            None => return Ok((version, done)),
        },
    };
    let window = i64::from(deps.contract.window_hours) * HOUR_US;
    // Units active within the window; each one's own window may reach one more window back.
    let (active_from, read_from) = (newest - window, newest - 2 * window);
    let files: Vec<DataFile> = files.into_iter().filter(|f| f.may_cover(read_from, newest)).collect();
    let mut tracks = read_tracks(&table.object_store(), &files, &|_, ts| ts >= read_from && ts <= newest).await?;
    done.positions = tracks.values().map(|t| t.positions.len() as u64).sum();
    done.context_files = files.len() as u64;
    tracks.retain(|_, t| t.latest().is_some_and(|l| l >= active_from));
    let (units, skipped, written) =
        predict(deps, tracks, Ahead::default(), Scope::Refresh, version, deadline, since).await?;
    done.units = units;
    done.skipped = skipped;
    done.written = written;
    info!(version, units, "full refresh done");
    Ok((version, done))
}

/// Whether a unit's features and predicted value can be written: finite numbers only (rows written before the
/// bronze bounds existed may still hold an absurd figure, which becomes infinite as an f32 feature).
fn storable(row: &[f32], value: f32) -> bool {
    value.is_finite() && row.iter().all(|v| v.is_finite())
}

fn date_of(ts_us: i64) -> NaiveDate {
    DateTime::from_timestamp_micros(ts_us).unwrap_or_default().date_naive()
}

/// Features → model → items, written to the predictions table and landed as the record of what was served
/// ([`record`]). A unit whose features or value are not finite
/// numbers gets no item (DynamoDB refuses the whole batch of an item holding one): it is counted and logged.
/// Returns the units predicted, the units skipped and what the write did.
async fn predict(
    deps: &Deps,
    tracks: HashMap<String, Track>,
    ahead: Ahead,
    scope: Scope,
    source_version: u64,
    deadline: Instant,
    since: Instant,
) -> Result<(u64, u64, WriteStats), PredictError> {
    let mut units: Vec<(String, Track, i64)> =
        tracks.into_iter().filter_map(|(u, t)| t.latest().map(|l| (u, t, l))).collect();
    if units.is_empty() {
        return Ok((0, 0, WriteStats::default()));
    }
    units.sort_by(|a, b| a.0.cmp(&b.0));
    let lookback = chrono::Days::new(u64::from(deps.config.stats_lookback_days));
    let first_day = units.iter().map(|u| date_of(u.2)).min().unwrap_or_default();
    let last_day = units.iter().map(|u| date_of(u.2)).max().unwrap_or_default();
    let from = first_day.checked_sub_days(lookback).unwrap_or(first_day);
    let figures = match ahead.figures {
        Some(p) if p.from <= from && p.to >= last_day => p.figures,
        _ => deps.figures(from, last_day, since).await?,
    };

    let rows: Vec<Vec<f32>> = units
        .iter()
        .map(|(unit, track, latest)| {
            let day = date_of(*latest);
            let last = figures.last(unit, day.checked_sub_days(lookback).unwrap_or(day), day);
            let kind = track.transport_type.as_ref().map(|t| t.1.as_str());
            unit_features(&deps.contract, kind, &track.positions, last)
        })
        .collect();
    let values = deps.model.predict(&rows)?;
    let ttl = i64::from(deps.config.ttl_days) * 86_400;
    let finite = |(unit, row, value): (&String, &Vec<f32>, f32)| {
        let ok = storable(row, value);
        if !ok {
            warn!(unit = %unit, value, "a feature or the prediction is not a finite number: no prediction for this unit");
        }
        ok
    };
    let kept: Vec<bool> =
        units.iter().zip(rows.iter().zip(&values)).map(|((u, ..), (row, v))| finite((u, row, *v))).collect();
    let skipped = kept.iter().filter(|k| !**k).count() as u64;
    let predictions: Vec<Prediction> = units
        .iter()
        .zip(rows.iter().zip(values))
        .zip(kept)
        .filter_map(|(pair, keep)| keep.then_some(pair))
        .filter_map(|((unit, _, latest), (row, value))| {
            // Bronze times lie within years 1-9999 (MICROS_RANGE); a key outside could not sort with the others.
            let Some(predicted_at) = fleetlake_aws::predictions::predicted_at_key(*latest) else {
                warn!(unit = %unit, micros = latest, "latest position outside years 1-9999: no prediction for this unit");
                return None;
            };
            Some(Prediction {
                transport_unit_id: unit.clone(),
                predicted_at,
                target: deps.contract.target.clone(),
                value: f64::from(value),
                unit: deps.contract.target_unit.clone(),
                model_version: deps.model.version().to_owned(),
                features: deps
                    .contract
                    .features
                    .iter()
                    .zip(row)
                    .map(|(f, v)| (f.name.clone(), f64::from(*v)))
                    .collect(),
                source_version,
                expires_at: latest.div_euclid(1_000_000) + ttl,
            })
        })
        .collect();
    // Items carry the record object they belong in, so that a retry lands its own earlier writes, never another's.
    let record_key = record::record_key(&deps.config.landing_prefix, scope, source_version, &predictions);
    let unstored = match ahead.stored.filter(|s| s.covers(&predictions)) {
        Some(stored) => stored.unstored(&predictions, Some(&record_key)),
        None => deps.predictions.unstored(&predictions, Some(&record_key), deadline).await?,
    };
    // The record of what this run put in DynamoDB: now, or in an earlier attempt that failed before landing it
    // (its object is then missing; when it is there, the create-only PUT leaves it). It is made while the writes
    // are in flight, and landed only after they all succeeded.
    let served: Vec<&Prediction> = unstored.fresh.iter().chain(&unstored.same_version).copied().collect();
    let (stats, record) =
        tokio::join!(deps.predictions.write_unstored(&unstored, deadline), async { record::Record::of(&served) });
    let stats = stats?;
    record::land(&deps.store, &record_key, record).await?;
    Ok((predictions.len() as u64, skipped, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetlake_aws::s3event::{parse_trigger, Trigger};

    #[test]
    fn a_unit_with_a_feature_or_value_that_is_not_finite_is_not_written() {
        use fleetlake_core::features::{unit_features, Position, SHIPPED_CONTRACT};
        let contract = fleetlake_core::features::Contract::parse(SHIPPED_CONTRACT).unwrap();
        let at = |h: i64, speed: f64| Position {
            ts_us: h * 3_600_000_000,
            lat: 1.0,
            lon: 2.0,
            speed_kmh: Some(speed),
            wind_speed_kmh: None,
            precipitation_mm: None,
        };
        let sane = unit_features(&contract, Some("maritime"), &[at(0, 20.0), at(1, 22.0)], None);
        assert!(storable(&sane, 14.5));
        assert!(!storable(&sane, f32::NAN) && !storable(&sane, f32::INFINITY));
        // A speed stored before the bounds existed: finite as f64, infinite as the model's f32.
        let absurd = unit_features(&contract, Some("maritime"), &[at(0, 1e300), at(1, 22.0)], None);
        assert!(!storable(&absurd, 14.5));
    }

    #[test]
    fn the_sample_events_are_understood() {
        let sqs: Value = serde_json::from_str(include_str!("../../../events/predictor/sqs.json")).unwrap();
        let Trigger::Sqs(messages) = parse_trigger(&sqs).unwrap() else { panic!("not an SQS event") };
        let keys: Vec<Vec<(&str, u64)>> = messages
            .iter()
            .map(|m| {
                let objects = m.objects.as_ref().unwrap();
                objects
                    .iter()
                    .filter_map(|o| CommitKey::parse("bronze/", &o.key))
                    .map(|c| (c.table.name, c.version))
                    .collect()
            })
            .collect();
        // Raw delivery (the S3 notification as the body) and an SNS envelope: both name a locations commit;
        // the third names a performance_stats commit the predictor ignores.
        assert_eq!(keys, [vec![("locations", 7)], vec![("locations", 8)], vec![("performance_stats", 3)]]);
        let schedule: Value = serde_json::from_str(include_str!("../../../events/predictor/schedule.json")).unwrap();
        assert!(is_schedule(&schedule));
        assert!(!is_schedule(&sqs));
    }
}
