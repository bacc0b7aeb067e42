//! Row identities (Kafka coordinates, Debezium change keys, dropped files' lines), grouped in runs.

use super::*;

/// The kind of a row's identity; its sequence is in the column [`IdKind::seq_column`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// `(topic, partition)` + offset.
    Kafka,
    /// `(op, key)` + LSN.
    Change,
    /// `(key, etag)` of a dropped file + line.
    File,
    /// A change pg-poller found (no LSN): key + `ts_ms` in microseconds (the row's `updated_at`).
    Poll,
}

impl IdKind {
    /// The column holding the identity's sequence number.
    pub fn seq_column(self) -> &'static str {
        match self {
            IdKind::Kafka => "_source_offset",
            IdKind::Change => "lsn",
            IdKind::File => "_line",
            IdKind::Poll => "ts_ms",
        }
    }

    /// Every kind.
    pub const ALL: [IdKind; 4] = [IdKind::Kafka, IdKind::Change, IdKind::File, IdKind::Poll];
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
    pub(crate) runs: Vec<IdRun>,
    pub(crate) rows: usize,
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
    pub(crate) fn continued_by(&self, kind: IdKind, group: &str, seq: i64) -> bool {
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

pub(crate) fn push_kafka_group(g: &mut String, topic: &str, partition: i32) {
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

pub(crate) fn push_file_group(g: &mut String, key: &str, etag: &str) {
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

pub(crate) fn push_change_group<'a>(g: &mut String, op: &str, key: impl IntoIterator<Item = &'a str>) {
    g.push_str(op);
    for part in key {
        g.push('|');
        g.push_str(part);
    }
}

/// Group text of a polled change's identity: the key values as text (dates as `YYYY-MM-DD`), `|`-separated. The
/// operation is not part of it: one row version is one change, whether it was landed as an insert or an update.
pub fn poll_group<'a>(key: impl IntoIterator<Item = &'a str>) -> String {
    let mut g = String::new();
    push_poll_group(&mut g, key);
    g
}

pub(crate) fn push_poll_group<'a>(g: &mut String, key: impl IntoIterator<Item = &'a str>) {
    for (i, part) in key.into_iter().enumerate() {
        if i > 0 {
            g.push('|');
        }
        g.push_str(part);
    }
}

/// Formats days since 1970-01-01 as `YYYY-MM-DD`.
pub fn date_text(days: i32) -> String {
    NaiveDate::from_num_days_from_ce_opt(days.saturating_add(UNIX_EPOCH_DAYS_CE))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| days.to_string())
}

/// Where a line was read: the object and its ETag, the line's 1-based number, and which lineage its `_source`
/// may claim.
#[derive(Debug, Clone, Copy)]
pub struct LineOrigin<'a> {
    /// Object key.
    pub key: &'a str,
    /// Object ETag (without quotes).
    pub etag: &'a str,
    /// 1-based line number.
    pub line: u64,
    /// What the line's Kafka lineage is believed against.
    pub lineage: Lineage<'a>,
}

/// Which Kafka coordinates (`_source.topic`, `partition`, `offset`, `timestamp`) and ingestion time a line may
/// claim. Coordinates are the record's identity, so a claim believed from the wrong object would make a real
/// record with that identity a "duplicate" later.
#[derive(Debug, Clone, Copy)]
pub enum Lineage<'a> {
    /// The object is named after this lander batch ([`BatchName::from_key`]): a line claiming coordinates outside
    /// it is refused.
    Batch(&'a BatchName),
    /// The object is not named by the lander (a file dropped by hand): claimed coordinates and `_ingested_at` are
    /// not believed, and the line is identified by the file.
    File,
    /// The object is named by pg-poller ([`PollName::from_key`]): its `_ingested_at` and `_source.timestamp` (the
    /// poll's time) are believed, and a line claiming Kafka coordinates is refused.
    Poll,
    /// Whatever the line says: for tables built from input the caller vouches for (tests, benchmarks).
    Vouched,
}

impl<'a> Lineage<'a> {
    /// The lineage an object of `batch` (the name its key parses to, if any) may claim.
    pub fn of(batch: Option<&'a BatchName>) -> Self {
        batch.map_or(Lineage::File, Lineage::Batch)
    }

    /// The lineage an object of `key` may claim, `batch` being the lander batch the key names (if any).
    pub fn of_key(key: &str, batch: Option<&'a BatchName>) -> Self {
        match batch {
            Some(b) => Lineage::Batch(b),
            None if PollName::from_key(key).is_some() => Lineage::Poll,
            None => Lineage::File,
        }
    }
}
