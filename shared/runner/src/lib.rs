//! The invocation runner: one failure policy for every function, so a function's own code is only its per-object
//! (or per-job) work.
//!
//! **Object triggers** (S3 notifications delivered by SQS, SNS→SQS, directly by S3, or by EventBridge):
//! [`Runner::objects`] parses the event, groups the named objects (each object alone, or by the function's own
//! key, e.g. delta-writer's table), and runs each group on a task of its own, a few at a time. Then:
//! - a group that succeeds acknowledges its objects;
//! - a **permanent** failure of an object (the input is at fault: gone, not gzip) is quarantined by reference
//!   (`{reason: "object refused: …", stage, source: {bucket, key, etag}, raw: null}`) and acknowledged; without a quarantine writer it
//!   fails its messages instead, so nothing is dropped silently;
//! - a **retryable** failure (the environment failed), a panic, or a group cut off by the deadline fails the
//!   messages that named those objects, and only them: they come back as `batchItemFailures`;
//! - no group starts with less than the safety margin of the deadline left: the unstarted ones fail their
//!   messages, which Lambda retries, instead of the invocation timing out with all of them.
//!
//! For SQS the answer is the typed [`SqsBatchResponse`]. Direct and EventBridge invocations are asynchronous:
//! any failure left makes the invocation fail (Lambda retries it, then the on-failure destination has it).
//!
//! **Jobs** (a schedule, an MSK batch): [`Runner::job`] runs one unit of work on its own task; an error or a panic
//! fails the invocation with its [`Fault`] as the error type, so the trigger retries it. (On MSK, record-level
//! problems are quarantined by the function and never reach here.)
//!
//! Either way, the metrics line is emitted exactly once per invocation.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
use chrono::Utc;
use fleetlake_aws::quarantine::QuarantineWriter;
use fleetlake_aws::s3event::{parse_trigger, ObjectRef, Trigger};
use fleetlake_aws::telemetry::Metrics;
use fleetlake_core::fault::{Classify, Fault};
use fleetlake_core::lake::{key_date, quarantine_source_name};
use fleetlake_core::quarantine::QuarantineLine;
use futures::StreamExt;
use lambda_runtime::{Context, Diagnostic};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tracing::{error, info, warn, Instrument};

/// Deadline left when the runtime gives none (tests, local emulators).
const NO_DEADLINE: Duration = Duration::from_secs(900);

/// Time kept back at the end for answering: a running group still going then is cut off.
const ANSWER_TIME: Duration = Duration::from_millis(750);

/// One invocation as the per-object work sees it: its deadline and its metrics.
#[derive(Debug)]
pub struct Invocation {
    request_id: String,
    deadline: Instant,
    metrics: Mutex<Metrics>,
}

impl Invocation {
    /// An invocation of `stage` with the runtime's context (its deadline in epoch milliseconds; 0, or a time already
    /// past, means none).
    pub fn new(stage: &'static str, context: &Context) -> Self {
        let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or_default();
        let left = match context.deadline {
            0 => NO_DEADLINE,
            // A deadline already past when the invocation arrives is no deadline Lambda gives: an emulator's (some
            // send it in seconds). Running as if without one beats failing every object unstarted.
            d if d <= now_ms => {
                warn!(deadline = d, now_ms, "the invocation's deadline is already past; running without one");
                NO_DEADLINE
            }
            d => Duration::from_millis(d - now_ms),
        };
        let mut metrics = Metrics::new(stage);
        metrics.property("requestId", context.request_id.clone());
        Self { request_id: context.request_id.clone(), deadline: Instant::now() + left, metrics: Mutex::new(metrics) }
    }

    /// The runtime's request id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// When Lambda ends the invocation.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Adds `n` to the counter `name` of the invocation's metrics line.
    pub fn add(&self, name: &'static str, n: u64) {
        self.with_metrics(|m| m.add(name, n));
    }

    /// A property of the metrics line (a table version, a model version).
    pub fn property(&self, name: &str, value: impl Into<Value>) {
        let value = value.into();
        self.with_metrics(|m| m.property(name, value));
    }

    fn with_metrics(&self, f: impl FnOnce(&mut Metrics)) {
        // A poisoned lock only means a panic elsewhere while counting: the counts are still usable.
        let mut guard = self.metrics.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard);
    }

    fn counters(&self) -> Map<String, Value> {
        let guard = self.metrics.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.counters()
    }

    fn emit(&self) {
        self.with_metrics(|m| m.emit());
    }
}

/// A function's work on the objects a trigger names.
pub trait ObjectHandler: Send + Sync + 'static {
    /// The error of one object; whose fault it is decides between quarantine and retry.
    type Error: std::error::Error + Classify + Send + Sync + 'static;

    /// The group an object is processed in: objects of one group reach one [`ObjectHandler::process`] call
    /// (delta-writer: one table, one commit). `None`: not an input of this function; it is acknowledged and
    /// counted as ignored. The default puts every object in a group of its own.
    fn group(&self, object: &ObjectRef) -> Option<String> {
        Some(object.key.clone())
    }

    /// Called once before the invocation's groups run (e.g. to note a client's counters).
    fn begin(&'static self, _invocation: &Invocation) {}

    /// Called once after every group has ended, before the metrics line is written.
    fn end(&'static self, _invocation: &Invocation) {}

    /// Processes one group; answers one result per object, in the order given.
    fn process(
        &'static self,
        objects: Vec<ObjectRef>,
        invocation: Arc<Invocation>,
    ) -> impl Future<Output = Vec<Result<(), Self::Error>>> + Send + 'static;
}

/// What a function answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// SQS: the messages to retry.
    Batch(SqsBatchResponse),
    /// Any other trigger: the invocation's counters.
    Summary(Value),
}

impl Reply {
    /// The message ids to retry (empty for a summary).
    pub fn failed_messages(&self) -> Vec<&str> {
        match self {
            Reply::Batch(b) => b.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect(),
            Reply::Summary(_) => Vec::new(),
        }
    }
}

/// The runner of one function: its stage name, its quarantine, how many groups run at once, and the margin.
#[derive(Debug, Clone)]
pub struct Runner {
    stage: &'static str,
    quarantine: Option<QuarantineWriter>,
    concurrency: usize,
    margin: Duration,
}

/// The outcome of one object within an invocation.
#[derive(Debug, Clone)]
enum Verdict {
    Done,
    Quarantined,
    Failed { fault: Fault, message: String },
}

impl Runner {
    /// A runner for `stage`: groups one at a time, a 2 s margin, no quarantine.
    pub fn new(stage: &'static str) -> Self {
        Self { stage, quarantine: None, concurrency: 1, margin: Duration::from_secs(2) }
    }

    /// Permanent failures are quarantined by reference with this writer (and acknowledged).
    pub fn quarantine(mut self, writer: QuarantineWriter) -> Self {
        self.quarantine = Some(writer);
        self
    }

    /// Groups processed at once (each on a task of its own, so CPU work spreads over the cores).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// No group starts with less than this left before the deadline.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// The stage name in quarantine keys, logs and metrics.
    pub fn stage(&self) -> &'static str {
        self.stage
    }

    /// Runs the objects a notification event names through `handler` (see the module documentation).
    pub async fn objects<H: ObjectHandler>(
        &self,
        payload: &Value,
        context: &Context,
        handler: &'static H,
    ) -> Result<Reply, Diagnostic> {
        let invocation = Arc::new(Invocation::new(self.stage, context));
        handler.begin(&invocation);
        let result = self.objects_in(payload, handler, &invocation).await;
        handler.end(&invocation);
        invocation.emit();
        result
    }

    async fn objects_in<H: ObjectHandler>(
        &self,
        payload: &Value,
        handler: &'static H,
        invocation: &Arc<Invocation>,
    ) -> Result<Reply, Diagnostic> {
        let trigger = match parse_trigger(payload) {
            Ok(t) => t,
            Err(e) => {
                error!(error = %e, "event not understood");
                invocation.add("invocations_failed", 1);
                return Err(diagnostic(Fault::Permanent, e.to_string()));
            }
        };
        let (messages, batch) = match trigger {
            Trigger::Sqs(messages) => (messages.into_iter().map(|m| (m.message_id, m.objects)).collect(), true),
            Trigger::Direct(objects) | Trigger::EventBridge(objects) => (vec![(String::new(), Ok(objects))], false),
        };

        // Every object once, with the messages that named it; messages that name nothing readable fail.
        let mut named: BTreeMap<(String, String), (ObjectRef, Vec<String>)> = BTreeMap::new();
        let mut failed_messages: Vec<String> = Vec::new();
        for (message_id, objects) in messages {
            match objects {
                Ok(objects) => {
                    for obj in objects {
                        let id = (obj.bucket.clone(), obj.key.clone());
                        let entry = named.entry(id).or_insert_with(|| (obj, Vec::new()));
                        entry.1.push(message_id.clone());
                    }
                }
                Err(reason) => {
                    // Not a notification: retried until it reaches the dead-letter queue, never dropped.
                    error!(message_id = %message_id, reason, "message not understood");
                    failed_messages.push(message_id);
                }
            }
        }

        let mut groups: BTreeMap<String, Vec<ObjectRef>> = BTreeMap::new();
        for (obj, _) in named.values() {
            match handler.group(obj) {
                Some(g) => groups.entry(g).or_default().push(obj.clone()),
                None => {
                    info!(bucket = %obj.bucket, key = %obj.key, "not an input of this function; ignored");
                    invocation.add("objects_ignored", 1);
                }
            }
        }

        let verdicts = self.run_groups(groups, handler, invocation).await;

        let mut first_failure: Option<(Fault, String)> = None;
        for (obj, verdict) in &verdicts {
            match verdict {
                Verdict::Done => invocation.add("objects_done", 1),
                Verdict::Quarantined => invocation.add("objects_quarantined", 1),
                Verdict::Failed { fault, message } => {
                    invocation.add("objects_failed", 1);
                    warn!(key = %obj.key, error = %message, ?fault, "object failed; its messages are retried");
                    if let Some((_, ids)) = named.get(&(obj.bucket.clone(), obj.key.clone())) {
                        failed_messages.extend(ids.iter().cloned());
                    }
                    let worse = first_failure.as_ref().is_none_or(|(f, _)| *f == Fault::Permanent);
                    if worse {
                        first_failure = Some((*fault, message.clone()));
                    }
                }
            }
        }
        failed_messages.sort();
        failed_messages.dedup();
        invocation.add("messages_failed", failed_messages.len() as u64);

        if batch {
            let mut response = SqsBatchResponse::default();
            for id in failed_messages {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
            return Ok(Reply::Batch(response));
        }
        match first_failure {
            None => Ok(Reply::Summary(Value::Object(invocation.counters()))),
            Some((fault, message)) => {
                invocation.add("invocations_failed", 1);
                Err(diagnostic(fault, format!("{} object(s) failed; first: {message}", failed_messages.len().max(1))))
            }
        }
    }

    /// Runs the groups, `concurrency` at a time, each on its own task; every object gets a verdict.
    async fn run_groups<H: ObjectHandler>(
        &self,
        groups: BTreeMap<String, Vec<ObjectRef>>,
        handler: &'static H,
        invocation: &Arc<Invocation>,
    ) -> Vec<(ObjectRef, Verdict)> {
        let cutoff = invocation.deadline.checked_sub(ANSWER_TIME).unwrap_or(invocation.deadline);
        let results: Vec<Vec<(ObjectRef, Verdict)>> = futures::stream::iter(groups)
            .map(|(group, objects)| {
                let invocation = invocation.clone();
                async move {
                    let left = invocation.deadline.saturating_duration_since(Instant::now());
                    if left < self.margin {
                        warn!(group, left_ms = left.as_millis() as u64, "too close to the deadline; not started");
                        invocation.add("objects_not_started", objects.len() as u64);
                        let message = "not started: too close to the invocation's deadline".to_owned();
                        return failed_all(objects, Fault::Retryable, &message);
                    }
                    // In the invocation's span, so every log line of the work carries the request id.
                    let task = tokio::spawn(handler.process(objects.clone(), invocation.clone()).in_current_span());
                    let abort = task.abort_handle();
                    let results = match tokio::time::timeout_at(cutoff.into(), task).await {
                        Ok(Ok(results)) => results,
                        Ok(Err(join)) => {
                            let message = panic_message(join);
                            error!(group, error = %message, "processing panicked; only its messages fail");
                            invocation.add("panics", 1);
                            return failed_all(objects, Fault::Retryable, &message);
                        }
                        Err(_) => {
                            abort.abort();
                            error!(group, "cut off at the invocation's deadline");
                            return failed_all(objects, Fault::Retryable, "cut off at the invocation's deadline");
                        }
                    };
                    self.judge(objects, results).await
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        results.into_iter().flatten().collect()
    }

    /// Turns a group's results into verdicts: permanent failures are quarantined by reference when possible.
    async fn judge<E: std::error::Error + Classify + 'static>(
        &self,
        objects: Vec<ObjectRef>,
        results: Vec<Result<(), E>>,
    ) -> Vec<(ObjectRef, Verdict)> {
        let mut results = results.into_iter();
        let mut out = Vec::with_capacity(objects.len());
        for obj in objects {
            let verdict = match results.next() {
                None => {
                    Verdict::Failed { fault: Fault::Retryable, message: "the handler gave no result for it".into() }
                }
                Some(Ok(())) => Verdict::Done,
                Some(Err(e)) => match e.fault() {
                    Fault::Retryable => Verdict::Failed { fault: Fault::Retryable, message: error_chain(&e) },
                    Fault::Permanent => self.quarantine_reference(&obj, &error_chain(&e)).await,
                },
            };
            out.push((obj, verdict));
        }
        out
    }

    /// Quarantines an object by reference; a failed quarantine write fails the object (it is retried, not lost).
    async fn quarantine_reference(&self, obj: &ObjectRef, reason: &str) -> Verdict {
        let Some(writer) = &self.quarantine else {
            error!(key = %obj.key, reason, "object refused, and this function has no quarantine: its messages fail");
            return Verdict::Failed { fault: Fault::Permanent, message: reason.to_owned() };
        };
        let source = json!({"bucket": obj.bucket, "key": obj.key, "etag": obj.etag});
        let line = QuarantineLine::new(format!("object refused: {reason}"), self.stage, &source, None);
        let dt = key_date(&obj.key).unwrap_or_else(|| Utc::now().date_naive());
        let name = quarantine_source_name(&obj.key, obj.etag.as_deref());
        match writer.write(dt, &name, std::slice::from_ref(&line)).await {
            Ok(key) => {
                warn!(key = %obj.key, reason, quarantine = ?key, "object quarantined by reference");
                Verdict::Quarantined
            }
            Err(e) => {
                error!(key = %obj.key, error = %e, "quarantine write failed; the object is retried");
                Verdict::Failed { fault: Fault::Retryable, message: format!("quarantine write failed: {e}") }
            }
        }
    }

    /// Runs one unit of work (a schedule, an MSK batch) on its own task: an error or a panic fails the invocation
    /// with its fault as the error type; the metrics line is emitted once either way.
    pub async fn job<T, E, F, Fut>(&self, context: &Context, work: F) -> Result<T, Diagnostic>
    where
        T: Send + 'static,
        E: std::error::Error + Classify + Send + 'static,
        F: FnOnce(Arc<Invocation>) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let invocation = Arc::new(Invocation::new(self.stage, context));
        let outcome = tokio::spawn(work(invocation.clone()).in_current_span()).await;
        let result = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let message = error_chain(&e);
                error!(error = %message, fault = ?e.fault(), "invocation failed");
                Err(diagnostic(e.fault(), message))
            }
            Err(join) => {
                let message = panic_message(join);
                error!(error = %message, "invocation panicked");
                invocation.add("panics", 1);
                Err(diagnostic(Fault::Retryable, message))
            }
        };
        if result.is_err() {
            invocation.add("invocations_failed", 1);
        }
        invocation.emit();
        result
    }
}

fn failed_all(objects: Vec<ObjectRef>, fault: Fault, message: &str) -> Vec<(ObjectRef, Verdict)> {
    objects.into_iter().map(|o| (o, Verdict::Failed { fault, message: message.to_owned() })).collect()
}

fn panic_message(join: tokio::task::JoinError) -> String {
    if !join.is_panic() {
        return format!("task ended: {join}");
    }
    let payload = join.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    format!("panicked: {text}")
}

/// The error with its causes, `outer: inner: …` (each cause once, even where a message repeats its source's).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The answer Lambda records for a failed invocation: `fleetlake.Retryable` or `fleetlake.Permanent`.
pub fn diagnostic(fault: Fault, message: impl Into<String>) -> Diagnostic {
    Diagnostic { error_type: fault.error_type().to_owned(), error_message: message.into() }
}

#[cfg(test)]
mod tests;
