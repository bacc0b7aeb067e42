//! A Lambda runtime API server (the protocol of `AWS_LAMBDA_RUNTIME_API`) that runs a real function binary:
//! the binary polls `/invocation/next`, gets the event with its request id and deadline headers, and posts
//! `/response` or `/error`, exactly as in the Lambda service and in `cargo lambda watch`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

const API: &str = "/2018-06-01/runtime";

type Outcome = Result<Value, Value>;

#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_error: Mutex<Option<Value>>,
    /// When the function first asked for an invocation: its init was over.
    first_poll: Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    queue: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Bytes)>>>,
}

/// What one invocation returned, with the lines the function printed meanwhile.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The response body, or the error body (`{errorType, errorMessage}`) posted to `/error`.
    pub outcome: Result<Value, Value>,
    /// stdout lines printed during the invocation (EMF metrics lines among them).
    pub stdout: Vec<String>,
    /// From handing the event over to the function's answer (Lambda's billed `Duration`, near enough).
    pub duration: Duration,
}

impl Invocation {
    /// The invocation's EMF metrics (the JSON line with `_aws`), if it printed them.
    pub fn metrics(&self) -> Option<Value> {
        self.stdout.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v.get("_aws").is_some())
    }
}

/// A function binary running against a local runtime API.
#[derive(Debug)]
pub struct LambdaHarness {
    child: Child,
    submit: mpsc::UnboundedSender<(String, Bytes)>,
    shared: Arc<Shared>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    next_id: u64,
    function_name: String,
    started: Instant,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// What every deployed function gets (`function_environment` of `infra/local/stack.json`, which
/// `make template-check` holds equal to the template's Globals).
fn function_environment() -> Vec<(String, String)> {
    let stack: Value = serde_json::from_str(include_str!("../../local/stack.json")).expect("stack.json is JSON");
    stack["function_environment"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

impl LambdaHarness {
    /// Serves the runtime API on a free port and starts `binary` against it with `env` (plus the variables the
    /// Lambda service sets). The process is killed when the harness is dropped.
    pub async fn start(binary: &Path, function_name: &str, env: &[(String, String)]) -> LambdaHarness {
        let (submit, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let state = AppState { shared: shared.clone(), queue: Arc::new(tokio::sync::Mutex::new(rx)) };
        let app = Router::new()
            .route(&format!("{API}/invocation/next"), get(next))
            .route(&format!("{API}/invocation/{{id}}/response"), post(response))
            .route(&format!("{API}/invocation/{{id}}/error"), post(error))
            .route(&format!("{API}/init/error"), post(init_error))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind runtime API");
        let addr = listener.local_addr().expect("runtime API address");
        tokio::spawn(async move { axum::serve(listener, app).await });

        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", function_name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "harness")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{function_name}"))
            .envs(function_environment())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdout = collect_lines(child.stdout.take());
        let stderr = collect_lines(child.stderr.take());
        LambdaHarness {
            child,
            submit,
            shared,
            stdout,
            stderr,
            next_id: 0,
            function_name: function_name.to_owned(),
            started,
        }
    }

    /// Invokes the function with `event` and waits (up to 120 s) for its response or error.
    pub async fn invoke(&mut self, event: &Value) -> Invocation {
        let seen = self.stdout.lock().expect("lock").len();
        let started = Instant::now();
        let outcome = self.answer(event).await;
        let duration = started.elapsed();
        // Give the pipe a moment to deliver what was printed before the response was posted.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stdout = self.stdout.lock().expect("lock")[seen..].to_vec();
        Invocation { outcome, stdout, duration }
    }

    /// Invokes the function with `event` and returns its response or error as soon as it is posted, without the
    /// lines it printed: what a latency benchmark times.
    pub async fn answer(&mut self, event: &Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = format!("{}-req-{}", self.function_name, self.next_id);
        let (tx, mut rx) = oneshot::channel();
        self.shared.pending.lock().expect("lock").insert(id.clone(), tx);
        let body = serde_json::to_vec(event).expect("event serialises");
        self.submit.send((id, Bytes::from(body))).expect("runtime API is running");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // The answer wakes this at once; the tick only looks after a function that died or never started.
            if let Ok(Ok(outcome)) = tokio::time::timeout(Duration::from_millis(20), &mut rx).await {
                return outcome;
            }
            if let Some(err) = self.shared.init_error.lock().expect("lock").clone() {
                return Err(err);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("function exited ({status}) during the invocation; stderr:\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "no answer within 120 s; stderr:\n{}", self.stderr());
        }
    }

    /// Init time: from starting the process to its first request for an invocation (as Lambda's `Init
    /// Duration`), waiting up to 60 s; `None` if it never asked.
    pub async fn ready_after(&self) -> Option<Duration> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(at) = *self.shared.first_poll.lock().expect("lock") {
                return Some(at.duration_since(self.started));
            }
            if Instant::now() >= deadline || self.shared.init_error.lock().expect("lock").is_some() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Peak resident memory of the function process so far (`VmHWM`), in bytes; Linux only.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kb * 1024)
    }

    /// CPU time (user + system) the function process has used so far, in seconds; Linux only.
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::process_cpu_seconds(self.child.id()?)
    }

    /// Bytes the function wrote to stdout and stderr so far (what its log group would ingest, the runtime's own
    /// START/END/REPORT lines aside).
    pub fn log_bytes(&self) -> u64 {
        let count = |lines: &Arc<Mutex<Vec<String>>>| {
            lines.lock().expect("lock").iter().map(|l| l.len() as u64 + 1).sum::<u64>()
        };
        count(&self.stdout) + count(&self.stderr)
    }

    /// Everything the function wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// Waits for the process to exit (after an init failure) and returns what it wrote to stderr.
    pub async fn wait_exit(&mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.ok().and_then(Result::ok);
        tokio::time::sleep(Duration::from_millis(50)).await;
        (status.and_then(|s| s.code()), self.stderr())
    }
}

fn collect_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(pipe: Option<R>) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    if let Some(pipe) = pipe {
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().expect("lock").push(line);
            }
        });
    }
    lines
}

async fn next(State(state): State<AppState>) -> Result<(HeaderMap, Bytes), StatusCode> {
    state.shared.first_poll.lock().expect("lock").get_or_insert_with(Instant::now);
    let Some((id, body)) = state.queue.lock().await.recv().await else {
        return Err(StatusCode::GONE);
    };
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + Duration::from_secs(300);
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", id);
    set("lambda-runtime-deadline-ms", deadline.as_millis().to_string());
    set("lambda-runtime-invoked-function-arn", "arn:aws:lambda:us-east-1:123456789012:function:harness".into());
    set("lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000;Sampled=0".into());
    Ok((headers, body))
}

fn finish(state: &AppState, id: &str, outcome: Outcome) -> StatusCode {
    match state.shared.pending.lock().expect("lock").remove(id) {
        Some(tx) => {
            let _ = tx.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

fn json_or_text(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn response(State(state): State<AppState>, UrlPath(id): UrlPath<String>, body: Bytes) -> StatusCode {
    finish(&state, &id, Ok(json_or_text(&body)))
}

async fn error(State(state): State<AppState>, UrlPath(id): UrlPath<String>, body: Bytes) -> StatusCode {
    finish(&state, &id, Err(json_or_text(&body)))
}

async fn init_error(State(state): State<AppState>, body: Bytes) -> StatusCode {
    *state.shared.init_error.lock().expect("lock") = Some(json_or_text(&body));
    StatusCode::ACCEPTED
}
