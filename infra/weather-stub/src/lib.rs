//! An Open-Meteo-compatible weather API stub: `/v1/forecast` and `/v1/archive` with Open-Meteo's request and
//! response shapes, deterministic values, and injectable latency, failures and rate limits, plus a request
//! counter. The project's tests and local stack talk to it instead of the real API.

// A test and benchmark tool, not Lambda code: a failed setup stops it with its reason.
#![allow(clippy::expect_used, clippy::panic, clippy::string_slice)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Most coordinates one request may carry (Open-Meteo's limit).
pub const MAX_COORDINATES: usize = 1000;

/// Hourly variables the stub serves, with their units.
pub const VARIABLES: [(&str, &str); 6] = [
    ("temperature_2m", "°C"),
    ("wind_speed_10m", "km/h"),
    ("precipitation", "mm"),
    ("weather_code", "wmo code"),
    ("relative_humidity_2m", "%"),
    ("wind_direction_10m", "°"),
];

/// Injected faults; changeable at run time through `POST /faults`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Delay added to every data request, in milliseconds.
    pub latency_ms: u64,
    /// Share of data requests (0.0–1.0) answered with `failure_status`; which ones is fixed by `seed`.
    pub failure_rate: f64,
    /// Status of an injected failure: 500, 502, 503 or 504, or 429 (sent with `Retry-After: 1`).
    pub failure_status: u16,
    /// Seed of the failure sequence.
    pub seed: u64,
    /// Data requests allowed per minute before answering 429 as Open-Meteo does (0 = unlimited).
    pub rate_limit_per_minute: u64,
    /// Share of data requests (0.0–1.0) answered 200 with a broken body (truncated JSON, or a series of the
    /// wrong length), to test clients' response validation.
    pub garbage_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            failure_rate: 0.0,
            failure_status: 503,
            seed: 1,
            rate_limit_per_minute: 0,
            garbage_rate: 0.0,
        }
    }
}

/// Stub settings fixed at start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Faults at start.
    pub faults: Faults,
    /// When set, data requests must carry `apikey=<this>` (the commercial endpoint's scheme).
    pub api_key: Option<String>,
    /// First date served; earlier dates are "out of allowed range".
    pub min_date: NaiveDate,
    /// Last date served.
    pub max_date: NaiveDate,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            faults: Faults::default(),
            api_key: None,
            min_date: NaiveDate::from_ymd_opt(1940, 1, 1).unwrap_or_default(),
            max_date: NaiveDate::from_ymd_opt(2100, 12, 31).unwrap_or_default(),
        }
    }
}

/// Request counters, served by `GET /stats`.
#[derive(Debug, Default, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Data requests received (forecast and archive).
    pub requests: u64,
    /// Answered with data.
    pub ok: u64,
    /// Refused as invalid (400) or unauthorised (401).
    pub rejected: u64,
    /// Failed on purpose (`failure_rate`).
    pub failures_injected: u64,
    /// Refused by the rate limit (429).
    pub rate_limited: u64,
    /// Answered with a broken body on purpose (`garbage_rate`).
    pub garbage_sent: u64,
    /// Coordinates served in successful answers.
    pub coordinates: u64,
}

#[derive(Debug)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    rejected: AtomicU64,
    failures_injected: AtomicU64,
    rate_limited: AtomicU64,
    garbage_sent: AtomicU64,
    coordinates: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    options: Options,
    faults: Mutex<Faults>,
    counters: Counters,
    window: Mutex<(Instant, u64)>,
}

/// A handle on a running stub's state: counters and faults.
#[derive(Debug, Clone)]
pub struct Stub(Arc<Inner>);

impl Stub {
    /// A stub with `options`.
    pub fn new(options: Options) -> Self {
        let faults = Mutex::new(options.faults.clone());
        let zero = || AtomicU64::new(0);
        let counters = Counters {
            requests: zero(),
            ok: zero(),
            rejected: zero(),
            failures_injected: zero(),
            rate_limited: zero(),
            garbage_sent: zero(),
            coordinates: zero(),
        };
        Self(Arc::new(Inner { options, faults, counters, window: Mutex::new((Instant::now(), 0)) }))
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/forecast", get(forecast))
            .route("/v1/archive", get(archive))
            .route("/stats", get(stats))
            .route("/stats/reset", post(reset))
            .route("/faults", get(get_faults).post(set_faults))
            .route("/health", get(|| async { "ok" }))
            .with_state(self.clone())
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let c = &self.0.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            requests: get(&c.requests),
            ok: get(&c.ok),
            rejected: get(&c.rejected),
            failures_injected: get(&c.failures_injected),
            rate_limited: get(&c.rate_limited),
            garbage_sent: get(&c.garbage_sent),
            coordinates: get(&c.coordinates),
        }
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.0.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = faults;
    }

    fn faults(&self) -> Faults {
        self.0.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn reset(&self) {
        let c = &self.0.counters;
        for a in
            [&c.requests, &c.ok, &c.rejected, &c.failures_injected, &c.rate_limited, &c.garbage_sent, &c.coordinates]
        {
            a.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the per-minute limit lets one more request through.
    fn admit(&self, limit: u64) -> bool {
        if limit == 0 {
            return true;
        }
        let mut w = self.0.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.0.elapsed() >= Duration::from_secs(60) {
            *w = (Instant::now(), 0);
        }
        w.1 += 1;
        w.1 <= limit
    }
}

/// Serves a stub on a free loopback port in the background (for tests); returns its handle and base URL.
pub async fn spawn(options: Options) -> std::io::Result<(Stub, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stub = Stub::new(options);
    let router = stub.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((stub, url))
}

/// Query parameters of `/v1/forecast` and `/v1/archive` (comma lists as Open-Meteo takes them).
#[derive(Debug, Default, Deserialize)]
pub struct WeatherQuery {
    latitude: Option<String>,
    longitude: Option<String>,
    hourly: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    forecast_days: Option<u64>,
    timezone: Option<String>,
    apikey: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Forecast,
    Archive,
}

async fn forecast(State(stub): State<Stub>, Query(q): Query<WeatherQuery>) -> Response {
    answer(&stub, &q, Endpoint::Forecast).await
}

async fn archive(State(stub): State<Stub>, Query(q): Query<WeatherQuery>) -> Response {
    answer(&stub, &q, Endpoint::Archive).await
}

async fn stats(State(stub): State<Stub>) -> Json<Stats> {
    Json(stub.stats())
}

async fn reset(State(stub): State<Stub>) -> StatusCode {
    stub.reset();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(stub): State<Stub>) -> Json<Faults> {
    Json(stub.faults())
}

async fn set_faults(State(stub): State<Stub>, Json(faults): Json<Faults>) -> Json<Faults> {
    stub.set_faults(faults.clone());
    Json(faults)
}

fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(json!({"error": true, "reason": reason.into()}))).into_response()
}

async fn answer(stub: &Stub, q: &WeatherQuery, endpoint: Endpoint) -> Response {
    let c = &stub.0.counters;
    let n = c.requests.fetch_add(1, Ordering::Relaxed);
    let faults = stub.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if !stub.admit(faults.rate_limit_per_minute) {
        c.rate_limited.fetch_add(1, Ordering::Relaxed);
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            "Minutely API request limit exceeded. Please try again in one minute.",
        );
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return resp;
    }
    if faults.failure_rate > 0.0
        && unit_interval(mix(faults.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))) < faults.failure_rate
    {
        c.failures_injected.fetch_add(1, Ordering::Relaxed);
        let status = StatusCode::from_u16(faults.failure_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut resp = error(status, "injected failure");
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        return resp;
    }
    if let Some(expected) = &stub.0.options.api_key {
        if q.apikey.as_deref() != Some(expected.as_str()) {
            c.rejected.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::UNAUTHORIZED, "The supplied API key is invalid.");
        }
    }
    let garbage = faults.garbage_rate > 0.0
        && unit_interval(mix(faults.seed ^ 0x5EED ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03))) < faults.garbage_rate;
    match build(&stub.0.options, q, endpoint) {
        Ok((body, _)) if garbage => {
            c.garbage_sent.fetch_add(1, Ordering::Relaxed);
            // Alternate between a truncated body and one whose first series is one value short.
            let broken: Vec<u8> = if n.is_multiple_of(2) {
                let text = body.to_string().into_bytes();
                text[..text.len() / 2].to_vec()
            } else {
                shorten_first_series(&body).to_string().into_bytes()
            };
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], broken).into_response()
        }
        Ok((body, coords)) => {
            c.ok.fetch_add(1, Ordering::Relaxed);
            c.coordinates.fetch_add(coords as u64, Ordering::Relaxed);
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
            (StatusCode::OK, headers, body.to_string()).into_response()
        }
        Err(reason) => {
            c.rejected.fetch_add(1, Ordering::Relaxed);
            error(StatusCode::BAD_REQUEST, reason)
        }
    }
}

/// The same answer with the first location's `time` series one value short.
fn shorten_first_series(body: &Value) -> Value {
    let mut body = body.clone();
    let first = match &mut body {
        Value::Array(list) => list.first_mut(),
        obj => Some(obj),
    };
    if let Some(times) = first.and_then(|loc| loc.pointer_mut("/hourly/time")).and_then(Value::as_array_mut) {
        times.pop();
    }
    body
}

fn parse_list(name: &str, raw: Option<&str>) -> Result<Vec<f64>, String> {
    let raw = raw.ok_or_else(|| format!("Parameter '{name}' is required"))?;
    raw.split(',')
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("Parameter '{name}' could not be parsed as a floating point number: {s}"))
        })
        .collect()
}

fn parse_date(name: &str, raw: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| format!("Invalid date format for parameter '{name}': {raw}"))
}

/// The response body for a valid request, and how many coordinates it served.
fn build(options: &Options, q: &WeatherQuery, endpoint: Endpoint) -> Result<(Value, usize), String> {
    let lats = parse_list("latitude", q.latitude.as_deref())?;
    let lons = parse_list("longitude", q.longitude.as_deref())?;
    if lats.len() != lons.len() {
        return Err("Parameter 'latitude' and 'longitude' must have the same number of elements".into());
    }
    if lats.len() > MAX_COORDINATES {
        return Err(format!("Only up to {MAX_COORDINATES} locations can be requested at once"));
    }
    for &lat in &lats {
        if !(-90.0..=90.0).contains(&lat) {
            return Err(format!("Latitude must be in range of -90 to 90°. Given: {lat}."));
        }
    }
    for &lon in &lons {
        if !(-180.0..=180.0).contains(&lon) {
            return Err(format!("Longitude must be in range of -180 to 180°. Given: {lon}."));
        }
    }
    match q.timezone.as_deref() {
        None | Some("GMT" | "UTC" | "gmt" | "utc") => {}
        Some(other) => return Err(format!("The stub serves timezone GMT only, got {other}")),
    }
    let (start, end) = match (q.start_date.as_deref(), q.end_date.as_deref(), endpoint) {
        (Some(s), Some(e), _) => (parse_date("start_date", s)?, parse_date("end_date", e)?),
        (None, None, Endpoint::Forecast) => {
            let today = Utc::now().date_naive();
            let days = q.forecast_days.unwrap_or(7).clamp(1, 16);
            (today, today + Days::new(days - 1))
        }
        _ => return Err("Parameter 'start_date' and 'end_date' must be set together".into()),
    };
    if end < start {
        return Err(format!("Parameter 'end_date' must be after 'start_date' ({start} > {end})"));
    }
    for (name, date) in [("start_date", start), ("end_date", end)] {
        if date < options.min_date || date > options.max_date {
            return Err(format!(
                "Parameter '{name}' is out of allowed range from {} to {}",
                options.min_date, options.max_date
            ));
        }
    }
    let variables: Vec<&str> = match q.hourly.as_deref() {
        None => Vec::new(),
        Some(list) => list.split(',').map(str::trim).filter(|v| !v.is_empty()).collect(),
    };
    for v in &variables {
        if !VARIABLES.iter().any(|(name, _)| name == v) {
            return Err(format!("Cannot initialize WeatherVariable from invalid String value {v} for key hourly"));
        }
    }
    let hours = ((end - start).num_days() as usize + 1) * 24;
    let multi = lats.len() > 1;
    let locations: Vec<Value> = lats
        .iter()
        .zip(&lons)
        .enumerate()
        .map(|(i, (&lat, &lon))| location(i, multi, lat, lon, start, hours, &variables))
        .collect();
    let body = if multi { Value::Array(locations) } else { locations.into_iter().next().unwrap_or(Value::Null) };
    Ok((body, lats.len()))
}

fn location(
    index: usize,
    multi: bool,
    lat: f64,
    lon: f64,
    start: NaiveDate,
    hours: usize,
    variables: &[&str],
) -> Value {
    // Open-Meteo answers with the grid cell it used; the stub snaps to 0.01°.
    let (glat, glon) = ((lat * 100.0).round() / 100.0, (lon * 100.0).round() / 100.0);
    let start_hour = start.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc().timestamp() / 3600;
    let mut units = Map::new();
    units.insert("time".into(), json!("iso8601"));
    let mut hourly = Map::new();
    let times: Vec<String> = (0..hours as i64)
        .map(|h| {
            chrono::DateTime::from_timestamp((start_hour + h) * 3600, 0)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M")
                .to_string()
        })
        .collect();
    hourly.insert("time".into(), json!(times));
    for &v in variables {
        let unit = VARIABLES.iter().find(|(n, _)| *n == v).map_or("", |(_, u)| *u);
        units.insert(v.into(), json!(unit));
        let series: Vec<Value> = (0..hours as i64).map(|h| value_at(v, glat, glon, start_hour + h)).collect();
        hourly.insert(v.into(), Value::Array(series));
    }
    let mut obj = Map::new();
    obj.insert("latitude".into(), json!(glat));
    obj.insert("longitude".into(), json!(glon));
    obj.insert("generationtime_ms".into(), json!(0.1));
    obj.insert("utc_offset_seconds".into(), json!(0));
    obj.insert("timezone".into(), json!("GMT"));
    obj.insert("timezone_abbreviation".into(), json!("GMT"));
    obj.insert("elevation".into(), json!(elevation(glat, glon)));
    if multi {
        obj.insert("location_id".into(), json!(index));
    }
    obj.insert("hourly_units".into(), Value::Object(units));
    obj.insert("hourly".into(), Value::Object(hourly));
    Value::Object(obj)
}

/// splitmix64: a fixed, well-mixed hash so values depend only on the inputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit_interval(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn noise(lat: f64, lon: f64, hour: i64, salt: u64) -> f64 {
    let cell = ((lat * 100.0).round() as i64 as u64).wrapping_mul(1_000_003) ^ ((lon * 100.0).round() as i64 as u64);
    unit_interval(mix(cell ^ mix(hour as u64 ^ salt.wrapping_mul(0xA24B_AED4_963E_E407))))
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn elevation(lat: f64, lon: f64) -> f64 {
    round1(noise(lat, lon, 0, 7) * 500.0)
}

/// The deterministic value of `variable` at a cell and an hour (hours since the epoch, UTC).
pub fn value_at(variable: &str, lat: f64, lon: f64, hour: i64) -> Value {
    let hour_of_day = hour.rem_euclid(24) as f64;
    let precip_draw = noise(lat, lon, hour, 3);
    let precipitation = if precip_draw > 0.8 { round1((precip_draw - 0.8) * 20.0) } else { 0.0 };
    match variable {
        "temperature_2m" => {
            let daily = (std::f64::consts::TAU * (hour_of_day - 9.0) / 24.0).sin() * 5.0;
            json!(round1(28.0 - 0.45 * lat.abs() + daily + (noise(lat, lon, hour, 1) - 0.5) * 4.0))
        }
        "wind_speed_10m" => json!(round1(3.0 + noise(lat, lon, hour, 2) * 40.0)),
        "precipitation" => json!(precipitation),
        "weather_code" => {
            let cloud = noise(lat, lon, hour, 4);
            let code = match precipitation {
                p if p >= 2.5 => 65,
                p if p >= 1.0 => 63,
                p if p > 0.0 => 61,
                _ if cloud > 0.75 => 3,
                _ if cloud > 0.5 => 2,
                _ if cloud > 0.25 => 1,
                _ => 0,
            };
            json!(code)
        }
        "relative_humidity_2m" => json!((40.0 + noise(lat, lon, hour, 5) * 60.0).round()),
        "wind_direction_10m" => json!((noise(lat, lon, hour, 6) * 360.0).round()),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_json(stub: &Stub, uri: &str) -> (StatusCode, HeaderMap, Value) {
        let resp = stub.router().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    const HOURLY: &str = "hourly=temperature_2m,wind_speed_10m,precipitation,weather_code&timezone=GMT";

    #[tokio::test]
    async fn one_coordinate_is_an_object_several_are_a_list_in_order() {
        let stub = Stub::new(Options::default());
        let (status, _, one) = get_json(
            &stub,
            &format!("/v1/forecast?latitude=52.52&longitude=13.41&{HOURLY}&start_date=2026-11-24&end_date=2026-11-24"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(one.is_object());
        assert_eq!(one["hourly"]["time"].as_array().unwrap().len(), 24);
        assert_eq!(one["hourly"]["time"][13], json!("2026-11-24T13:00"));
        assert_eq!(one["hourly_units"]["temperature_2m"], json!("°C"));
        assert_eq!(one["hourly"]["weather_code"].as_array().unwrap().len(), 24);

        let (_, _, many) = get_json(
            &stub,
            &format!("/v1/forecast?latitude=52.52,-33.9,0&longitude=13.41,18.4,0&{HOURLY}&start_date=2026-11-24&end_date=2026-11-25"),
        )
        .await;
        let many = many.as_array().unwrap();
        assert_eq!(many.len(), 3);
        assert_eq!((many[1]["latitude"].clone(), many[1]["longitude"].clone()), (json!(-33.9), json!(18.4)));
        assert_eq!(
            many[0]["hourly"]["temperature_2m"].as_array().unwrap()[..24],
            one["hourly"]["temperature_2m"].as_array().unwrap()[..]
        );
        assert_eq!(many[2]["hourly"]["precipitation"].as_array().unwrap().len(), 48);
        assert_eq!(stub.stats(), Stats { requests: 2, ok: 2, coordinates: 4, ..Stats::default() });
    }

    #[tokio::test]
    async fn values_are_deterministic_and_plausible() {
        let uri =
            format!("/v1/archive?latitude=10,60&longitude=20,-5&{HOURLY}&start_date=2025-01-01&end_date=2025-01-31");
        let (_, _, a) = get_json(&Stub::new(Options::default()), &uri).await;
        let (_, _, b) = get_json(&Stub::new(Options::default()), &uri).await;
        assert_eq!(a, b);
        for loc in a.as_array().unwrap() {
            for t in loc["hourly"]["temperature_2m"].as_array().unwrap() {
                assert!((-40.0..50.0).contains(&t.as_f64().unwrap()), "{t}");
            }
            for p in loc["hourly"]["precipitation"].as_array().unwrap() {
                assert!(p.as_f64().unwrap() >= 0.0);
            }
        }
    }

    #[tokio::test]
    async fn invalid_requests_get_open_meteo_errors() {
        let stub = Stub::new(Options { min_date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(), ..Options::default() });
        let cases = [
            (
                "/v1/forecast?latitude=91&longitude=0&start_date=2026-02-01&end_date=2026-02-01",
                "Latitude must be in range of -90 to 90°",
            ),
            (
                "/v1/forecast?latitude=1,2&longitude=0&start_date=2026-02-01&end_date=2026-02-01",
                "must have the same number of elements",
            ),
            (
                "/v1/forecast?latitude=1&longitude=0&start_date=2025-12-31&end_date=2026-01-01",
                "Parameter 'start_date' is out of allowed range",
            ),
            (
                "/v1/forecast?latitude=1&longitude=0&hourly=snow_depthx&start_date=2026-02-01&end_date=2026-02-01",
                "invalid String value snow_depthx",
            ),
            ("/v1/archive?latitude=1&longitude=0", "must be set together"),
        ];
        for (uri, reason) in cases {
            let (status, _, body) = get_json(&stub, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(body["error"], json!(true));
            assert!(body["reason"].as_str().unwrap().contains(reason), "{uri}: {body}");
        }
        assert_eq!(stub.stats().rejected, cases.len() as u64);
    }

    #[tokio::test]
    async fn injected_failures_rate_limits_and_api_keys() {
        let stub = Stub::new(Options { api_key: Some("k3y".into()), ..Options::default() });
        let ok = "/v1/forecast?latitude=1&longitude=1&start_date=2026-02-01&end_date=2026-02-01&apikey=k3y";
        assert_eq!(get_json(&stub, ok).await.0, StatusCode::OK);
        assert_eq!(get_json(&stub, &ok.replace("k3y", "nope")).await.0, StatusCode::UNAUTHORIZED);

        stub.set_faults(Faults { failure_rate: 1.0, failure_status: 429, ..Faults::default() });
        let (status, headers, _) = get_json(&stub, ok).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "1");

        stub.set_faults(Faults { failure_rate: 0.5, ..Faults::default() });
        let mut failed = 0;
        for _ in 0..200 {
            if get_json(&stub, ok).await.0 == StatusCode::SERVICE_UNAVAILABLE {
                failed += 1;
            }
        }
        assert!((60..140).contains(&failed), "{failed} of 200 failed at rate 0.5");

        stub.set_faults(Faults { rate_limit_per_minute: 2, ..Faults::default() });
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(get_json(&stub, ok).await.0);
        }
        assert_eq!(got, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
        let s = stub.stats();
        assert_eq!((s.failures_injected, s.rate_limited), (1 + failed, 1));
    }
}
