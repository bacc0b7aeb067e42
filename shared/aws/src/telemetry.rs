//! Telemetry: JSON logs through `tracing`, and one CloudWatch Embedded Metric Format line per invocation.

use std::io::Write;
use std::time::Instant;

use serde_json::{json, Map, Value};
use tracing_subscriber::EnvFilter;

/// CloudWatch namespace of every fleetlake metric.
pub const NAMESPACE: &str = "fleetlake";

/// Modules of deltalake and its kernel that log at ERROR what is routine here, each line off unless the level
/// names its module. deltalake's commit, which fleetlake runs with no retries of its own so that a writer
/// re-checks the new files and watermarks itself, logs every lost race ("exceeded maximum commit attempts") and
/// every conflict it stops on; the kernel logs every snapshot it could not build, among them a table not created
/// yet ("No files in log segment"), which a writer looks for before it creates it. The writer reports all of these
/// itself: a lost race at WARN, a failure as its invocation's error.
const ROUTINE_ERRORS: [&str; 2] = ["deltalake_core::kernel::transaction", "buoyant_kernel::snapshot::builder"];

/// Installs the JSON log subscriber (to stderr): one object per event with the fields of every enclosing span,
/// so the runtime's `requestId` (from its invocation span) appears on every line. The level comes from `AWS_LAMBDA_LOG_LEVEL`, then `RUST_LOG`,
/// default `info`. Safe to call more than once.
pub fn init_logging() {
    let level =
        std::env::var("AWS_LAMBDA_LOG_LEVEL").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".into());
    let quiet = |level: &str| {
        let off = ROUTINE_ERRORS.iter().filter(|m| !level.contains(*m)).map(|m| format!(",{m}=off"));
        format!("{level}{}", off.collect::<String>())
    };
    let filter = EnvFilter::try_new(quiet(&level.to_lowercase())).unwrap_or_else(|_| EnvFilter::new(quiet("info")));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Counters of one invocation, emitted as one EMF line.
#[derive(Debug)]
pub struct Metrics {
    function: &'static str,
    started: Instant,
    counts: Vec<(&'static str, u64)>,
    properties: Map<String, Value>,
}

impl Metrics {
    /// Starts the invocation's clock.
    pub fn new(function: &'static str) -> Self {
        Self { function, started: Instant::now(), counts: Vec::new(), properties: Map::new() }
    }

    /// Adds `n` to the counter `name` (created at 0).
    pub fn add(&mut self, name: &'static str, n: u64) {
        match self.counts.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => *v += n,
            None => self.counts.push((name, n)),
        }
    }

    /// A property logged with the metrics but not a metric itself (request id, Delta version, …).
    pub fn property(&mut self, name: &str, value: impl Into<Value>) {
        self.properties.insert(name.to_owned(), value.into());
    }

    /// The EMF document for the counters so far, with `duration_ms` since [`Metrics::new`].
    pub fn to_emf(&self, timestamp_ms: i64) -> Value {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let mut defs: Vec<Value> = self.counts.iter().map(|(k, _)| json!({"Name": k, "Unit": "Count"})).collect();
        defs.push(json!({"Name": "duration_ms", "Unit": "Milliseconds"}));
        let mut doc = Map::new();
        doc.insert(
            "_aws".into(),
            json!({"Timestamp": timestamp_ms,
                   "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["function"]], "Metrics": defs}]}),
        );
        doc.insert("function".into(), Value::from(self.function));
        for (k, v) in &self.counts {
            doc.insert((*k).to_owned(), Value::from(*v));
        }
        doc.insert("duration_ms".into(), json!((duration_ms * 1000.0).round() / 1000.0));
        for (k, v) in &self.properties {
            doc.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(doc)
    }

    /// The counters so far, by name (what an invocation that is not from SQS answers).
    pub fn counters(&self) -> Map<String, Value> {
        self.counts.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect()
    }

    /// Writes the EMF line to stdout, where the Lambda log agent picks it up.
    pub fn emit(&self) {
        let line = self.to_emf(chrono::Utc::now().timestamp_millis());
        let mut out = std::io::stdout().lock();
        // A metrics line that cannot be written is not worth failing the invocation for.
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_line_declares_every_counter() {
        let mut m = Metrics::new("msk-lander");
        m.add("records_in", 3);
        m.add("records_in", 2);
        m.add("quarantined", 1);
        m.property("requestId", "abc");
        let doc = m.to_emf(1_700_000_000_000);
        assert_eq!(doc["records_in"], json!(5));
        assert_eq!(doc["function"], json!("msk-lander"));
        assert_eq!(doc["requestId"], json!("abc"));
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], json!("fleetlake"));
        let names: Vec<&str> = cw["Metrics"].as_array().unwrap().iter().map(|d| d["Name"].as_str().unwrap()).collect();
        assert_eq!(names, ["records_in", "quarantined", "duration_ms"]);
        assert!(doc["duration_ms"].is_number());
    }
}
