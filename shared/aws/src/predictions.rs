//! The predictions table adapter (DynamoDB): one item per unit and data timestamp, written in batches, retried
//! until every item is in or the deadline passes, and never replacing a prediction made from a newer table version.
//!
//! Key: `transport_unit_id` (S) + `predicted_at` (S, the timestamp of the unit's latest position the prediction
//! was made from, written by [`predicted_at_key`]: RFC 3339 in UTC with exactly six fractional digits, so that the
//! byte order DynamoDB sorts keys by is time order). A replayed commit therefore addresses the same items. The latest
//! prediction of a unit is `Query(transport_unit_id = :id, ScanIndexForward = false, Limit = 1)`; [`PredictionReader`]
//! runs that and the range reads predictions-api serves.
//!
//! BatchWriteItem takes no conditions, so each write is preceded by a BatchGetItem of the keys: an item that
//! already holds this `source_version` (a replay) or a newer one is left alone. A writer racing between the read
//! and the write could still replace a newer item; the window is one round trip, or, when the keys are read ahead
//! with [`PredictionStore::stored`] (the predictor reads them while its model runs), that round trip and the time
//! until the write.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use chrono::{DateTime, Datelike, SecondsFormat};
use futures::StreamExt as _;
use tracing::{info, instrument, warn};

/// Most items per BatchWriteItem.
const WRITE_CHUNK: usize = 25;
/// Most keys per BatchGetItem.
const READ_CHUNK: usize = 100;
/// Batch calls in flight at once by default: 2,000 predictions are 20 reads and 80 writes, which one at a time wait
/// out 100 round trips (32 at once: 4). A burst of 32 writes is 800 write units, within what an on-demand table
/// takes at once.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// The `predicted_at` key of a prediction made at `micros` (µs since the epoch): `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
/// Every key has the same length and layout, so DynamoDB's byte order of keys is time order. `None` outside
/// years 1–9999 (the layout would change).
pub fn predicted_at_key(micros: i64) -> Option<String> {
    let at = DateTime::from_timestamp_micros(micros)?;
    (1..=9999).contains(&at.year()).then(|| at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// The attributes of an item, in the order of [`Prediction`]'s fields.
pub const ATTRIBUTES: [&str; 9] = [
    "transport_unit_id",
    "predicted_at",
    "target",
    "value",
    "unit",
    "model_version",
    "features",
    "source_version",
    "expires_at",
];

/// One prediction for one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Partition key.
    pub transport_unit_id: String,
    /// Sort key: RFC 3339 timestamp of the latest position the prediction was made from.
    pub predicted_at: String,
    /// What is predicted (`fuel_next_24h`).
    pub target: String,
    /// The value.
    pub value: f64,
    /// Its unit (`l`).
    pub unit: String,
    /// `<model>-<fingerprint>`.
    pub model_version: String,
    /// The features, by name.
    pub features: Vec<(String, f64)>,
    /// The Delta version of `bronze/locations` the prediction was made from.
    pub source_version: u64,
    /// TTL: epoch seconds after which DynamoDB deletes the item.
    pub expires_at: i64,
}

impl Prediction {
    fn key(&self) -> HashMap<String, AttributeValue> {
        item_key(&self.transport_unit_id, &self.predicted_at)
    }

    fn item(&self, written_by: Option<&str>) -> HashMap<String, AttributeValue> {
        let mut item = self.key();
        if let Some(by) = written_by {
            item.insert("written_by".into(), AttributeValue::S(by.to_owned()));
        }
        let n = |v: f64| AttributeValue::N(v.to_string());
        item.insert("target".into(), AttributeValue::S(self.target.clone()));
        item.insert("value".into(), n(self.value));
        item.insert("unit".into(), AttributeValue::S(self.unit.clone()));
        item.insert("model_version".into(), AttributeValue::S(self.model_version.clone()));
        item.insert(
            "features".into(),
            AttributeValue::M(self.features.iter().map(|(k, v)| (k.clone(), n(*v))).collect()),
        );
        item.insert("source_version".into(), AttributeValue::N(self.source_version.to_string()));
        item.insert("expires_at".into(), AttributeValue::N(self.expires_at.to_string()));
        item
    }

    /// The prediction as a line of `landing/predictions/` (the record of what was served, which delta-writer
    /// appends to `bronze/predictions`): the item's attributes but the TTL, with the features as a JSON object in
    /// a string.
    pub fn record_line(&self) -> Vec<u8> {
        let features: serde_json::Map<String, serde_json::Value> =
            self.features.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
        let line = serde_json::json!({
            "transport_unit_id": self.transport_unit_id,
            "predicted_at": self.predicted_at,
            "target": self.target,
            "value": self.value,
            "unit": self.unit,
            "model_version": self.model_version,
            "features": serde_json::Value::Object(features).to_string(),
            "source_version": self.source_version,
        });
        serde_json::to_vec(&line).unwrap_or_else(|_| unreachable!("a JSON value serialises"))
    }

    /// A stored item, read back; the attribute that is missing or of the wrong type when it is not one.
    pub fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Self, String> {
        let get = |k: &str| item.get(k).ok_or_else(|| format!("attribute {k} is missing"));
        let s = |k: &str| get(k)?.as_s().cloned().map_err(|_| format!("attribute {k} is not a string"));
        let n = |v: &AttributeValue, k: &str| {
            v.as_n().ok().and_then(|n| n.parse::<f64>().ok()).ok_or_else(|| format!("attribute {k} is not a number"))
        };
        let int = |k: &str| {
            get(k)?
                .as_n()
                .ok()
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| format!("attribute {k} is not an integer"))
        };
        let mut features: Vec<(String, f64)> = get("features")?
            .as_m()
            .map_err(|_| "attribute features is not a map".to_owned())?
            .iter()
            .map(|(k, v)| Ok((k.clone(), n(v, "features")?)))
            .collect::<Result<_, String>>()?;
        features.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            transport_unit_id: s("transport_unit_id")?,
            predicted_at: s("predicted_at")?,
            target: s("target")?,
            value: n(get("value")?, "value")?,
            unit: s("unit")?,
            model_version: s("model_version")?,
            features,
            source_version: u64::try_from(int("source_version")?).map_err(|_| "source_version is negative")?,
            expires_at: int("expires_at")?,
        })
    }
}

/// The table could not take every item before the deadline, or a call failed: Lambda should retry.
#[derive(Debug, thiserror::Error)]
#[error("DynamoDB {op} on {table}: {message}")]
pub struct PredictionsError {
    /// The operation.
    pub op: &'static str,
    /// Table name.
    pub table: String,
    /// What went wrong (the SDK error with its whole context chain, or what was left unprocessed).
    pub message: String,
    /// The SDK error, when a call failed.
    #[source]
    pub source: Option<Box<aws_sdk_dynamodb::Error>>,
}

impl PredictionsError {
    fn new(table: &str, op: &'static str, message: impl Into<String>) -> Self {
        Self { op, table: table.to_owned(), message: message.into(), source: None }
    }

    /// A failed call, keeping the SDK error as the cause.
    fn failed<E>(table: &str, op: &'static str, e: E) -> Self
    where
        E: Into<aws_sdk_dynamodb::Error> + std::error::Error + Send + Sync + 'static,
    {
        let message = DisplayErrorContext(&e).to_string();
        Self { source: Some(Box::new(e.into())), ..Self::new(table, op, message) }
    }

    /// DynamoDB refused the call for throughput (the caller should answer "retry later", not "failed").
    pub fn is_throttling(&self) -> bool {
        self.source.as_deref().and_then(ProvideErrorMetadata::code).is_some_and(|code| {
            matches!(code, "ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded")
        })
    }
}

/// What a write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Items written.
    pub written: u64,
    /// Items left alone: already from this version (a replay) or from a newer one.
    pub kept: u64,
    /// BatchWriteItem calls, retries included.
    pub batch_calls: u64,
    /// Items DynamoDB handed back unprocessed (throttling) and that were sent again.
    pub retried_items: u64,
}

/// The predictions of a set that the table does not hold yet, and how many it holds already.
#[derive(Debug, Default)]
pub struct Unstored<'a> {
    /// Not in the table from this or a newer `source_version`: to be written.
    pub fresh: Vec<&'a Prediction>,
    /// In the table from this very `source_version`, written by the same writer (`written_by`): a replay, or an
    /// earlier attempt that failed after writing them. Left alone.
    pub same_version: Vec<&'a Prediction>,
    /// Who writes them (an attribute of the items: which run of the writer put them there).
    pub written_by: Option<&'a str>,
    /// Already in from this or a newer `source_version`: left alone.
    pub kept: u64,
}

/// An item's key.
fn item_key(transport_unit_id: &str, predicted_at: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("transport_unit_id".to_owned(), AttributeValue::S(transport_unit_id.to_owned())),
        ("predicted_at".to_owned(), AttributeValue::S(predicted_at.to_owned())),
    ])
}

/// What the predictions table held under some keys when they were read ([`PredictionStore::stored`]).
#[derive(Debug, Default, Clone)]
pub struct Stored {
    /// The keys read.
    read: HashSet<(String, String)>,
    /// `key → (source_version, written_by)` of the items found.
    found: HashMap<(String, String), (u64, Option<String>)>,
}

impl Stored {
    /// Whether every prediction's key was read: otherwise [`Stored::unstored`] would take an unread key for a
    /// missing item.
    pub fn covers(&self, predictions: &[Prediction]) -> bool {
        predictions.iter().all(|p| self.read.contains(&(p.transport_unit_id.clone(), p.predicted_at.clone())))
    }

    /// The predictions (all of whose keys were read, [`Stored::covers`]) that the table did not hold from this or a
    /// newer `source_version`.
    pub fn unstored<'a>(&self, predictions: &'a [Prediction], written_by: Option<&'a str>) -> Unstored<'a> {
        let mut out = Unstored { written_by, ..Unstored::default() };
        for p in predictions {
            match self.found.get(&(p.transport_unit_id.clone(), p.predicted_at.clone())) {
                Some((v, _)) if *v > p.source_version => out.kept += 1,
                Some((v, by)) if *v == p.source_version => {
                    out.kept += 1;
                    if written_by.is_some() && by.as_deref() == written_by {
                        out.same_version.push(p);
                    }
                }
                _ => out.fresh.push(p),
            }
        }
        out
    }
}

/// The predictions table.
#[derive(Debug, Clone)]
pub struct PredictionStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// First backoff between retries of unprocessed items; doubles, full jitter, capped at 2 s.
    pub backoff_base: Duration,
    /// BatchGetItem and BatchWriteItem calls in flight at once ([`DEFAULT_CONCURRENCY`]).
    pub concurrency: usize,
}

impl PredictionStore {
    /// An adapter for `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into(), backoff_base: Duration::from_millis(50), concurrency: DEFAULT_CONCURRENCY }
    }

    fn error(&self, op: &'static str, message: impl Into<String>) -> PredictionsError {
        PredictionsError::new(&self.table, op, message)
    }

    fn failed<E>(&self, op: &'static str, e: E) -> PredictionsError
    where
        E: Into<aws_sdk_dynamodb::Error> + std::error::Error + Send + Sync + 'static,
    {
        PredictionsError::failed(&self.table, op, e)
    }

    /// Writes the predictions that are not already in from this or a newer `source_version`; retries
    /// unprocessed items with backoff until `deadline`, then fails.
    pub async fn write(&self, predictions: &[Prediction], deadline: Instant) -> Result<WriteStats, PredictionsError> {
        let fresh = self.unstored(predictions, None, deadline).await?;
        self.write_unstored(&fresh, deadline).await
    }

    /// The predictions that are not already in from this or a newer `source_version` (one BatchGetItem per 100
    /// keys): what [`PredictionStore::write_unstored`] writes, tagged `written_by` (when given) in the items.
    pub async fn unstored<'a>(
        &self,
        predictions: &'a [Prediction],
        written_by: Option<&'a str>,
        deadline: Instant,
    ) -> Result<Unstored<'a>, PredictionsError> {
        let keys = predictions.iter().map(|p| (p.transport_unit_id.clone(), p.predicted_at.clone()));
        Ok(self.stored(keys, deadline).await?.unstored(predictions, written_by))
    }

    /// What the table holds under `keys` (`(transport_unit_id, predicted_at)`), [`PredictionStore::concurrency`]
    /// BatchGetItem calls of 100 keys at a time. The keys of a set of predictions are known before their values:
    /// reading them while the model runs takes the read off the way.
    pub async fn stored(
        &self,
        keys: impl IntoIterator<Item = (String, String)>,
        deadline: Instant,
    ) -> Result<Stored, PredictionsError> {
        let mut read = HashSet::new();
        let distinct: Vec<(String, String)> = keys.into_iter().filter(|k| read.insert(k.clone())).collect();
        let reads: Vec<_> = distinct.chunks(READ_CHUNK).map(|chunk| self.read_chunk(chunk, deadline)).collect();
        let mut reads = futures::stream::iter(reads).buffer_unordered(self.concurrency.max(1));
        let mut found = HashMap::new();
        while let Some(items) = reads.next().await {
            found.extend(items?);
        }
        Ok(Stored { read, found })
    }

    /// Writes what [`PredictionStore::unstored`] found missing, [`PredictionStore::concurrency`] BatchWriteItem
    /// calls at a time. The first failure fails the write (the calls still in flight are dropped; a retry writes
    /// their items again, which changes nothing).
    #[instrument(skip_all, fields(table = %self.table, predictions = unstored.fresh.len()))]
    pub async fn write_unstored(
        &self,
        unstored: &Unstored<'_>,
        deadline: Instant,
    ) -> Result<WriteStats, PredictionsError> {
        let mut stats = WriteStats { kept: unstored.kept, ..WriteStats::default() };
        // The calls made up front: a stream mapping borrowed chunks through a closure is no future a spawned task can
        // hold (its closure would have to work for every lifetime).
        let calls: Vec<_> = unstored
            .fresh
            .chunks(WRITE_CHUNK)
            .map(|chunk| self.write_chunk(chunk, unstored.written_by, deadline))
            .collect();
        let mut calls = futures::stream::iter(calls).buffer_unordered(self.concurrency.max(1));
        while let Some(chunk) = calls.next().await {
            let chunk = chunk?;
            stats.written += chunk.written;
            stats.batch_calls += chunk.batch_calls;
            stats.retried_items += chunk.retried_items;
        }
        info!(written = stats.written, kept = stats.kept, calls = stats.batch_calls, "predictions written");
        Ok(stats)
    }

    /// One BatchWriteItem of at most [`WRITE_CHUNK`] items, and its unprocessed items again with backoff until
    /// `deadline`.
    async fn write_chunk(
        &self,
        chunk: &[&Prediction],
        written_by: Option<&str>,
        deadline: Instant,
    ) -> Result<WriteStats, PredictionsError> {
        let mut stats = WriteStats::default();
        let mut pending: Vec<WriteRequest> = chunk
            .iter()
            .filter_map(|p| PutRequest::builder().set_item(Some(p.item(written_by))).build().ok())
            .map(|put| WriteRequest::builder().put_request(put).build())
            .collect();
        let mut attempt = 0u32;
        while !pending.is_empty() {
            if attempt > 0 {
                let cap = (self.backoff_base.as_millis() as u64).saturating_mul(1 << attempt.min(6)).min(2_000);
                let wait = Duration::from_millis(fastrand::u64(0..=cap));
                if Instant::now() + wait >= deadline {
                    return Err(self.error(
                        "BatchWriteItem",
                        format!("{} item(s) still unprocessed at the deadline after {attempt} attempts", pending.len()),
                    ));
                }
                tokio::time::sleep(wait).await;
            }
            attempt += 1;
            stats.batch_calls += 1;
            let sent = pending.len();
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, std::mem::take(&mut pending))
                .send()
                .await
                .map_err(|e| self.failed("BatchWriteItem", e))?;
            pending = out.unprocessed_items().and_then(|u| u.get(&self.table)).cloned().unwrap_or_default();
            if !pending.is_empty() {
                warn!(unprocessed = pending.len(), attempt, "items handed back unprocessed; retrying");
                stats.retried_items += pending.len() as u64;
            }
            stats.written += (sent - pending.len()) as u64;
        }
        Ok(stats)
    }

    /// One BatchGetItem of at most [`READ_CHUNK`] distinct keys, and its unprocessed keys again until `deadline`.
    async fn read_chunk(
        &self,
        chunk: &[(String, String)],
        deadline: Instant,
    ) -> Result<Vec<((String, String), (u64, Option<String>))>, PredictionsError> {
        let mut found = Vec::with_capacity(chunk.len());
        let mut keys: Vec<HashMap<String, AttributeValue>> =
            chunk.iter().map(|(unit, at)| item_key(unit, at)).collect();
        let mut attempt = 0u32;
        while !keys.is_empty() {
            if attempt > 0 {
                if Instant::now() >= deadline {
                    return Err(self.error("BatchGetItem", "keys still unprocessed at the deadline"));
                }
                tokio::time::sleep(self.backoff_base * attempt).await;
            }
            attempt += 1;
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut keys)))
                .projection_expression("transport_unit_id, predicted_at, source_version, written_by")
                .build()
                .map_err(|e| self.error("BatchGetItem", e.to_string()))?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| self.failed("BatchGetItem", e))?;
            for item in out.responses().and_then(|r| r.get(&self.table)).into_iter().flatten() {
                let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                let v = item.get("source_version").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok());
                let by = item.get("written_by").and_then(|v| v.as_s().ok()).cloned();
                if let Some(v) = v {
                    found.push(((s("transport_unit_id"), s("predicted_at")), (v, by)));
                }
            }
            keys =
                out.unprocessed_keys().and_then(|u| u.get(&self.table)).map(|k| k.keys().to_vec()).unwrap_or_default();
        }
        Ok(found)
    }
}

/// How a read sees the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Eventually consistent: half the read units; may miss a write of the last second.
    #[default]
    Eventual,
    /// Strongly consistent.
    Strong,
}

/// One page of a range read, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The predictions, newest first.
    pub items: Vec<Prediction>,
    /// Where the next page starts (exclusive): the `predicted_at` of the last item, when more may follow.
    pub next_after: Option<String>,
}

/// The reads of the predictions table that predictions-api serves: one unit's newest prediction, the one in force
/// at a time, and a range newest first. Only the attributes of [`Prediction`] are fetched (`expires_at` among
/// them), and items past their `expires_at` that DynamoDB's TTL has not deleted yet are not returned.
#[derive(Debug, Clone)]
pub struct PredictionReader {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl PredictionReader {
    /// A reader of `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    /// A Query of one unit, newest first, with the projection of [`ATTRIBUTES`] (`#a0`…).
    fn query(
        &self,
        unit: &str,
        consistency: Consistency,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .scan_index_forward(false)
            .consistent_read(consistency == Consistency::Strong)
            .projection_expression((0..ATTRIBUTES.len()).map(|i| format!("#a{i}")).collect::<Vec<_>>().join(", "))
            .expression_attribute_values(":u", AttributeValue::S(unit.to_owned()));
        for (i, a) in ATTRIBUTES.iter().enumerate() {
            q = q.expression_attribute_names(format!("#a{i}"), *a);
        }
        q
    }

    async fn run(
        &self,
        query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        now_s: i64,
    ) -> Result<(Vec<Prediction>, bool, bool), PredictionsError> {
        let out = query.send().await.map_err(|e| PredictionsError::failed(&self.table, "Query", e))?;
        let mut items = Vec::with_capacity(out.items().len());
        let mut expired = false;
        for item in out.items() {
            let p = Prediction::from_item(item)
                .map_err(|e| PredictionsError::new(&self.table, "Query", format!("a stored item: {e}")))?;
            if p.expires_at <= now_s {
                // Older items expire no later than this one: the history ends here.
                expired = true;
                break;
            }
            items.push(p);
        }
        Ok((items, out.last_evaluated_key().is_some(), expired))
    }

    /// The newest prediction of `unit` whose `predicted_at` is at most `at` (a [`predicted_at_key`]), or the
    /// newest of all without `at`; `None` when there is none that has not expired at `now_s`.
    pub async fn latest(
        &self,
        unit: &str,
        at: Option<&str>,
        consistency: Consistency,
        now_s: i64,
    ) -> Result<Option<Prediction>, PredictionsError> {
        let q = self.query(unit, consistency).limit(1);
        let q = match at {
            Some(at) => q
                .key_condition_expression("#a0 = :u AND #a1 <= :at")
                .expression_attribute_values(":at", AttributeValue::S(at.to_owned())),
            None => q.key_condition_expression("#a0 = :u"),
        };
        Ok(self.run(q, now_s).await?.0.into_iter().next())
    }

    /// Up to `limit` predictions of `unit` with `from <= predicted_at <= to`, newest first, starting after
    /// `after` (exclusive) when given. Asks for one item more than `limit` to know whether more follow, so the
    /// last page never ends in an empty one.
    pub async fn range(
        &self,
        unit: &str,
        (from, to): (&str, &str),
        limit: u16,
        after: Option<&str>,
        consistency: Consistency,
        now_s: i64,
    ) -> Result<Page, PredictionsError> {
        let limit = usize::from(limit.max(1));
        let mut q = self
            .query(unit, consistency)
            .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
            .key_condition_expression("#a0 = :u AND #a1 BETWEEN :from AND :to")
            .expression_attribute_values(":from", AttributeValue::S(from.to_owned()))
            .expression_attribute_values(":to", AttributeValue::S(to.to_owned()));
        if let Some(after) = after {
            q = q
                .exclusive_start_key("transport_unit_id", AttributeValue::S(unit.to_owned()))
                .exclusive_start_key("predicted_at", AttributeValue::S(after.to_owned()));
        }
        let (mut items, truncated, expired) = self.run(q, now_s).await?;
        // More follow when DynamoDB held back the extra item, or stopped at its 1 MB page size.
        let more = !expired && (items.len() > limit || truncated);
        items.truncate(limit);
        let next_after = more.then(|| items.last().map(|p| p.predicted_at.clone())).flatten();
        Ok(Page { items, next_after })
    }
}
