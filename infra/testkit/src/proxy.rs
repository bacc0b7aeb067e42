//! A forwarding HTTP proxy in front of an emulator, for what the emulator does not do by itself: a fixed latency
//! on every request (S3's and Glue's round trips, which moto on loopback answers in well under a millisecond), or
//! an action taken just before a request is forwarded (another writer winning a race).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Runs before a request is forwarded: its method and URI (path and query as sent).
pub type BeforeForward = Arc<dyn Fn(Method, Uri) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Starts a proxy on a free loopback port that forwards every request to `target` (scheme and authority) as it
/// is, after `delay` and after `before` (if any) has run; answers with the target's status, headers and body.
/// Returns its endpoint (`http://127.0.0.1:<port>`).
pub async fn forwarding_proxy(target: String, delay: Duration, before: Option<BeforeForward>) -> String {
    let http = client();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (http, target, before) = (http.clone(), target.clone(), before.clone());
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(before) = before {
                before(method.clone(), uri.clone()).await;
            }
            forward(&http, &target, method, &uri, &headers, body).await
        }
    });
    serve(app).await
}

/// Starts a proxy on a free loopback port that forwards every request to `target`, and conditional writes (PUTs
/// with `If-None-Match` or `If-Match`) one at a time. S3 makes a conditional write atomic; moto checks the condition
/// and then writes, and under load two create-only PUTs of one key can both succeed (seen in `make test`:
/// `shared/aws/tests/adapters.rs`). Tests that race writers for one key go through this. Returns its endpoint.
pub async fn serialising_proxy(target: String) -> String {
    let http = client();
    let writes = Arc::new(tokio::sync::Mutex::new(()));
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (http, target, writes) = (http.clone(), target.clone(), writes.clone());
        async move {
            let conditional =
                method == Method::PUT && (headers.contains_key("if-none-match") || headers.contains_key("if-match"));
            let _one_at_a_time = if conditional { Some(writes.lock().await) } else { None };
            forward(&http, &target, method, &uri, &headers, body).await
        }
    });
    serve(app).await
}

/// Requests counted by [`counting_proxy`]: `service:Operation` → how many.
pub type RequestCounts = Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>;

/// Starts a proxy on a free loopback port that forwards every request to `target` as it is and counts it by
/// service and operation ([`operation`]): what a run asks of AWS, for the cost model. An answer of 400 or more is
/// also counted as `<operation> <status>` (a create-only PUT that lost its race: `s3:PutObject 412`). Returns its
/// endpoint and the counts.
pub async fn counting_proxy(target: String) -> (String, RequestCounts) {
    let http = client();
    let counts = RequestCounts::default();
    let counted = counts.clone();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (http, target, counted) = (http.clone(), target.clone(), counted.clone());
        async move {
            let op = operation(&method, &uri, &headers, &body);
            let response = forward(&http, &target, method, &uri, &headers, body).await;
            let status = response.status().as_u16();
            let mut counted = counted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if status >= 400 {
                *counted.entry(format!("{op} {status}")).or_insert(0) += 1;
            }
            *counted.entry(op).or_insert(0) += 1;
            response
        }
    });
    (serve(app).await, counts)
}

/// `service:Operation` of a signed AWS request: the service from the signature's credential scope, the operation
/// from `X-Amz-Target` (JSON protocols), `Action=` (query protocols) or, for S3's REST API, the method and query.
pub fn operation(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let service = header("authorization")
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split([',', ' ']).next())
        .and_then(|scope| scope.split('/').nth(3))
        .unwrap_or("unsigned")
        .to_owned();
    if let Some(op) = header("x-amz-target").rsplit('.').next().filter(|op| !op.is_empty()) {
        return format!("{service}:{op}");
    }
    let query = uri.query().unwrap_or_default();
    let has = |name: &str| query.split('&').any(|kv| kv == name || kv.starts_with(&format!("{name}=")));
    if service == "s3" {
        let object = uri.path().trim_start_matches('/').contains('/');
        let op = match *method {
            Method::GET if has("list-type") || has("prefix") || !object => "ListObjects",
            Method::GET => "GetObject",
            Method::HEAD if object => "HeadObject",
            Method::HEAD => "HeadBucket",
            Method::PUT if has("partNumber") => "UploadPart",
            Method::PUT if headers.contains_key("x-amz-copy-source") => "CopyObject",
            Method::PUT if object => "PutObject",
            Method::PUT => "CreateBucket",
            Method::POST if has("uploads") => "CreateMultipartUpload",
            Method::POST if has("uploadId") => "CompleteMultipartUpload",
            Method::POST if has("delete") => "DeleteObjects",
            Method::DELETE if has("uploadId") => "AbortMultipartUpload",
            Method::DELETE => "DeleteObject",
            _ => "Other",
        };
        return format!("s3:{op}");
    }
    let form = std::str::from_utf8(body).unwrap_or_default();
    let action = form.split('&').chain(query.split('&')).find_map(|kv| kv.strip_prefix("Action="));
    format!("{service}:{}", action.unwrap_or("Other"))
}

/// The proxy's client: redirects are the caller's to follow.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("HTTP client")
}

/// Serves `app` on a free loopback port; returns its endpoint (`http://127.0.0.1:<port>`).
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("the proxy's address"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("the proxy stopped") });
    endpoint
}

/// `env` with `AWS_ENDPOINT_URL` set to `endpoint` (a proxy in front of the emulator), the rest as it is.
pub fn through(env: &[(String, String)], endpoint: &str) -> Vec<(String, String)> {
    env.iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
        .cloned()
        .chain([("AWS_ENDPOINT_URL".to_owned(), endpoint.to_owned())])
        .collect()
}

async fn forward(
    http: &reqwest::Client,
    target: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let url = format!("{target}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("an HTTP method");
    let mut request = http.request(method, &url).body(body);
    for (k, v) in headers {
        if k != "host" && k != "content-length" {
            request = request.header(k.as_str(), v.as_bytes());
        }
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HeaderMap::new();
    for (k, v) in response.headers() {
        if k != "transfer-encoding" && k != "connection" {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(k.as_str().as_bytes()), HeaderValue::from_bytes(v.as_bytes()))
            {
                out.append(name, value);
            }
        }
    }
    let bytes = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, out, bytes).into_response()
}
