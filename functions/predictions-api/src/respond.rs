//! HTTP as clients expect it: a weak `ETag` of the representation and `If-None-Match` → 304, `Cache-Control`,
//! gzip when the client accepts it (bodies of 1 KiB or more), CORS headers when configured, problems as
//! `application/problem+json`.

use std::io::Write as _;

use flate2::write::GzEncoder;
use lambda_http::http::header::{
    ACCEPT_ENCODING, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, ORIGIN, RETRY_AFTER, VARY,
};
use lambda_http::http::{HeaderMap, HeaderValue, Method, StatusCode};
use lambda_http::{Body, Response};
use sha2::{Digest, Sha256};

use crate::api::Problem;
use crate::config::Cors;

/// Smallest body worth compressing.
const GZIP_MIN_BYTES: usize = 1024;

/// What the answer depends on beyond its body.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) path: &'a str,
    pub(crate) cors: &'a Cors,
}

impl Request<'_> {
    fn header(&self, name: lambda_http::http::header::HeaderName) -> impl Iterator<Item = &str> {
        self.headers.get_all(name).into_iter().filter_map(|v| v.to_str().ok())
    }

    fn accepts_gzip(&self) -> bool {
        let mut gzip = None;
        let mut any = None;
        for coding in self.header(ACCEPT_ENCODING).flat_map(|v| v.split(',')) {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match name.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q > 0.0),
                "*" => any = Some(q > 0.0),
                _ => {}
            }
        }
        gzip.or(any).unwrap_or(false)
    }

    /// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2) or is `*`.
    fn not_modified(&self, etag: &str) -> bool {
        let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        self.header(IF_NONE_MATCH).flat_map(|v| v.split(',')).any(|t| t.trim() == "*" || opaque(t) == opaque(etag))
    }

    fn common(&self, builder: lambda_http::http::response::Builder) -> lambda_http::http::response::Builder {
        let origin = self.header(ORIGIN).next();
        let mut builder =
            builder.header(VARY, if *self.cors == Cors::Off { "Accept-Encoding" } else { "Accept-Encoding, Origin" });
        if let Some(allow) = self.cors.allow(origin) {
            builder = builder.header(ACCESS_CONTROL_ALLOW_ORIGIN, allow).header(ACCESS_CONTROL_EXPOSE_HEADERS, "ETag");
        }
        builder
    }

    fn finish(
        &self,
        builder: lambda_http::http::response::Builder,
        content_type: &str,
        body: Vec<u8>,
    ) -> Response<Body> {
        let builder = builder.header(CONTENT_TYPE, content_type);
        let (builder, body) = if *self.method == Method::HEAD {
            (builder, Body::Empty)
        } else if let Some(zipped) =
            (body.len() >= GZIP_MIN_BYTES && self.accepts_gzip()).then(|| gzip(&body)).flatten()
        {
            (builder.header(CONTENT_ENCODING, "gzip"), Body::Binary(zipped))
        } else {
            // The bodies are serialised JSON: UTF-8.
            (
                builder,
                Body::Text(
                    String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                ),
            )
        };
        builder.body(body).unwrap_or_else(|_| fallback())
    }

    /// 200 with `value`, or 304 when the client holds this representation.
    pub(crate) fn json(&self, value: &serde_json::Value, cache_max_age_s: u32) -> Response<Body> {
        let body = serde_json::to_vec(value).unwrap_or_default();
        let digest = Sha256::digest(&body);
        let etag = format!("W/\"{}\"", digest.iter().take(12).map(|b| format!("{b:02x}")).collect::<String>());
        let cache = format!("private, max-age={cache_max_age_s}");
        let builder = self.common(Response::builder()).header(ETAG, &etag).header(CACHE_CONTROL, cache);
        if self.not_modified(&etag) {
            return builder.status(StatusCode::NOT_MODIFIED).body(Body::Empty).unwrap_or_else(|_| fallback());
        }
        self.finish(builder.status(StatusCode::OK), "application/json", body)
    }

    /// `GET /health`: never cached.
    pub(crate) fn health(&self) -> Response<Body> {
        let builder = self.common(Response::builder()).status(StatusCode::OK).header(CACHE_CONTROL, "no-store");
        self.finish(builder, "application/json", br#"{"status":"ok"}"#.to_vec())
    }

    /// A problem, never cached.
    pub(crate) fn problem(&self, problem: &Problem) -> Response<Body> {
        let mut builder = self
            .common(Response::builder())
            .status(StatusCode::from_u16(problem.status).unwrap_or(StatusCode::BAD_REQUEST))
            .header(CACHE_CONTROL, "no-store");
        if let Some(allow) = problem.allow {
            builder = builder.header(ALLOW, allow);
        }
        if problem.status == 503 {
            builder = builder.header(RETRY_AFTER, "1");
        }
        let body = serde_json::to_vec(&problem.body(self.path)).unwrap_or_default();
        self.finish(builder, "application/problem+json", body)
    }

    /// The answer to a CORS preflight (only when CORS is on).
    pub(crate) fn preflight(&self) -> Response<Body> {
        self.common(Response::builder())
            .status(StatusCode::NO_CONTENT)
            .header(ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD, OPTIONS")
            .header(
                ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, if-none-match, x-amz-date, x-amz-security-token, x-amz-content-sha256",
            )
            .header(ACCESS_CONTROL_MAX_AGE, "600")
            .body(Body::Empty)
            .unwrap_or_else(|_| fallback())
    }
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    enc.write_all(body).ok()?;
    enc.finish().ok()
}

/// Only reached if a header value the code builds were invalid (none is: they are fixed or formatted ASCII).
fn fallback() -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&'static str, &'static str)]) -> (Method, HeaderMap) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(*k, HeaderValue::from_static(v));
        }
        (Method::GET, map)
    }

    #[test]
    fn gzip_only_when_accepted() {
        for (value, want) in [
            ("gzip", true),
            ("br, gzip;q=0.5", true),
            ("gzip;q=0", false),
            ("*", true),
            ("*, gzip;q=0", false),
            ("identity", false),
            ("GZIP", true),
        ] {
            let (m, h) = request(&[("accept-encoding", value)]);
            let r = Request { method: &m, headers: &h, path: "/", cors: &Cors::Off };
            assert_eq!(r.accepts_gzip(), want, "{value}");
        }
    }

    #[test]
    fn etags_compare_weakly() {
        let (m, h) = request(&[("if-none-match", "\"x\", W/\"abc\"")]);
        let r = Request { method: &m, headers: &h, path: "/", cors: &Cors::Off };
        assert!(r.not_modified("W/\"abc\""));
        assert!(!r.not_modified("W/\"abd\""));
    }
}
