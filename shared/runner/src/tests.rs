//! The runner's policy, in process: handlers that succeed, fail either way, panic, run past the deadline, or are
//! never started; messages that name one object twice or nothing readable.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetlake_aws::s3::S3Store;
use fleetlake_core::config::Prefix;
use fleetlake_testkit::Moto;

use super::*;

/// Fails (or panics, or sleeps) according to the object's key: `ok/…`, `retry/…`, `bad/…`, `panic/…`, `slow/…`,
/// `skip/…` (not an input).
#[derive(Debug, Default)]
struct ByKey {
    calls: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TestError(&'static str, Fault);

impl Classify for TestError {
    fn fault(&self) -> Fault {
        self.1
    }
}

impl ObjectHandler for ByKey {
    type Error = TestError;

    fn group(&self, object: &ObjectRef) -> Option<String> {
        (!object.key.starts_with("skip/")).then(|| object.key.clone())
    }

    async fn process(
        &'static self,
        objects: Vec<ObjectRef>,
        invocation: Arc<Invocation>,
    ) -> Vec<Result<(), TestError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut out = Vec::new();
        for o in &objects {
            let kind = o.key.split('/').next().unwrap_or_default();
            out.push(match kind {
                "retry" => Err(TestError("S3 is down", Fault::Retryable)),
                "bad" => Err(TestError("not gzip", Fault::Permanent)),
                "panic" => panic!("a bug met an odd object"),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(())
                }
                _ => {
                    invocation.add("records", 2);
                    Ok(())
                }
            });
        }
        out
    }
}

fn handler() -> &'static ByKey {
    Box::leak(Box::default())
}

fn s3_record(bucket: &str, key: &str) -> Value {
    json!({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": "0a1b"}}})
}

/// An SQS event: one message per list of keys.
fn sqs(messages: &[(&str, &[&str])]) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|(id, keys)| {
            let body = json!({"Records": keys.iter().map(|k| s3_record("lake", k)).collect::<Vec<_>>()});
            json!({"eventSource": "aws:sqs", "messageId": id, "body": body.to_string()})
        })
        .collect();
    json!({"Records": records})
}

fn context(deadline_in: Option<Duration>) -> Context {
    let mut c = Context::default();
    c.request_id = "req-1".into();
    c.deadline = deadline_in.map_or(0, |d| (Utc::now().timestamp_millis() as u64) + d.as_millis() as u64);
    c
}

fn failed(reply: &Reply) -> BTreeSet<&str> {
    reply.failed_messages().into_iter().collect()
}

#[tokio::test]
async fn only_the_messages_naming_a_failed_object_fail() {
    // GIVEN five messages: good, retryable, panicking, permanent without a quarantine, and one naming a good
    // object and a retryable one
    let h = handler();
    let event = sqs(&[
        ("m-ok", &["ok/1"]),
        ("m-retry", &["retry/1"]),
        ("m-panic", &["panic/1"]),
        ("m-bad", &["bad/1"]),
        ("m-mixed", &["ok/2", "retry/1"]),
    ]);
    // WHEN they run
    let reply = Runner::new("test").concurrency(3).objects(&event, &context(None), h).await.unwrap();
    // THEN every message that named a failed object is retried, and only those; the panic was contained
    assert_eq!(failed(&reply), BTreeSet::from(["m-bad", "m-mixed", "m-panic", "m-retry"]));
    // retry/1 is named twice and processed once
    assert_eq!(h.calls.load(Ordering::SeqCst), 5);
    let Reply::Batch(batch) = &reply else { panic!("an SQS event gets a batch response") };
    let wire = serde_json::to_value(batch).unwrap();
    assert!(wire["batchItemFailures"].as_array().unwrap().iter().all(|f| f["itemIdentifier"].is_string()));
}

#[tokio::test]
async fn a_message_that_is_no_notification_fails_alone() {
    let h = handler();
    let mut event = sqs(&[("m-ok", &["ok/1"])]);
    let junk = json!({"eventSource": "aws:sqs", "messageId": "m-junk", "body": "{not json"});
    event["Records"].as_array_mut().unwrap().push(junk);
    let reply = Runner::new("test").objects(&event, &context(None), h).await.unwrap();
    assert_eq!(failed(&reply), BTreeSet::from(["m-junk"]));
}

#[tokio::test]
async fn objects_of_other_functions_are_acknowledged() {
    let h = handler();
    let event = sqs(&[("m-skip", &["skip/1"])]);
    let reply = Runner::new("test").objects(&event, &context(None), h).await.unwrap();
    assert!(failed(&reply).is_empty());
    assert_eq!(h.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_deadline_already_past_on_arrival_is_no_deadline() {
    // What `cargo lambda watch` sends: a value no real invocation has (in seconds, or in the past).
    let mut c = context(None);
    c.deadline = Utc::now().timestamp() as u64;
    let left = Invocation::new("test", &c).deadline().saturating_duration_since(std::time::Instant::now());
    assert!(left > Duration::from_secs(800), "{left:?}");
    let soon = Invocation::new("test", &context(Some(Duration::from_secs(3))));
    assert!(soon.deadline().saturating_duration_since(std::time::Instant::now()) <= Duration::from_secs(3));
}

#[tokio::test]
async fn a_group_past_the_deadline_is_cut_off_and_unstarted_ones_fail() {
    // GIVEN 4 s left, a 2 s margin, one group at a time: a slow object, then a good one
    let h = handler();
    let event = sqs(&[("m-slow", &["slow/1"]), ("m-late", &["zz-ok/1"])]);
    let started = Instant::now();
    let reply = Runner::new("test").objects(&event, &context(Some(Duration::from_secs(4))), h).await.unwrap();
    // THEN the slow one is cut off before the deadline and the next is never started: both are retried
    assert_eq!(failed(&reply), BTreeSet::from(["m-late", "m-slow"]));
    assert!(started.elapsed() < Duration::from_secs(4), "answered before the deadline");
    assert_eq!(h.calls.load(Ordering::SeqCst), 1, "the good object was not started");
}

#[tokio::test]
async fn direct_invocations_fail_with_the_worst_fault_and_succeed_with_counters() {
    let h = handler();
    let direct = |key: &str| json!({"Records": [s3_record("lake", key)]});
    let ok = Runner::new("test").objects(&direct("ok/1"), &context(None), h).await.unwrap();
    let Reply::Summary(summary) = ok else { panic!("direct invocations get a summary") };
    assert_eq!(summary["records"], json!(2));
    assert_eq!(summary["objects_done"], json!(1));
    let err = Runner::new("test").objects(&direct("retry/1"), &context(None), h).await.unwrap_err();
    assert_eq!(err.error_type, "fleetlake.Retryable");
    let err = Runner::new("test").objects(&json!({"nothing": 1}), &context(None), h).await.unwrap_err();
    assert_eq!(err.error_type, "fleetlake.Permanent");
}

#[tokio::test]
async fn permanent_failures_are_quarantined_by_reference_and_acknowledged() {
    // GIVEN a runner with a quarantine in moto's S3
    let moto = Moto::start().await;
    let bucket = moto.bucket("runner").await;
    let store = S3Store::new(moto.s3(), bucket.as_str());
    let prefix = Prefix::parse("QUARANTINE_PREFIX", "quarantine/").unwrap();
    let runner = Runner::new("test").quarantine(QuarantineWriter::new(store, prefix, "test"));
    let h = handler();
    // WHEN a message names an object that is not gzip
    let event = sqs(&[("m-bad", &["bad/dt=2026-11-24/x.ndjson.gz"]), ("m-ok", &["ok/1"])]);
    let reply = runner.objects(&event, &context(None), h).await.unwrap();
    // THEN it is acknowledged, and the quarantine names the object and the reason
    assert!(failed(&reply).is_empty());
    let keys = moto.keys(&bucket, "quarantine/").await;
    assert_eq!(keys, ["quarantine/test/dt=2026-11-24/x.0a1b.ndjson"]);
    let body = moto.get(&bucket, &keys[0]).await;
    let line: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(line["reason"], json!("object refused: not gzip"));
    assert_eq!(line["source"]["key"], json!("bad/dt=2026-11-24/x.ndjson.gz"));
    assert_eq!(line["raw"], Value::Null);
}

#[tokio::test]
async fn a_job_fails_with_its_fault_and_survives_a_panic() {
    let runner = Runner::new("test");
    let ok: Result<u32, Diagnostic> = runner.job(&context(None), |_| async { Ok::<_, TestError>(7) }).await;
    assert_eq!(ok.unwrap(), 7);
    let err = runner
        .job(&context(None), |_| async { Err::<u32, _>(TestError("no table", Fault::Permanent)) })
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "fleetlake.Permanent");
    let panicked = runner
        .job(&context(None), |_| async {
            if Utc::now().timestamp() > 0 {
                panic!("boom");
            }
            Ok::<u32, TestError>(0)
        })
        .await
        .unwrap_err();
    assert_eq!(panicked.error_type, "fleetlake.Retryable");
    assert!(panicked.error_message.contains("boom"));
}

#[test]
fn error_chains_keep_every_cause_once() {
    let io = std::io::Error::other("connection reset");
    #[derive(Debug, thiserror::Error)]
    #[error("GetObject failed")]
    struct Outer(#[source] std::io::Error);
    assert_eq!(error_chain(&Outer(io)), "GetObject failed: connection reset");
}
