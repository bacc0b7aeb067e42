//! pg-poller's functional core, with no I/O: which tables land where, the row versions a poll finds turned into
//! landed changes (the shape msk-lander gives Debezium's, without an LSN), and the state a run records: the
//! cursor, the versions it remembers inside the overlap, and the keys it knows.
//!
//! A polled change's identity is `(table, primary key, updated_at)`: delta-writer takes a change without an LSN
//! as one ([`crate::bronze::IdKind::Poll`]), so a version landed twice (a run that died before recording its
//! cursor, two runs at once) is one row in bronze.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::bronze::{EventWindow, Layout, TableSpec, Zone};
use crate::cdc::{Change, Op};
use crate::config::ConfigError;
use crate::lake::{is_qualified_table, PollName};
use crate::ndjson::MAX_LINE_BYTES;
use crate::quarantine::QuarantineLine;
use crate::records::{validate_change, Received};

/// The stage name pg-poller uses in quarantine keys and lines.
pub const STAGE: &str = "pg-poller";

/// Default `POLL_TABLES`.
pub const DEFAULT_POLL_TABLES: &str =
    "public.performance_stats=performance_stats,public.transport_units=transport_units";

/// The version of the state format this code writes and reads.
pub const STATE_FORMAT: u32 = 1;

/// One polled table: the PostgreSQL table, the dataset it lands in and that dataset's bronze change log.
#[derive(Debug, Clone, PartialEq)]
pub struct PollTable {
    /// `<schema>.<table>` (lowercase, unquoted identifiers).
    pub table: String,
    /// The landing dataset (`landing/<dataset>/`).
    pub dataset: String,
    /// The bronze change log the dataset feeds.
    pub spec: &'static TableSpec,
}

impl PollTable {
    /// The primary key columns, from the change log's spec.
    pub fn key_columns(&self) -> &'static [&'static str] {
        match self.spec.layout {
            Layout::Change { key } => key,
            _ => &[],
        }
    }
}

/// Parses `POLL_TABLES`: `schema.table=dataset,…`; each dataset must be one a bronze change log reads.
pub fn parse_poll_tables(var: &str, raw: &str) -> Result<Vec<PollTable>, ConfigError> {
    let mut out: Vec<PollTable> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((table, dataset)) = entry.split_once('=') else {
            return Err(ConfigError::new(var, format!("entry {entry:?} is not schema.table=dataset")));
        };
        let (table, dataset) = (table.trim(), dataset.trim());
        if !is_qualified_table(table) {
            return Err(ConfigError::new(
                var,
                format!("{table:?} is not schema.table of lowercase unquoted identifiers"),
            ));
        }
        let spec = TableSpec::for_input(Zone::Landing, dataset)
            .filter(|s| matches!(s.layout, Layout::Change { .. }))
            .ok_or_else(|| ConfigError::new(var, format!("dataset {dataset:?} feeds no change log")))?;
        if out.iter().any(|t| t.table == table || t.dataset == dataset) {
            return Err(ConfigError::new(var, format!("{table:?} or {dataset:?} is named twice")));
        }
        out.push(PollTable { table: table.to_owned(), dataset: dataset.to_owned(), spec });
    }
    if out.is_empty() {
        return Err(ConfigError::new(var, "names no table"));
    }
    Ok(out)
}

/// A key as the state and the key snapshots hold it: the key values as text, as a JSON array (unambiguous,
/// whatever the values contain).
pub fn key_text(parts: &[String]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

/// The cursor: every row version before it, in `(updated_at, primary key)` order, has been landed. Inclusive: the
/// next poll reads from it (less the overlap), and the versions it remembers keep it from landing one twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// `updated_at`, µs since the epoch.
    pub updated_at_us: i64,
    /// The primary key values as text; empty for "before every key at that time".
    pub key: Vec<String>,
}

/// What one run of one table records, written create-only as the next state object: two runs that start from the
/// same state cannot both record theirs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollState {
    /// [`STATE_FORMAT`].
    pub format: u32,
    /// `<schema>.<table>`.
    pub table: String,
    /// The state's sequence number (0: nothing polled yet).
    pub seq: u64,
    /// The run that recorded it.
    pub run: String,
    /// When the run's snapshot was taken.
    pub polled_at: Option<String>,
    /// The cursor; `None` before the first poll.
    pub cursor: Option<Cursor>,
    /// Versions `(updated_at µs, key)` already landed or quarantined at or after where the next walk starts: it
    /// reads them again and skips them. Ordered as the walk reads rows.
    pub remembered: BTreeSet<(i64, Vec<String>)>,
    /// Versions outside the cursor's walk already quarantined (`updated_at` null, infinite, before the year 1 or
    /// beyond the event-time window): `(key, updated_at as PostgreSQL prints it)`, reported once.
    pub quarantined_outside: BTreeSet<(String, String)>,
    /// The key snapshot object: every key the table held (not soft-deleted) at the last key comparison, with its
    /// `updated_at` then.
    pub key_snapshot: Option<String>,
    /// Keys landed as inserts or updates since that snapshot, with the `updated_at` (µs) of the last one landed.
    pub keys_since: BTreeMap<String, i64>,
    /// Keys landed as deletes since that snapshot.
    pub deleted_since: BTreeSet<String>,
    /// When the keys were last compared, µs since the epoch.
    pub keys_compared_us: Option<i64>,
}

impl PollState {
    /// The state of a table never polled.
    pub fn initial(table: &str) -> Self {
        PollState {
            format: STATE_FORMAT,
            table: table.to_owned(),
            seq: 0,
            run: String::new(),
            polled_at: None,
            cursor: None,
            remembered: BTreeSet::new(),
            quarantined_outside: BTreeSet::new(),
            key_snapshot: None,
            keys_since: BTreeMap::new(),
            deleted_since: BTreeSet::new(),
            keys_compared_us: None,
        }
    }

    /// Where the next walk starts, inclusive, in `(updated_at, key)` order: after a complete walk, the cursor less
    /// the overlap (the backstop for an `updated_at` older than its transaction), every key; after a walk cut
    /// short, the cursor itself (the version it names is remembered). Before the first poll, the year 1.
    pub fn walk_start(&self, overlap_us: i64) -> (i64, Vec<String>) {
        match &self.cursor {
            None => (MIN_WALK_US, Vec::new()),
            Some(c) if c.key.is_empty() => (c.updated_at_us.saturating_sub(overlap_us).max(MIN_WALK_US), Vec::new()),
            Some(c) => (c.updated_at_us, c.key.clone()),
        }
    }

    /// Whether the key comparison is due: never done, older than `every_us`, or more keys landed since the last
    /// snapshot than a state should carry.
    pub fn keys_due(&self, now_us: i64, every_us: i64) -> bool {
        self.keys_compared_us.is_none_or(|t| now_us.saturating_sub(t) >= every_us)
            || self.keys_since.len() + self.deleted_since.len() > MAX_KEYS_SINCE
    }
}

/// The earliest `updated_at` a walk reads: 0001-01-01T00:00:00Z. Earlier times (BC, `-infinity`) are quarantined.
pub const MIN_WALK_US: i64 = crate::bronze::MICROS_RANGE.0;

/// Keys landed since the last snapshot beyond which the comparison runs at once (and writes a new snapshot), so a
/// state object stays small.
pub const MAX_KEYS_SINCE: usize = 10_000;

/// The poll's time and lineage for the lines of one object.
#[derive(Debug, Clone)]
pub struct PollContext {
    /// When the poll's snapshot was taken (the database's `now()`), µs since the epoch.
    pub snapshot_us: i64,
    /// The event-time window of the plausibility contract.
    pub window: EventWindow,
}

impl PollContext {
    /// The latest `updated_at` a walk accepts, µs: the window's "ahead of ingestion" bound. Later versions are
    /// outside the walk (quarantined once) so that a clock years ahead never drags the cursor along.
    pub fn walk_to_us(&self) -> i64 {
        self.snapshot_us.saturating_add(self.window.max_ahead_s.saturating_mul(1_000_000))
    }

    /// The snapshot time as RFC 3339 with milliseconds (`_ingested_at`).
    pub fn ingested_at(&self) -> String {
        DateTime::<Utc>::from_timestamp_micros(self.snapshot_us)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// One row version as a poll read it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolledRow {
    /// The primary key values as text (dates `YYYY-MM-DD`).
    pub key: Vec<String>,
    /// `updated_at`, µs since the epoch (inside the walk: finite, from the year 1).
    pub updated_at_us: i64,
    /// The row as PostgreSQL's `row_to_json` wrote it.
    pub row_json: String,
    /// Whether the soft-delete column says the row is deleted.
    pub soft_deleted: bool,
}

/// Lineage of a polled line or quarantined version: the table, its key and version, and the object it went to.
#[derive(Debug, Clone, Serialize)]
pub struct PollSource<'a> {
    /// `<schema>.<table>`.
    pub table: &'a str,
    /// The key values as text.
    pub key: &'a [String],
    /// `updated_at` as read.
    pub updated_at: String,
    /// The object's name (`poll-…`).
    pub poll: String,
}

/// The landed line of one change: `{op, ts_ms, row, _source, _ingested_at}`, the shape of msk-lander's Debezium
/// lines without `lsn`. `_source` names the object (`key`) and the poll's time (`timestamp`).
///
/// Refused (with the reason a quarantine line carries) when the row is not a JSON object, a column breaks the
/// change log's contract (type, bounds, text length, required key), `ts_ms` is outside the event-time window, or
/// the line would be longer than [`MAX_LINE_BYTES`].
pub fn change_line(
    spec: &TableSpec,
    op: Op,
    ts_ms: i64,
    row: Map<String, Value>,
    object_key: &str,
    poll: &PollContext,
) -> Result<Vec<u8>, String> {
    let change = Change { op, ts_ms, lsn: None, row };
    let ts_us = ts_ms.saturating_mul(1000);
    let received = Received { window: poll.window, ingested_us: poll.snapshot_us, produced_us: Some(ts_us) };
    validate_change(&change, spec, Some(&received)).map_err(|e| e.to_string())?;
    let Ok(Value::Object(mut line)) = serde_json::to_value(&change) else {
        return Err("the change could not be encoded".to_owned());
    };
    line.insert(
        "_source".to_owned(),
        serde_json::json!({"key": object_key, "timestamp": poll.snapshot_us.div_euclid(1000)}),
    );
    line.insert("_ingested_at".to_owned(), Value::String(poll.ingested_at()));
    let bytes = serde_json::to_vec(&line).map_err(|e| e.to_string())?;
    if bytes.len() > MAX_LINE_BYTES {
        return Err(format!("the landed line would be {} bytes, more than {MAX_LINE_BYTES}", bytes.len()));
    }
    Ok(bytes)
}

/// The row of a polled version: its JSON object, refused when it is anything else.
pub fn row_object(row_json: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(row_json) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("row: not a JSON object".to_owned()),
        Err(e) => Err(format!("row: not JSON: {e}")),
    }
}

/// The row of a delete found by the key comparison: the key columns only (what Debezium's `before` holds under
/// the default replica identity).
pub fn key_row(table: &PollTable, key: &[String]) -> Map<String, Value> {
    table.key_columns().iter().zip(key).map(|(c, v)| ((*c).to_owned(), Value::String(v.clone()))).collect()
}

/// A quarantine line for a version the poll refused.
pub fn quarantine(reason: String, source: &PollSource<'_>, raw: Option<String>) -> QuarantineLine {
    QuarantineLine::new(reason, STAGE, source, raw)
}

/// The keys a table held at the last comparison plus what was landed since: answers "was this key ever landed"
/// (`c` or `u`) and "which known keys are gone" (deletes).
#[derive(Debug, Default)]
pub struct KnownKeys {
    /// The snapshot's keys, with their `updated_at` (µs; 0 when it was not a time) when listed.
    pub snapshot: HashMap<String, i64>,
}

impl KnownKeys {
    /// Whether `key` is known alive: in the snapshot or landed since, and not deleted since.
    pub fn alive(&self, state: &PollState, key: &str) -> bool {
        !state.deleted_since.contains(key) && (state.keys_since.contains_key(key) || self.snapshot.contains_key(key))
    }

    /// Every key known alive, with the last `updated_at` known of it.
    pub fn all(&self, state: &PollState) -> HashMap<String, i64> {
        KnownKeys { snapshot: self.snapshot.clone() }.into_all(state)
    }

    /// [`KnownKeys::all`], reusing the snapshot's map.
    pub fn into_all(self, state: &PollState) -> HashMap<String, i64> {
        let mut all = self.snapshot;
        all.retain(|k, _| !state.deleted_since.contains(k));
        for (k, us) in &state.keys_since {
            let e = all.entry(k.clone()).or_insert(*us);
            *e = (*e).max(*us);
        }
        all
    }
}

/// The time (ms) a delete found by the key comparison lands with: a millisecond after the later of the last
/// comparison (the key was there then, or landed since) and the key's last known `updated_at`. The same for every
/// run that starts from the same state, so a delete landed twice is one change; never before the version it ends.
pub fn delete_ts_ms(state: &PollState, last_updated_us: i64) -> i64 {
    let seen_us = state.keys_compared_us.unwrap_or(i64::MIN).max(last_updated_us);
    seen_us.div_euclid(1000).saturating_add(1)
}

/// Records a landed (or refused) version in the state being built: remembered when its `updated_at` is at least
/// `remember_from_us` (the bound less the overlap: no later walk reads an earlier version again; see [`advance`]),
/// and its key among the keys landed since the snapshot (or deleted since).
pub fn record_version(
    state: &mut PollState,
    key_parts: &[String],
    key: &str,
    updated_at_us: i64,
    landed: Option<Op>,
    remember_from_us: i64,
) {
    if updated_at_us >= remember_from_us {
        state.remembered.insert((updated_at_us, key_parts.to_vec()));
    }
    match landed {
        Some(Op::Delete) => {
            state.keys_since.remove(key);
            state.deleted_since.insert(key.to_owned());
        }
        Some(_) => {
            state.deleted_since.remove(key);
            let e = state.keys_since.entry(key.to_owned()).or_insert(updated_at_us);
            *e = (*e).max(updated_at_us);
        }
        None => {}
    }
}

/// Moves the cursor after a walk: to `bound` (the start of the oldest transaction still open at the snapshot, or
/// the snapshot itself) after a complete walk, or to the last version walked (`cut`) when the walk was cut short,
/// whichever is earlier; never backwards. Then forgets the remembered versions before where the next walk starts.
pub fn advance(state: &mut PollState, bound_us: i64, cut: Option<(i64, Vec<String>)>, overlap_us: i64) {
    if let Some(last) = &cut {
        // The next walk starts at the cut, inclusive: the version there is read again.
        state.remembered.insert(last.clone());
    }
    let at_bound = (bound_us, Vec::new());
    let target = match cut {
        Some(last) if last < at_bound => last,
        _ => at_bound,
    };
    let old = state.cursor.as_ref().map(|c| (c.updated_at_us, c.key.clone()));
    if old.as_ref().is_none_or(|o| target > *o) {
        state.cursor = Some(Cursor { updated_at_us: target.0, key: target.1 });
    }
    let start = state.walk_start(overlap_us);
    state.remembered = state.remembered.split_off(&start);
}

/// The name of a run's `part`-th object of `table`, for state `seq`.
pub fn object_name(table: &str, seq: u64, run: &str, part: u32) -> PollName {
    PollName { table: table.to_owned(), seq, run: run.to_owned(), part }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bronze::{Converter, LineOrigin, Lineage, PERFORMANCE_STATS};
    use proptest::prelude::*;
    use serde_json::json;

    fn ctx() -> PollContext {
        PollContext { snapshot_us: 1_796_000_000_000_000, window: EventWindow::default() }
    }

    const KEY: &str =
        "landing/performance_stats/dt=2026-12-01/poll-public.performance_stats-0000000000000001-r00000001-0.ndjson.gz";

    #[allow(clippy::needless_pass_by_value)]
    fn stat(fuel: Value) -> Map<String, Value> {
        match json!({"transport_unit_id": "TU-1", "stat_date": "2026-11-30", "fuel_used_l": fuel,
                     "updated_at": "2026-11-30T10:00:00.123456+00:00"})
        {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn tables_map_to_change_logs_only() {
        let t = parse_poll_tables("POLL_TABLES", DEFAULT_POLL_TABLES).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].key_columns(), ["transport_unit_id", "stat_date"]);
        for bad in ["public.x=locations", "x=performance_stats", "public.X=performance_stats", "", "public.a"] {
            assert!(parse_poll_tables("POLL_TABLES", bad).is_err(), "{bad}");
        }
        assert!(parse_poll_tables("P", "public.a=performance_stats,public.b=performance_stats").is_err());
    }

    #[test]
    fn a_polled_line_is_what_delta_writer_takes_as_a_polled_change() {
        let line =
            change_line(&PERFORMANCE_STATS, Op::Create, 1_795_999_000_000, stat(json!(12.5)), KEY, &ctx()).unwrap();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["op"], "c");
        assert!(v.get("lsn").is_none());
        assert_eq!(v["_source"]["key"], KEY);
        let mut c = Converter::new(&PERFORMANCE_STATS).with_window(EventWindow::default(), ctx().snapshot_us);
        c.push(&line, LineOrigin { key: KEY, etag: "e", line: 1, lineage: Lineage::of_key(KEY, None) }).unwrap();
        let (batch, ids) = c.finish().unwrap();
        assert_eq!(batch.num_rows(), 1);
        let id = ids.iter().next().unwrap();
        assert_eq!(
            (id.kind, &*id.group, id.seq),
            (crate::bronze::IdKind::Poll, "TU-1|2026-11-30", 1_795_999_000_000_000)
        );
        // `_ingested_at` is believed from a poll's object.
        let ingested = batch.column_by_name("_ingested_at").unwrap();
        assert_eq!(ingested.null_count(), 0);
    }

    #[test]
    fn only_the_pollers_objects_hold_changes_without_an_lsn_and_they_hold_no_other() {
        let line =
            change_line(&PERFORMANCE_STATS, Op::Create, 1_795_999_000_000, stat(json!(1.0)), KEY, &ctx()).unwrap();
        let dropped = "landing/performance_stats/dt=2026-12-01/drop.ndjson.gz";
        let mut c = Converter::new(&PERFORMANCE_STATS);
        let err =
            c.push(&line, LineOrigin { key: dropped, etag: "e", line: 1, lineage: Lineage::of_key(dropped, None) });
        assert!(err.unwrap_err().0.contains("lsn"));
        let mut with_lsn: Value = serde_json::from_slice(&line).unwrap();
        with_lsn["lsn"] = json!(7);
        let err = c
            .push(with_lsn.to_string().as_bytes(), LineOrigin { key: KEY, etag: "e", line: 1, lineage: Lineage::Poll });
        assert!(err.unwrap_err().0.contains("lsn"));
    }

    #[test]
    fn an_old_version_is_a_real_row_but_a_future_one_is_refused() {
        // A row last changed five years before the poll: the table holds it now.
        let old = 1_796_000_000_000 - 5 * 365 * 86_400_000;
        assert!(change_line(&PERFORMANCE_STATS, Op::Update, old, stat(json!(1.0)), KEY, &ctx()).is_ok());
        let ahead = 1_796_000_000_000 + 3 * 86_400_000;
        let err = change_line(&PERFORMANCE_STATS, Op::Update, ahead, stat(json!(1.0)), KEY, &ctx()).unwrap_err();
        assert!(err.contains("after the record was ingested"), "{err}");
        let err = change_line(&PERFORMANCE_STATS, Op::Update, old, stat(json!("NaN")), KEY, &ctx()).unwrap_err();
        assert!(err.contains("fuel_used_l"), "{err}");
        let mut huge = stat(json!(1.0));
        huge.insert("note".into(), Value::String("x".repeat(MAX_LINE_BYTES)));
        let err = change_line(&PERFORMANCE_STATS, Op::Update, old, huge, KEY, &ctx()).unwrap_err();
        assert!(err.contains("bytes"), "{err}");
    }

    #[test]
    fn the_cursor_moves_to_the_bound_never_back_and_forgets_what_no_walk_reads_again() {
        let k = |s: &str| vec![s.to_owned()];
        let mut s = PollState::initial("public.t");
        assert_eq!(s.walk_start(5), (MIN_WALK_US, vec![]));
        record_version(&mut s, &k("a"), "[\"a\"]", 100, Some(Op::Create), i64::MIN);
        record_version(&mut s, &k("b"), "[\"b\"]", 900, Some(Op::Create), i64::MIN);
        advance(&mut s, 1000, None, 200);
        assert_eq!(s.cursor, Some(Cursor { updated_at_us: 1000, key: vec![] }));
        assert_eq!(s.remembered.iter().map(|(_, k)| k[0].as_str()).collect::<Vec<_>>(), ["b"]);
        advance(&mut s, 400, None, 200);
        assert_eq!(s.cursor.as_ref().unwrap().updated_at_us, 1000, "an older bound never moves it back");
        assert_eq!(s.walk_start(50), (950, vec![]));
        record_version(&mut s, &k("a"), "[\"a\"]", 2000, Some(Op::Delete), i64::MIN);
        assert!(s.deleted_since.contains("[\"a\"]") && !s.keys_since.contains_key("[\"a\"]"));
        let known = KnownKeys { snapshot: HashMap::from([("[\"c\"]".to_owned(), 5), ("[\"a\"]".to_owned(), 7)]) };
        assert!(!known.alive(&s, "[\"a\"]") && known.alive(&s, "[\"b\"]") && known.alive(&s, "[\"c\"]"));
        let all = known.all(&s);
        assert_eq!(all.len(), 2);
        assert_eq!((all["[\"b\"]"], all["[\"c\"]"]), (900, 5));
        // A delete lands a millisecond after the later of the last comparison and the key's last version.
        assert_eq!(delete_ts_ms(&s, 900_000), 901);
        s.keys_compared_us = Some(2_000_000);
        assert_eq!(delete_ts_ms(&s, 900_000), 2001);
    }

    #[test]
    fn a_walk_cut_short_resumes_at_its_last_version_even_among_equal_times() {
        let k = |s: &str| vec![s.to_owned()];
        let mut s = PollState::initial("public.t");
        // A bulk load: every row of one transaction has the same updated_at.
        for key in ["a", "b", "c"] {
            record_version(&mut s, &k(key), &key_text(&k(key)), 500, Some(Op::Create), i64::MIN);
        }
        advance(&mut s, 10_000, Some((500, k("c"))), 50);
        assert_eq!(s.cursor, Some(Cursor { updated_at_us: 500, key: k("c") }));
        assert_eq!(s.walk_start(50), (500, k("c")));
        assert_eq!(s.remembered.len(), 1, "only the version the cursor names is read again");
        // A cut beyond the bound stops at the bound.
        let mut t = PollState::initial("public.t");
        advance(&mut t, 300, Some((500, k("c"))), 50);
        assert_eq!(t.cursor, Some(Cursor { updated_at_us: 300, key: vec![] }));
    }

    proptest! {
        /// Whatever PostgreSQL hands over as a row, a line comes out that delta-writer takes, or a reason does.
        #[test]
        fn every_row_lands_or_is_refused_with_a_reason(
            fuel in prop_oneof![Just(json!("NaN")), Just(json!("Infinity")), Just(json!(null)),
                                any::<f64>().prop_map(|f| json!(f)), any::<i64>().prop_map(|i| json!(i)),
                                ".{0,20}".prop_map(|s| json!(s))],
            date in prop_oneof![Just("2026-11-30".to_owned()), Just("0044-03-15 BC".to_owned()),
                                Just("infinity".to_owned()), "[0-9]{4}-[0-9]{2}-[0-9]{2}"],
            ts_ms in prop_oneof![Just(1_795_000_000_000_i64), any::<i64>()],
        ) {
            let mut row = stat(fuel);
            row.insert("stat_date".into(), Value::String(date));
            match change_line(&PERFORMANCE_STATS, Op::Update, ts_ms, row, KEY, &ctx()) {
                Ok(line) => {
                    let mut c = Converter::new(&PERFORMANCE_STATS).with_window(EventWindow::default(), ctx().snapshot_us);
                    let pushed = c.push(&line, LineOrigin { key: KEY, etag: "e", line: 1, lineage: Lineage::Poll });
                    prop_assert!(pushed.is_ok(), "delta-writer refused a line the poller landed: {:?}", pushed);
                }
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
        }
    }
}
