//! Current state and history (SCD type 2) of a change log, computed from its rows: the same rules as the Athena
//! views in `infra/athena/views/`, so the materialised tables and the views agree row for row. No I/O.
//!
//! - Changes of one key are ordered by their position in the source: `ts_ms`, then `lsn` (a change without an
//!   LSN sorts before those with one).
//! - Equal `(ts_ms, lsn)` is one change delivered again (Debezium is at-least-once): the first delivery, by
//!   `(_source_partition, _source_offset, _file, _line)`, counts and the others are dropped.
//! - **Current**: the latest change of each key, unless it is a delete (the key is then absent); `updated_at` and
//!   `lsn` are that change's.
//! - **History**: each change that is not a delete opens a version, valid from its `ts_ms` up to, not including,
//!   the `ts_ms` of the key's next change (an update or a delete); the last version has no `valid_to` and is the
//!   current one unless a delete ended it.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow_schema::{ArrowError, DataType};

use crate::bronze::{Layout, State, TableSpec};

/// One key part of a change, comparable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum KeyPart {
    Null,
    Int(i64),
    Text(String),
}

/// What orders and deduplicates one change row.
#[derive(Debug)]
struct Change {
    key: Vec<KeyPart>,
    ts_us: i64,
    lsn: Option<i64>,
    source_partition: Option<i32>,
    source_offset: Option<i64>,
    file: Option<String>,
    line: Option<i64>,
    delete: bool,
    row: u32,
}

impl Change {
    /// Source order within a key: `ts_ms`, `lsn` (none first), then the delivery (`_source_partition`,
    /// `_source_offset`, `_file`, `_line`, none last: what Trino's and DuckDB's `ORDER BY … ASC` do with nulls).
    fn order(&self, other: &Self) -> Ordering {
        fn nulls_last<T: Ord>(a: Option<T>, b: Option<T>) -> Ordering {
            match (a, b) {
                (Some(a), Some(b)) => a.cmp(&b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
        }
        self.key
            .cmp(&other.key)
            .then(self.ts_us.cmp(&other.ts_us))
            .then(self.lsn.cmp(&other.lsn))
            .then(nulls_last(self.source_partition.map(i64::from), other.source_partition.map(i64::from)))
            .then(nulls_last(self.source_offset, other.source_offset))
            .then(nulls_last(self.file.as_deref(), other.file.as_deref()))
            .then(nulls_last(self.line, other.line))
            .then(self.row.cmp(&other.row))
    }

    fn same_change(&self, other: &Self) -> bool {
        self.key == other.key && self.ts_us == other.ts_us && self.lsn == other.lsn
    }
}

/// A change log's rows as a state table: `state`'s rows in `state`'s schema ([`TableSpec::arrow_schema`]).
///
/// `changes` are rows of the change log `source` with at least `op`, `ts_ms`, `lsn`, the row columns (the partition
/// column included) and `_source_partition`/`_source_offset` (and, when present, `_file`/`_line`), in any order
/// and any number of batches. Rows come out ordered by key and then by time. [`order`] once and
/// [`Ordered::state`] per table when several state tables come from the same changes.
pub fn derive(source: &TableSpec, state: &TableSpec, changes: &[RecordBatch]) -> Result<RecordBatch, ArrowError> {
    order(source, changes)?.state(state)
}

/// A change log's changes in source order, each change once (its first delivery): what every state table of the
/// change log is computed from.
#[derive(Debug)]
pub struct Ordered {
    source: &'static str,
    /// The changes in one batch (`None` when there were none).
    all: Option<RecordBatch>,
    order: Vec<Change>,
}

/// Orders the changes of the change log `source` (see [`derive`]).
pub fn order(source: &TableSpec, changes: &[RecordBatch]) -> Result<Ordered, ArrowError> {
    let Layout::Change { key } = source.layout else {
        return Err(ArrowError::InvalidArgumentError(format!("{} is not a change log", source.name)));
    };
    let Some(first) = changes.first() else {
        return Ok(Ordered { source: source.name, all: None, order: Vec::new() });
    };
    let all = arrow_select::concat::concat_batches(&first.schema(), changes)?;
    let n = all.num_rows();
    let rows = u32::try_from(n).map_err(|_| ArrowError::InvalidArgumentError("too many changes".into()))?;

    let op = column(&all, "op")?;
    let op = op.as_string_opt::<i32>().ok_or_else(|| ArrowError::SchemaError("op is not text".into()))?;
    let ts = column(&all, "ts_ms")?;
    let ts = timestamps(&ts)?;
    let lsn = int64(&column(&all, "lsn")?)?;
    let source_partition = column(&all, "_source_partition")?;
    let source_partition = source_partition
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| ArrowError::SchemaError("_source_partition is not a 32-bit integer".into()))?;
    let source_offset = int64(&column(&all, "_source_offset")?)?;
    // Where delta-writer read the change: the delivery order of changes landed from files (no Kafka position).
    let file = all.column_by_name("_file").and_then(|c| c.as_string_opt::<i32>().cloned());
    let line = match all.column_by_name("_line") {
        Some(c) => Some(int64(c)?),
        None => None,
    };
    let keys: Vec<ArrayRef> = key.iter().map(|k| column(&all, k)).collect::<Result<_, _>>()?;
    if let Some(k) = keys
        .iter()
        .find(|k| !matches!(k.data_type(), DataType::Utf8 | DataType::Date32 | DataType::Int32 | DataType::Int64))
    {
        return Err(ArrowError::SchemaError(format!("a key column is {}: not a key type here", k.data_type())));
    }

    let mut order: Vec<Change> = (0..rows)
        .map(|row| {
            let i = row as usize;
            Change {
                key: keys.iter().map(|k| key_part(k.as_ref(), i)).collect(),
                // ts_ms is required in a change log; a null cannot reach here, and would sort first.
                ts_us: if ts.is_null(i) { i64::MIN } else { ts.value(i) },
                lsn: (!lsn.is_null(i)).then(|| lsn.value(i)),
                source_partition: (!source_partition.is_null(i)).then(|| source_partition.value(i)),
                source_offset: (!source_offset.is_null(i)).then(|| source_offset.value(i)),
                file: file.as_ref().filter(|f| !f.is_null(i)).map(|f| f.value(i).to_owned()),
                line: line.as_ref().filter(|l| !l.is_null(i)).map(|l| l.value(i)),
                delete: !op.is_null(i) && op.value(i) == "d",
                row,
            }
        })
        .collect();
    order.sort_unstable_by(Change::order);
    // The first delivery of each change.
    order.dedup_by(|later, first| later.same_change(first));
    Ok(Ordered { source: source.name, all: Some(all), order })
}

impl Ordered {
    /// The rows of the state table `state` (a state of this change log).
    pub fn state(&self, state: &TableSpec) -> Result<RecordBatch, ArrowError> {
        let shape = match state.layout {
            Layout::State(shape) if state.input.1 == self.source => shape,
            _ => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "{} is not a state of {}",
                    state.name, self.source
                )))
            }
        };
        let schema = state.arrow_schema();
        let Some(all) = &self.all else {
            return Ok(RecordBatch::new_empty(schema));
        };
        // (row taken, ts of the version's end) per output row.
        let mut taken: Vec<u32> = Vec::new();
        let mut ends: Vec<Option<i64>> = Vec::new();
        for (i, c) in self.order.iter().enumerate() {
            let next = self.order.get(i + 1).filter(|n| n.key == c.key);
            if c.delete {
                continue;
            }
            match shape {
                State::Current if next.is_none() => {
                    taken.push(c.row);
                    ends.push(None);
                }
                State::Current => {}
                State::History => {
                    taken.push(c.row);
                    ends.push(next.map(|n| n.ts_us));
                }
            }
        }
        let indices = UInt32Array::from(taken);
        let starts: ArrayRef = arrow_select::take::take(column(all, "ts_ms")?.as_ref(), &indices, None)?;
        let mut out: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let array: ArrayRef = match field.name().as_str() {
                "updated_at" | "valid_from" => Arc::clone(&starts),
                "valid_to" => Arc::new(TimestampMicrosecondArray::from(ends.clone()).with_timezone("UTC")),
                "is_current" => Arc::new(BooleanArray::from(ends.iter().map(Option::is_none).collect::<Vec<bool>>())),
                name => arrow_select::take::take(column(all, name)?.as_ref(), &indices, None)?,
            };
            out.push(if array.data_type() == field.data_type() {
                array
            } else {
                arrow_cast_utc(&array, field.data_type())?
            });
        }
        RecordBatch::try_new(schema, out)
    }
}

/// A column of the changes, by name.
fn column(all: &RecordBatch, name: &str) -> Result<ArrayRef, ArrowError> {
    all.column_by_name(name)
        .cloned()
        .ok_or_else(|| ArrowError::SchemaError(format!("the changes have no column {name:?}")))
}

/// A microsecond timestamp column (`ts_ms`).
fn timestamps(array: &ArrayRef) -> Result<&TimestampMicrosecondArray, ArrowError> {
    array
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| ArrowError::SchemaError("ts_ms is not a microsecond timestamp".into()))
}

/// An Int64 column (`lsn`, `_source_offset`).
fn int64(array: &ArrayRef) -> Result<Int64Array, ArrowError> {
    array
        .as_primitive_opt::<Int64Type>()
        .cloned()
        .ok_or_else(|| ArrowError::SchemaError(format!("expected a 64-bit integer column, got {}", array.data_type())))
}

/// A timestamp column read with another time zone label (deltalake reads `TIMESTAMP` as UTC): relabelled.
fn arrow_cast_utc(array: &ArrayRef, want: &DataType) -> Result<ArrayRef, ArrowError> {
    match (array.as_primitive_opt::<TimestampMicrosecondType>(), want) {
        (Some(ts), DataType::Timestamp(_, tz)) => Ok(Arc::new(ts.clone().with_timezone_opt(tz.clone()))),
        _ => Err(ArrowError::SchemaError(format!("a column is {}, the state table wants {want}", array.data_type()))),
    }
}

fn key_part(array: &dyn Array, i: usize) -> KeyPart {
    if array.is_null(i) {
        return KeyPart::Null;
    }
    match array.data_type() {
        DataType::Utf8 => KeyPart::Text(array.as_string::<i32>().value(i).to_owned()),
        DataType::Date32 => KeyPart::Int(i64::from(array.as_primitive::<Date32Type>().value(i))),
        DataType::Int32 => KeyPart::Int(i64::from(array.as_primitive::<Int32Type>().value(i))),
        // Int64: `derive` lets no other type through.
        _ => KeyPart::Int(array.as_primitive::<Int64Type>().value(i)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow_array::{Float64Array, Int32Array, StringArray};
    use proptest::prelude::*;

    use super::*;
    use crate::bronze::{TRANSPORT_UNITS, TRANSPORT_UNITS_CURRENT, TRANSPORT_UNITS_HISTORY};

    /// A change of `transport_units`: (op, ts_ms, lsn, unit, name, Kafka partition, offset).
    type Row = (&'static str, i64, Option<i64>, &'static str, &'static str, i32, i64);

    /// The change log's columns, every one nullable (`lsn` is required in the table, and may be missing in what
    /// other sources land).
    fn changes(rows: &[Row]) -> RecordBatch {
        let fields: Vec<arrow_schema::Field> =
            TRANSPORT_UNITS.arrow_schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        let schema = Arc::new(arrow_schema::Schema::new(fields));
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    "op" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                    "ts_ms" => Arc::new(
                        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1 * 1000))
                            .with_timezone("UTC"),
                    ),
                    "lsn" => Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
                    "transport_unit_id" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
                    "name" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.4))),
                    "_source_partition" => Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.5))),
                    "_source_offset" | "_line" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.6))),
                    "capacity_t" => Arc::new(Float64Array::from(vec![Some(1.0); rows.len()])),
                    _ => arrow_array::new_null_array(f.data_type(), rows.len()),
                }
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    /// (unit, name, from ms, to ms, current) of a derived row.
    type Version = (String, String, i64, Option<i64>, bool);

    fn versions(batch: &RecordBatch) -> Vec<Version> {
        let text = |c: &str, i| batch.column_by_name(c).unwrap().as_string::<i32>().value(i).to_owned();
        let time = |c: &str, i| {
            let a = batch.column_by_name(c).unwrap().as_primitive::<TimestampMicrosecondType>();
            (!a.is_null(i)).then(|| a.value(i) / 1000)
        };
        (0..batch.num_rows())
            .map(|i| match batch.column_by_name("is_current") {
                Some(c) => (
                    text("transport_unit_id", i),
                    text("name", i),
                    time("valid_from", i).unwrap(),
                    time("valid_to", i),
                    c.as_boolean().value(i),
                ),
                None => (text("transport_unit_id", i), text("name", i), time("updated_at", i).unwrap(), None, true),
            })
            .collect()
    }

    fn both(rows: &[Row]) -> (Vec<Version>, Vec<Version>) {
        let batch = [changes(rows)];
        let current = derive(&TRANSPORT_UNITS, &TRANSPORT_UNITS_CURRENT, &batch).unwrap();
        let history = derive(&TRANSPORT_UNITS, &TRANSPORT_UNITS_HISTORY, &batch).unwrap();
        assert_eq!(current.schema(), TRANSPORT_UNITS_CURRENT.arrow_schema());
        assert_eq!(history.schema(), TRANSPORT_UNITS_HISTORY.arrow_schema());
        (versions(&current), versions(&history))
    }

    fn v(unit: &str, name: &str, from: i64, to: Option<i64>) -> Version {
        (unit.into(), name.into(), from, to, to.is_none())
    }

    #[test]
    fn several_updates_arriving_out_of_order_keep_the_latest_and_every_version() {
        let (current, history) = both(&[
            ("u", 300, Some(30), "A", "third", 0, 9),
            ("c", 100, Some(10), "A", "first", 0, 2),
            ("u", 200, Some(20), "A", "second", 1, 1),
        ]);
        assert_eq!(current, [v("A", "third", 300, None)]);
        assert_eq!(
            history,
            [v("A", "first", 100, Some(200)), v("A", "second", 200, Some(300)), v("A", "third", 300, None)]
        );
    }

    #[test]
    fn an_update_then_a_delete_ends_the_key() {
        let (current, history) = both(&[
            ("c", 100, Some(10), "B", "b1", 0, 1),
            ("u", 200, Some(20), "B", "b2", 0, 2),
            ("d", 300, Some(30), "B", "b2", 0, 3),
        ]);
        assert_eq!(current, []);
        assert_eq!(history, [v("B", "b1", 100, Some(200)), (String::from("B"), "b2".into(), 200, Some(300), false)]);
    }

    #[test]
    fn a_delete_and_a_reinsert_opens_a_new_version() {
        let (current, history) = both(&[
            ("c", 100, Some(10), "C", "old", 0, 1),
            ("d", 200, Some(20), "C", "old", 0, 2),
            ("c", 300, Some(30), "C", "new", 0, 3),
        ]);
        assert_eq!(current, [v("C", "new", 300, None)]);
        assert_eq!(history, [(String::from("C"), "old".into(), 100, Some(200), false), v("C", "new", 300, None)]);
    }

    #[test]
    fn a_change_delivered_twice_counts_once_and_the_first_delivery_wins() {
        let (current, history) = both(&[
            ("u", 200, Some(20), "D", "again", 0, 7),
            ("c", 100, Some(10), "D", "first", 0, 1),
            ("u", 200, Some(20), "D", "delivered", 0, 5),
        ]);
        assert_eq!(current, [v("D", "delivered", 200, None)]);
        assert_eq!(history, [v("D", "first", 100, Some(200)), v("D", "delivered", 200, None)]);
    }

    #[test]
    fn equal_times_are_ordered_by_lsn_and_no_lsn_comes_first() {
        let (current, history) = both(&[
            ("u", 100, Some(11), "E", "later", 0, 1),
            ("u", 100, None, "E", "no-lsn", 0, 2),
            ("c", 100, Some(10), "E", "earlier", 0, 3),
        ]);
        assert_eq!(current, [v("E", "later", 100, None)]);
        assert_eq!(
            history,
            [v("E", "no-lsn", 100, Some(100)), v("E", "earlier", 100, Some(100)), v("E", "later", 100, None)]
        );
    }

    #[test]
    fn no_changes_make_an_empty_table_and_a_wrong_pair_is_refused() {
        let empty = derive(&TRANSPORT_UNITS, &TRANSPORT_UNITS_CURRENT, &[]).unwrap();
        assert_eq!((empty.num_rows(), empty.schema()), (0, TRANSPORT_UNITS_CURRENT.arrow_schema()));
        assert!(derive(&TRANSPORT_UNITS_CURRENT, &TRANSPORT_UNITS_HISTORY, &[]).is_err());
    }

    fn row() -> impl Strategy<Value = Row> {
        let units: &'static [&'static str] = &["A", "B", "C"];
        let names: &'static [&'static str] = &["n0", "n1", "n2", "n3"];
        (
            prop::sample::select(&["c", "u", "d", "r"][..]),
            0i64..6,
            prop::option::of(0i64..4),
            prop::sample::select(units),
            prop::sample::select(names),
            0i32..2,
            0i64..50,
        )
    }

    proptest! {
        /// Against a plain model: per key, the changes sorted by (ts, lsn) with repeats dropped; the current row is
        /// the last unless it is a delete, and the versions are the non-deletes, each ending at the next change.
        /// A repeat here carries the same name (it is the same change), so which delivery wins is not observed.
        #[test]
        fn current_and_history_follow_the_plain_rules(raw in prop::collection::vec(row(), 0..40)) {
            let mut rows: Vec<Row> = Vec::new();
            let mut seen: BTreeMap<(&str, i64, Option<i64>), (&str, &str)> = BTreeMap::new();
            for r in raw {
                let (op, name) = *seen.entry((r.3, r.1, r.2)).or_insert((r.0, r.4));
                rows.push((op, r.1, r.2, r.3, name, r.5, r.6));
            }
            let (current, history) = both(&rows);
            let mut want_current = Vec::new();
            let mut want_history = Vec::new();
            type Changes<'a> = Vec<(i64, Option<i64>, &'a str, &'a str)>;
            let mut keys: BTreeMap<&str, Changes<'_>> = BTreeMap::new();
            for ((unit, ts, lsn), (op, name)) in &seen {
                keys.entry(unit).or_default().push((*ts, *lsn, *op, *name));
            }
            for (unit, mut list) in keys {
                list.sort();
                for (i, (ts, _, op, name)) in list.iter().enumerate() {
                    let end = list.get(i + 1).map(|n| n.0);
                    if *op != "d" {
                        want_history.push((unit.to_owned(), (*name).to_owned(), *ts, end, end.is_none()));
                        if end.is_none() {
                            want_current.push(v(unit, name, *ts, None));
                        }
                    }
                }
            }
            prop_assert_eq!(current, want_current);
            prop_assert_eq!(history, want_history);
        }
    }
}
