//! The API's contract before any I/O: which route a request names, and every parameter checked. Nothing reaches
//! DynamoDB unless it passed here; everything refused gets a problem (RFC 9457) with a 4xx status.
//! The contract is `functions/predictions-api/openapi.yaml`.

use std::collections::BTreeMap;

use chrono::{DateTime, Timelike};
use fleetlake_aws::predictions::{predicted_at_key, Consistency};
use fleetlake_core::bronze::is_unit_id;
use lambda_http::http::Method;
use percent_encoding::percent_decode_str;

use crate::token::{Scope, TokenError, Tokens};

/// Default and largest page of a range read.
pub(crate) const DEFAULT_LIMIT: u16 = 50;
/// See [`DEFAULT_LIMIT`].
pub(crate) const MAX_LIMIT: u16 = 500;
/// The earliest and latest `predicted_at` keys (the bounds of a range without `from` or `to`).
pub(crate) const EARLIEST: &str = "0001-01-01T00:00:00.000000Z";
/// See [`EARLIEST`].
pub(crate) const LATEST: &str = "9999-12-31T23:59:59.999999Z";
/// Longest path or query string looked at, in bytes (a unit id is at most 64 characters, 256 bytes of UTF-8,
/// three times that percent-encoded).
const MAX_PATH_BYTES: usize = 1024;
/// See [`MAX_PATH_BYTES`].
const MAX_QUERY_BYTES: usize = 1024;

/// What a request asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /health`.
    Health,
    /// `GET /units/{id}/prediction`: the newest.
    Latest { unit: String, consistency: Consistency },
    /// `GET /units/{id}/predictions?at=`: the one in force at a time.
    At { unit: String, at: String, consistency: Consistency },
    /// `GET /units/{id}/predictions?from=&to=&limit=&next=`: a range, newest first.
    Range { unit: String, from: String, to: String, limit: u16, after: Option<String>, consistency: Consistency },
    /// `OPTIONS` on a route, when CORS is on: a preflight.
    Preflight,
}

#[cfg(test)]
impl Route {
    fn unit(&self) -> Option<&str> {
        match self {
            Route::Latest { unit, .. } | Route::At { unit, .. } | Route::Range { unit, .. } => Some(unit),
            Route::Health | Route::Preflight => None,
        }
    }
}

/// A refused request: an RFC 9457 problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) status: u16,
    /// The last segment of the problem type (`urn:fleetlake:problem:<kind>`).
    pub(crate) kind: &'static str,
    pub(crate) title: &'static str,
    pub(crate) detail: String,
    /// The query parameter at fault.
    pub(crate) parameter: Option<&'static str>,
    /// `Allow` of a 405.
    pub(crate) allow: Option<&'static str>,
}

impl Problem {
    pub(crate) fn new(status: u16, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, kind, title, detail: detail.into(), parameter: None, allow: None }
    }

    fn parameter(name: &'static str, detail: impl Into<String>) -> Self {
        Self { parameter: Some(name), ..Self::new(400, "invalid-parameter", "Invalid query parameter", detail) }
    }

    pub(crate) fn body(&self, instance: &str) -> serde_json::Value {
        let mut body = serde_json::json!({
            "type": format!("urn:fleetlake:problem:{}", self.kind),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        });
        if let (Some(p), Some(map)) = (self.parameter, body.as_object_mut()) {
            map.insert("parameter".into(), p.into());
        }
        body
    }
}

/// The routes without their parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path<'a> {
    Health,
    Prediction(&'a str),
    Predictions(&'a str),
}

fn path(raw: &str) -> Option<Path<'_>> {
    let mut parts = raw.strip_prefix('/')?.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("health"), None, ..) => Some(Path::Health),
        (Some("units"), Some(id), Some("prediction"), None) => Some(Path::Prediction(id)),
        (Some("units"), Some(id), Some("predictions"), None) => Some(Path::Predictions(id)),
        _ => None,
    }
}

fn unit(encoded: &str) -> Result<String, Problem> {
    let bad = |detail: String| Problem::new(400, "invalid-unit-id", "Invalid unit id", detail);
    let b = encoded.as_bytes();
    let malformed = b.iter().enumerate().any(|(i, c)| {
        *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(bad("the unit id holds a % that does not start a percent-encoded byte (%XX)".into()));
    }
    let id = percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| bad("the unit id is not UTF-8 once percent-decoded".into()))?;
    if !is_unit_id(&id) {
        return Err(bad(format!(
            "a unit id is 1-64 characters, not all whitespace; got {} characters",
            id.chars().count()
        )));
    }
    Ok(id.into_owned())
}

/// A time parameter as a `predicted_at` key: RFC 3339 with an offset, years 1-9999, to the microsecond
/// (rounded up for the start of a range, down otherwise, so the range never grows).
fn time(name: &'static str, raw: &str, round_up: bool) -> Result<String, Problem> {
    let t = DateTime::parse_from_rfc3339(raw).map_err(|e| {
        Problem::parameter(
            name,
            format!("{name} must be an RFC 3339 time with an offset, such as 2026-11-30T12:00:00Z ({e})"),
        )
    })?;
    let extra = u32::from(round_up && t.nanosecond() % 1000 != 0);
    let micros = t.timestamp_micros().checked_add(i64::from(extra));
    micros
        .and_then(predicted_at_key)
        .ok_or_else(|| Problem::parameter(name, format!("{name} must lie in years 1-9999")))
}

/// The query parameters, each at most once, all known to the route.
fn parameters(raw: Option<&str>, allowed: &'static [&'static str]) -> Result<BTreeMap<&'static str, String>, Problem> {
    let mut found = BTreeMap::new();
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_QUERY_BYTES {
        return Err(Problem::new(414, "query-too-long", "Query too long", format!("at most {MAX_QUERY_BYTES} bytes")));
    }
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        let Some(known) = allowed.iter().find(|a| **a == name) else {
            let shown: String = name.chars().take(40).collect();
            return Err(Problem::new(
                400,
                "unknown-parameter",
                "Unknown query parameter",
                format!("{shown:?} is not a parameter of this route (it takes: {})", allowed.join(", ")),
            ));
        };
        if found.insert(*known, value.into_owned()).is_some() {
            return Err(Problem::parameter(known, format!("{known} is given more than once")));
        }
    }
    Ok(found)
}

fn consistency(p: &BTreeMap<&'static str, String>) -> Result<Consistency, Problem> {
    match p.get("consistent").map(String::as_str) {
        None | Some("false") => Ok(Consistency::Eventual),
        Some("true") => Ok(Consistency::Strong),
        Some(_) => Err(Problem::parameter("consistent", "consistent is true or false")),
    }
}

/// The route of a request, every parameter checked; `cors` says whether `OPTIONS` is a method of the API.
pub(crate) fn route(
    method: &Method,
    raw_path: &str,
    query: Option<&str>,
    tokens: &Tokens,
    cors: bool,
) -> Result<Route, Problem> {
    if raw_path.len() > MAX_PATH_BYTES {
        return Err(Problem::new(414, "path-too-long", "Path too long", format!("at most {MAX_PATH_BYTES} bytes")));
    }
    let Some(path) = path(raw_path) else {
        return Err(Problem::new(
            404,
            "no-such-route",
            "Not found",
            "routes: GET /health, GET /units/{id}/prediction, GET /units/{id}/predictions",
        ));
    };
    if cors && method == Method::OPTIONS {
        return Ok(Route::Preflight);
    }
    if method != Method::GET && method != Method::HEAD {
        let allow = if cors { "GET, HEAD, OPTIONS" } else { "GET, HEAD" };
        return Err(Problem {
            allow: Some(allow),
            ..Problem::new(
                405,
                "method-not-allowed",
                "Method not allowed",
                format!("{method} is not allowed here; allowed: {allow}"),
            )
        });
    }
    match path {
        Path::Health => {
            parameters(query, &[])?;
            Ok(Route::Health)
        }
        Path::Prediction(id) => {
            let p = parameters(query, &["consistent"])?;
            Ok(Route::Latest { unit: unit(id)?, consistency: consistency(&p)? })
        }
        Path::Predictions(id) => {
            let p = parameters(query, &["at", "from", "to", "limit", "next", "consistent"])?;
            let unit = unit(id)?;
            let consistency = consistency(&p)?;
            if let Some(at) = p.get("at") {
                if let Some(other) = ["from", "to", "limit", "next"].into_iter().find(|o| p.contains_key(o)) {
                    return Err(Problem::parameter(
                        "at",
                        format!("at selects one prediction; it does not combine with {other}"),
                    ));
                }
                return Ok(Route::At { at: time("at", at, false)?, unit, consistency });
            }
            let from = p.get("from").map(|f| time("from", f, true)).transpose()?.unwrap_or_else(|| EARLIEST.to_owned());
            let to = p.get("to").map(|t| time("to", t, false)).transpose()?.unwrap_or_else(|| LATEST.to_owned());
            if from > to {
                return Err(Problem::parameter("from", "from is after to"));
            }
            let limit = match p.get("limit") {
                None => DEFAULT_LIMIT,
                Some(l) => l.parse::<u16>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
                    Problem::parameter("limit", format!("limit is a whole number from 1 to {MAX_LIMIT}"))
                })?,
            };
            let after = match p.get("next") {
                None => None,
                Some(token) => {
                    let after = tokens
                        .check(Scope { unit: &unit, from: &from, to: &to }, token)
                        .map_err(|e| Problem::parameter("next", format!("next {e}")))?;
                    // Signed by this API, so a key it wrote; checked all the same before it reaches DynamoDB.
                    if !(from.as_str()..=to.as_str()).contains(&after.as_str()) || after.len() != EARLIEST.len() {
                        return Err(Problem::parameter("next", format!("next {}", TokenError::Malformed)));
                    }
                    Some(after)
                }
            };
            Ok(Route::Range { unit, from, to, limit, after, consistency })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tokens() -> Tokens {
        Tokens::new(b"0123456789abcdef0123456789abcdef")
    }

    fn get(path: &str, query: Option<&str>) -> Result<Route, Problem> {
        route(&Method::GET, path, query, &tokens(), false)
    }

    #[test]
    fn routes_and_their_parameters() {
        assert_eq!(get("/health", None), Ok(Route::Health));
        assert_eq!(
            get("/units/TU%20000001/prediction", Some("consistent=true")),
            Ok(Route::Latest { unit: "TU 000001".into(), consistency: Consistency::Strong })
        );
        assert_eq!(
            get("/units/TU-1/predictions", Some("at=2026-11-30T13:00:00.1234567%2B01:00")),
            Ok(Route::At {
                unit: "TU-1".into(),
                at: "2026-11-30T12:00:00.123456Z".into(),
                consistency: Consistency::Eventual
            })
        );
        let Ok(Route::Range { from, to, limit, after, .. }) =
            get("/units/TU-1/predictions", Some("from=2026-11-30T00:00:00.0000001Z&limit=3"))
        else {
            panic!("a range")
        };
        assert_eq!((from.as_str(), to.as_str(), limit, after), ("2026-11-30T00:00:00.000001Z", LATEST, 3, None));
        assert!(matches!(get("/units/TU-1/predictions", None), Ok(Route::Range { limit: DEFAULT_LIMIT, .. })));
    }

    #[test]
    fn every_refusal_is_a_4xx_problem() {
        let status = |path: &str, query: Option<&str>| get(path, query).unwrap_err().status;
        assert_eq!(status("/", None), 404);
        assert_eq!(status("/units/TU-1/prediction/", None), 404);
        assert_eq!(status("/units//prediction", None), 400);
        assert_eq!(status("/units/%20%20/prediction", None), 400);
        assert_eq!(status(&format!("/units/{}/prediction", "x".repeat(65)), None), 400);
        assert_eq!(status("/units/%FF/prediction", None), 400);
        assert_eq!(status("/units/%/prediction", None), 400);
        assert_eq!(status("/units/a%2/prediction", None), 400);
        assert_eq!(status("/units/TU-1/prediction", Some("limit=3")), 400);
        assert_eq!(status("/units/TU-1/predictions", Some("limit=0")), 400);
        assert_eq!(status("/units/TU-1/predictions", Some("limit=501")), 400);
        assert_eq!(status("/units/TU-1/predictions", Some("limit=1&limit=2")), 400);
        assert_eq!(status("/units/TU-1/predictions", Some("at=yesterday")), 400);
        assert_eq!(status("/units/TU-1/predictions", Some("at=2026-11-30T12:00:00")), 400, "no offset");
        assert_eq!(status("/units/TU-1/predictions", Some("at=2026-11-30T12:00:00Z&limit=2")), 400);
        assert_eq!(status("/units/TU-1/predictions", Some("from=2026-12-01T00:00:00Z&to=2026-11-30T00:00:00Z")), 400);
        assert_eq!(status("/units/TU-1/predictions", Some("next=abc")), 400);
        assert_eq!(status("/units/TU-1/predictions", Some("consistent=yes")), 400);
        assert_eq!(status(&format!("/units/{}/prediction", "%41".repeat(400)), None), 414);
        let post = route(&Method::POST, "/health", None, &tokens(), false).unwrap_err();
        assert_eq!((post.status, post.allow), (405, Some("GET, HEAD")));
        assert_eq!(route(&Method::OPTIONS, "/health", None, &tokens(), true), Ok(Route::Preflight));
        assert_eq!(route(&Method::OPTIONS, "/health", None, &tokens(), false).unwrap_err().status, 405);
    }

    #[test]
    fn a_token_works_only_for_the_query_it_was_issued_for() {
        let scope = Scope { unit: "TU-1", from: EARLIEST, to: LATEST };
        let token = tokens().issue(scope, "2026-11-30T12:00:00.000000Z");
        let ok = get("/units/TU-1/predictions", Some(&format!("next={token}&limit=5")));
        assert!(matches!(ok, Ok(Route::Range { after: Some(a), .. }) if a == "2026-11-30T12:00:00.000000Z"));
        assert_eq!(get("/units/TU-2/predictions", Some(&format!("next={token}"))).unwrap_err().status, 400);
        let narrowed = format!("next={token}&to=2026-11-30T13:00:00Z");
        assert_eq!(get("/units/TU-1/predictions", Some(&narrowed)).unwrap_err().status, 400);
    }

    proptest! {
        /// Whatever the path and query, the answer is a route or a 4xx problem: never a panic, never a 5xx.
        #[test]
        fn any_request_is_a_route_or_a_4xx(path in "(/[a-z%0-9A-F?&=./ -]{0,20}){0,5}", query in proptest::option::of(".{0,80}")) {
            match get(&path, query.as_deref()) {
                Ok(_) => {}
                Err(p) => prop_assert!((400..500).contains(&p.status), "{p:?}"),
            }
        }

        /// A unit id the schema accepts is served as itself, whatever it holds once percent-encoded.
        #[test]
        fn every_schema_unit_id_round_trips(id in "\\PC{1,64}") {
            prop_assume!(is_unit_id(&id));
            let encoded: String = percent_encoding::utf8_percent_encode(&id, percent_encoding::NON_ALPHANUMERIC).to_string();
            let route = get(&format!("/units/{encoded}/prediction"), None);
            prop_assert_eq!(route.ok().and_then(|r| r.unit().map(str::to_owned)), Some(id));
        }

        /// Every time the parser accepts becomes a key of the stored layout, and order is kept.
        #[test]
        fn times_become_ordered_keys(a in -62_000_000_000i64..253_000_000_000, b in -62_000_000_000i64..253_000_000_000) {
            let text = |s: i64| DateTime::from_timestamp(s, 0).unwrap().to_rfc3339();
            let (ka, kb) = (time("at", &text(a), false).unwrap(), time("at", &text(b), false).unwrap());
            prop_assert_eq!(ka.len(), EARLIEST.len());
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }
    }
}
