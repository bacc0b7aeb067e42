//! Landed and enriched JSON lines into Arrow record batches of a table's schema, with their identities.

use super::*;

/// The `_source` lineage object as landed: Kafka coordinates, or the key and ETag of a dropped file.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Source<'a> {
    #[serde(borrow, default)]
    pub(crate) topic: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) partition: Option<i64>,
    #[serde(default)]
    pub(crate) offset: Option<i64>,
    #[serde(default)]
    pub(crate) timestamp: Option<i64>,
    #[serde(borrow, default)]
    pub(crate) key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) etag: Option<Cow<'a, str>>,
}

/// The members of `_source`, in the order of [`Source`]'s fields.
pub(crate) const SOURCE_FIELDS: [&str; 6] = ["topic", "partition", "offset", "timestamp", "key", "etag"];

impl<'a> Source<'a> {
    /// `_source` from slots read by the plain reader; `None` for anything serde would read differently or refuse
    /// (a repeated member, a value of another type), which is then left to serde.
    pub(crate) fn from_slots(mut slots: Slots<'a>) -> Option<Self> {
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
    pub(crate) spec: &'static TableSpec,
    pub(crate) schema: SchemaRef,
    pub(crate) builders: Vec<Builder>,
    pub(crate) ids: Identities,
    pub(crate) rows: usize,
    /// Bytes of the lines of those rows: what a chunk holds, whatever the lines' length.
    pub(crate) bytes: usize,
    /// The line's own members: the record's columns (or a change's `op`, `ts_ms`, `lsn` and `row`), `_source`,
    /// `_ingested_at`.
    pub(crate) top: FieldSet,
    /// A change's `row` members: the row's columns.
    pub(crate) row: FieldSet,
    /// The members of `_source`.
    pub(crate) source: FieldSet,
    /// The slots of `_source`, `_ingested_at` and (for a change) `row` in `top`.
    pub(crate) slots: (usize, usize, usize),
    /// The identity group text being built, and the last one made: consecutive rows nearly always share it.
    pub(crate) group_text: String,
    pub(crate) last_group: Option<(IdKind, Arc<str>)>,
    /// The event-time window and the time (µs) it is read against for a line that does not say when it was
    /// ingested; `None` checks no window.
    pub(crate) clock: Option<(EventWindow, i64)>,
}

impl Converter {
    /// A converter for `spec`.
    pub fn new(spec: &'static TableSpec) -> Self {
        let schema = spec.arrow_schema();
        let builders = spec.columns().into_iter().map(|(_, kind, _)| Builder::new(kind)).collect();
        let data = spec.data.iter().map(|c| c.name);
        let top = match spec.layout {
            Layout::Record | Layout::State(_) => FieldSet::new(data.chain(["_source", "_ingested_at"]), &["_source"]),
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
            bytes: 0,
            top,
            row,
            source: FieldSet::new(SOURCE_FIELDS, &[]),
            slots,
            group_text: String::new(),
            last_group: None,
            clock: None,
        }
    }

    /// Also refuses event times outside `window` around each line's ingestion (`_ingested_at`, or `now_us` for a
    /// line without one) and its production (`_source.timestamp`).
    pub fn with_window(mut self, window: EventWindow, now_us: i64) -> Self {
        self.clock = Some((window, now_us));
        self
    }

    /// Records the next row's identity: `kind`, the group text in `group_text`, `seq`. A row continuing the last
    /// run extends it; a new run shares the last group's text when equal.
    pub(crate) fn record_identity(&mut self, kind: IdKind, seq: i64) {
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

    /// Bytes of the lines converted since the last [`Converter::finish`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether no row is waiting.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// `_source` from its JSON text: the plain reader's slots when it can read them, serde otherwise (which then
    /// decides the error message).
    pub(crate) fn read_source<'a>(&mut self, raw: &'a str) -> Result<Source<'a>, RowError> {
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
        if let Layout::State(_) = self.spec.layout {
            return Err(RowError(format!("{} is derived from its change log, never read from lines", self.spec.name)));
        }
        let text = std::str::from_utf8(line).map_err(|e| RowError(format!("not UTF-8: {e}")))?;
        let mut top = Slots::new();
        self.top.parse(text, &mut top)?;
        let most = match self.spec.layout {
            Layout::Record | Layout::State(_) => MAX_LINE_MEMBERS,
            Layout::Change { .. } => MAX_FIELDS,
        };
        if top.members > most {
            return Err(RowError(format!("has {} fields, more than {most} with lineage and weather", top.members)));
        }
        let mut cells: SmallVec<[Cell<'_>; 24]> = SmallVec::new();
        let mut key_text: SmallVec<[String; 2]> = SmallVec::new();
        let source_raw = match top.values[self.slots.0].take() {
            Some(Json::Raw(raw)) => Some(raw),
            _ => None,
        };
        let ingested = top.values[self.slots.1].take();
        let extra = match self.spec.layout {
            Layout::Record | Layout::State(_) => {
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
                if row.members > MAX_FIELDS {
                    return Err(invalid("row", format!("has {} fields, more than {MAX_FIELDS}", row.members)));
                }
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
        let mut source: Source<'_> = match source_raw.filter(|r| *r != "null") {
            Some(raw) => self.read_source(raw)?,
            None => Source::default(),
        };
        let mut ingested = read_cell(&LINEAGE_COLUMNS[6], ingested)?;
        let claims_kafka = source.topic.is_some() || source.partition.is_some() || source.offset.is_some();
        match origin.lineage {
            Lineage::Batch(batch) if claims_kafka => {
                if let Some(reason) = batch.refuse_claim(source.topic.as_deref(), source.partition, source.offset) {
                    return Err(RowError(reason));
                }
            }
            Lineage::File => {
                // Not the lander's object: its Kafka claims and ingestion time are not believed.
                (source.topic, source.partition, source.offset, source.timestamp) = (None, None, None, None);
                ingested = Cell::Null;
            }
            Lineage::Poll if claims_kafka => {
                return Err(RowError("_source: names Kafka coordinates in an object pg-poller landed".to_owned()));
            }
            Lineage::Batch(_) | Lineage::Poll | Lineage::Vouched => {}
        }
        // A change without an LSN was found by a poll, and only pg-poller's objects hold them (a change of any other
        // object needs its LSN; one of pg-poller's may not have one). Its `ts_ms` is the row's `updated_at`, which
        // may be as old as the row (a poll sees what the table holds, however long ago it changed): only the
        // window's "not ahead of ingestion" side applies to it.
        let polled = matches!(self.spec.layout, Layout::Change { .. }) && matches!(cells.get(2), Some(Cell::Null));
        if matches!(self.spec.layout, Layout::Change { .. }) {
            match (origin.lineage, polled) {
                (Lineage::Batch(_) | Lineage::File, true) => {
                    return Err(invalid("lsn", "required (a change without one must come from a pg-poller object)"))
                }
                (Lineage::Poll, false) => {
                    return Err(invalid("lsn", "must be absent from a change pg-poller landed"));
                }
                _ => {}
            }
        }
        let partition = match source.partition {
            Some(p) => Some(i32::try_from(p).map_err(|_| invalid("_source.partition", "does not fit in 32 bits"))?),
            None => None,
        };
        if let Some((window, now_us)) = self.clock {
            let ingested_us = match ingested {
                Cell::Micros(us) => us,
                _ => now_us,
            };
            let produced_us = source.timestamp.filter(|ms| *ms > 0).and_then(|ms| ms.checked_mul(1000));
            for (c, cell) in self.spec.read_columns().zip(&cells) {
                if let (Check::EventTime, Cell::Micros(us)) = (c.check, cell) {
                    let produced_us = if polled { Some(*us) } else { produced_us };
                    window.check(*us, ingested_us, produced_us).map_err(|e| invalid(c.name, e))?;
                }
            }
        }

        // The row's identity: its kind and sequence here, its group text in `group_text`.
        let line_no = i64::try_from(origin.line).unwrap_or(i64::MAX);
        self.group_text.clear();
        let (kind, seq) = match (self.spec.layout, &source.topic, partition, source.offset) {
            (Layout::Change { .. }, ..) if polled => {
                let ts = match cells[1] {
                    Cell::Micros(us) => us,
                    _ => 0,
                };
                push_poll_group(&mut self.group_text, key_text.iter().map(String::as_str));
                (IdKind::Poll, ts)
            }
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
            (Layout::Record | Layout::State(_), ..) => {
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
        self.bytes += line.len();
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
        self.bytes = 0;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok((batch, std::mem::take(&mut self.ids)))
    }
}

/// The unknown members (and `nested`, a further member) as a JSON object's text, or `None` when there are none.
pub(crate) fn extra_json(unknown: &[(Cow<'_, str>, &str)], nested: Option<(&str, &str)>) -> Option<String> {
    // A repeated unknown key: only its last occurrence, found from the end with a set (linear in the members,
    // whatever the line: a line of very many distinct fields must not stall the writer).
    let mut seen = std::collections::HashSet::with_capacity(unknown.len());
    let mut left: Vec<(&str, &str)> =
        unknown.iter().rev().filter(|(k, _)| seen.insert(k.as_ref())).map(|(k, v)| (k.as_ref(), *v)).collect();
    left.reverse();
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
