//! The bronze tables, defined once: their columns, partitioning and record identity, and the conversion of landed
//! and enriched JSON lines into Arrow record batches of exactly that schema. No I/O.
//!
//! # Rules every table follows
//! - **Columns.** A table has the record's own columns (for CDC tables: `op`, `ts_ms`, `lsn`, then the row's
//!   columns), then `_extra`, then the lineage columns, then a derived partition column if it has one.
//! - **Unknown fields are kept, never dropped.** A field the schema does not name goes into `_extra`, a JSON object
//!   of the unknown fields with their values as received. Promoting one to a column is a change to the schema
//!   below; the writer then adds it to the table (a new nullable column, Delta schema evolution), and rows written
//!   before keep it in `_extra`.
//! - **A record that does not fit is quarantined**, with the field and the problem: a required field missing, a
//!   value of the wrong JSON type, a value out of range, a timestamp or date that is not one.
//! - **Identity.** Every row carries the identity of the record it came from, which is what exactly-once means:
//!   - a Kafka record is `(topic, partition, offset)` (`_source_topic`, `_source_partition`, `_source_offset`);
//!   - a Debezium change is `(op, primary key, lsn)`: a connector that crashes re-emits changes at new offsets,
//!     with the same LSN;
//!   - a record of a file dropped straight into the lake is `(key, etag, line)` of that file.
//!
//!   Each identity has a sequence column (`_source_offset`, `lsn`, `_line`) whose file statistics let a writer find
//!   the few existing data files that could hold a record again.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Datelike, NaiveDate};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

mod plain;

/// Days from 0001-01-01 (chrono's day numbering) to 1970-01-01.
const UNIX_EPOCH_DAYS_CE: i32 = 719_163;

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
        }
    }
}

/// A check on a value beyond its type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// Any value of the type.
    None,
    /// A number in `lo..=hi`.
    Range(f64, f64),
    /// A string of `min..=max` characters.
    Len(usize, usize),
    /// One of these strings.
    OneOf(&'static [&'static str]),
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

const fn col(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, required: false, check: Check::None }
}

const fn req(name: &'static str, kind: Kind, check: Check) -> Column {
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
}

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
}

/// `op`, `ts_ms`, `lsn`: the columns of a change before the row's own.
pub const CHANGE_COLUMNS: [Column; 3] = [
    req("op", Kind::Utf8, Check::OneOf(&["c", "u", "d", "r"])),
    req("ts_ms", Kind::EpochMillis, Check::None),
    req("lsn", Kind::Int64, Check::None),
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

/// `bronze/locations`: enriched positions, partitioned by the UTC date of `ts`.
pub const LOCATIONS: TableSpec = TableSpec {
    name: "locations",
    input: (Zone::Enriched, "locations"),
    layout: Layout::Record,
    data: &[
        req("transport_unit_id", Kind::Utf8, Check::Len(1, 64)),
        req("ts", Kind::Timestamp, Check::None),
        req("lat", Kind::Float64, Check::Range(-90.0, 90.0)),
        req("lon", Kind::Float64, Check::Range(-180.0, 180.0)),
        Column {
            name: "transport_type",
            kind: Kind::Utf8,
            required: false,
            check: Check::OneOf(&["aerial", "maritime", "terrestrial"]),
        },
        Column { name: "speed_kmh", kind: Kind::Float64, required: false, check: Check::Range(0.0, f64::MAX) },
        Column { name: "heading_deg", kind: Kind::Float64, required: false, check: Check::Range(0.0, 360.0) },
        col("altitude_m", Kind::Float64),
        col("temperature_c", Kind::Float64),
        col("wind_speed_kmh", Kind::Float64),
        col("precipitation_mm", Kind::Float64),
        col("weather_code", Kind::Int32),
        col("weather_status", Kind::Utf8),
    ],
    partitioning: Some(Partitioning { column: "event_date", from: "ts" }),
};

/// `bronze/performance_stats`: the change log of PostgreSQL `performance_stats`, partitioned by `stat_date`.
pub const PERFORMANCE_STATS: TableSpec = TableSpec {
    name: "performance_stats",
    input: (Zone::Landing, "performance_stats"),
    layout: Layout::Change { key: &["transport_unit_id", "stat_date"] },
    data: &[
        req("transport_unit_id", Kind::Utf8, Check::Len(1, 64)),
        req("stat_date", Kind::Date, Check::None),
        col("distance_km", Kind::Float64),
        col("fuel_used_l", Kind::Float64),
        col("engine_hours", Kind::Float64),
    ],
    partitioning: Some(Partitioning { column: "stat_date", from: "stat_date" }),
};

/// `bronze/transport_units`: the change log of PostgreSQL `transport_units`, unpartitioned.
pub const TRANSPORT_UNITS: TableSpec = TableSpec {
    name: "transport_units",
    input: (Zone::Landing, "transport_units"),
    layout: Layout::Change { key: &["transport_unit_id"] },
    data: &[
        req("transport_unit_id", Kind::Utf8, Check::Len(1, 64)),
        col("transport_type", Kind::Utf8),
        col("name", Kind::Utf8),
        col("capacity_t", Kind::Float64),
    ],
    partitioning: None,
};

/// Every bronze table.
pub const TABLES: [&TableSpec; 3] = [&LOCATIONS, &PERFORMANCE_STATS, &TRANSPORT_UNITS];

impl TableSpec {
    /// Every column in table order, `_extra` included, as (name, kind, nullable).
    pub fn columns(&self) -> Vec<(&'static str, Kind, bool)> {
        let mut out = Vec::new();
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

    /// The table reading objects under `zone`/`dataset`.
    pub fn for_input(zone: Zone, dataset: &str) -> Option<&'static TableSpec> {
        TABLES.into_iter().find(|t| t.input == (zone, dataset))
    }
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError(pub String);

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(field: &str, problem: impl fmt::Display) -> RowError {
    RowError(format!("{field}: {problem}"))
}

/// The kind of a row's identity; its sequence is in the column [`IdKind::seq_column`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// `(topic, partition)` + offset.
    Kafka,
    /// `(op, key)` + LSN.
    Change,
    /// `(key, etag)` of a dropped file + line.
    File,
}

impl IdKind {
    /// The column holding the identity's sequence number.
    pub fn seq_column(self) -> &'static str {
        match self {
            IdKind::Kafka => "_source_offset",
            IdKind::Change => "lsn",
            IdKind::File => "_line",
        }
    }

    /// Every kind.
    pub const ALL: [IdKind; 3] = [IdKind::Kafka, IdKind::Change, IdKind::File];
}

/// A record identity: the kind, the group it belongs to (a topic-partition, a change's op and key, a file), and
/// its sequence number within the group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Kind.
    pub kind: IdKind,
    /// Group text, e.g. `fleet.locations|3` (shared by the rows of a group).
    pub group: Arc<str>,
    /// Offset, LSN or line.
    pub seq: i64,
}

/// The identities of a batch's rows, in row order, kept as runs: consecutive rows of one kind and group whose
/// sequence numbers follow each other (a slice of a Kafka partition, the lines of a file) are one [`IdRun`]. A
/// writer checks and records a run at once instead of row by row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    runs: Vec<IdRun>,
    rows: usize,
}

/// `len` consecutive rows of one kind and group, with sequence numbers `first`, `first + 1`, …
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRun {
    /// Kind.
    pub kind: IdKind,
    /// Group text (shared with the neighbouring runs of the same group).
    pub group: Arc<str>,
    /// Sequence number of the run's first row.
    pub first: i64,
    /// Rows in the run (at least 1).
    pub len: usize,
}

impl IdRun {
    /// Sequence number of the run's last row.
    pub fn last(&self) -> i64 {
        self.first.saturating_add(i64::try_from(self.len).unwrap_or(i64::MAX) - 1)
    }

    /// Whether a row of this kind, group and sequence number continues the run.
    fn continued_by(&self, kind: IdKind, group: &str, seq: i64) -> bool {
        self.kind == kind && self.last().checked_add(1) == Some(seq) && same_text(&self.group, group)
    }
}

impl Identities {
    /// Adds the next row's identity.
    pub fn push(&mut self, id: Identity) {
        match self.runs.last_mut() {
            Some(run) if run.continued_by(id.kind, &id.group, id.seq) => run.len += 1,
            _ => self.runs.push(IdRun { kind: id.kind, group: id.group, first: id.seq, len: 1 }),
        }
        self.rows += 1;
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The runs, in row order.
    pub fn runs(&self) -> &[IdRun] {
        &self.runs
    }

    /// Every row's identity, in row order.
    pub fn iter(&self) -> impl Iterator<Item = Identity> + '_ {
        self.runs.iter().flat_map(|r| {
            (0..r.len).map(|i| Identity { kind: r.kind, group: r.group.clone(), seq: r.first + i as i64 })
        })
    }
}

impl FromIterator<Identity> for Identities {
    fn from_iter<I: IntoIterator<Item = Identity>>(iter: I) -> Self {
        let mut ids = Identities::default();
        for id in iter {
            ids.push(id);
        }
        ids
    }
}

/// Group text of a Kafka identity.
pub fn kafka_group(topic: &str, partition: i32) -> String {
    let mut g = String::new();
    push_kafka_group(&mut g, topic, partition);
    g
}

fn push_kafka_group(g: &mut String, topic: &str, partition: i32) {
    g.push_str(topic);
    g.push('|');
    g.push_str(itoa::Buffer::new().format(partition));
}

/// Group text of a dropped file's identity.
pub fn file_group(key: &str, etag: &str) -> String {
    let mut g = String::new();
    push_file_group(&mut g, key, etag);
    g
}

fn push_file_group(g: &mut String, key: &str, etag: &str) {
    g.push_str(key);
    g.push('|');
    g.push_str(etag);
}

/// Group text of a change's identity: op and the key values as text (dates as `YYYY-MM-DD`).
pub fn change_group<'a>(op: &str, key: impl IntoIterator<Item = &'a str>) -> String {
    let mut g = String::new();
    push_change_group(&mut g, op, key);
    g
}

fn push_change_group<'a>(g: &mut String, op: &str, key: impl IntoIterator<Item = &'a str>) {
    g.push_str(op);
    for part in key {
        g.push('|');
        g.push_str(part);
    }
}

/// Formats days since 1970-01-01 as `YYYY-MM-DD`.
pub fn date_text(days: i32) -> String {
    NaiveDate::from_num_days_from_ce_opt(days.saturating_add(UNIX_EPOCH_DAYS_CE))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| days.to_string())
}

/// Where a line was read: the object and its ETag, and the line's 1-based number.
#[derive(Debug, Clone, Copy)]
pub struct LineOrigin<'a> {
    /// Object key.
    pub key: &'a str,
    /// Object ETag (without quotes).
    pub etag: &'a str,
    /// 1-based line number.
    pub line: u64,
}

/// A JSON object key, borrowed from the line unless it has escapes (serde's own `Cow<str>` always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A member's value as parsed: a scalar typed, anything else by its kind. Members whose value is itself read as
/// JSON later (`_source`, a change's `row`) are kept as text.
#[derive(Debug, Clone)]
enum Json<'a> {
    Null,
    Bool,
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Object,
    Array,
    /// The value's JSON text, checked.
    Raw(&'a str),
}

impl Json<'_> {
    /// What the value is, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Int(_) | Json::UInt(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Object => "an object",
            Json::Array => "an array",
            Json::Raw(raw) => match raw.as_bytes().first() {
                Some(b'"') => "a string",
                Some(b'{') => "an object",
                Some(b'[') => "an array",
                Some(b't' | b'f') => "a boolean",
                Some(b'n') => "null",
                _ => "a number",
            },
        }
    }
}

/// Parses one value into [`Json`], validating (and skipping) nested values.
struct ValueSeed;

impl<'de> serde::de::DeserializeSeed<'de> for ValueSeed {
    type Value = Json<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Json<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(i64::try_from(v).map_or(Json::UInt(v), Json::Int))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Json::Float(v))
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Json::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(Json::Object)
    }
}

/// The members of one JSON object: the value of each known name (a repeated key: the last occurrence wins, as in
/// every JSON map), and the unknown members as text, in the order they came.
struct Slots<'a> {
    values: SmallVec<[Option<Json<'a>>; 24]>,
    unknown: Vec<(Cow<'a, str>, &'a str)>,
    /// Members read, repeats included.
    members: usize,
}

/// The names an object is read into, with the slot each key position matched on the last object: lines of one
/// source share their key order, so a key is nearly always matched by one comparison.
#[derive(Debug)]
struct FieldSet {
    names: Vec<&'static str>,
    /// Per name: kept as text ([`Json::Raw`]) instead of parsed.
    raw: Vec<bool>,
    order: Vec<Option<usize>>,
}

impl FieldSet {
    /// Reads `names`, keeping the values of those in `raw` as text.
    fn new(names: impl IntoIterator<Item = &'static str>, raw: &[&str]) -> Self {
        let names: Vec<&'static str> = names.into_iter().collect();
        let raw = names.iter().map(|n| raw.contains(n)).collect();
        Self { names, raw, order: Vec::new() }
    }

    /// The slot of `name`.
    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| *n == name).unwrap_or(usize::MAX)
    }

    /// The slot of the key at position `pos` of an object, if it is a known name.
    fn slot(&mut self, pos: usize, key: &str) -> Option<usize> {
        if let Some(&Some(s)) = self.order.get(pos) {
            if same_text(self.names[s], key) {
                return Some(s);
            }
        }
        let found = self.names.iter().position(|n| same_text(n, key));
        if pos < self.order.len() {
            self.order[pos] = found;
        } else if pos == self.order.len() {
            self.order.push(found);
        }
        found
    }

    /// Reads a JSON object's members into `slots` (filled in place: a row's slots are too large to pass around
    /// by value on every line). Plain lines take the fast path ([`plain`]); any other line, and every error, is
    /// serde_json's.
    fn parse<'a>(&mut self, text: &'a str, slots: &mut Slots<'a>) -> Result<(), RowError> {
        self.reset(slots);
        if plain::parse(self, text, slots).is_some() {
            return Ok(());
        }
        self.parse_with_serde(text, slots)
    }

    fn reset(&self, slots: &mut Slots<'_>) {
        slots.values.clear();
        slots.values.resize(self.names.len(), None);
        slots.unknown.clear();
        slots.members = 0;
    }

    /// [`FieldSet::parse`] by serde_json alone.
    fn parse_with_serde<'a>(&mut self, text: &'a str, slots: &mut Slots<'a>) -> Result<(), RowError> {
        self.reset(slots);
        let mut de = serde_json::Deserializer::from_str(text);
        serde::de::DeserializeSeed::deserialize(Fill { set: self, slots }, &mut de)
            .and_then(|()| de.end())
            .map_err(|e| RowError(format!("not a JSON object: {e}")))
    }
}

impl Slots<'_> {
    fn new() -> Self {
        Slots { values: SmallVec::new(), unknown: Vec::new(), members: 0 }
    }
}

/// `a == b` for the short texts of keys and groups, eight bytes at a time and inline: a call to the C library's
/// comparison for every key of every line cost more than the comparison itself.
#[inline]
fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or_default());
        if word(x) != word(y) {
            return false;
        }
    }
    ca.remainder().iter().zip(cb.remainder()).all(|(x, y)| x == y)
}

/// Reads one object into a [`FieldSet`]'s slots.
struct Fill<'s, 'a> {
    set: &'s mut FieldSet,
    slots: &'s mut Slots<'a>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Fill<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fill<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Fill { set, slots } = self;
        let mut pos = 0;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match set.slot(pos, &key) {
                Some(s) if set.raw[s] => slots.values[s] = Some(Json::Raw(map.next_value::<&RawValue>()?.get())),
                Some(s) => slots.values[s] = Some(map.next_value_seed(ValueSeed)?),
                None => slots.unknown.push((key, map.next_value::<&RawValue>()?.get())),
            }
            pos += 1;
            slots.members += 1;
        }
        Ok(())
    }
}

/// A typed value read from JSON.
#[derive(Debug, Clone, PartialEq)]
enum Cell<'a> {
    Null,
    Str(Cow<'a, str>),
    F64(f64),
    I64(i64),
    /// Microseconds since the epoch.
    Micros(i64),
    /// Days since the epoch.
    Days(i32),
}

fn read_cell<'a>(c: &Column, value: Option<Json<'a>>) -> Result<Cell<'a>, RowError> {
    let value = value.unwrap_or(Json::Null);
    if matches!(value, Json::Null) {
        return if c.required { Err(invalid(c.name, "required")) } else { Ok(Cell::Null) };
    }
    let got = value.kind();
    let wrong = |want: &str| invalid(c.name, format!("expected {want}, got {got}"));
    let cell = match (c.kind, value) {
        (Kind::Utf8, Json::Str(s)) => Cell::Str(s),
        (Kind::Utf8, _) => return Err(wrong("a string")),
        (Kind::Float64, Json::Int(v)) => Cell::F64(v as f64),
        (Kind::Float64, Json::UInt(v)) => Cell::F64(v as f64),
        (Kind::Float64, Json::Float(v)) => {
            if !v.is_finite() {
                return Err(invalid(c.name, "not a finite number"));
            }
            Cell::F64(v)
        }
        (Kind::Float64, _) => return Err(wrong("a number")),
        (Kind::Int32, Json::Int(v)) => {
            if i32::try_from(v).is_err() {
                return Err(invalid(c.name, format!("{v} does not fit in 32 bits")));
            }
            Cell::I64(v)
        }
        (Kind::Int64, Json::Int(v)) => Cell::I64(v),
        (Kind::Int32 | Kind::Int64, _) => return Err(wrong("an integer")),
        (Kind::EpochMillis, Json::Int(ms)) => {
            Cell::Micros(ms.checked_mul(1000).ok_or_else(|| invalid(c.name, "out of range"))?)
        }
        (Kind::EpochMillis, _) => return Err(wrong("integer epoch milliseconds")),
        (Kind::Timestamp, Json::Str(s)) => match rfc3339_micros_fast(&s) {
            Some(us) => Cell::Micros(us),
            None => {
                let t = DateTime::parse_from_rfc3339(&s)
                    .map_err(|e| invalid(c.name, format!("not an RFC 3339 timestamp ({e}): {s:?}")))?;
                Cell::Micros(t.timestamp_micros())
            }
        },
        (Kind::Timestamp, _) => return Err(wrong("an RFC 3339 timestamp string")),
        (Kind::Date, Json::Str(s)) => {
            let d = NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .map_err(|e| invalid(c.name, format!("not a YYYY-MM-DD date ({e}): {s:?}")))?;
            Cell::Days(d.num_days_from_ce() - UNIX_EPOCH_DAYS_CE)
        }
        (Kind::Date, Json::Int(days)) => {
            Cell::Days(i32::try_from(days).map_err(|_| wrong("a YYYY-MM-DD string or epoch days"))?)
        }
        (Kind::Date, _) => return Err(wrong("a YYYY-MM-DD string or epoch days")),
    };
    check(c, &cell)?;
    Ok(cell)
}

/// The common shape `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)` as UTC microseconds, without chrono's general
/// parser (a third of a row's conversion time); `None` for anything else, which then takes chrono's parser, so the
/// two always agree on what is valid.
fn rfc3339_micros_fast(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(r)?;
        digits.iter().try_fold(0u32, |n, d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None; // leap seconds and errors: chrono decides
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = i - start;
        if frac == 0 || frac > 9 {
            return None;
        }
        let digits = frac.min(6);
        micros = i64::from(num(start..start + digits)?) * 10i64.pow(6 - digits as u32);
    }
    let offset_s = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = i64::from(date.num_days_from_ce() - UNIX_EPOCH_DAYS_CE);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_s;
    Some(secs * 1_000_000 + micros)
}

fn check(c: &Column, cell: &Cell<'_>) -> Result<(), RowError> {
    match (c.check, cell) {
        (Check::Range(lo, hi), Cell::F64(v)) if !(lo..=hi).contains(v) => {
            Err(invalid(c.name, format!("{v} is outside {lo}..={hi}")))
        }
        (Check::Len(lo, hi), Cell::Str(s)) if !(lo..=hi).contains(&s.chars().count()) => {
            Err(invalid(c.name, format!("must be {lo} to {hi} characters")))
        }
        (Check::OneOf(allowed), Cell::Str(s)) if !allowed.contains(&s.as_ref()) => {
            Err(invalid(c.name, format!("{s:?} is not one of {allowed:?}")))
        }
        _ => Ok(()),
    }
}

/// One column's builder.
#[derive(Debug)]
enum Builder {
    Utf8(StringBuilder),
    F64(Float64Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    Ts(TimestampMicrosecondBuilder),
    Date(Date32Builder),
}

impl Builder {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Utf8 => Builder::Utf8(StringBuilder::new()),
            Kind::Float64 => Builder::F64(Float64Builder::new()),
            Kind::Int32 => Builder::I32(Int32Builder::new()),
            Kind::Int64 => Builder::I64(Int64Builder::new()),
            Kind::Timestamp | Kind::EpochMillis => Builder::Ts(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
            Kind::Date => Builder::Date(Date32Builder::new()),
        }
    }

    fn append(&mut self, cell: &Cell<'_>) {
        match (self, cell) {
            (Builder::Utf8(b), Cell::Str(s)) => b.append_value(s),
            (Builder::F64(b), Cell::F64(v)) => b.append_value(*v),
            (Builder::F64(b), Cell::I64(v)) => b.append_value(*v as f64),
            // Int32 cells were range-checked when read.
            (Builder::I32(b), Cell::I64(v)) => b.append_option(i32::try_from(*v).ok()),
            (Builder::I64(b), Cell::I64(v)) => b.append_value(*v),
            (Builder::Ts(b), Cell::Micros(v)) => b.append_value(*v),
            (Builder::Date(b), Cell::Days(v)) => b.append_value(*v),
            (b, _) => b.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Utf8(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::I32(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::Ts(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
        }
    }

    /// The column so far; the builder starts over with room for as many rows (and bytes) again, so the next
    /// chunk of a stream does not regrow every buffer from nothing.
    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Utf8(b) => {
                let (rows, bytes) = (b.len(), b.values_slice().len());
                let array = Arc::new(b.finish());
                *b = StringBuilder::with_capacity(rows, bytes);
                array
            }
            Builder::F64(b) => {
                let array = Arc::new(b.finish());
                *b = Float64Builder::with_capacity(array.len());
                array
            }
            Builder::I32(b) => {
                let array = Arc::new(b.finish());
                *b = Int32Builder::with_capacity(array.len());
                array
            }
            Builder::I64(b) => {
                let array = Arc::new(b.finish());
                *b = Int64Builder::with_capacity(array.len());
                array
            }
            Builder::Ts(b) => {
                let array = Arc::new(b.finish());
                *b = TimestampMicrosecondBuilder::with_capacity(array.len()).with_timezone("UTC");
                array
            }
            Builder::Date(b) => {
                let array = Arc::new(b.finish());
                *b = Date32Builder::with_capacity(array.len());
                array
            }
        }
    }
}

/// The `_source` lineage object as landed: Kafka coordinates, or the key and ETag of a dropped file.
#[derive(Debug, Default, serde::Deserialize)]
struct Source<'a> {
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(default)]
    partition: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    etag: Option<Cow<'a, str>>,
}

/// The members of `_source`, in the order of [`Source`]'s fields.
const SOURCE_FIELDS: [&str; 6] = ["topic", "partition", "offset", "timestamp", "key", "etag"];

impl<'a> Source<'a> {
    /// `_source` from slots read by the plain reader; `None` for anything serde would read differently or refuse
    /// (a repeated member, a value of another type), which is then left to serde.
    fn from_slots(mut slots: Slots<'a>) -> Option<Self> {
        let known = slots.values.iter().filter(|v| v.is_some()).count();
        if slots.members - slots.unknown.len() != known {
            return None; // a member repeated: serde refuses it
        }
        let mut take = |i: usize| slots.values.get_mut(i).and_then(Option::take);
        let text = |v: Option<Json<'a>>| match v {
            None | Some(Json::Null) => Some(None),
            Some(Json::Str(s)) => Some(Some(s)),
            Some(_) => None,
        };
        let int = |v: Option<Json<'a>>| match v {
            None | Some(Json::Null) => Some(None),
            Some(Json::Int(n)) => Some(Some(n)),
            Some(_) => None,
        };
        Some(Source {
            topic: text(take(0))?,
            partition: int(take(1))?,
            offset: int(take(2))?,
            timestamp: int(take(3))?,
            key: text(take(4))?,
            etag: text(take(5))?,
        })
    }
}

/// Converts lines of one table's input into record batches of the table's schema, keeping each row's identity.
#[derive(Debug)]
pub struct Converter {
    spec: &'static TableSpec,
    schema: SchemaRef,
    builders: Vec<Builder>,
    ids: Identities,
    rows: usize,
    /// The line's own members: the record's columns (or a change's `op`, `ts_ms`, `lsn` and `row`), `_source`,
    /// `_ingested_at`.
    top: FieldSet,
    /// A change's `row` members: the row's columns.
    row: FieldSet,
    /// The members of `_source`.
    source: FieldSet,
    /// The slots of `_source`, `_ingested_at` and (for a change) `row` in `top`.
    slots: (usize, usize, usize),
    /// The identity group text being built, and the last one made: consecutive rows nearly always share it.
    group_text: String,
    last_group: Option<(IdKind, Arc<str>)>,
}

impl Converter {
    /// A converter for `spec`.
    pub fn new(spec: &'static TableSpec) -> Self {
        let schema = spec.arrow_schema();
        let builders = spec.columns().into_iter().map(|(_, kind, _)| Builder::new(kind)).collect();
        let data = spec.data.iter().map(|c| c.name);
        let top = match spec.layout {
            Layout::Record => FieldSet::new(data.chain(["_source", "_ingested_at"]), &["_source"]),
            Layout::Change { .. } => FieldSet::new(
                CHANGE_COLUMNS.iter().map(|c| c.name).chain(["row", "_source", "_ingested_at"]),
                &["row", "_source"],
            ),
        };
        let row = FieldSet::new(spec.data.iter().map(|c| c.name), &[]);
        let slots = (top.index("_source"), top.index("_ingested_at"), top.index("row"));
        Self {
            spec,
            schema,
            builders,
            ids: Identities::default(),
            rows: 0,
            top,
            row,
            source: FieldSet::new(SOURCE_FIELDS, &[]),
            slots,
            group_text: String::new(),
            last_group: None,
        }
    }

    /// Records the next row's identity: `kind`, the group text in `group_text`, `seq`. A row continuing the last
    /// run extends it; a new run shares the last group's text when equal.
    fn record_identity(&mut self, kind: IdKind, seq: i64) {
        if let Some(run) = self.ids.runs.last_mut() {
            if run.continued_by(kind, &self.group_text, seq) {
                run.len += 1;
                self.ids.rows += 1;
                return;
            }
        }
        let group = match &self.last_group {
            Some((k, g)) if *k == kind && same_text(g, &self.group_text) => g.clone(),
            _ => {
                let g: Arc<str> = Arc::from(self.group_text.as_str());
                self.last_group = Some((kind, g.clone()));
                g
            }
        };
        self.ids.push(Identity { kind, group, seq });
    }

    /// The table's schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows converted since the last [`Converter::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is waiting.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// `_source` from its JSON text: the plain reader's slots when it can read them, serde otherwise (which then
    /// decides the error message).
    fn read_source<'a>(&mut self, raw: &'a str) -> Result<Source<'a>, RowError> {
        let mut slots = Slots::new();
        self.source.reset(&mut slots);
        if plain::parse(&mut self.source, raw, &mut slots).is_some() {
            if let Some(source) = Source::from_slots(slots) {
                return Ok(source);
            }
        }
        serde_json::from_str(raw).map_err(|e| invalid("_source", e))
    }

    /// Converts one line: the row is added, or the reason it was refused is returned (and nothing is added).
    pub fn push(&mut self, line: &[u8], origin: LineOrigin<'_>) -> Result<(), RowError> {
        let text = std::str::from_utf8(line).map_err(|e| RowError(format!("not UTF-8: {e}")))?;
        let mut top = Slots::new();
        self.top.parse(text, &mut top)?;
        let mut cells: SmallVec<[Cell<'_>; 24]> = SmallVec::new();
        let mut key_text: SmallVec<[String; 2]> = SmallVec::new();
        let source_raw = match top.values[self.slots.0].take() {
            Some(Json::Raw(raw)) => Some(raw),
            _ => None,
        };
        let ingested = top.values[self.slots.1].take();
        let extra = match self.spec.layout {
            Layout::Record => {
                for (c, value) in self.spec.data.iter().zip(top.values.iter_mut()) {
                    cells.push(read_cell(c, value.take())?);
                }
                extra_json(&top.unknown, None)
            }
            Layout::Change { key } => {
                for (c, value) in CHANGE_COLUMNS.iter().zip(top.values.iter_mut()) {
                    cells.push(read_cell(c, value.take())?);
                }
                let row_raw = match top.values[self.slots.2].take() {
                    Some(Json::Raw(raw)) if raw != "null" => raw,
                    _ => return Err(invalid("row", "required")),
                };
                let mut row = Slots::new();
                self.row.parse(row_raw, &mut row).map_err(|e| invalid("row", e))?;
                for (c, value) in self.spec.data.iter().zip(row.values.iter_mut()) {
                    let cell = read_cell(c, value.take())?;
                    if key.contains(&c.name) {
                        key_text.push(match &cell {
                            Cell::Str(s) => s.to_string(),
                            Cell::Days(d) => date_text(*d),
                            Cell::F64(v) => v.to_string(),
                            Cell::I64(v) | Cell::Micros(v) => v.to_string(),
                            Cell::Null => String::new(),
                        });
                    }
                    cells.push(cell);
                }
                // Unknown fields of the row go to `_extra`; unknown fields of the change line itself (none today)
                // go there too, under `_change`.
                let top_extra = extra_json(&top.unknown, None);
                extra_json(&row.unknown, top_extra.as_deref().map(|t| ("_change", t)))
            }
        };
        let source: Source<'_> = match source_raw.filter(|r| *r != "null") {
            Some(raw) => self.read_source(raw)?,
            None => Source::default(),
        };
        let partition = match source.partition {
            Some(p) => Some(i32::try_from(p).map_err(|_| invalid("_source.partition", "does not fit in 32 bits"))?),
            None => None,
        };
        let ingested = read_cell(&LINEAGE_COLUMNS[6], ingested)?;

        // The row's identity: its kind and sequence here, its group text in `group_text`.
        let line_no = i64::try_from(origin.line).unwrap_or(i64::MAX);
        self.group_text.clear();
        let (kind, seq) = match (self.spec.layout, &source.topic, partition, source.offset) {
            (Layout::Change { .. }, ..) => {
                let op = match &cells[0] {
                    Cell::Str(s) => s.as_ref(),
                    _ => "",
                };
                let lsn = match cells[2] {
                    Cell::I64(v) => v,
                    _ => 0,
                };
                push_change_group(&mut self.group_text, op, key_text.iter().map(String::as_str));
                (IdKind::Change, lsn)
            }
            (Layout::Record, Some(topic), Some(p), Some(offset)) => {
                push_kafka_group(&mut self.group_text, topic, p);
                (IdKind::Kafka, offset)
            }
            (Layout::Record, ..) => {
                let (key, etag) =
                    (source.key.as_deref().unwrap_or(origin.key), source.etag.as_deref().unwrap_or(origin.etag));
                push_file_group(&mut self.group_text, key, etag);
                (IdKind::File, line_no)
            }
        };
        // A row without Kafka coordinates records the file it is identified by, so the identity can be rebuilt
        // from the table.
        let (src_key, src_etag) = if kind == IdKind::File {
            (
                Some(source.key.unwrap_or(Cow::Borrowed(origin.key))),
                Some(source.etag.unwrap_or(Cow::Borrowed(origin.etag))),
            )
        } else {
            (source.key, source.etag)
        };

        // The derived partition value.
        let derived = match self.spec.partitioning.filter(|p| p.column != p.from) {
            Some(p) => {
                let i = self.spec.data.iter().position(|c| c.name == p.from).unwrap_or(0);
                let offset = if matches!(self.spec.layout, Layout::Change { .. }) { CHANGE_COLUMNS.len() } else { 0 };
                match cells[offset + i] {
                    Cell::Micros(us) => Some(Cell::Days(us.div_euclid(86_400_000_000) as i32)),
                    _ => return Err(invalid(p.from, "required for the partition")),
                }
            }
            None => None,
        };

        // All checks passed: append.
        let mut b = self.builders.iter_mut();
        for cell in &cells {
            if let Some(b) = b.next() {
                b.append(cell);
            }
        }
        let lineage = [
            source.topic.map_or(Cell::Null, Cell::Str),
            partition.map_or(Cell::Null, |p| Cell::I64(i64::from(p))),
            source.offset.map_or(Cell::Null, Cell::I64),
            source.timestamp.map_or(Cell::Null, |ms| Cell::Micros(ms.saturating_mul(1000))),
            src_key.map_or(Cell::Null, Cell::Str),
            src_etag.map_or(Cell::Null, Cell::Str),
            ingested,
            Cell::Str(Cow::Borrowed(origin.key)),
            Cell::I64(line_no),
        ];
        let extra = extra.map_or(Cell::Null, |e| Cell::Str(Cow::Owned(e)));
        for cell in std::iter::once(&extra).chain(lineage.iter()).chain(derived.iter()) {
            if let Some(b) = b.next() {
                b.append(cell);
            }
        }
        self.record_identity(kind, seq);
        self.rows += 1;
        Ok(())
    }

    /// Drops the rows converted since the last [`Converter::finish`] (those of an object that failed half way),
    /// keeping what the converter learnt of the input's shape.
    pub fn clear(&mut self) {
        if self.rows > 0 {
            // Building the arrays is the one way to empty the builders; the result is not wanted.
            let _ = self.finish();
        }
    }

    /// The rows converted so far as one record batch, with their identities in row order; the converter starts
    /// over empty.
    pub fn finish(&mut self) -> Result<(RecordBatch, Identities), ArrowError> {
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        self.rows = 0;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok((batch, std::mem::take(&mut self.ids)))
    }
}

/// The unknown members (and `nested`, a further member) as a JSON object's text, or `None` when there are none.
fn extra_json(unknown: &[(Cow<'_, str>, &str)], nested: Option<(&str, &str)>) -> Option<String> {
    let left: Vec<(&str, &str)> = unknown
        .iter()
        .enumerate()
        .filter(|(i, (k, _))| {
            // A repeated unknown key: only its last occurrence.
            !unknown[i + 1..].iter().any(|(k2, _)| k2 == k)
        })
        .map(|(_, (k, v))| (k.as_ref(), *v))
        .collect();
    if left.is_empty() && nested.is_none() {
        return None;
    }
    let mut out = String::from("{");
    let members = left.into_iter().chain(nested);
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).unwrap_or_default());
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
    Some(out)
}

/// Identity columns present in a table, by kind: the columns that rebuild an [`Identity`] from stored rows.
pub fn identity_columns(spec: &TableSpec) -> Vec<&'static str> {
    match spec.layout {
        Layout::Record => {
            vec!["_source_topic", "_source_partition", "_source_offset", "_source_key", "_source_etag", "_line"]
        }
        Layout::Change { key } => {
            let mut cols = vec!["op", "lsn"];
            cols.extend_from_slice(key);
            cols
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Date32Type, Int64Type, TimestampMicrosecondType};
    use arrow_array::{Array, Float64Array};

    fn origin(line: u64) -> LineOrigin<'static> {
        LineOrigin { key: "enriched/locations/dt=2026-11-24/f.ndjson.gz", etag: "e1", line }
    }

    const POSITION: &str = r#"{"transport_unit_id":"TU-1","ts":"2026-11-24T23:45:00+01:00","lat":53.5,"lon":9.9,"speed_kmh":12,"_source":{"topic":"fleet.locations","partition":2,"offset":7,"timestamp":1795507200001},"_ingested_at":"2026-11-24T08:00:00Z","weather_code":61,"flight_level":"FL350","tags":["a"]}"#;

    #[test]
    fn a_position_becomes_one_typed_row_with_lineage_and_identity() {
        let mut c = Converter::new(&LOCATIONS);
        c.push(POSITION.as_bytes(), origin(3)).unwrap();
        let (batch, ids) = c.finish().unwrap();
        assert_eq!(batch.num_rows(), 1);
        let ts = batch.column_by_name("ts").unwrap().as_primitive::<TimestampMicrosecondType>().value(0);
        assert_eq!(ts, 1_795_560_300_000_000, "the offset is applied: 22:45 UTC");
        let day = batch.column_by_name("event_date").unwrap().as_primitive::<Date32Type>().value(0);
        assert_eq!(date_text(day), "2026-11-24", "the UTC date of ts");
        let speed =
            batch.column_by_name("speed_kmh").unwrap().as_any().downcast_ref::<Float64Array>().unwrap().value(0);
        assert_eq!(speed, 12.0, "an integer is a valid number");
        assert_eq!(
            batch.column_by_name("_extra").unwrap().as_string::<i32>().value(0),
            r#"{"flight_level":"FL350","tags":["a"]}"#
        );
        let src_ts =
            batch.column_by_name("_source_timestamp").unwrap().as_primitive::<TimestampMicrosecondType>().value(0);
        assert_eq!(src_ts, 1_795_507_200_001_000, "milliseconds kept");
        assert_eq!(batch.column_by_name("_line").unwrap().as_primitive::<Int64Type>().value(0), 3);
        assert!(batch.column_by_name("_source_key").unwrap().is_null(0), "a Kafka record names no file");
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            [Identity { kind: IdKind::Kafka, group: "fleet.locations|2".into(), seq: 7 }]
        );
        assert_eq!(batch.schema(), LOCATIONS.arrow_schema());
    }

    #[test]
    fn keys_are_matched_whatever_their_order_escapes_or_repeats() {
        let mut c = Converter::new(&LOCATIONS);
        let lines = [
            // The same key order on consecutive lines, then another order, then escapes and repeats.
            r#"{"transport_unit_id":"TU-1","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2}"#,
            r#"{"transport_unit_id":"TU-2","ts":"2026-11-24T10:00:00Z","lat":3,"lon":4}"#,
            r#"{"lon":6,"lat":5,"ts":"2026-11-24T10:00:00Z","transport_unit_id":"TU-3"}"#,
            r#"{"transport_unit_\u0069d":"TU-4","ts":"2026-11-24T10:00:00Z","lat":7,"lon":8,"x\u0079":1}"#,
            r#"{"transport_unit_id":"TU-0","lat":90,"ts":"2026-11-24T10:00:00Z","lat":9,"lon":10,"k":1,"k":2}"#,
        ];
        for (i, line) in lines.iter().enumerate() {
            c.push(line.as_bytes(), origin(i as u64 + 1)).unwrap();
        }
        let (batch, _) = c.finish().unwrap();
        let units = batch.column_by_name("transport_unit_id").unwrap().as_string::<i32>();
        let lat = batch.column_by_name("lat").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        let lon = batch.column_by_name("lon").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        let extra = batch.column_by_name("_extra").unwrap().as_string::<i32>();
        let rows: Vec<(&str, f64, f64, Option<&str>)> = (0..batch.num_rows())
            .map(|i| (units.value(i), lat.value(i), lon.value(i), (!extra.is_null(i)).then(|| extra.value(i))))
            .collect();
        assert_eq!(
            rows,
            [
                ("TU-1", 1.0, 2.0, None),
                ("TU-2", 3.0, 4.0, None),
                ("TU-3", 5.0, 6.0, None),
                ("TU-4", 7.0, 8.0, Some(r#"{"xy":1}"#)),
                ("TU-0", 9.0, 10.0, Some(r#"{"k":2}"#)),
            ],
            "an escaped key is its unescaped name; a repeated key's last value wins"
        );
    }

    #[test]
    fn numbers_keep_every_bit_the_text_gives_them() {
        // Shortest round-trip texts of doubles (what serializers write), and texts with more digits than a double
        // holds: each must read as the correctly rounded double, as Rust's own parser reads it.
        let mut texts: Vec<String> = [
            "0.30000000000000004",
            "53.551086",
            "-9.993682",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
            "5e-324",
            "0.1",
            "123456789012345678",
            "1.00000000000000011102230246251565404236316680908203125",
            "9007199254740993",
            "-0.0",
        ]
        .map(String::from)
        .to_vec();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let v = f64::from_bits(rng.u64(..));
            if v.is_finite() {
                texts.push(format!("{v:?}"));
                texts.push(format!("{:.17e}", v));
            }
        }
        let mut c = Converter::new(&LOCATIONS);
        for t in &texts {
            let line =
                format!(r#"{{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"altitude_m":{t}}}"#);
            c.push(line.as_bytes(), origin(1)).unwrap();
        }
        let (batch, _) = c.finish().unwrap();
        let alt = batch.column_by_name("altitude_m").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        for (i, t) in texts.iter().enumerate() {
            let want: f64 = t.parse().unwrap();
            assert_eq!(alt.value(i).to_bits(), want.to_bits(), "{t}");
        }
    }

    #[test]
    fn the_timestamp_fast_path_agrees_with_chrono() {
        let samples = [
            "2026-11-24T10:00:00Z",
            "2026-11-24t10:00:00z",
            "1969-12-31T23:59:59.999999Z",
            "2026-11-24T23:45:00+01:00",
            "2026-11-24T00:15:00-05:30",
            "2024-02-29T12:00:00.5Z",
            "2026-11-24T10:00:00.123456789Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
        ];
        for s in samples {
            let chrono = DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros();
            assert_eq!(rfc3339_micros_fast(s), Some(chrono), "{s}");
        }
        // Not taken by the fast path: chrono decides (and refuses or accepts) these.
        for s in [
            "2026-02-30T10:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T10:00:60Z",
            "2026-11-24T10:00:00",
            "2026-11-24 10:00:00Z",
            "2026-11-24T10:00:00.Z",
            "2026-11-24T10:00:00+0100",
            "+2026-11-24T10:00:00Z",
        ] {
            assert_eq!(rfc3339_micros_fast(s), None, "{s}");
        }
    }

    #[test]
    fn a_record_of_a_dropped_file_is_identified_by_file_and_line() {
        let mut c = Converter::new(&LOCATIONS);
        let line = r#"{"transport_unit_id":"TU-1","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"_source":{"key":"landing/locations/dt=2026-11-24/drop.ndjson.gz","etag":"abc"}}"#;
        c.push(line.as_bytes(), origin(9)).unwrap();
        let (_, ids) = c.finish().unwrap();
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            [Identity {
                kind: IdKind::File,
                group: "landing/locations/dt=2026-11-24/drop.ndjson.gz|abc".into(),
                seq: 9
            }]
        );
    }

    #[test]
    fn bad_records_are_refused_with_the_field_and_nothing_is_added() {
        let cases = [
            (r#"{"ts":"2026-11-24T10:00:00Z","lat":1,"lon":2}"#, "transport_unit_id: required"),
            (r#"{"transport_unit_id":"T","ts":"2026-11-24","lat":1,"lon":2}"#, "ts: not an RFC 3339 timestamp"),
            (r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":91,"lon":2}"#, "lat: 91 is outside"),
            (
                r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":"1","lon":2}"#,
                "lat: expected a number, got a string",
            ),
            (
                r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"weather_code":1.5}"#,
                "weather_code: expected an integer",
            ),
            (
                r#"{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"transport_type":"rail"}"#,
                "transport_type: \"rail\" is not one of",
            ),
            (r#"[1,2]"#, "not a JSON object"),
            (r#"{"transport_unit_id":"T","#, "not a JSON object"),
        ];
        let mut c = Converter::new(&LOCATIONS);
        for (line, want) in cases {
            let err = c.push(line.as_bytes(), origin(1)).unwrap_err();
            assert!(err.0.starts_with(want), "{line}: {err}");
        }
        assert!(c.is_empty());
        c.push(POSITION.as_bytes(), origin(2)).unwrap();
        let (batch, ids) = c.finish().unwrap();
        assert_eq!((batch.num_rows(), ids.len()), (1, 1), "columns stay aligned after refusals");
    }

    #[test]
    fn changes_carry_op_lsn_and_a_key_identity_and_accept_debezium_dates() {
        let mut c = Converter::new(&PERFORMANCE_STATS);
        let line = r#"{"op":"u","ts_ms":1795507197000,"lsn":24023512,"row":{"transport_unit_id":"TU-42","stat_date":20415,"distance_km":1.5,"note":"x"},"_source":{"topic":"pg.public.performance_stats","partition":0,"offset":6,"timestamp":1}}"#;
        c.push(line.as_bytes(), origin(1)).unwrap();
        let (batch, ids) = c.finish().unwrap();
        assert_eq!(
            ids.iter().collect::<Vec<_>>(),
            [Identity { kind: IdKind::Change, group: "u|TU-42|2025-11-23".into(), seq: 24_023_512 }]
        );
        assert_eq!(batch.column_by_name("_extra").unwrap().as_string::<i32>().value(0), r#"{"note":"x"}"#);
        assert!(batch.column_by_name("fuel_used_l").unwrap().is_null(0));
        let missing_key = r#"{"op":"d","ts_ms":1,"lsn":2,"row":{"transport_unit_id":"TU-42"}}"#;
        assert_eq!(c.push(missing_key.as_bytes(), origin(2)).unwrap_err().0, "stat_date: required");
        let bad_op = r#"{"op":"x","ts_ms":1,"lsn":2,"row":{"transport_unit_id":"TU-42","stat_date":"2026-11-23"}}"#;
        assert!(c.push(bad_op.as_bytes(), origin(3)).unwrap_err().0.starts_with("op: \"x\" is not one of"));
    }

    #[test]
    fn every_table_indexes_its_identity_columns_in_file_statistics() {
        // deltalake collects statistics for the first 32 columns; the identity's sequence columns must be among them.
        for t in TABLES {
            let names: Vec<&str> = t.columns().iter().map(|c| c.0).collect();
            for col in ["_source_offset", "_source_partition", "_line"]
                .into_iter()
                .chain(matches!(t.layout, Layout::Change { .. }).then_some("lsn"))
            {
                let i = names.iter().position(|n| *n == col).unwrap();
                assert!(i < 32, "{} {col} is column {i}", t.name);
            }
        }
    }

    #[test]
    fn identities_are_kept_as_runs_of_consecutive_sequences_and_read_back_row_by_row() {
        // GIVEN offsets 5, 6, 7 and 9 of partition 2, then 10 of partition 3, then a dropped file's lines 1 and 2
        let mut c = Converter::new(&LOCATIONS);
        let kafka = |p: i32, o: i64| {
            format!(
                r#"{{"transport_unit_id":"TU-1","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2,"_source":{{"topic":"fleet.locations","partition":{p},"offset":{o}}}}}"#
            )
        };
        let mut sent = Vec::new();
        for (i, (p, o)) in [(2, 5), (2, 6), (2, 7), (2, 9), (3, 10)].into_iter().enumerate() {
            c.push(kafka(p, o).as_bytes(), origin(i as u64 + 1)).unwrap();
            sent.push(Identity { kind: IdKind::Kafka, group: kafka_group("fleet.locations", p).into(), seq: o });
        }
        let dropped = r#"{"transport_unit_id":"TU-1","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2}"#;
        for line in [6, 7] {
            c.push(dropped.as_bytes(), origin(line)).unwrap();
            sent.push(Identity {
                kind: IdKind::File,
                group: file_group(origin(line).key, "e1").into(),
                seq: line as i64,
            });
        }
        // WHEN the chunk is finished
        let (batch, ids) = c.finish().unwrap();
        // THEN there is one run per unbroken sequence, and the rows read back in order
        let runs: Vec<(IdKind, &str, i64, usize)> =
            ids.runs().iter().map(|r| (r.kind, &*r.group, r.first, r.len)).collect();
        assert_eq!(
            runs,
            [
                (IdKind::Kafka, "fleet.locations|2", 5, 3),
                (IdKind::Kafka, "fleet.locations|2", 9, 1),
                (IdKind::Kafka, "fleet.locations|3", 10, 1),
                (IdKind::File, "enriched/locations/dt=2026-11-24/f.ndjson.gz|e1", 6, 2),
            ]
        );
        assert_eq!((ids.len(), batch.num_rows()), (7, 7));
        assert_eq!(ids.iter().collect::<Vec<_>>(), sent);
        assert_eq!(sent.into_iter().collect::<Identities>(), ids, "built row by row: the same runs");
        assert_eq!(ids.runs()[0].last(), 7);
    }

    #[test]
    fn source_reads_as_serde_reads_it() {
        let mut c = Converter::new(&LOCATIONS);
        for raw in [
            r#"{"topic":"fleet.locations","partition":2,"offset":7,"timestamp":1795507200001}"#,
            r#"{"key":"landing/x.ndjson.gz","etag":"abc","other":{"a":[1]}}"#,
            r#"{"topic":null,"partition":null}"#,
            r#"{}"#,
            r#"{"topic":"a","topic":"b"}"#,
            r#"{"partition":"2"}"#,
            r#"{"offset":1.5}"#,
            r#"{"offset":18446744073709551615}"#,
            r#"{"topic":"t\u0041"}"#,
            r#"{"u":1,"u":2,"offset":3}"#,
            r#"["topic"]"#,
        ] {
            let fast = c.read_source(raw).map(|s| format!("{s:?}")).map_err(|e| e.0);
            let serde =
                serde_json::from_str::<Source<'_>>(raw).map(|s| format!("{s:?}")).map_err(|e| invalid("_source", e).0);
            assert_eq!(fast, serde, "{raw}");
        }
    }
}
