//! HTTP requests as the Lambda service hands them to a function (payload format 2.0): from a Function URL, or
//! from an API Gateway HTTP API with a JWT authorizer; and the function's answer read back as an HTTP response.
//! The router serves Function URLs with these, the tests and the benchmark invoke with them.

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Who fronts the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// A Lambda Function URL with `AWS_IAM` auth.
    FunctionUrl,
    /// An API Gateway HTTP API (`$default` stage and route) with a JWT authorizer.
    HttpApi,
}

/// The event of one request: `target` is the path with its raw query (`/a/b?x=1`), `headers` as sent (names are
/// lower-cased and repeated ones joined with commas, as the Lambda service does).
pub fn http_event(front: Front, method: &str, target: &str, headers: &[(&str, &str)]) -> Value {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut joined: Map<String, Value> = Map::new();
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        let merged = match joined.get(&k).and_then(Value::as_str) {
            Some(prev) => format!("{prev},{v}"),
            None => (*v).to_owned(),
        };
        joined.insert(k, Value::String(merged));
    }
    let (domain, authorizer, route_key) = match front {
        Front::FunctionUrl => (
            "abcdefghij0123456789klmnop.lambda-url.us-east-1.on.aws",
            json!({"iam": {"accessKey": "AKIAEXAMPLE", "accountId": "123456789012",
                           "callerId": "AIDAEXAMPLE", "userArn": "arn:aws:iam::123456789012:user/dispatch",
                           "userId": "AIDAEXAMPLE", "cognitoIdentity": null, "principalOrgId": null}}),
            "$default",
        ),
        Front::HttpApi => (
            "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
            json!({"jwt": {"claims": {"sub": "dispatch", "iss": "https://issuer.example.com"}, "scopes": ["predictions:read"]}}),
            "$default",
        ),
    };
    joined.entry("host").or_insert_with(|| Value::String(domain.to_owned()));
    let mut params = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let merged = match params.get(k.as_ref()).and_then(Value::as_str) {
            Some(prev) => format!("{prev},{v}"),
            None => v.into_owned(),
        };
        params.insert(k.into_owned(), Value::String(merged));
    }
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": joined,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": domain.split('.').next().unwrap_or_default(),
            "authorizer": authorizer,
            "domainName": domain,
            "domainPrefix": domain.split('.').next().unwrap_or_default(),
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7",
                     "userAgent": "fleetlake-test"},
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": route_key,
            "stage": "$default",
            "time": "30/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1_796_040_000_000_i64
        },
        "isBase64Encoded": false
    });
    if !params.is_empty() {
        event["queryStringParameters"] = Value::Object(params);
    }
    event
}

/// A function's answer as an HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// Header names lower-cased, with their values.
    pub headers: Vec<(String, String)>,
    /// The body, base64-decoded when the answer says so.
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The answer of a function to a payload 2.0 request (`statusCode`, `headers`, `multiValueHeaders`,
    /// `body`, `isBase64Encoded`).
    pub fn from_response(v: &Value) -> Option<HttpAnswer> {
        let status = u16::try_from(v.get("statusCode")?.as_u64()?).ok()?;
        let mut headers = Vec::new();
        for (k, val) in v.get("headers").and_then(Value::as_object).into_iter().flatten() {
            headers.push((k.to_ascii_lowercase(), val.as_str().unwrap_or_default().to_owned()));
        }
        for (k, vals) in v.get("multiValueHeaders").and_then(Value::as_object).into_iter().flatten() {
            for val in vals.as_array().into_iter().flatten() {
                let pair = (k.to_ascii_lowercase(), val.as_str().unwrap_or_default().to_owned());
                if !headers.contains(&pair) {
                    headers.push(pair);
                }
            }
        }
        for cookie in v.get("cookies").and_then(Value::as_array).into_iter().flatten() {
            headers.push(("set-cookie".into(), cookie.as_str().unwrap_or_default().to_owned()));
        }
        let text = v.get("body").and_then(Value::as_str).unwrap_or_default();
        let body = if v.get("isBase64Encoded").and_then(Value::as_bool).unwrap_or(false) {
            base64::engine::general_purpose::STANDARD.decode(text).ok()?
        } else {
            text.as_bytes().to_vec()
        };
        Some(HttpAnswer { status, headers, body })
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}
