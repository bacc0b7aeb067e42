//! `fleetlake-router`: on one machine, what Lambda's event source mappings and S3's direct invocations do in AWS,
//! driven by the same definition the template is checked against (`infra/local/stack.json`).
//!
//! - **MSK**: each MSK event file of `--msk-dir` (in name order) goes to the function mapped to the topics
//!   (msk-lander), retried with backoff until it succeeds, as the MSK mapping retries a batch.
//! - **SQS mappings** (`sqs_trigger`): the function's queue is polled; up to `--batch-size` messages gathered for
//!   at most `--batching-window-ms` become one SQS event. On an answer, the messages not named in
//!   `batchItemFailures` are deleted; failed ones (all of them, if the invocation failed) become visible again
//!   after a backoff (1, 2, 4 … 20 s by receive count) and go to the dead-letter queue after `maxReceiveCount`
//!   receives (the queue's redrive policy).
//! - **S3 direct triggers** (`s3_trigger`): the local stack routes those notifications to a queue of their own
//!   (`LOCAL_QUEUE_<function>`); each notification is one asynchronous invocation, retried twice with backoff and
//!   then sent to the function's failure queue (`async_failure_queue`), as Lambda does for S3.
//!
//! A function with `enabled_by` in stack.json is started only when the stack's settings hold that value.
//!
//! With `--binaries`, a function whose `FUNCTION_CREDENTIALS_<logical id>` is in the stack's settings (`stack.py up
//! --enforce-iam`) runs with those credentials: an IAM identity holding exactly its template policy.
//!
//! Invocations go through the Lambda runtime protocol: either the Invoke API of a runtime emulator
//! (`--invoke-url`, e.g. `cargo lambda watch`), or a runtime API this tool serves to each function binary of
//! `--binaries DIR` (the test harness). Nothing calls a handler directly.
//!
//! With `--record FILE` every event handed to a function is appended to FILE; `--replay FILE` first sends each
//! recorded event once more (at-least-once delivery, replayed), then routes as usual. The router stops when the
//! pipeline has been idle (no MSK batch left, nothing in flight, every polled queue empty) for `--idle-seconds`,
//! and prints a JSON report.
//!
//! `--invoke FUNCTION --event FILE` routes nothing: it hands the event once to that function (its binary name) and
//! prints `{"function", "answer"}` or `{"function", "error"}`: `cargo lambda invoke` for the test harness.
//!
//! `--settle-after N` hands the first N MSK batches, waits until the pipeline is idle, then hands the rest: what
//! they hold is committed (and predicted) on its own, as when batches arrive in real time, instead of being gathered
//! with the next hours' into one SQS batch (the e2e test and `make demo` settle the day's first hour, so the day's
//! start has a prediction of its own).
//!
//! For a run at scale (`infra/bench/scale.py`): `--mapping FUNCTION=BATCH_SIZE:WINDOW_MS` sets one SQS mapping's
//! batch size and batching window (the deployed ones, scaled); `--time-scale S` hands each MSK batch at the time of
//! its first record, S times faster than the records' own clock (1: as it happened); `--count-requests` puts a
//! proxy between the functions and the stack's endpoint and reports what they asked, by service and operation. The
//! report then holds each function's durations (p50, p99, max), peak RSS, CPU time and the sums of its metrics, and
//! when each MSK batch was handed over.
//!
//! `--serve-http PORT` routes nothing either: it serves the Lambda Function URLs of the functions that have one
//! (`function_url` in stack.json) at `http://127.0.0.1:PORT/lambda-url/<function>/<path>` — the address
//! `cargo lambda watch` uses — turning each request into the Function URL event (payload 2.0) and the function's
//! answer back into the response, until it is stopped. `--serve-address` changes the address (default 127.0.0.1).

// A test and benchmark tool, not Lambda code: a failed setup stops it with its reason.
#![allow(clippy::expect_used, clippy::panic, clippy::string_slice)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool that reports on stdout

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use fleetlake_testkit::{http, LambdaHarness};
use serde_json::{json, Value};

type Fallible<T> = Result<T, String>;

#[derive(Debug)]
struct Args {
    stack: PathBuf,
    stack_env: PathBuf,
    msk_dir: Option<PathBuf>,
    invoke_url: Option<String>,
    binaries: Option<PathBuf>,
    batch_size: usize,
    window: Duration,
    idle: Duration,
    timeout: Duration,
    record: Option<PathBuf>,
    replay: Option<PathBuf>,
    invoke: Option<String>,
    event: Option<PathBuf>,
    serve_http: Option<u16>,
    serve_address: String,
    /// Per function binary: (batch size, batching window).
    mappings: HashMap<String, (usize, Duration)>,
    time_scale: Option<f64>,
    settle_after: usize,
    count_requests: bool,
}

fn args() -> Fallible<Args> {
    let mut a = Args {
        stack: PathBuf::from("infra/local/stack.json"),
        stack_env: PathBuf::from(".local/stack.env"),
        msk_dir: None,
        invoke_url: None,
        binaries: None,
        batch_size: 100,
        window: Duration::from_millis(1000),
        idle: Duration::from_secs(3),
        timeout: Duration::from_secs(900),
        record: None,
        replay: None,
        invoke: None,
        event: None,
        serve_http: None,
        serve_address: "127.0.0.1".into(),
        mappings: HashMap::new(),
        time_scale: None,
        settle_after: 0,
        count_requests: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let n = || v.parse::<u64>().map_err(|_| format!("{flag} {v}: not a number"));
        match flag.as_str() {
            "--stack" => a.stack = v.into(),
            "--stack-env" => a.stack_env = v.into(),
            "--msk-dir" => a.msk_dir = Some(v.into()),
            "--invoke-url" => a.invoke_url = Some(v.trim_end_matches('/').to_owned()),
            "--binaries" => a.binaries = Some(v.into()),
            "--batch-size" => a.batch_size = n()?.clamp(1, 10_000) as usize,
            "--batching-window-ms" => a.window = Duration::from_millis(n()?),
            "--idle-seconds" => a.idle = Duration::from_secs(n()?),
            "--timeout-seconds" => a.timeout = Duration::from_secs(n()?),
            "--record" => a.record = Some(v.into()),
            "--replay" => a.replay = Some(v.into()),
            "--invoke" => a.invoke = Some(v),
            "--event" => a.event = Some(v.into()),
            "--serve-http" => a.serve_http = Some(u16::try_from(n()?).map_err(|_| format!("{flag} {v}: not a port"))?),
            "--serve-address" => a.serve_address = v,
            "--mapping" => {
                let bad = || format!("{flag} {v}: FUNCTION=BATCH_SIZE:WINDOW_MS");
                let (name, rest) = v.split_once('=').ok_or_else(bad)?;
                let (size, ms) = rest.split_once(':').ok_or_else(bad)?;
                let size = size.parse::<usize>().map_err(|_| bad())?.clamp(1, 10_000);
                let ms = ms.parse::<u64>().map_err(|_| bad())?;
                a.mappings.insert(name.to_owned(), (size, Duration::from_millis(ms)));
            }
            "--time-scale" => {
                a.time_scale =
                    Some(v.parse::<f64>().ok().filter(|x| *x > 0.0).ok_or(format!("{flag} {v}: a positive number"))?)
            }
            "--settle-after" => a.settle_after = n()? as usize,
            "--count-requests" => {
                a.count_requests = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("{flag} {v}: true or false")),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.invoke_url.is_some() == a.binaries.is_some() {
        return Err("give one of --invoke-url URL (a runtime emulator) or --binaries DIR".into());
    }
    if a.invoke.is_some() != a.event.is_some() {
        return Err("--invoke FUNCTION and --event FILE go together".into());
    }
    Ok(a)
}

/// One function: how to invoke it, and what it did.
struct Function {
    binary: String,
    invoker: Invoker,
    stats: Mutex<FunctionStats>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct FunctionStats {
    invocations: u64,
    failed_invocations: u64,
    item_failures: u64,
    messages_deleted: u64,
    retried: u64,
    sent_to_failure_queue: u64,
    total_ms: u64,
    /// Each invocation's duration (to the function's answer), in microseconds; reported as percentiles.
    #[serde(skip)]
    durations_us: Vec<u64>,
    /// Sums of the numeric metrics the invocations printed (EMF), with `--binaries`.
    metrics: BTreeMap<String, f64>,
}

impl FunctionStats {
    /// The report's figures of the durations: p50, p99, max and the sum, in milliseconds.
    fn durations(&self) -> Value {
        let mut d = self.durations_us.clone();
        d.sort_unstable();
        let at = |q: f64| d.get(((d.len() as f64 - 1.0) * q).round() as usize).map(|us| *us as f64 / 1000.0);
        json!({"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0),
               "sum_ms": d.iter().sum::<u64>() as f64 / 1000.0})
    }
}

enum Invoker {
    /// The Lambda Invoke API of a runtime emulator (`cargo lambda watch`).
    Http { client: reqwest::Client, url: String },
    /// A runtime API served to the function binary.
    Harness(Box<tokio::sync::Mutex<LambdaHarness>>),
}

impl Function {
    async fn invoke(&self, event: &Value) -> Result<Value, Value> {
        let started = Instant::now();
        let outcome = match &self.invoker {
            Invoker::Http { client, url } => {
                let endpoint = format!("{url}/2015-03-31/functions/{}/invocations", self.binary);
                match client.post(&endpoint).json(event).send().await {
                    Err(e) => Err(json!({"errorType": "router.InvokeFailed", "errorMessage": e.to_string()})),
                    Ok(resp) => {
                        let failed = !resp.status().is_success() || resp.headers().contains_key("x-amz-function-error");
                        let body: Value = resp.json().await.unwrap_or(Value::Null);
                        if failed || body.get("errorType").is_some() {
                            Err(body)
                        } else {
                            Ok(body)
                        }
                    }
                }
            }
            Invoker::Harness(h) => {
                let out = h.lock().await.invoke(event).await;
                let mut s = self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                s.durations_us.push(out.duration.as_micros() as u64);
                // The metrics the EMF line declares (not its properties, such as a table version).
                let line = out.metrics().unwrap_or(Value::Null);
                let declared = line["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().cloned().unwrap_or_default();
                for name in declared.iter().filter_map(|m| m["Name"].as_str()) {
                    if let Some(n) = line[name].as_f64() {
                        *s.metrics.entry(name.to_owned()).or_insert(0.0) += n;
                    }
                }
                out.outcome
            }
        };
        let mut s = self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(self.invoker, Invoker::Http { .. }) {
            s.durations_us.push(started.elapsed().as_micros() as u64);
        }
        s.invocations += 1;
        s.total_ms += started.elapsed().as_millis() as u64;
        if outcome.is_err() {
            s.failed_invocations += 1;
        }
        outcome
    }

    fn count(&self, f: impl FnOnce(&mut FunctionStats)) {
        f(&mut self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

/// State shared by the feeders and pollers.
struct Router {
    sqs: aws_sdk_sqs::Client,
    in_flight: AtomicI64,
    stopping: AtomicBool,
    record: Option<Mutex<std::fs::File>>,
    batch_size: usize,
    window: Duration,
    mappings: HashMap<String, (usize, Duration)>,
    time_scale: Option<f64>,
    /// Each MSK batch handed over: file name, when (ms since the epoch), and when it was done.
    msk_log: Mutex<Vec<Value>>,
}

impl Router {
    /// The batch size and batching window of `function`'s SQS mapping.
    fn mapping(&self, function: &str) -> (usize, Duration) {
        self.mappings.get(function).copied().unwrap_or((self.batch_size, self.window))
    }

    fn record(&self, function: &str, kind: &str, event: &Value) {
        if let Some(f) = &self.record {
            let line = json!({"function": function, "kind": kind, "event": event});
            let mut f = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = writeln!(f, "{line}");
        }
    }
}

/// In-flight guard: the router is not idle while one lives.
struct Busy<'a>(&'a AtomicI64);
impl<'a> Busy<'a> {
    fn new(n: &'a AtomicI64) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}
impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn backoff(receive_count: u32) -> i32 {
    1i32 << receive_count.saturating_sub(1).min(4) // 1, 2, 4, 8, 16 s
}

fn read_env_file(path: &Path) -> Fallible<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e} (is the local stack up?)", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

async fn queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Fallible<(String, String)> {
    let url = sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| format!("queue {name}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?
        .queue_url
        .unwrap_or_default();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| format!("queue {name}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
    let arn = attrs.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).cloned().unwrap_or_default();
    Ok((url, arn))
}

/// Messages waiting or in flight on a queue.
async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await;
    match out {
        Ok(o) => o.attributes().map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum()).unwrap_or(0),
        Err(_) => u64::MAX, // not known: not idle
    }
}

/// The Lambda SQS event record of a message.
fn sqs_record(m: &aws_sdk_sqs::types::Message, arn: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = m
        .attributes()
        .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), Value::from(v.clone()))).collect())
        .unwrap_or_default();
    json!({"messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body().unwrap_or_default(),
           "attributes": attributes, "messageAttributes": {}, "md5OfBody": m.md5_of_body(),
           "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": "us-east-1"})
}

fn receive_count(m: &aws_sdk_sqs::types::Message) -> u32 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

async fn receive(r: &Router, url: &str, max: usize, wait: i32) -> Vec<aws_sdk_sqs::types::Message> {
    let out = r
        .sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(max.clamp(1, 10) as i32)
        .wait_time_seconds(wait)
        .visibility_timeout(300)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await;
    match out {
        Ok(o) => o.messages.unwrap_or_default(),
        Err(e) => {
            eprintln!("router: receive from {url}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e));
            tokio::time::sleep(Duration::from_secs(1)).await;
            Vec::new()
        }
    }
}

async fn settle(r: &Router, f: &Function, url: &str, m: &aws_sdk_sqs::types::Message, ok: bool) {
    let Some(handle) = m.receipt_handle() else { return };
    if ok {
        let _ = r.sqs.delete_message().queue_url(url).receipt_handle(handle).send().await;
        f.count(|s| s.messages_deleted += 1);
    } else {
        let wait = backoff(receive_count(m));
        let _ = r
            .sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(handle)
            .visibility_timeout(wait)
            .send()
            .await;
        f.count(|s| s.retried += 1);
    }
}

/// An SQS event source mapping.
async fn sqs_mapping(r: Arc<Router>, f: Arc<Function>, url: String, arn: String) {
    let (batch_size, window) = r.mapping(&f.binary);
    while !r.stopping.load(Ordering::SeqCst) {
        let mut batch = receive(&r, &url, batch_size, 1).await;
        if batch.is_empty() {
            continue;
        }
        let _busy = Busy::new(&r.in_flight);
        let started = Instant::now();
        while batch.len() < batch_size && started.elapsed() < window {
            let more = receive(&r, &url, batch_size - batch.len(), 0).await;
            if more.is_empty() {
                tokio::time::sleep(Duration::from_millis(window.as_millis().clamp(1, 100) as u64)).await;
            }
            batch.extend(more);
        }
        let event = json!({"Records": batch.iter().map(|m| sqs_record(m, &arn)).collect::<Vec<_>>()});
        r.record(&f.binary, "sqs", &event);
        match f.invoke(&event).await {
            Ok(answer) => {
                let failed: Vec<&str> = answer
                    .get("batchItemFailures")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|i| i.get("itemIdentifier").and_then(Value::as_str)).collect())
                    .unwrap_or_default();
                f.count(|s| s.item_failures += failed.len() as u64);
                for m in &batch {
                    settle(&r, &f, &url, m, !failed.contains(&m.message_id().unwrap_or_default())).await;
                }
            }
            Err(error) => {
                eprintln!("router: {} failed: {error}", f.binary);
                for m in &batch {
                    settle(&r, &f, &url, m, false).await;
                }
            }
        }
    }
}

/// S3's asynchronous invocation of a function, one notification at a time: two retries, then the failure queue.
async fn s3_direct(r: Arc<Router>, f: Arc<Function>, url: String, failure_queue: Option<String>) {
    while !r.stopping.load(Ordering::SeqCst) {
        let batch = receive(&r, &url, 10, 1).await;
        for m in batch {
            let _busy = Busy::new(&r.in_flight);
            let Ok(event) = serde_json::from_str::<Value>(m.body().unwrap_or_default()) else {
                settle(&r, &f, &url, &m, true).await; // not a notification
                continue;
            };
            if event.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
                settle(&r, &f, &url, &m, true).await; // S3 checks the destination; Lambda is never invoked with it
                continue;
            }
            r.record(&f.binary, "s3", &event);
            match f.invoke(&event).await {
                Ok(_) => settle(&r, &f, &url, &m, true).await,
                Err(error) if receive_count(&m) < 3 => {
                    eprintln!("router: {} failed (attempt {}): {error}", f.binary, receive_count(&m));
                    settle(&r, &f, &url, &m, false).await;
                }
                Err(error) => {
                    if let Some(q) = &failure_queue {
                        let record = json!({"requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
                                            "requestPayload": event, "responsePayload": error});
                        let _ = r.sqs.send_message().queue_url(q).message_body(record.to_string()).send().await;
                        f.count(|s| s.sent_to_failure_queue += 1);
                    }
                    settle(&r, &f, &url, &m, true).await;
                }
            }
        }
    }
}

/// Pausing the MSK mapping once (`--settle-after`): the feeder waits in `resume` after `after` batches, with
/// `paused` set and its batches counted as done, until the router has seen the pipeline idle. One feeder: a stack
/// has one function with an MSK trigger (msk-lander).
struct Settle {
    after: usize,
    paused: AtomicBool,
    resume: tokio::sync::Notify,
}

/// The MSK mapping: each batch until it succeeds (backoff up to 16 s, 10 attempts at most here).
async fn msk_feeder(r: Arc<Router>, f: Arc<Function>, dir: PathBuf, done: Arc<AtomicBool>, settle: Arc<Settle>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect()
        })
        .unwrap_or_default();
    files.sort();
    let (mut started, mut first_record) = (Instant::now(), None);
    for (n, path) in files.into_iter().enumerate() {
        if n > 0 && n == settle.after {
            settle.paused.store(true, Ordering::SeqCst);
            done.store(true, Ordering::SeqCst);
            let paused = Instant::now();
            settle.resume.notified().await;
            started += paused.elapsed(); // `--time-scale`: the pause is not the records' time
        }
        let Ok(event) = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
        else {
            eprintln!("router: {} is not an MSK event; skipped", path.display());
            continue;
        };
        if let (Some(scale), Some(at)) = (r.time_scale, earliest_record_ms(&event)) {
            // As the records arrived, `scale` times faster.
            let since = (at - *first_record.get_or_insert(at)).max(0) as f64 / scale;
            let due = started + Duration::from_secs_f64(since / 1000.0);
            tokio::time::sleep_until(due.into()).await;
        }
        let _busy = Busy::new(&r.in_flight);
        let handed = now_ms();
        r.record(&f.binary, "msk", &event);
        for attempt in 1..=10u32 {
            match f.invoke(&event).await {
                Ok(_) => {
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    r.msk_log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(json!({"file": name, "handed_ms": handed, "done_ms": now_ms(), "attempts": attempt}));
                    break;
                }
                Err(error) => {
                    eprintln!("router: {} failed on {} (attempt {attempt}): {error}", f.binary, path.display());
                    f.count(|s| s.retried += 1);
                    tokio::time::sleep(Duration::from_secs(u64::from(backoff(attempt).unsigned_abs()))).await;
                }
            }
        }
    }
    done.store(true, Ordering::SeqCst);
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The earliest record timestamp (ms) of an MSK event.
fn earliest_record_ms(event: &Value) -> Option<i64> {
    event["records"]
        .as_object()?
        .values()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|r| r["timestamp"].as_i64())
        .min()
}

async fn run() -> Fallible<Value> {
    let a = args()?;
    let stack: Value =
        serde_json::from_slice(&std::fs::read(&a.stack).map_err(|e| format!("{}: {e}", a.stack.display()))?)
            .map_err(|e| format!("{}: {e}", a.stack.display()))?;
    let env = read_env_file(&a.stack_env)?;
    let var = |k: &str| env.get(k).cloned().ok_or(format!("{} has no {k}", a.stack_env.display()));
    let credentials = aws_sdk_sqs::config::Credentials::new(
        var("AWS_ACCESS_KEY_ID")?,
        var("AWS_SECRET_ACCESS_KEY")?,
        None,
        None,
        "stack.env",
    );
    let sdk = aws_sdk_sqs::config::Builder::from(&fleetlake_aws::sdk::load_sdk_config().await)
        .endpoint_url(var("AWS_ENDPOINT_URL")?)
        .region(aws_sdk_sqs::config::Region::new(env.get("AWS_REGION").cloned().unwrap_or("us-east-1".into())))
        .credentials_provider(credentials)
        .build();
    let sqs = aws_sdk_sqs::Client::from_conf(sdk);
    let record = match &a.record {
        Some(p) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => None,
    };
    let router = Arc::new(Router {
        sqs: sqs.clone(),
        in_flight: AtomicI64::new(0),
        stopping: AtomicBool::new(false),
        record,
        batch_size: a.batch_size,
        window: a.window,
        mappings: a.mappings.clone(),
        time_scale: a.time_scale,
        msk_log: Mutex::default(),
    });
    // What the functions ask of the stack's endpoint, counted on the way.
    if a.count_requests && a.binaries.is_none() {
        return Err("--count-requests needs --binaries (the functions' endpoints are set here)".into());
    }
    // Per function, what it asked of AWS: each endpoint it is given (the stack's, and DynamoDB's own when the stack
    // names one) gets a counting proxy of its own.
    let mut counted: BTreeMap<String, Vec<(&str, String, fleetlake_testkit::RequestCounts)>> = BTreeMap::new();

    // The functions, each with its invoker.
    let mut functions: HashMap<String, Arc<Function>> = HashMap::new();
    let empty = Vec::new();
    let defs = stack["functions"].as_array().unwrap_or(&empty);
    for def in defs {
        let binary = def["binary"].as_str().unwrap_or_default().to_owned();
        if a.invoke.as_ref().is_some_and(|name| *name != binary) {
            continue; // one event to one function: the others need not start
        }
        if a.serve_http.is_some() && def.get("function_url").is_none() {
            continue; // only the functions with a URL are served
        }
        if let Some(setting) = def["enabled_by"].as_str().filter(|s| !env.contains_key(*s)) {
            if a.invoke.is_some() {
                return Err(format!("{binary} is not part of this stack: its settings have no {setting}"));
            }
            continue; // not part of this stack (pg-poller without `stack.py up --postgres`)
        }
        let invoker = match (&a.invoke_url, &a.binaries) {
            (Some(url), _) => Invoker::Http { client: reqwest::Client::new(), url: url.clone() },
            (None, Some(dir)) => {
                // The stack's settings, without the other functions' identities.
                let mut vars: Vec<(String, String)> = env
                    .iter()
                    .filter(|(k, _)| !k.starts_with("FUNCTION_CREDENTIALS_"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, v) in def["environment"].as_object().into_iter().flatten() {
                    vars.push((k.clone(), v.as_str().unwrap_or_default().to_owned()));
                }
                if a.count_requests {
                    for name in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"] {
                        if let Some(target) = env.get(name) {
                            let (endpoint, counts) = fleetlake_testkit::counting_proxy(target.clone()).await;
                            vars.retain(|(k, _)| k != name);
                            vars.push((name.to_owned(), endpoint.clone()));
                            counted.entry(binary.clone()).or_default().push((name, endpoint, counts));
                        }
                    }
                }
                vars.push((
                    "AWS_LAMBDA_LOG_LEVEL".into(),
                    std::env::var("FUNCTION_LOG_LEVEL").unwrap_or("warn".into()),
                ));
                // `stack.py up --enforce-iam`: the function's own IAM identity (exactly its template policy).
                let logical = def["logical_id"].as_str().unwrap_or_default();
                if let Some((key, secret)) =
                    env.get(&format!("FUNCTION_CREDENTIALS_{logical}")).and_then(|c| c.split_once(':'))
                {
                    vars.push(("AWS_ACCESS_KEY_ID".into(), key.to_owned()));
                    vars.push(("AWS_SECRET_ACCESS_KEY".into(), secret.to_owned()));
                }
                let path = dir.join(&binary);
                if !path.exists() {
                    return Err(format!("{} does not exist (build the functions first)", path.display()));
                }
                Invoker::Harness(Box::new(tokio::sync::Mutex::new(LambdaHarness::start(&path, &binary, &vars).await)))
            }
            (None, None) => unreachable!("checked in args()"),
        };
        functions.insert(binary.clone(), Arc::new(Function { binary, invoker, stats: Mutex::default() }));
    }

    // One event to one function, nothing routed.
    if let (Some(name), Some(path)) = (&a.invoke, &a.event) {
        let f = functions.get(name).ok_or(format!("no function {name} in {}", a.stack.display()))?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let event: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(match f.invoke(&event).await {
            Ok(answer) => json!({"idle": true, "function": name, "answer": answer}),
            Err(error) => json!({"idle": true, "function": name, "error": error}),
        });
    }

    if let Some(port) = a.serve_http {
        return serve_http(&a.serve_address, port, functions).await;
    }

    // Replayed events first, each once, in their recorded order.
    let mut replayed = 0u64;
    if let Some(path) = &a.replay {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let rec: Value = serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
            let Some(f) = rec["function"].as_str().and_then(|b| functions.get(b)) else { continue };
            if let Err(e) = f.invoke(&rec["event"]).await {
                eprintln!("router: replay to {} failed: {e}", f.binary);
            }
            replayed += 1;
        }
    }

    let mut watched = Vec::new(); // queue URLs that must drain before the pipeline is idle
    let mut tasks = Vec::new();
    let msk_done = Arc::new(AtomicBool::new(a.msk_dir.is_none()));
    let settle = Arc::new(Settle { after: a.settle_after, paused: AtomicBool::new(false), resume: Default::default() });
    for def in defs {
        let binary = def["binary"].as_str().unwrap_or_default();
        let logical = def["logical_id"].as_str().unwrap_or_default();
        let Some(f) = functions.get(binary).cloned() else {
            continue; // not part of this stack (`enabled_by`)
        };
        if let Some(q) = def["sqs_trigger"]["queue"].as_str() {
            let name = env.get(&format!("QUEUE_{q}")).ok_or(format!("stack.env has no QUEUE_{q}"))?;
            let (url, arn) = queue(&sqs, name).await?;
            watched.push(url.clone());
            tasks.push(tokio::spawn(sqs_mapping(router.clone(), f.clone(), url, arn)));
        }
        if def.get("s3_trigger").is_some() {
            let name =
                env.get(&format!("LOCAL_QUEUE_{logical}")).ok_or(format!("stack.env has no LOCAL_QUEUE_{logical}"))?;
            let (url, _) = queue(&sqs, name).await?;
            let failure = match def["async_failure_queue"].as_str() {
                Some(q) => Some(
                    queue(&sqs, env.get(&format!("QUEUE_{q}")).ok_or(format!("stack.env has no QUEUE_{q}"))?).await?.0,
                ),
                None => None,
            };
            watched.push(url.clone());
            tasks.push(tokio::spawn(s3_direct(router.clone(), f.clone(), url, failure)));
        }
        if def["msk_trigger"].as_bool() == Some(true) {
            if let Some(dir) = &a.msk_dir {
                tasks.push(tokio::spawn(msk_feeder(
                    router.clone(),
                    f.clone(),
                    dir.clone(),
                    msk_done.clone(),
                    settle.clone(),
                )));
            }
        }
    }

    // Until idle (or the timeout).
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let timed_out = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let mut counts: Vec<(String, u64)> = functions
                .iter()
                .map(|(n, f)| {
                    (n.clone(), f.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).invocations)
                })
                .collect();
            counts.sort();
            let text: Vec<String> = counts.iter().map(|(n, c)| format!("{n} {c}")).collect();
            eprintln!("router: {:>4.0} s, invocations: {}", started.elapsed().as_secs_f64(), text.join(", "));
        }
        let mut idle = msk_done.load(Ordering::SeqCst) && router.in_flight.load(Ordering::SeqCst) == 0;
        if idle {
            for url in &watched {
                if depth(&sqs, url).await > 0 {
                    idle = false;
                    break;
                }
            }
        }
        quiet_since = if idle { quiet_since.or(Some(Instant::now())) } else { None };
        if quiet_since.is_some_and(|q| q.elapsed() >= a.idle) {
            if !settle.paused.swap(false, Ordering::SeqCst) {
                break false;
            }
            // The first batches have settled: the rest of the MSK batches go on.
            msk_done.store(false, Ordering::SeqCst);
            quiet_since = None;
            settle.resume.notify_one();
        }
        if started.elapsed() >= a.timeout {
            break true;
        }
    };
    router.stopping.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    let mut dead_letters = BTreeMap::new();
    for q in stack["queues"].as_array().unwrap_or(&empty) {
        if let Some(dl) = q["dead_letter"]["logical_id"].as_str() {
            if let Some(name) = env.get(&format!("QUEUE_{dl}")) {
                let (url, _) = queue(&sqs, name).await?;
                dead_letters.insert(name.clone(), depth(&sqs, &url).await);
            }
        }
    }
    let mut per_function = BTreeMap::new();
    for (name, f) in &functions {
        let stats = f.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut entry = serde_json::to_value(&stats).map_err(|e| e.to_string())?;
        entry["durations"] = stats.durations();
        if let Invoker::Harness(h) = &f.invoker {
            let h = h.lock().await;
            entry["peak_rss_bytes"] = json!(h.peak_rss_bytes());
            entry["cpu_seconds"] = json!(h.cpu_seconds());
            entry["log_bytes"] = json!(h.log_bytes());
        }
        per_function.insert(name.clone(), entry);
    }
    let msk = std::mem::take(&mut *router.msk_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let mut requests: Option<BTreeMap<String, BTreeMap<String, u64>>> = a.count_requests.then(BTreeMap::new);
    for (function, proxies) in &counted {
        let mine = requests.get_or_insert_default().entry(function.clone()).or_default();
        for (_, _, counts) in proxies {
            for (op, n) in counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
                *mine.entry(op.clone()).or_insert(0) += n;
            }
        }
    }
    Ok(json!({"idle": !timed_out, "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
              "replayed": replayed, "functions": per_function, "dead_letter_queues": dead_letters,
              "msk_batches": msk, "requests": requests}))
}

/// Serves `/lambda-url/<function>/<path>` as that function's Function URL until the process is stopped.
async fn serve_http(address: &str, port: u16, functions: HashMap<String, Arc<Function>>) -> Fallible<Value> {
    use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
    let functions = Arc::new(functions);
    let app = axum::Router::new().fallback(move |request: Request<axum::body::Body>| {
        let functions = functions.clone();
        async move {
            let reply = |status: StatusCode, text: String| {
                let mut r = Response::new(axum::body::Body::from(text));
                *r.status_mut() = status;
                r
            };
            let target = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let Some(rest) = target.strip_prefix("/lambda-url/") else {
                return reply(StatusCode::NOT_FOUND, "use /lambda-url/<function>/<path>\n".into());
            };
            let (name, path) = rest.find(['/', '?']).map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
            let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
            let Some(f) = functions.get(name) else {
                return reply(StatusCode::NOT_FOUND, format!("no function {name} with a URL\n"));
            };
            let headers: Vec<(String, String)> = request
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let event = http::http_event(http::Front::FunctionUrl, request.method().as_str(), &path, &pairs);
            match f.invoke(&event).await {
                Err(error) => reply(StatusCode::BAD_GATEWAY, format!("{error}\n")),
                Ok(answer) => match http::HttpAnswer::from_response(&answer) {
                    // A function URL answers a bare JSON value with 200 and that value.
                    None => reply(StatusCode::OK, answer.to_string()),
                    Some(h) => {
                        let mut r =
                            reply(StatusCode::from_u16(h.status).unwrap_or(StatusCode::BAD_GATEWAY), String::new());
                        *r.body_mut() = axum::body::Body::from(h.body);
                        for (k, v) in h.headers {
                            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                                r.headers_mut().append(k, v);
                            }
                        }
                        r
                    }
                },
            }
        }
    });
    let listener =
        tokio::net::TcpListener::bind((address, port)).await.map_err(|e| format!("{address}:{port}: {e}"))?;
    eprintln!("router: serving Function URLs at http://{address}:{port}/lambda-url/<function>/");
    axum::serve(listener, app).await.map_err(|e| e.to_string())?;
    Ok(json!({"idle": true}))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(report) => {
            println!("{report}");
            if report["idle"] == json!(true) {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("router: the pipeline did not become idle before --timeout-seconds");
                std::process::ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("router: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
