//! What predictions are made from: positions read from `bronze/locations` data files and each unit's daily
//! performance figures resolved from the `bronze/performance_stats` change log. Only the needed columns of each
//! Parquet file are fetched (ranged GETs through deltalake's object store).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDate};
use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use deltalake::logstore::ObjectStoreRef;
// ParquetObjectReader is deprecated in parquet 59 in favour of hand-written readers; it still reads ranged GETs
// through deltalake's own object store, which is what we want (only the projected columns are fetched).
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
#[allow(deprecated)]
use deltalake::parquet::arrow::async_reader::ParquetObjectReader;
use deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::errors::ParquetError;
use deltalake::Path;
use fleetlake_core::features::{DailyFigures, Position};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

/// Data files read at once.
const READ_CONCURRENCY: usize = 8;

/// Bytes fetched from a data file's end at once: its footer and metadata (a few to a few tens of KiB in bronze).
const FOOTER_HINT_BYTES: usize = 64 << 10;

/// Data files up to this size are fetched whole: one request instead of the footer's and the columns' (a 15-minute
/// batch of 10,000 units is a few hundred KB). At most [`READ_CONCURRENCY`] of them are held at once.
const WHOLE_FILE_BYTES: u64 = 8 << 20;

/// A data file of a table: where it is, its date partition and the range of `ts` its statistics give.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DataFile {
    /// Path below the table root, as the object store wants it.
    pub(crate) path: Path,
    /// The date partition value, if the table has one.
    pub(crate) date: Option<NaiveDate>,
    /// `(min, max)` of `ts` in UTC microseconds, from the file statistics.
    pub(crate) ts_range: Option<(i64, i64)>,
    /// Its size in bytes as the log records it (0: not recorded, and asked of S3 first).
    pub(crate) size: u64,
}

impl DataFile {
    /// From the parts the Delta log gives: path, partition values and the statistics JSON.
    pub(crate) fn new(path: &str, date: Option<&str>, stats: Option<&str>, size: u64) -> Self {
        let ts_range = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()).and_then(|s| {
            let at =
                |section: &str| s.get(section)?.get("ts")?.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            // Statistics keep milliseconds: widen the range to whole milliseconds.
            Some((at("minValues")?.timestamp_micros(), at("maxValues")?.timestamp_micros() + 999))
        });
        Self {
            path: Path::parse(path).unwrap_or_else(|_| Path::from(path)),
            date: date.and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()),
            ts_range,
            size,
        }
    }

    /// Whether the file may hold rows with `ts` in `[from, to]` (UTC microseconds).
    pub(crate) fn may_cover(&self, from: i64, to: i64) -> bool {
        let day_us = 86_400_000_000;
        let by_date = self.date.is_none_or(|d| {
            let start = d.and_hms_opt(0, 0, 0).map_or(i64::MIN, |t| t.and_utc().timestamp_micros());
            start <= to && start + day_us > from
        });
        by_date && self.ts_range.is_none_or(|(lo, hi)| lo <= to && hi >= from)
    }
}

/// The data files with new rows a commit added (`add` actions but a compaction's), with its partition column's value.
pub(crate) fn commit_adds(commit: &[u8], partition_column: &str) -> Result<Vec<DataFile>, String> {
    let text = std::str::from_utf8(commit).map_err(|e| format!("commit is not UTF-8: {e}"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let action: Value = serde_json::from_str(line).map_err(|e| format!("commit line {}: {e}", n + 1))?;
        let Some(add) = action.get("add") else { continue };
        // A compaction's files (`dataChange: false`) hold rows already predicted from.
        if add.get("dataChange").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let path = add.get("path").and_then(Value::as_str).ok_or(format!("commit line {}: add without path", n + 1))?;
        let date = add.get("partitionValues").and_then(|p| p.get(partition_column)).and_then(Value::as_str);
        let size = add.get("size").and_then(Value::as_u64).unwrap_or(0);
        out.push(DataFile::new(path, date, add.get("stats").and_then(Value::as_str), size));
    }
    Ok(out)
}

/// The positions of one unit, and its transport type as last reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Track {
    /// Positions in no particular order.
    pub(crate) positions: Vec<Position>,
    /// `(ts, transport_type)` of the latest position that reported a type.
    pub(crate) transport_type: Option<(i64, String)>,
}

impl Track {
    /// `ts` of the latest position.
    pub(crate) fn latest(&self) -> Option<i64> {
        self.positions.iter().map(|p| p.ts_us).max()
    }

    /// Adds the positions of `other` (read from the table's other files) at times this track has none of: once a
    /// compaction has rewritten a commit's rows, the compacted file holds them again.
    pub(crate) fn add_context(&mut self, other: Track) {
        let seen: HashSet<i64> = self.positions.iter().map(|p| p.ts_us).collect();
        self.positions.extend(other.positions.into_iter().filter(|p| !seen.contains(&p.ts_us)));
        if self.transport_type.is_none() {
            self.transport_type = other.transport_type;
        }
    }

    fn merge(&mut self, other: Track) {
        self.positions.extend(other.positions);
        if other.transport_type.as_ref().map(|t| t.0) > self.transport_type.as_ref().map(|t| t.0) {
            self.transport_type = other.transport_type;
        }
    }
}

/// Which rows of a file to keep: `(unit, ts) -> bool`.
pub(crate) type RowFilter<'a> = &'a (dyn Fn(&str, i64) -> bool + Sync);

/// Why reading failed: storage or a file that is not what the table says (retried by Lambda either way).
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub(crate) struct ReadError {
    pub(crate) path: String,
    #[source]
    pub(crate) source: ParquetError,
}

const POSITION_COLUMNS: [&str; 7] =
    ["transport_unit_id", "ts", "lat", "lon", "transport_type", "speed_kmh", "wind_speed_kmh"];

/// Reads the positions in `files`, keeping the rows `keep` accepts, by unit.
pub(crate) async fn read_tracks(
    store: &ObjectStoreRef,
    files: &[DataFile],
    keep: RowFilter<'_>,
) -> Result<HashMap<String, Track>, ReadError> {
    let mut columns = POSITION_COLUMNS.to_vec();
    columns.push("precipitation_mm");
    // The futures are made before the stream runs them: a closure held across the awaits would make the
    // invocation's future lose `Send` (a known limit of the compiler with higher-ranked closures).
    let columns = &columns;
    let reads: Vec<_> = files
        .iter()
        .map(|f| async move {
            let batches = read_columns(store, f, columns).await?;
            Ok::<_, ReadError>(tracks_of(&batches, keep))
        })
        .collect();
    // Each file's tracks are merged as soon as it is read: a commit late in the day reads a hundred files or more,
    // and holding every file's tracks until the last one came in more than doubled the memory they take.
    futures::stream::iter(reads)
        .buffer_unordered(READ_CONCURRENCY)
        .try_fold(HashMap::new(), |mut out: HashMap<String, Track>, tracks| async move {
            for (unit, track) in tracks {
                match out.get_mut(&unit) {
                    Some(t) => t.merge(track),
                    None => {
                        out.insert(unit, track);
                    }
                }
            }
            Ok(out)
        })
        .await
}

/// Reads the named columns of one Parquet file (those the file has). A file of at most [`WHOLE_FILE_BYTES`] (its
/// size from the log) is fetched whole, in one request; a larger one as its footer, then its columns' ranges.
async fn read_columns(
    store: &ObjectStoreRef,
    file: &DataFile,
    columns: &[&str],
) -> Result<Vec<RecordBatch>, ReadError> {
    let path = &file.path;
    let err = |source: ParquetError| ReadError { path: path.to_string(), source };
    if file.size > 0 && file.size <= WHOLE_FILE_BYTES {
        let whole = store
            .get_ranges(path, std::slice::from_ref(&(0..file.size)))
            .await
            .map_err(|e| err(ParquetError::External(Box::new(e))))?
            .pop()
            .unwrap_or_default();
        let builder = ParquetRecordBatchReaderBuilder::try_new(whole).map_err(err)?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        let reader = builder.with_projection(mask).with_batch_size(16_384).build().map_err(err)?;
        return reader.collect::<Result<Vec<_>, _>>().map_err(|e| err(ParquetError::ArrowError(e.to_string())));
    }
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(store.clone(), path.clone());
    // The size from the log spares a HEAD request before the footer's; the hint fetches the footer and the metadata
    // in one request instead of two.
    let reader = reader.with_footer_size_hint(FOOTER_HINT_BYTES);
    let reader = if file.size > 0 { reader.with_file_size(file.size) } else { reader };
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(err)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    let stream = builder.with_projection(mask).with_batch_size(16_384).build().map_err(err)?;
    stream.try_collect().await.map_err(err)
}

/// A column cast to `to`, or a column of nulls when the file does not have it (an older schema).
fn column(batch: &RecordBatch, name: &str, to: &DataType) -> ArrayRef {
    match batch.column_by_name(name) {
        Some(c) if c.data_type() == to => c.clone(),
        Some(c) => cast(c, to).unwrap_or_else(|_| deltalake::arrow::array::new_null_array(to, batch.num_rows())),
        None => deltalake::arrow::array::new_null_array(to, batch.num_rows()),
    }
}

fn tracks_of(batches: &[RecordBatch], keep: RowFilter<'_>) -> HashMap<String, Track> {
    let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut out: HashMap<String, Track> = HashMap::new();
    for b in batches {
        let unit = column(b, "transport_unit_id", &DataType::Utf8);
        let unit = unit.as_string::<i32>();
        let ts = column(b, "ts", &ts_type);
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let f64s: Vec<ArrayRef> = ["lat", "lon", "speed_kmh", "wind_speed_kmh", "precipitation_mm"]
            .iter()
            .map(|n| column(b, n, &DataType::Float64))
            .collect();
        let f: Vec<_> = f64s.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
        let kind = column(b, "transport_type", &DataType::Utf8);
        let kind = kind.as_string::<i32>();
        let opt = |a: &deltalake::arrow::array::Float64Array, i: usize| a.is_valid(i).then(|| a.value(i));
        for i in 0..b.num_rows() {
            if unit.is_null(i) || ts.is_null(i) || f[0].is_null(i) || f[1].is_null(i) {
                continue; // the writer refuses such rows; a file from elsewhere may not
            }
            let (id, t) = (unit.value(i), ts.value(i));
            if !keep(id, t) {
                continue;
            }
            let track = match out.get_mut(id) {
                Some(t) => t,
                None => out.entry(id.to_owned()).or_default(),
            };
            track.positions.push(Position {
                ts_us: t,
                lat: f[0].value(i),
                lon: f[1].value(i),
                speed_kmh: opt(f[2], i),
                wind_speed_kmh: opt(f[3], i),
                precipitation_mm: opt(f[4], i),
            });
            if kind.is_valid(i) && track.transport_type.as_ref().is_none_or(|(at, _)| *at < t) {
                track.transport_type = Some((t, kind.value(i).to_owned()));
            }
        }
    }
    out
}

/// The daily performance rows of units, after applying the change log: `(unit, date) → figures`, deleted rows
/// left out.
#[derive(Debug, Default, Clone)]
pub(crate) struct Figures {
    by_unit: HashMap<String, BTreeMap<NaiveDate, DailyFigures>>,
}

impl Figures {
    /// The unit's latest row dated `on_or_before` or earlier, but not before `not_before`.
    pub(crate) fn last(&self, unit: &str, not_before: NaiveDate, on_or_before: NaiveDate) -> Option<DailyFigures> {
        self.by_unit.get(unit)?.range(not_before..=on_or_before).next_back().map(|(_, f)| *f)
    }

    /// How many units have at least one row.
    pub(crate) fn units(&self) -> usize {
        self.by_unit.len()
    }
}

const STATS_COLUMNS: [&str; 6] = ["transport_unit_id", "op", "ts_ms", "lsn", "distance_km", "fuel_used_l"];

/// Reads the change log of `performance_stats` in `files` (each with its `stat_date` partition) and resolves it:
/// per unit and date, the change with the greatest `(ts_ms, lsn)` wins, and a delete removes the row.
pub(crate) async fn read_figures(store: &ObjectStoreRef, files: &[DataFile]) -> Result<Figures, ReadError> {
    let mut columns = STATS_COLUMNS.to_vec();
    columns.push("engine_hours");
    let columns = &columns;
    let reads: Vec<_> = files
        .iter()
        .filter_map(|f| Some((f, f.date?)))
        .map(|(f, date)| async move {
            let batches = read_columns(store, f, columns).await?;
            Ok::<_, ReadError>(changes_of(&batches, date))
        })
        .collect();
    let per_file: Vec<Vec<Change>> =
        futures::stream::iter(reads).buffer_unordered(READ_CONCURRENCY).try_collect().await?;
    Ok(resolve(per_file.into_iter().flatten()))
}

/// One change of a daily performance row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub(crate) unit: String,
    pub(crate) date: NaiveDate,
    /// `(ts_ms, lsn)`: the order of changes.
    pub(crate) order: (i64, i64),
    pub(crate) deleted: bool,
    pub(crate) figures: DailyFigures,
}

fn changes_of(batches: &[RecordBatch], date: NaiveDate) -> Vec<Change> {
    let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut out = Vec::new();
    for b in batches {
        let unit = column(b, "transport_unit_id", &DataType::Utf8);
        let unit = unit.as_string::<i32>();
        let op = column(b, "op", &DataType::Utf8);
        let op = op.as_string::<i32>();
        let ts = column(b, "ts_ms", &ts_type);
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let lsn = column(b, "lsn", &DataType::Int64);
        let lsn = lsn.as_primitive::<Int64Type>();
        let nums: Vec<ArrayRef> =
            ["distance_km", "fuel_used_l", "engine_hours"].iter().map(|n| column(b, n, &DataType::Float64)).collect();
        let n: Vec<_> = nums.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
        let val = |a: &deltalake::arrow::array::Float64Array, i: usize| if a.is_valid(i) { a.value(i) } else { 0.0 };
        for i in (0..b.num_rows()).filter(|&i| unit.is_valid(i)) {
            out.push(Change {
                unit: unit.value(i).to_owned(),
                date,
                order: (
                    if ts.is_valid(i) { ts.value(i) } else { i64::MIN },
                    if lsn.is_valid(i) { lsn.value(i) } else { i64::MIN },
                ),
                deleted: op.is_valid(i) && op.value(i) == "d",
                figures: DailyFigures {
                    distance_km: val(n[0], i),
                    fuel_used_l: val(n[1], i),
                    engine_hours: val(n[2], i),
                },
            });
        }
    }
    out
}

/// Applies changes in their order; the last change of each `(unit, date)` decides.
pub(crate) fn resolve(changes: impl IntoIterator<Item = Change>) -> Figures {
    let mut last: HashMap<(String, NaiveDate), Change> = HashMap::new();
    for c in changes {
        let key = (c.unit.clone(), c.date);
        if last.get(&key).is_none_or(|prev| prev.order <= c.order) {
            last.insert(key, c);
        }
    }
    let mut figures = Figures::default();
    for ((unit, date), c) in last {
        if !c.deleted {
            figures.by_unit.entry(unit).or_default().insert(date, c.figures);
        }
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: &str) -> NaiveDate {
        NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap()
    }

    fn change(unit: &str, date: &str, order: (i64, i64), deleted: bool, fuel: f64) -> Change {
        Change {
            unit: unit.into(),
            date: day(date),
            order,
            deleted,
            figures: DailyFigures { distance_km: 1.0, fuel_used_l: fuel, engine_hours: 2.0 },
        }
    }

    #[test]
    fn the_latest_change_decides_and_a_delete_falls_back_to_the_day_before() {
        let figures = resolve([
            change("TU-1", "2026-11-23", (10, 1), false, 100.0),
            change("TU-1", "2026-11-24", (30, 3), false, 250.0), // an update, arriving before the insert
            change("TU-1", "2026-11-24", (20, 2), false, 200.0),
            change("TU-2", "2026-11-23", (10, 1), false, 50.0),
            change("TU-2", "2026-11-24", (20, 2), false, 60.0),
            change("TU-2", "2026-11-24", (40, 4), true, 0.0),
        ]);
        let fuel = |u: &str, from: &str, to: &str| figures.last(u, day(from), day(to)).map(|f| f.fuel_used_l);
        assert_eq!(fuel("TU-1", "2026-11-17", "2026-11-24"), Some(250.0));
        assert_eq!(fuel("TU-1", "2026-11-17", "2026-11-23"), Some(100.0), "nothing dated after the prediction");
        assert_eq!(fuel("TU-1", "2026-11-24", "2026-11-30"), Some(250.0));
        assert_eq!(fuel("TU-2", "2026-11-17", "2026-11-24"), Some(50.0), "the deleted day is gone");
        assert_eq!(fuel("TU-2", "2026-11-24", "2026-11-24"), None, "outside the lookback");
        assert_eq!(fuel("TU-9", "2026-11-17", "2026-11-24"), None);
        assert_eq!(figures.units(), 2);
    }

    #[test]
    fn context_adds_only_positions_at_times_the_commit_does_not_hold() {
        let at = |ts_us: i64, lat: f64| Position {
            ts_us,
            lat,
            lon: 0.0,
            speed_kmh: None,
            wind_speed_kmh: None,
            precipitation_mm: Some(1.0),
        };
        let mut commit = Track { positions: vec![at(2, 1.0), at(3, 1.0)], transport_type: None };
        // A compacted file holds the commit's positions again, beside an earlier one.
        let context =
            Track { positions: vec![at(1, 0.0), at(2, 1.0), at(3, 1.0)], transport_type: Some((1, "aerial".into())) };
        commit.add_context(context);
        let mut times: Vec<i64> = commit.positions.iter().map(|p| p.ts_us).collect();
        times.sort_unstable();
        assert_eq!(times, [1, 2, 3]);
        assert_eq!(commit.transport_type, Some((1, "aerial".into())));
    }

    #[test]
    fn commit_adds_keep_paths_dates_and_ts_statistics() {
        let stats = r#"{"numRecords":2,"minValues":{"ts":"2026-11-24T10:00:00.000Z"},"maxValues":{"ts":"2026-11-24T10:15:00.000Z"}}"#;
        let commit = [
            r#"{"commitInfo":{"operation":"WRITE"}}"#.to_owned(),
            serde_json::json!({"add": {"path": "event_date=2026-11-24/part-1.parquet",
                "partitionValues": {"event_date": "2026-11-24"}, "stats": stats}})
            .to_string(),
            r#"{"remove":{"path":"event_date=2026-11-23/old.parquet"}}"#.to_owned(),
            r#"{"add":{"path":"event_date=2026-11-25/part%202.parquet","partitionValues":{"event_date":"2026-11-25"}}}"#
                .to_owned(),
        ]
        .join("\n");
        let adds = commit_adds(commit.as_bytes(), "event_date").unwrap();
        assert_eq!(adds.len(), 2);
        let compaction = r#"{"add":{"path":"event_date=2026-11-24/c.parquet","partitionValues":{"event_date":"2026-11-24"},"dataChange":false}}"#;
        assert!(commit_adds(compaction.as_bytes(), "event_date").unwrap().is_empty(), "rows already predicted from");
        assert_eq!(adds[0].path.as_ref(), "event_date=2026-11-24/part-1.parquet");
        assert_eq!(adds[0].date, Some(day("2026-11-24")));
        let ten = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().timestamp_micros();
        assert_eq!(adds[0].ts_range, Some((ten, ten + 15 * 60_000_000 + 999)));
        assert_eq!(adds[1].ts_range, None);
        // Pruning: by statistics, then by the date partition.
        assert!(adds[0].may_cover(ten + 60_000_000, ten + 120_000_000));
        assert!(!adds[0].may_cover(ten + 16 * 60_000_000, ten + 20 * 60_000_000));
        assert!(!adds[1].may_cover(ten, ten + 3_600_000_000), "the 25th holds nothing of the 24th");
        assert!(commit_adds(b"{not json", "event_date").is_err());
    }
}
