//! The bronze tables' specs: columns, types and checks, partitioning, layout, and the Glue schema made from them.

use super::*;

/// Days from 0001-01-01 (chrono's day numbering) to 1970-01-01.
pub(crate) const UNIX_EPOCH_DAYS_CE: i32 = 719_163;

/// The type of a column, and how its JSON value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON string.
    Utf8,
    /// A JSON number.
    Float64,
    /// A JSON integer that fits in 32 bits.
    Int32,
    /// A JSON integer.
    Int64,
    /// An RFC 3339 string, stored as UTC microseconds.
    Timestamp,
    /// An integer of epoch milliseconds, stored as a UTC microsecond timestamp.
    EpochMillis,
    /// A `YYYY-MM-DD` string or an integer of days since 1970-01-01 (Debezium's `io.debezium.time.Date`).
    Date,
    /// A flag the pipeline derives (`is_current` of a history table); no source line carries one.
    Boolean,
}

impl Kind {
    /// The Arrow type of the column.
    pub fn arrow_type(self) -> DataType {
        match self {
            Kind::Utf8 => DataType::Utf8,
            Kind::Float64 => DataType::Float64,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Timestamp | Kind::EpochMillis => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Date => DataType::Date32,
            Kind::Boolean => DataType::Boolean,
        }
    }

    /// The Hive/Glue type of the column, as Athena reads it from Parquet.
    pub fn hive_type(self) -> &'static str {
        match self {
            Kind::Utf8 => "string",
            Kind::Float64 => "double",
            Kind::Int32 => "int",
            Kind::Int64 => "bigint",
            Kind::Timestamp | Kind::EpochMillis => "timestamp",
            Kind::Date => "date",
            Kind::Boolean => "boolean",
        }
    }
}

/// The dates every stage, Parquet, Athena and chrono represent alike, as days since 1970-01-01:
/// 0001-01-01 ..= 9999-12-31. A date outside is refused wherever it is read.
pub const DAYS_RANGE: (i32, i32) = (-719_162, 2_932_896);

/// The same span in microseconds since the epoch: 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999999Z.
pub const MICROS_RANGE: (i64, i64) = (-62_135_596_800_000_000, 253_402_300_799_999_999);

/// Longest text a string column takes, in bytes (an identifier or a name, never a document: a longer value is
/// refused rather than stored).
pub const MAX_TEXT_BYTES: usize = 4096;

/// Most members a record (or a change's row) may have of its own, known and unknown together: a line of thousands
/// of fields is not a position. The fields the pipeline adds ([`ADDED_FIELDS`]) are not counted.
pub const MAX_FIELDS: usize = 500;

/// The fields the pipeline adds to a record: lineage (msk-lander) and weather (weather-enricher).
pub const ADDED_FIELDS: [&str; 7] = [
    "_source",
    "_ingested_at",
    "temperature_c",
    "wind_speed_kmh",
    "precipitation_mm",
    "weather_code",
    "weather_status",
];

/// Most members a landed or enriched line of a record may have: its own [`MAX_FIELDS`] and the [`ADDED_FIELDS`].
pub const MAX_LINE_MEMBERS: usize = MAX_FIELDS + ADDED_FIELDS.len();

/// A check on a value beyond its type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// Any value of the type (within the bounds every value of the type has: finite numbers, representable dates
    /// and times, [`MAX_TEXT_BYTES`]).
    None,
    /// A number in `lo..=hi` (an integer column too).
    Range(f64, f64),
    /// An event time: within the [`EventWindow`] around the time its record was ingested.
    EventTime,
    /// A string of `min..=max` characters.
    Len(usize, usize),
    /// An identifier: `min..=max` characters, not all whitespace.
    Id(usize, usize),
    /// One of these strings.
    OneOf(&'static [&'static str]),
}

impl Check {
    /// Whether `s` is an identifier of `lo..=hi` characters, not all whitespace ([`Check::Id`]).
    pub fn id_ok(lo: usize, hi: usize, s: &str) -> bool {
        (lo..=hi).contains(&s.chars().count()) && !s.trim().is_empty()
    }
}

/// How far an event time may lie from the time its record entered the lake, in seconds. A clock a year behind or
/// a day ahead is a broken clock: its record would become a table's newest position or drag every reader back
/// through years of history. Backfills and snapshots of older events raise `max_age_s` explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventWindow {
    /// Latest accepted event time after the record was ingested.
    pub max_ahead_s: i64,
    /// Earliest accepted event time before the record was produced (its Kafka timestamp) or, without one,
    /// ingested.
    pub max_age_s: i64,
}

impl Default for EventWindow {
    fn default() -> Self {
        Self { max_ahead_s: 24 * 3600, max_age_s: 365 * 86_400 }
    }
}

/// The variables that set the [`EventWindow`] of every function that reads records.
pub const EVENT_TIME_MAX_AHEAD_HOURS: &str = "EVENT_TIME_MAX_AHEAD_HOURS";
/// See [`EVENT_TIME_MAX_AHEAD_HOURS`].
pub const EVENT_TIME_MAX_AGE_DAYS: &str = "EVENT_TIME_MAX_AGE_DAYS";

impl EventWindow {
    /// The window from `EVENT_TIME_MAX_AHEAD_HOURS` (default 24) and `EVENT_TIME_MAX_AGE_DAYS` (default 365).
    pub fn from_env(env: &crate::config::Env) -> Result<Self, crate::config::ConfigError> {
        let d = Self::default();
        let ahead: u32 = env.parse_or(EVENT_TIME_MAX_AHEAD_HOURS, (d.max_ahead_s / 3600) as u32)?;
        let age: u32 = env.parse_or(EVENT_TIME_MAX_AGE_DAYS, (d.max_age_s / 86_400) as u32)?;
        if age == 0 {
            return Err(crate::config::ConfigError::new(EVENT_TIME_MAX_AGE_DAYS, "must be at least 1"));
        }
        Ok(Self { max_ahead_s: i64::from(ahead) * 3600, max_age_s: i64::from(age) * 86_400 })
    }

    /// Whether `event_us` may be the event time of a record ingested at `ingested_us` and produced at
    /// `produced_us` (its Kafka timestamp, when it has one); the reason when it may not.
    pub fn check(&self, event_us: i64, ingested_us: i64, produced_us: Option<i64>) -> Result<(), String> {
        let latest = ingested_us.saturating_add(self.max_ahead_s.saturating_mul(1_000_000));
        let earliest = produced_us.unwrap_or(ingested_us).saturating_sub(self.max_age_s.saturating_mul(1_000_000));
        if event_us > latest {
            Err(format!(
                "is more than {} h after the record was ingested ({EVENT_TIME_MAX_AHEAD_HOURS})",
                self.max_ahead_s / 3600
            ))
        } else if event_us < earliest {
            Err(format!(
                "is more than {} days before the record was {} ({EVENT_TIME_MAX_AGE_DAYS})",
                self.max_age_s / 86_400,
                if produced_us.is_some() { "produced" } else { "ingested" }
            ))
        } else {
            Ok(())
        }
    }
}

/// One column of a bronze table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Column {
    /// Column name, also the JSON field it is read from.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Whether a row without it is refused.
    pub required: bool,
    /// Further check on its value.
    pub check: Check,
}

impl Column {
    /// Whether a number is a value this column takes: finite and, with a range, within it.
    pub fn admits(&self, v: f64) -> bool {
        v.is_finite()
            && match self.check {
                Check::Range(lo, hi) => (lo..=hi).contains(&v),
                _ => true,
            }
    }
}

/// The column of `spec` named `name`.
pub fn column(spec: &'static TableSpec, name: &str) -> Option<&'static Column> {
    spec.data.iter().find(|c| c.name == name)
}

pub(crate) const fn col(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, required: false, check: Check::None }
}

pub(crate) const fn opt(name: &'static str, kind: Kind, check: Check) -> Column {
    Column { name, kind, required: false, check }
}

pub(crate) const fn req(name: &'static str, kind: Kind, check: Check) -> Column {
    Column { name, kind, required: true, check }
}

/// How a line of the source dataset is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The record's fields at the top level (positions).
    Record,
    /// A landed Debezium change `{op, ts_ms, lsn, row}`: the row's fields under `row`.
    Change {
        /// The source table's primary key columns, part of a change's identity.
        key: &'static [&'static str],
    },
    /// A table derived from a change log (its [`TableSpec::input`] is `(Zone::Bronze, <change log>)`): the change
    /// log's row columns and the columns of the [`State`], no lineage. partition-sync rewrites it from the change
    /// log; no line is ever converted into it.
    State(State),
}

/// What a table derived from a change log holds (see [`crate::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// One row per key as the source holds it now, with `updated_at` and `lsn` of its latest change.
    Current,
    /// Every version of every key (SCD type 2), with `valid_from`, `valid_to` and `is_current`.
    History,
}

impl State {
    /// The columns after the row's own.
    pub fn columns(self) -> &'static [Column] {
        match self {
            State::Current => &CURRENT_COLUMNS,
            State::History => &HISTORY_COLUMNS,
        }
    }
}

/// `updated_at`, `lsn`: the latest change of a current-state row.
pub const CURRENT_COLUMNS: [Column; 2] = [req("updated_at", Kind::EpochMillis, Check::None), col("lsn", Kind::Int64)];

/// `valid_from`, `valid_to`, `is_current`: a version's span in a history table (`valid_to` null while current).
pub const HISTORY_COLUMNS: [Column; 3] = [
    req("valid_from", Kind::EpochMillis, Check::None),
    col("valid_to", Kind::EpochMillis),
    req("is_current", Kind::Boolean, Check::None),
];

/// Where a table's partition column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioning {
    /// The partition column.
    pub column: &'static str,
    /// The data column it is the UTC date of (the same column for a date column).
    pub from: &'static str,
}

/// A bronze table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TableSpec {
    /// Table name: the folder below the bronze prefix and the Glue table name.
    pub name: &'static str,
    /// The lake zone prefix variable its input lives under (`enriched` or `landing`) and the dataset folder.
    pub input: (Zone, &'static str),
    /// Line layout.
    pub layout: Layout,
    /// The record's (or the changed row's) own columns.
    pub data: &'static [Column],
    /// Partitioning, if any.
    pub partitioning: Option<Partitioning>,
}

/// A lake zone a table reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// `landing/`.
    Landing,
    /// `enriched/`.
    Enriched,
    /// Another bronze table (a [`Layout::State`] table's change log).
    Bronze,
}

/// `op`, `ts_ms`, `lsn`: the columns of a change before the row's own. `lsn` is null for a change pg-poller found
/// (identified by its key and `ts_ms`, the row's `updated_at`); Debezium's changes always carry one.
pub const CHANGE_COLUMNS: [Column; 3] = [
    req("op", Kind::Utf8, Check::OneOf(&["c", "u", "d", "r"])),
    req("ts_ms", Kind::EpochMillis, Check::EventTime),
    col("lsn", Kind::Int64),
];

/// `_extra`: the unknown fields, as a JSON object (null when there were none).
pub const EXTRA: &str = "_extra";

/// Lineage columns, after `_extra`. `_file` and `_line` are where delta-writer read the row.
pub const LINEAGE_COLUMNS: [Column; 9] = [
    col("_source_topic", Kind::Utf8),
    col("_source_partition", Kind::Int32),
    col("_source_offset", Kind::Int64),
    col("_source_timestamp", Kind::EpochMillis),
    col("_source_key", Kind::Utf8),
    col("_source_etag", Kind::Utf8),
    col("_ingested_at", Kind::Timestamp),
    req("_file", Kind::Utf8, Check::None),
    req("_line", Kind::Int64, Check::None),
];

/// The Glue (Hive) schema of every bronze table, generated from the specs above: the single input of the Glue
/// columns in `infra/local/stack.json`, `template.yaml` and `infra/athena/bronze_tables.sql`
/// (`make schema` writes `infra/schema/bronze.json` from it and regenerates those; `make test` checks they agree).
pub fn glue_schema() -> serde_json::Value {
    let tables: Vec<serde_json::Value> = TABLES
        .iter()
        .map(|t| {
            let partition = t.partitioning.map(|p| p.column);
            let columns: Vec<serde_json::Value> = t
                .columns()
                .into_iter()
                .filter(|(n, ..)| Some(*n) != partition)
                .map(|(n, k, _)| serde_json::json!([n, k.hive_type()]))
                .collect();
            let keys: Vec<serde_json::Value> =
                partition.into_iter().map(|p| serde_json::json!([p, Kind::Date.hive_type()])).collect();
            serde_json::json!({"bronze_table": t.name, "columns": columns, "partition_keys": keys})
        })
        .collect();
    serde_json::json!({"tables": tables})
}

/// A transport unit's identifier, in every table and at every stage: 1–64 characters, not all whitespace.
pub const UNIT_ID: Check = Check::Id(1, 64);

/// Whether `s` passes [`UNIT_ID`] (the rule an identifier from outside, such as a path of predictions-api, is held to).
pub fn is_unit_id(s: &str) -> bool {
    matches!(UNIT_ID, Check::Id(lo, hi) if Check::id_ok(lo, hi, s))
}

/// The weather columns of `locations`, in the order weather-enricher writes them (it reads this list).
pub const WEATHER_COLUMNS: [&str; 5] =
    ["temperature_c", "wind_speed_kmh", "precipitation_mm", "weather_code", "weather_status"];

/// The `weather_status` values weather-enricher writes.
pub const WEATHER_STATUSES: [&str; 3] = ["ok", "unavailable", "out_of_range"];

/// The transport types a record may declare.
pub const TRANSPORT_TYPES: [&str; 3] = ["aerial", "maritime", "terrestrial"];

/// `bronze/locations`: enriched positions, partitioned by the UTC date of `ts`.
pub const LOCATIONS: TableSpec = TableSpec {
    name: "locations",
    input: (Zone::Enriched, "locations"),
    layout: Layout::Record,
    data: &[
        req("transport_unit_id", Kind::Utf8, UNIT_ID),
        req("ts", Kind::Timestamp, Check::EventTime),
        req("lat", Kind::Float64, Check::Range(-90.0, 90.0)),
        req("lon", Kind::Float64, Check::Range(-180.0, 180.0)),
        Column { name: "transport_type", kind: Kind::Utf8, required: false, check: Check::OneOf(&TRANSPORT_TYPES) },
        // Physical bounds, generous: the fastest transport aircraft stay under 1,000 km/h and 15 km of altitude.
        opt("speed_kmh", Kind::Float64, Check::Range(0.0, 2_000.0)),
        opt("heading_deg", Kind::Float64, Check::Range(0.0, 360.0)),
        opt("altitude_m", Kind::Float64, Check::Range(-500.0, 20_000.0)),
        // Weather beyond every recorded extreme is an error of the weather service, not weather.
        opt(WEATHER_COLUMNS[0], Kind::Float64, Check::Range(-100.0, 70.0)),
        opt(WEATHER_COLUMNS[1], Kind::Float64, Check::Range(0.0, 500.0)),
        opt(WEATHER_COLUMNS[2], Kind::Float64, Check::Range(0.0, 500.0)),
        // WMO weather interpretation codes.
        opt(WEATHER_COLUMNS[3], Kind::Int32, Check::Range(0.0, 99.0)),
        opt(WEATHER_COLUMNS[4], Kind::Utf8, Check::OneOf(&WEATHER_STATUSES)),
    ],
    partitioning: Some(Partitioning { column: "event_date", from: "ts" }),
};

/// `bronze/performance_stats`: the change log of PostgreSQL `performance_stats`, partitioned by `stat_date`.
pub const PERFORMANCE_STATS: TableSpec = TableSpec {
    name: "performance_stats",
    input: (Zone::Landing, "performance_stats"),
    layout: Layout::Change { key: &["transport_unit_id", "stat_date"] },
    data: &[
        req("transport_unit_id", Kind::Utf8, UNIT_ID),
        // A business date: any representable date, no window.
        req("stat_date", Kind::Date, Check::None),
        // One unit's day: a long-haul aircraft covers under 20,000 km and burns under 400,000 l.
        opt("distance_km", Kind::Float64, Check::Range(0.0, 25_000.0)),
        opt("fuel_used_l", Kind::Float64, Check::Range(0.0, 1_000_000.0)),
        opt("engine_hours", Kind::Float64, Check::Range(0.0, 24.0)),
    ],
    partitioning: Some(Partitioning { column: "stat_date", from: "stat_date" }),
};

/// `bronze/transport_units`: the change log of PostgreSQL `transport_units`, unpartitioned.
pub const TRANSPORT_UNITS: TableSpec = TableSpec {
    name: "transport_units",
    input: (Zone::Landing, "transport_units"),
    layout: Layout::Change { key: &["transport_unit_id"] },
    data: &[
        req("transport_unit_id", Kind::Utf8, UNIT_ID),
        col("transport_type", Kind::Utf8),
        col("name", Kind::Utf8),
        // The largest ships carry about 400,000 t.
        opt("capacity_t", Kind::Float64, Check::Range(0.0, 1_000_000.0)),
    ],
    partitioning: None,
};

/// `bronze/predictions`: every prediction the predictor served, with its features and model version, partitioned
/// by the UTC date of `predicted_at`. The predictor lands each set of new predictions under
/// `landing/predictions/`, and delta-writer appends them like any landed file (identity: object, ETag, line).
pub const PREDICTIONS: TableSpec = TableSpec {
    name: "predictions",
    input: (Zone::Landing, "predictions"),
    layout: Layout::Record,
    data: &[
        req("transport_unit_id", Kind::Utf8, UNIT_ID),
        // The time of the position the prediction was made from: an accepted position's, so no window.
        req("predicted_at", Kind::Timestamp, Check::None),
        req("target", Kind::Utf8, Check::Id(1, 64)),
        req("value", Kind::Float64, Check::None),
        req("unit", Kind::Utf8, Check::Id(1, 16)),
        req("model_version", Kind::Utf8, Check::Id(1, 128)),
        // The features by name, as a JSON object.
        req("features", Kind::Utf8, Check::Len(2, MAX_TEXT_BYTES)),
        // The `bronze/locations` version the prediction was made from.
        req("source_version", Kind::Int64, Check::Range(0.0, 9.0e15)),
    ],
    partitioning: Some(Partitioning { column: "predicted_date", from: "predicted_at" }),
};

/// `bronze/performance_stats_current`: each unit's daily figures as the source database holds them now.
pub const PERFORMANCE_STATS_CURRENT: TableSpec =
    state_of(&PERFORMANCE_STATS, "performance_stats_current", State::Current);
/// `bronze/performance_stats_history`: every version of each unit's daily figures.
pub const PERFORMANCE_STATS_HISTORY: TableSpec =
    state_of(&PERFORMANCE_STATS, "performance_stats_history", State::History);
/// `bronze/transport_units_current`: each transport unit as the source database holds it now.
pub const TRANSPORT_UNITS_CURRENT: TableSpec = state_of(&TRANSPORT_UNITS, "transport_units_current", State::Current);
/// `bronze/transport_units_history`: every version of every transport unit.
pub const TRANSPORT_UNITS_HISTORY: TableSpec = state_of(&TRANSPORT_UNITS, "transport_units_history", State::History);

/// A state table of the change log `source`: its row columns and partitioning.
const fn state_of(source: &'static TableSpec, name: &'static str, state: State) -> TableSpec {
    TableSpec {
        name,
        input: (Zone::Bronze, source.name),
        layout: Layout::State(state),
        data: source.data,
        partitioning: source.partitioning,
    }
}

/// Every bronze table.
pub const TABLES: [&TableSpec; 8] = [
    &LOCATIONS,
    &PERFORMANCE_STATS,
    &TRANSPORT_UNITS,
    &PREDICTIONS,
    &PERFORMANCE_STATS_CURRENT,
    &PERFORMANCE_STATS_HISTORY,
    &TRANSPORT_UNITS_CURRENT,
    &TRANSPORT_UNITS_HISTORY,
];

impl TableSpec {
    /// Every column in table order, `_extra` included, as (name, kind, nullable).
    pub fn columns(&self) -> Vec<(&'static str, Kind, bool)> {
        let mut out = Vec::new();
        if let Layout::State(state) = self.layout {
            out.extend(self.data.iter().chain(state.columns()).map(|c| (c.name, c.kind, !c.required)));
            return out;
        }
        if matches!(self.layout, Layout::Change { .. }) {
            out.extend(CHANGE_COLUMNS.iter().map(|c| (c.name, c.kind, !c.required)));
        }
        out.extend(self.data.iter().map(|c| (c.name, c.kind, !c.required)));
        out.push((EXTRA, Kind::Utf8, true));
        out.extend(LINEAGE_COLUMNS.iter().map(|c| (c.name, c.kind, !c.required)));
        if let Some(p) = self.partitioning.filter(|p| p.column != p.from) {
            out.push((p.column, Kind::Date, false));
        }
        out
    }

    /// The columns a line is read into, in order: a change's `op`, `ts_ms`, `lsn`, then the record's (or row's) own.
    pub fn read_columns(&self) -> impl Iterator<Item = &'static Column> + '_ {
        let change: &'static [Column] =
            if matches!(self.layout, Layout::Change { .. }) { &CHANGE_COLUMNS } else { &[] };
        change.iter().chain(self.data.iter())
    }

    /// The Arrow schema of the table.
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns()
            .into_iter()
            .map(|(name, kind, nullable)| Field::new(name, kind.arrow_type(), nullable))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// Partition columns (none or one).
    pub fn partition_columns(&self) -> Vec<String> {
        self.partitioning.map(|p| vec![p.column.to_owned()]).unwrap_or_default()
    }

    /// The table reading objects under `zone`/`dataset` (landing or enriched).
    pub fn for_input(zone: Zone, dataset: &str) -> Option<&'static TableSpec> {
        TABLES.into_iter().find(|t| zone != Zone::Bronze && t.input == (zone, dataset))
    }

    /// The tables derived from this change log (none for any other table).
    pub fn states(&self) -> impl Iterator<Item = &'static TableSpec> + '_ {
        TABLES.into_iter().filter(|t| matches!(t.layout, Layout::State(_)) && t.input == (Zone::Bronze, self.name))
    }
}

/// Identity columns present in a table, by kind: the columns that rebuild an [`Identity`] from stored rows.
pub fn identity_columns(spec: &TableSpec) -> Vec<&'static str> {
    match spec.layout {
        Layout::Record => {
            vec!["_source_topic", "_source_partition", "_source_offset", "_source_key", "_source_etag", "_line"]
        }
        Layout::Change { key } => {
            let mut cols = vec!["op", "ts_ms", "lsn"];
            cols.extend_from_slice(key);
            cols
        }
        // Rewritten whole, never appended to: no identities.
        Layout::State(_) => Vec::new(),
    }
}
