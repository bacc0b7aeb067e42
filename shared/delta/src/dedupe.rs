//! The exactly-once bookkeeping, with no I/O: identity runs, which data files may hold a batch's identities (from their statistics), Kafka watermark ids, identities read back from stored rows.

use super::*;
use deltalake::arrow::compute::{max_string, min_string};

/// Sorted, merged runs of sequence numbers.
#[derive(Debug, Default)]
pub(crate) struct Runs(pub(crate) BTreeMap<i64, i64>);

impl Runs {
    pub(crate) fn contains(&self, seq: i64) -> bool {
        self.0.range(..=seq).next_back().is_some_and(|(_, &end)| end >= seq)
    }

    /// Whether any of `lo..=hi` is in.
    pub(crate) fn overlaps(&self, lo: i64, hi: i64) -> bool {
        self.0.range(..=hi).next_back().is_some_and(|(_, &end)| end >= lo)
    }

    /// Adds `lo..=hi`, none of which is in (see [`Runs::overlaps`]), merging it with the runs it touches.
    pub(crate) fn insert_new_range(&mut self, lo: i64, hi: i64) {
        let before = lo.checked_sub(1).and_then(|b| self.0.range(..=b).next_back().filter(|(_, &e)| e == b));
        let start = before.map_or(lo, |(&s, _)| s);
        let end = match hi.checked_add(1).and_then(|n| self.0.remove(&n)) {
            Some(e) => e,
            None => hi,
        };
        self.0.insert(start, end);
    }

    /// Adds `seq`; false if it was there.
    pub(crate) fn insert(&mut self, seq: i64) -> bool {
        if self.contains(seq) {
            return false;
        }
        let before = self.0.range(..seq).next_back().map(|(&s, &e)| (s, e)).filter(|&(_, e)| e == seq - 1);
        let after = seq.checked_add(1).and_then(|n| self.0.get(&n).map(|&e| (n, e)));
        match (before, after) {
            (Some((s, _)), Some((n, e))) => {
                self.0.remove(&n);
                self.0.insert(s, e);
            }
            (Some((s, _)), None) => {
                self.0.insert(s, seq);
            }
            (None, Some((n, e))) => {
                self.0.remove(&n);
                self.0.insert(seq, e);
            }
            (None, None) => {
                self.0.insert(seq, seq);
            }
        }
        true
    }
}

/// A set of identities: group texts interned, sequences kept as runs (a Kafka slice is one run).
#[derive(Debug, Default)]
pub(crate) struct IdSet {
    pub(crate) runs: HashMap<(IdKind, u32), Runs>,
}

#[derive(Debug, Default)]
pub(crate) struct Interner {
    pub(crate) ids: HashMap<String, u32>,
    pub(crate) names: Vec<String>,
    /// The last group interned: consecutive rows nearly always share it.
    pub(crate) last: Option<u32>,
}

impl Interner {
    pub(crate) fn intern(&mut self, group: &str) -> u32 {
        if let Some(last) = self.last.filter(|&l| self.names[l as usize] == group) {
            return last;
        }
        if let Some(&id) = self.ids.get(group) {
            self.last = Some(id);
            return id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.ids.insert(group.to_owned(), id);
        self.names.push(group.to_owned());
        self.last = Some(id);
        id
    }
}

impl IdSet {
    pub(crate) fn contains(&self, key: (IdKind, u32), seq: i64) -> bool {
        self.runs.get(&key).is_some_and(|r| r.contains(seq))
    }

    pub(crate) fn insert(&mut self, key: (IdKind, u32), seq: i64) -> bool {
        self.runs.entry(key).or_default().insert(seq)
    }

    pub(crate) fn overlaps(&self, key: (IdKind, u32), lo: i64, hi: i64) -> bool {
        self.runs.get(&key).is_some_and(|r| r.overlaps(lo, hi))
    }

    /// Adds `lo..=hi`, none of which is in.
    pub(crate) fn insert_new_range(&mut self, key: (IdKind, u32), lo: i64, hi: i64) {
        self.runs.entry(key).or_default().insert_new_range(lo, hi);
    }
}

/// A run of identities of a batch, with its interned group and its first row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) key: (IdKind, u32),
    pub(crate) first: i64,
    pub(crate) last: i64,
    pub(crate) row: usize,
}

/// The inclusive range of sequence numbers per identity kind, and the partitions, of rows to check.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    pub(crate) ranges: HashMap<IdKind, (i64, i64)>,
    /// Kafka partitions of the Kafka rows (to prune on `_source_partition` too).
    pub(crate) kafka_partitions: Option<(i64, i64)>,
    /// Partition values (`YYYY-MM-DD`) of the rows, or `None` for an unpartitioned table.
    pub(crate) partitions: Option<HashSet<String>>,
    /// The smallest and largest object key (`_source_key`) of the dropped-file rows, to prune on it too.
    pub(crate) file_keys: Option<(String, String)>,
}

impl Probe {
    pub(crate) fn add(&mut self, kind: IdKind, seq: i64) {
        let r = self.ranges.entry(kind).or_insert((seq, seq));
        r.0 = r.0.min(seq);
        r.1 = r.1.max(seq);
    }

    /// Adds the identities `lo..=hi` of one group (named `group`): their sequence bounds, and what prunes files
    /// by group (a Kafka group's partition, a dropped file's object key).
    pub(crate) fn add_run(&mut self, kind: IdKind, group: &str, lo: i64, hi: i64) {
        self.add(kind, lo);
        self.add(kind, hi);
        match kind {
            IdKind::Kafka => {
                let p = kafka_partition(group);
                let range = self.kafka_partitions.get_or_insert((p, p));
                range.0 = range.0.min(p);
                range.1 = range.1.max(p);
            }
            IdKind::File => self.add_file_group(group),
            IdKind::Change | IdKind::Poll => {}
        }
    }

    /// Adds the object key of a dropped-file group (`key|etag`, [`file_group`]). Either may hold a `|` (an ETag a
    /// line claims is taken as it is), so the key is one of the group's prefixes that end before a `|`: those
    /// nest, and the bounds take in all of them.
    pub(crate) fn add_file_group(&mut self, group: &str) {
        let shortest = group.split_once('|').map_or(group, |(key, _)| key);
        let longest = group.rsplit_once('|').map_or(group, |(key, _)| key);
        widen(&mut self.file_keys, shortest, longest);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether a data file with these statistics and partition values may hold one of the probed identities.
    pub(crate) fn may_hold(
        &self,
        stats: Option<&str>,
        partition_values: &HashMap<String, Option<String>>,
        column: Option<&str>,
    ) -> bool {
        if let (Some(parts), Some(col)) = (&self.partitions, column) {
            match partition_values.get(col) {
                Some(Some(v)) if !parts.contains(v) => return false,
                _ => {}
            }
        }
        let Some(stats) = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
            return true; // no statistics: read the file
        };
        let records = stats.get("numRecords").and_then(Value::as_i64);
        // Integers as they are; timestamps (a polled change's `ts_ms`), which Delta writes as RFC 3339 text, as
        // microseconds: the sequence numbers of [`IdKind::Poll`].
        let num = |section: &str, col: &str| {
            let v = stats.get(section)?.get(col)?;
            v.as_i64().or_else(|| chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.timestamp_micros()))
        };
        let overlaps = |col: &str, (lo, hi): (i64, i64)| -> Option<bool> {
            if records.is_some() && num("nullCount", col) == records {
                return Some(false); // no value of this column in the file
            }
            Some(num("minValues", col)? <= hi && num("maxValues", col)? >= lo)
        };
        let text = |section: &str| stats.get(section)?.get("_source_key")?.as_str();
        let keys = |(lo, hi): &(String, String)| -> Option<bool> {
            if records.is_some() && num("nullCount", "_source_key") == records {
                // No key in the file: only a row read back without one (an empty key) could match.
                return Some(lo.is_empty());
            }
            Some(keys_may_overlap(text("minValues")?, text("maxValues")?, lo, hi))
        };
        self.ranges.iter().any(|(kind, range)| {
            let seq = overlaps(kind.seq_column(), *range).unwrap_or(true);
            let part = match (kind, self.kafka_partitions) {
                (IdKind::Kafka, Some(p)) => overlaps("_source_partition", p).unwrap_or(true),
                _ => true,
            };
            let key = match (kind, &self.file_keys) {
                (IdKind::File, Some(k)) => keys(k).unwrap_or(true),
                _ => true,
            };
            seq && part && key
        })
    }
}

/// Whether a file whose `_source_key` statistics are `min` and `max` may hold a key in `lo..=hi`.
///
/// The statistics may keep a prefix of a string rather than the string: deltalake takes them from Parquet, which
/// keeps 64 bytes (the maximum's last character raised), and every predictor record of a day shares its first 64
/// (`landing/predictions/dt=2026-11-24/predictor-commit-0000000000000`). A prefix is never above its string, so
/// `min` bounds the file's keys from below as it is; `max` may be a prefix of the file's largest key (raised or
/// not), so only a key whose prefix of `max`'s length is above `max` is known to be above every key of the file.
/// The files delta-writer and lake-maintainer write carry their keys' bounds in full ([`KeyBounds`]), which rule
/// out every file of other objects.
pub(crate) fn keys_may_overlap(min: &str, max: &str, lo: &str, hi: &str) -> bool {
    let prefix = match lo.char_indices().nth(max.chars().count()) {
        Some((end, _)) => lo.get(..end).unwrap_or(lo),
        None => lo,
    };
    min <= hi && prefix <= max
}

/// Widens `bounds` (smallest, largest) to take in `lo..=hi`.
fn widen(bounds: &mut Option<(String, String)>, lo: &str, hi: &str) {
    match bounds {
        Some((l, h)) => {
            if lo < l.as_str() {
                lo.clone_into(l);
            }
            if hi > h.as_str() {
                hi.clone_into(h);
            }
        }
        None => *bounds = Some((lo.to_owned(), hi.to_owned())),
    }
}

/// The smallest and largest object key (`_source_key`) of the rows written by an append or a compaction, put in
/// full in its files' statistics in place of the 64-byte prefixes Parquet keeps: a later duplicate check can then
/// rule a file out by key ([`keys_may_overlap`]) instead of reading it. Bounds of all the rows hold for each file.
#[derive(Debug, Default)]
pub(crate) struct KeyBounds {
    keys: Option<(String, String)>,
    /// A batch whose keys could not be read (not a string column): its files keep deltalake's statistics.
    unknown: bool,
}

impl KeyBounds {
    pub(crate) fn observe(&mut self, batch: &RecordBatch) {
        let Some(column) = batch.column_by_name("_source_key") else {
            return;
        };
        let (lo, hi) = match column.as_string_opt::<i32>() {
            Some(a) => (min_string(a), max_string(a)),
            None => match column.as_string_opt::<i64>() {
                Some(a) => (min_string(a), max_string(a)),
                None => {
                    self.unknown = true;
                    return;
                }
            },
        };
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return; // no key in this batch
        };
        widen(&mut self.keys, lo, hi);
    }

    /// Puts the bounds in the statistics of `adds` (those with statistics and a key).
    pub(crate) fn apply(&self, adds: &mut [Add]) {
        let Some((lo, hi)) = self.keys.as_ref().filter(|_| !self.unknown) else {
            return;
        };
        for add in adds {
            let Some(mut stats) = add.stats.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
                continue;
            };
            let records = stats.get("numRecords").and_then(Value::as_i64);
            let nulls = stats.get("nullCount").and_then(|n| n.get("_source_key")).and_then(Value::as_i64);
            if records.is_some() && nulls == records {
                continue; // no key in this file
            }
            let mut changed = false;
            for (section, value) in [("minValues", lo), ("maxValues", hi)] {
                if let Some(values) = stats.get_mut(section).and_then(Value::as_object_mut) {
                    values.insert("_source_key".to_owned(), Value::String(value.clone()));
                    changed = true;
                }
            }
            if changed {
                add.stats = Some(stats.to_string());
            }
        }
    }
}

impl Probe {
    /// Which rows of `batch` (a data file's identity columns) have an identity in the probe's ranges; `None` when
    /// every row has (or the columns cannot tell: all are kept).
    pub(crate) fn mask(&self, spec: &TableSpec, batch: &RecordBatch) -> Option<BooleanArray> {
        let int = |name: &str| -> Option<PrimitiveArray<Int64Type>> {
            let c = batch.column_by_name(name)?;
            match c.data_type() {
                ArrowType::Int64 => Some(c.as_primitive::<Int64Type>().clone()),
                _ => deltalake::arrow::compute::cast(c, &ArrowType::Int64).ok().map(|a| a.as_primitive().clone()),
            }
        };
        // The ranges are looked up once, not per row: a compacted file is a million rows and more.
        let range = |kind: IdKind| self.ranges.get(&kind).copied();
        let inside = |range: Option<(i64, i64)>, seq: Option<i64>| {
            let seq = seq.unwrap_or(-1);
            range.is_some_and(|(lo, hi)| lo <= seq && seq <= hi)
        };
        let mask: BooleanArray = match spec.layout {
            Layout::Record => {
                let (offset, line) = (int("_source_offset")?, int("_line")?);
                let partition = batch.column_by_name("_source_partition")?;
                let topic = batch.column_by_name("_source_topic")?;
                let (kafka, file) = (range(IdKind::Kafka), range(IdKind::File));
                (0..batch.num_rows())
                    .map(|i| {
                        let numbered = offset.is_valid(i) && partition.is_valid(i) && topic.is_valid(i);
                        Some(if numbered {
                            inside(kafka, Some(offset.value(i)))
                        } else {
                            inside(file, line.is_valid(i).then(|| line.value(i)))
                        })
                    })
                    .collect()
            }
            Layout::Change { .. } => {
                let (lsn, ts) = (int("lsn")?, int("ts_ms")?);
                let (change, poll) = (range(IdKind::Change), range(IdKind::Poll));
                (0..batch.num_rows())
                    .map(|i| {
                        Some(if lsn.is_valid(i) {
                            inside(change, Some(lsn.value(i)))
                        } else {
                            inside(poll, ts.is_valid(i).then(|| ts.value(i)))
                        })
                    })
                    .collect()
            }
            Layout::State(_) => return None,
        };
        (mask.true_count() < batch.num_rows()).then_some(mask)
    }
}

/// The identity ranges of one data file already read into the table's identities.
#[derive(Debug, Default)]
pub(crate) struct Covered(Vec<(IdKind, i64, i64)>);

impl Covered {
    /// Whether every range of `probe` was read already.
    pub(crate) fn covers(&self, probe: &Probe) -> bool {
        probe.ranges.iter().all(|(kind, (lo, hi))| self.0.iter().any(|(k, l, h)| k == kind && l <= lo && h >= hi))
    }

    pub(crate) fn add(&mut self, probe: &Probe) {
        self.0.extend(probe.ranges.iter().map(|(kind, (lo, hi))| (*kind, *lo, *hi)));
    }
}

/// What a data file's statistics say of the Kafka offsets it holds for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetCeiling {
    /// The file holds no row of that partition (or no Kafka row at all).
    None,
    /// No offset of that partition in the file is above this (exact for a file of one partition, an
    /// over-estimate for a file of several: the safe side, as a watermark too high only costs lookups).
    AtMost(i64),
    /// The file has no usable statistics: only reading it would tell.
    Unknown,
}

/// The ceiling of a file's offsets of Kafka partition `partition`, from its statistics JSON.
pub(crate) fn offset_ceiling(stats: Option<&str>, partition: i64) -> OffsetCeiling {
    let Some(stats) = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
        return OffsetCeiling::Unknown;
    };
    let records = stats.get("numRecords").and_then(Value::as_i64);
    let num = |section: &str, col: &str| stats.get(section).and_then(|s| s.get(col)).and_then(Value::as_i64);
    if records.is_some() && num("nullCount", "_source_offset") == records {
        return OffsetCeiling::None;
    }
    match (num("minValues", "_source_partition"), num("maxValues", "_source_partition")) {
        (Some(lo), Some(hi)) if partition < lo || partition > hi => return OffsetCeiling::None,
        (Some(_), Some(_)) => {}
        _ => return OffsetCeiling::Unknown,
    }
    num("maxValues", "_source_offset").map_or(OffsetCeiling::Unknown, OffsetCeiling::AtMost)
}

/// The version of a Kafka partition's new `txn`: never below what the table already holds. `watermark` is the
/// table's `txn` (`None` once retention dropped it), `appended` this commit's highest offset, `ceilings` what the
/// active files' statistics say. `None`: write no `txn` (it would not move forward, or the files cannot tell how
/// far the table reaches, so every offset stays checked against the files).
pub(crate) fn next_watermark(
    watermark: Option<i64>,
    appended: i64,
    ceilings: impl IntoIterator<Item = OffsetCeiling>,
) -> Option<i64> {
    match watermark {
        Some(w) => (appended > w).then_some(appended),
        None => {
            let mut top = appended;
            for c in ceilings {
                match c {
                    OffsetCeiling::None => {}
                    OffsetCeiling::AtMost(o) => top = top.max(o),
                    OffsetCeiling::Unknown => return None,
                }
            }
            Some(top)
        }
    }
}

/// The app id of a Kafka group's watermark: `kafka:<topic>:<partition>`.
pub(crate) fn txn_app_id(group: &str) -> String {
    format!("kafka:{}", group.replace('|', ":"))
}

/// The partition of a Kafka group text `topic|partition`.
pub(crate) fn kafka_partition(group: &str) -> i64 {
    group.rsplit('|').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// The identities of stored rows (identity columns only; a partition column comes from the file's values).
pub(crate) fn stored_identities(
    spec: &TableSpec,
    batch: &RecordBatch,
    partition_values: &HashMap<String, Option<String>>,
) -> Vec<Identity> {
    let n = if matches!(spec.layout, Layout::State(_)) { 0 } else { batch.num_rows() };
    let text = |name: &str, i: usize| -> Option<String> {
        match batch.column_by_name(name) {
            Some(c) => match c.data_type() {
                ArrowType::Utf8 => {
                    let a = c.as_string::<i32>();
                    (!a.is_null(i)).then(|| a.value(i).to_owned())
                }
                ArrowType::LargeUtf8 => {
                    let a = c.as_string::<i64>();
                    (!a.is_null(i)).then(|| a.value(i).to_owned())
                }
                // The lineage columns, read as dictionaries (`lineage_as_dictionaries`).
                ArrowType::Dictionary(k, v) if **k == ArrowType::Int32 && **v == ArrowType::Utf8 => {
                    let d = c.as_dictionary::<Int32Type>();
                    let key = usize::try_from(d.keys().value(i)).ok();
                    let values = d.values().as_string::<i32>();
                    key.filter(|&k| !d.keys().is_null(i) && k < values.len() && values.is_valid(k))
                        .map(|k| values.value(k).to_owned())
                }
                ArrowType::Date32 => {
                    let a = c.as_primitive::<Date32Type>();
                    (!a.is_null(i)).then(|| date_text(a.value(i)))
                }
                _ => None,
            },
            None => partition_values.get(name).cloned().flatten(),
        }
    };
    let int = |name: &str, i: usize| -> Option<i64> {
        let c = batch.column_by_name(name)?;
        match c.data_type() {
            ArrowType::Int64 => {
                let a = c.as_primitive::<Int64Type>();
                (!a.is_null(i)).then(|| a.value(i))
            }
            ArrowType::Int32 => {
                let a = c.as_primitive::<Int32Type>();
                (!a.is_null(i)).then(|| i64::from(a.value(i)))
            }
            ArrowType::Timestamp(TimeUnit::Microsecond, _) => {
                let a = c.as_primitive::<TimestampMicrosecondType>();
                (!a.is_null(i)).then(|| a.value(i))
            }
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = match spec.layout {
            // A state table has no identities (`n` is 0).
            Layout::Record | Layout::State(_) => {
                match (text("_source_topic", i), int("_source_partition", i), int("_source_offset", i)) {
                    (Some(t), Some(p), Some(o)) => Identity {
                        kind: IdKind::Kafka,
                        group: kafka_group(&t, i32::try_from(p).unwrap_or(i32::MAX)).into(),
                        seq: o,
                    },
                    _ => Identity {
                        kind: IdKind::File,
                        group: file_group(
                            &text("_source_key", i).unwrap_or_default(),
                            &text("_source_etag", i).unwrap_or_default(),
                        )
                        .into(),
                        seq: int("_line", i).unwrap_or(-1),
                    },
                }
            }
            Layout::Change { key } => {
                let parts: Vec<String> = key.iter().map(|k| text(k, i).unwrap_or_default()).collect();
                match int("lsn", i) {
                    Some(lsn) => Identity {
                        kind: IdKind::Change,
                        group: change_group(&text("op", i).unwrap_or_default(), parts.iter().map(String::as_str))
                            .into(),
                        seq: lsn,
                    },
                    None => Identity {
                        kind: IdKind::Poll,
                        group: poll_group(parts.iter().map(String::as_str)).into(),
                        seq: int("ts_ms", i).unwrap_or(-1),
                    },
                }
            }
        };
        out.push(id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// A string statistic as a writer may keep it: whole, its first `n` characters, or those with the last one
    /// raised (Parquet's way of keeping a maximum above the values).
    fn kept(s: &str, n: usize, how: u8) -> String {
        if s.chars().count() <= n || how == 0 {
            return s.to_owned();
        }
        let mut prefix: Vec<char> = s.chars().take(n).collect();
        if how == 2 {
            if let Some(last) = prefix.last_mut() {
                *last = char::from_u32(u32::from(*last) + 1).unwrap_or(*last);
            }
        }
        prefix.into_iter().collect()
    }

    proptest! {
        /// Pruning by key never rules out a file that holds a key of the probe, whatever the statistics kept.
        #[test]
        fn a_file_holding_a_probed_key_is_never_ruled_out(
            keys in proptest::collection::vec("[a/=0-9é]{0,12}", 1..6),
            others in proptest::collection::vec("[a/=0-9é]{0,12}", 0..3),
            held in any::<proptest::sample::Index>(),
            n in 1usize..8,
            how_min in 0u8..2,
            how_max in 0u8..3,
        ) {
            let min = kept(keys.iter().min().unwrap(), n, how_min);
            let max = kept(keys.iter().max().unwrap(), n, how_max);
            // The probe: one of the file's keys (with few keys, often the largest, where a kept prefix bites) and
            // some others.
            let probe: Vec<&String> = others.iter().chain([held.get(&keys)]).collect();
            let (lo, hi) = (*probe.iter().min().unwrap(), *probe.iter().max().unwrap());
            prop_assert!(keys_may_overlap(&min, &max, lo, hi), "{keys:?} kept as {min:?}..{max:?}, probe {lo:?}..{hi:?}");
        }
    }

    #[test]
    fn files_of_other_objects_are_ruled_out_by_key_when_their_statistics_name_them_in_full() {
        let key = |v: u32| format!("landing/predictions/dt=2026-11-24/predictor-commit-{v:020}.ndjson.gz");
        let mut probe = Probe { partitions: Some(HashSet::from(["2026-11-24".to_owned()])), ..Probe::default() };
        probe.add(IdKind::File, 1);
        probe.add(IdKind::File, 3);
        probe.add_file_group(&format!("{}|\"0123abcd\"", key(42)));
        let stats = |lo: &str, hi: &str| {
            json!({"numRecords": 3, "minValues": {"_line": 1, "_source_key": lo}, "maxValues": {"_line": 3, "_source_key": hi},
                   "nullCount": {"_line": 0, "_source_key": 0}})
            .to_string()
        };
        let day = HashMap::from([("predicted_date".to_owned(), Some("2026-11-24".to_owned()))]);
        let col = Some("predicted_date");
        assert!(!probe.may_hold(Some(&stats(&key(41), &key(41))), &day, col), "another object's file");
        assert!(probe.may_hold(Some(&stats(&key(42), &key(42))), &day, col), "the object's own file");
        assert!(probe.may_hold(Some(&stats(&key(40), &key(43))), &day, col), "a file of objects around it");
        // What Parquet keeps of a long key (64 bytes, the maximum raised): every record of the day looks alike.
        let (lo, hi) = (kept(&key(41), 64, 0), kept(&key(41), 64, 2));
        assert!(probe.may_hold(Some(&stats(&lo, &hi)), &day, col), "a kept prefix cannot rule the file out");
        let kafka_only = r#"{"numRecords":3,"nullCount":{"_line":0,"_source_key":3}}"#;
        assert!(!probe.may_hold(Some(kafka_only), &day, col), "a file without objects' rows");

        // A `|` in the ETag (claimed by a line) or in the key: the group alone does not say where the key ends.
        for (key, etag) in [("K", "abc|1"), ("K|x", "abc")] {
            let mut probe = Probe::default();
            probe.add(IdKind::File, 1);
            probe.add_file_group(&file_group(key, etag));
            let held = stats(key, &format!("{key}.gz"));
            assert!(probe.may_hold(Some(&held), &day, col), "{key:?} with ETag {etag:?}");
        }
    }

    #[test]
    fn the_bounds_of_the_keys_written_replace_the_kept_prefixes() {
        use deltalake::arrow::array::StringArray;
        let mut bounds = KeyBounds::default();
        for keys in [vec![Some("k/b"), None], vec![Some("k/c"), Some("k/a")], vec![None]] {
            let batch =
                RecordBatch::try_from_iter([("_source_key", Arc::new(StringArray::from(keys)) as ArrayRef)]).unwrap();
            bounds.observe(&batch);
        }
        let add = |stats: &str| Add { stats: Some(stats.to_owned()), ..Add::default() };
        let mut adds = [
            add(
                r#"{"numRecords":2,"minValues":{"_source_key":"k"},"maxValues":{"_source_key":"l"},"nullCount":{"_source_key":0}}"#,
            ),
            add(r#"{"numRecords":2,"minValues":{},"maxValues":{},"nullCount":{"_source_key":2}}"#),
        ];
        bounds.apply(&mut adds);
        let stats: Value = serde_json::from_str(adds[0].stats.as_deref().unwrap()).unwrap();
        assert_eq!(
            (&stats["minValues"]["_source_key"], &stats["maxValues"]["_source_key"]),
            (&json!("k/a"), &json!("k/c"))
        );
        assert_eq!(stats["numRecords"], 2);
        assert_eq!(
            adds[1].stats.as_deref(),
            Some(r#"{"numRecords":2,"minValues":{},"maxValues":{},"nullCount":{"_source_key":2}}"#),
            "no key: left alone"
        );
    }

    #[test]
    fn runs_merge_and_answer_membership() {
        let mut r = Runs::default();
        for s in [5, 7, 6, 1, 2, 10] {
            assert!(r.insert(s));
        }
        assert!(!r.insert(6), "already there");
        assert_eq!(r.0.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(), vec![(1, 2), (5, 7), (10, 10)]);
        assert!(r.contains(2) && r.contains(5) && r.contains(10));
        assert!(!r.contains(3) && !r.contains(8) && !r.contains(0));
    }

    #[test]
    fn ranges_merge_with_their_neighbours_and_answer_overlap() {
        let mut r = Runs::default();
        r.insert_new_range(10, 19);
        r.insert_new_range(30, 39);
        assert!(r.overlaps(19, 25) && r.overlaps(0, 10) && r.overlaps(35, 36) && r.overlaps(0, 100));
        assert!(!r.overlaps(20, 29) && !r.overlaps(0, 9) && !r.overlaps(40, 50));
        r.insert_new_range(20, 29);
        assert_eq!(r.0.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(), vec![(10, 39)], "joined both sides");
        r.insert_new_range(40, 40);
        r.insert_new_range(5, 9);
        r.insert_new_range(i64::MAX - 1, i64::MAX);
        r.insert_new_range(i64::MIN, i64::MIN);
        assert_eq!(
            r.0.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
            vec![(i64::MIN, i64::MIN), (5, 40), (i64::MAX - 1, i64::MAX)]
        );
        assert!(r.contains(40) && !r.insert(7) && r.insert(41));
    }

    #[test]
    fn stats_prune_files_that_cannot_hold_the_rows() {
        let mut probe = Probe { partitions: Some(HashSet::from(["2026-11-24".to_owned()])), ..Probe::default() };
        probe.add(IdKind::Kafka, 100);
        probe.add(IdKind::Kafka, 199);
        probe.kafka_partitions = Some((2, 2));
        let stats = |lo: i64, hi: i64, p: i64| {
            format!(
                r#"{{"numRecords":10,"minValues":{{"_source_offset":{lo},"_source_partition":{p}}},"maxValues":{{"_source_offset":{hi},"_source_partition":{p}}},"nullCount":{{"_source_offset":0}}}}"#
            )
        };
        let day = |d: &str| HashMap::from([("event_date".to_owned(), Some(d.to_owned()))]);
        let col = Some("event_date");
        assert!(probe.may_hold(Some(&stats(150, 300, 2)), &day("2026-11-24"), col));
        assert!(!probe.may_hold(Some(&stats(200, 300, 2)), &day("2026-11-24"), col), "offsets above the range");
        assert!(!probe.may_hold(Some(&stats(0, 99, 2)), &day("2026-11-24"), col), "offsets below the range");
        assert!(!probe.may_hold(Some(&stats(150, 300, 3)), &day("2026-11-24"), col), "another Kafka partition");
        assert!(!probe.may_hold(Some(&stats(150, 300, 2)), &day("2026-11-23"), col), "another day");
        assert!(probe.may_hold(None, &day("2026-11-24"), col), "no statistics: must read");
        let no_kafka = r#"{"numRecords":10,"nullCount":{"_source_offset":10}}"#;
        assert!(!probe.may_hold(Some(no_kafka), &day("2026-11-24"), col), "a file of dropped-file rows only");
    }

    #[test]
    fn a_file_is_read_for_the_probed_rows_only_and_again_for_other_ranges() {
        use deltalake::arrow::array::{Int32Array, Int64Array, StringArray};
        use fleetlake_core::bronze::LOCATIONS;
        // Kafka rows at offsets 0..6, then a dropped file's row (no Kafka identity) at line 4.
        let topic: Vec<Option<&str>> = vec![Some("t"); 6].into_iter().chain([None]).collect();
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("_source_topic", Arc::new(StringArray::from(topic))),
            (
                "_source_partition",
                Arc::new(Int32Array::from(vec![Some(0); 6].into_iter().chain([None]).collect::<Vec<_>>())),
            ),
            ("_source_offset", Arc::new(Int64Array::from((0..6).map(Some).chain([None]).collect::<Vec<_>>()))),
            ("_line", Arc::new(Int64Array::from(vec![1, 1, 1, 1, 1, 1, 4]))),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut probe = Probe::default();
        probe.add(IdKind::Kafka, 2);
        probe.add(IdKind::Kafka, 3);
        let mask = probe.mask(&LOCATIONS, &batch).unwrap();
        assert_eq!(
            mask.iter().map(Option::unwrap_or_default).collect::<Vec<_>>(),
            [false, false, true, true, false, false, false]
        );
        probe.add(IdKind::File, 4);
        let mask = probe.mask(&LOCATIONS, &batch).unwrap();
        assert!(mask.value(6), "the dropped file's line");

        let mut covered = Covered::default();
        covered.add(&probe);
        let mut inner = Probe::default();
        inner.add(IdKind::Kafka, 3);
        assert!(covered.covers(&inner) && covered.covers(&probe));
        inner.add(IdKind::Kafka, 5);
        assert!(!covered.covers(&inner), "offset 5 was not read");
    }

    #[test]
    fn a_watermark_never_moves_below_what_the_table_holds() {
        let stats = |p: (i64, i64), o: (i64, i64)| {
            format!(
                r#"{{"numRecords":10,"minValues":{{"_source_partition":{},"_source_offset":{}}},"maxValues":{{"_source_partition":{},"_source_offset":{}}},"nullCount":{{"_source_offset":0}}}}"#,
                p.0, o.0, p.1, o.1
            )
        };
        assert_eq!(offset_ceiling(Some(&stats((0, 0), (200, 299))), 0), OffsetCeiling::AtMost(299));
        assert_eq!(offset_ceiling(Some(&stats((1, 3), (0, 999))), 0), OffsetCeiling::None);
        assert_eq!(offset_ceiling(Some(&stats((0, 3), (0, 999))), 2), OffsetCeiling::AtMost(999));
        assert_eq!(offset_ceiling(None, 0), OffsetCeiling::Unknown);
        let no_kafka = r#"{"numRecords":4,"nullCount":{"_source_offset":4}}"#;
        assert_eq!(offset_ceiling(Some(no_kafka), 0), OffsetCeiling::None);

        // The txn expired (None) and an older slice (100..199) is appended after a newer one (200..299): the new
        // txn covers the newer one, so its redelivery is checked rather than appended again.
        assert_eq!(next_watermark(None, 199, [OffsetCeiling::AtMost(299), OffsetCeiling::None]), Some(299));
        assert_eq!(next_watermark(None, 199, []), Some(199));
        assert_eq!(next_watermark(None, 199, [OffsetCeiling::Unknown]), None, "unknown: write none");
        // With a txn: only forward.
        assert_eq!(next_watermark(Some(299), 199, [OffsetCeiling::Unknown]), None);
        assert_eq!(next_watermark(Some(299), 300, []), Some(300));
    }

    #[test]
    fn watermark_app_ids_name_the_topic_partition() {
        assert_eq!(txn_app_id(&kafka_group("fleet.locations", 3)), "kafka:fleet.locations:3");
        assert_eq!(kafka_partition(&kafka_group("fleet.locations", 3)), 3);
    }
}
