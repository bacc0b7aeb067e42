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
    ArrayBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Datelike, NaiveDate};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::lake::{BatchName, PollName};

mod cells;
mod columns;
mod converter;
mod fields;
mod identity;
mod plain;
mod spec;
#[cfg(test)]
mod tests;

// Every module's items are in scope here, so each module reaches its siblings' through `use super::*`.
#[allow(unused_imports)]
use self::{cells::*, columns::*, converter::*, fields::*, identity::*, spec::*};

pub use self::cells::RowError;
pub use self::converter::Converter;
pub use self::identity::{
    change_group, date_text, file_group, kafka_group, poll_group, IdKind, IdRun, Identities, Identity, LineOrigin,
    Lineage,
};
pub use self::spec::{
    column, glue_schema, identity_columns, is_unit_id, Check, Column, EventWindow, Kind, Layout, Partitioning, State,
    TableSpec, Zone, ADDED_FIELDS, CHANGE_COLUMNS, CURRENT_COLUMNS, DAYS_RANGE, EVENT_TIME_MAX_AGE_DAYS,
    EVENT_TIME_MAX_AHEAD_HOURS, EXTRA, HISTORY_COLUMNS, LINEAGE_COLUMNS, LOCATIONS, MAX_FIELDS, MAX_LINE_MEMBERS,
    MAX_TEXT_BYTES, MICROS_RANGE, PERFORMANCE_STATS, PERFORMANCE_STATS_CURRENT, PERFORMANCE_STATS_HISTORY, PREDICTIONS,
    TABLES, TRANSPORT_TYPES, TRANSPORT_UNITS, TRANSPORT_UNITS_CURRENT, TRANSPORT_UNITS_HISTORY, UNIT_ID,
    WEATHER_COLUMNS, WEATHER_STATUSES,
};
// The other stages' validators read values through the same cell reader.
pub(crate) use self::cells::{read_cell, rfc3339_micros_fast, Cell};
pub(crate) use self::fields::Json;
