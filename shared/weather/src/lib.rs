//! Open-Meteo-compatible weather client: grid-cell batching, an LRU cache kept across warm invocations,
//! retries with full-jitter backoff, `Retry-After`, and a circuit breaker.
//!
//! A record's weather is looked up by cell-day: latitude and longitude rounded to the grid (default 0.1°) and
//! the UTC day of its timestamp. Cells missing from the cache are fetched in requests of up to `batch_size`
//! coordinates for one day each, a few requests at a time. Whatever cannot be had is reported as
//! [`Lookup::Unavailable`] or [`Lookup::OutOfRange`]: the caller flags the record, it never drops it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use chrono::{Days, NaiveDate};
use futures::StreamExt;
use serde_json::Value;
use tracing::{debug, instrument, warn};

use fleetlake_core::config::{ConfigError, Env};
pub use fleetlake_core::weather::{parse_response, CellDay, DaySeries, Lookup, HOURLY};

/// Client settings, from the environment.
#[derive(Clone)]
pub struct WeatherConfig {
    /// `WEATHER_API_URL` (default `https://api.open-meteo.com`): scheme and host, no path.
    pub base_url: String,
    /// `WEATHER_API_KEY_PARAM` (optional): SSM parameter holding the commercial API key, read at init.
    pub api_key_param: Option<String>,
    /// The API key itself, once read (never logged; redacted from `Debug`).
    pub api_key: Option<String>,
    /// `WEATHER_BATCH_SIZE` (default 100, at most 1000): coordinates per request.
    pub batch_size: usize,
    /// `WEATHER_CONCURRENCY` (default 4): requests in flight at once.
    pub concurrency: usize,
    /// `WEATHER_GRID_DEG` (default 0.1): grid cell size in degrees.
    pub grid_deg: f64,
    /// `WEATHER_TIMEOUT_MS` (default 10000): deadline of one HTTP attempt.
    pub timeout: Duration,
    /// `WEATHER_MAX_RETRIES` (default 3): retries after a failed attempt (429, 5xx, timeout, malformed body).
    pub max_retries: u32,
    /// `WEATHER_BACKOFF_BASE_MS` (default 200): first backoff ceiling; doubles per retry, full jitter.
    pub backoff_base: Duration,
    /// `WEATHER_BACKOFF_CAP_MS` (default 5000): largest wait between attempts, `Retry-After` included.
    pub backoff_cap: Duration,
    /// `WEATHER_BREAKER_THRESHOLD` (default 5): consecutive failed attempts that open the circuit.
    pub breaker_threshold: u32,
    /// `WEATHER_BREAKER_COOLDOWN_MS` (default 30000): how long an open circuit refuses calls.
    pub breaker_cooldown: Duration,
    /// `WEATHER_CACHE_CELLS` (default 50000): cell-days kept in memory (about 0.7 KB each).
    pub cache_cells: usize,
    /// `WEATHER_FORECAST_PAST_DAYS` (default 92): older days are asked of `/v1/archive`.
    pub forecast_past_days: u64,
    /// `WEATHER_FORECAST_DAYS` (default 16): days after today the API can serve; later ones are out of range.
    pub forecast_days: u64,
}

impl std::fmt::Debug for WeatherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeatherConfig")
            .field("base_url", &self.base_url)
            .field("api_key_param", &self.api_key_param)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("batch_size", &self.batch_size)
            .field("concurrency", &self.concurrency)
            .field("grid_deg", &self.grid_deg)
            .finish_non_exhaustive()
    }
}

impl WeatherConfig {
    /// Reads the `WEATHER_*` variables (the key itself comes later, from SSM).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let base_url =
            env.get("WEATHER_API_URL").unwrap_or("https://api.open-meteo.com").trim_end_matches('/').to_owned();
        let scheme_ok = base_url.starts_with("https://") || base_url.starts_with("http://");
        if !scheme_ok || base_url.contains('?') || base_url.chars().any(char::is_whitespace) {
            return Err(ConfigError::new("WEATHER_API_URL", "must be an http(s) URL without query"));
        }
        let ms = |var: &str, default: u64| env.parse_or(var, default).map(Duration::from_millis);
        let cfg = Self {
            base_url,
            api_key_param: env.get("WEATHER_API_KEY_PARAM").map(str::to_owned),
            api_key: None,
            batch_size: env.parse_or("WEATHER_BATCH_SIZE", 100)?,
            concurrency: env.parse_or("WEATHER_CONCURRENCY", 4)?,
            grid_deg: env.parse_or("WEATHER_GRID_DEG", 0.1)?,
            timeout: ms("WEATHER_TIMEOUT_MS", 10_000)?,
            max_retries: env.parse_or("WEATHER_MAX_RETRIES", 3)?,
            backoff_base: ms("WEATHER_BACKOFF_BASE_MS", 200)?,
            backoff_cap: ms("WEATHER_BACKOFF_CAP_MS", 5_000)?,
            breaker_threshold: env.parse_or("WEATHER_BREAKER_THRESHOLD", 5)?,
            breaker_cooldown: ms("WEATHER_BREAKER_COOLDOWN_MS", 30_000)?,
            cache_cells: env.parse_or("WEATHER_CACHE_CELLS", 50_000)?,
            forecast_past_days: env.parse_or("WEATHER_FORECAST_PAST_DAYS", 92)?,
            forecast_days: env.parse_or("WEATHER_FORECAST_DAYS", 16)?,
        };
        if !(1..=1000).contains(&cfg.batch_size) {
            return Err(ConfigError::new("WEATHER_BATCH_SIZE", "must be 1-1000 (the API's limit per request)"));
        }
        if cfg.concurrency == 0 {
            return Err(ConfigError::new("WEATHER_CONCURRENCY", "must be at least 1"));
        }
        if !(0.001..=5.0).contains(&cfg.grid_deg) {
            return Err(ConfigError::new("WEATHER_GRID_DEG", "must be between 0.001 and 5"));
        }
        if cfg.cache_cells == 0 {
            return Err(ConfigError::new("WEATHER_CACHE_CELLS", "must be at least 1"));
        }
        if cfg.api_key_param.is_some() {
            cfg.key_transport()?;
        }
        Ok(cfg)
    }
}

impl WeatherConfig {
    /// A key travels in the query string: only over https, or plain http to this machine (a local stand-in).
    pub fn key_transport(&self) -> Result<(), ConfigError> {
        let rest = self.base_url.strip_prefix("http://");
        let host = rest.map(|r| {
            let authority = r.split('/').next().unwrap_or_default();
            match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default(),
                None => authority.split(':').next().unwrap_or_default(),
            }
        });
        match host {
            None | Some("localhost" | "127.0.0.1" | "::1") => Ok(()),
            Some(_) => Err(ConfigError::new(
                "WEATHER_API_URL",
                "must be https:// when an API key is configured (plain http only to a loopback address)",
            )),
        }
    }
}

/// Largest weather response read, in bytes: a full batch of 1,000 cells is about 3 MB; anything larger is not an
/// answer to our request and is refused before it fills the function's memory.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Counters since the client was built (they span warm invocations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeatherStats {
    /// HTTP attempts made.
    pub requests: u64,
    /// Cell-days answered from the cache.
    pub cache_hits: u64,
    /// Cell-days fetched successfully.
    pub cells_fetched: u64,
    /// Requests that failed after all retries.
    pub failed_requests: u64,
    /// Requests refused because the circuit was open.
    pub short_circuited: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    cache_hits: AtomicU64,
    cells_fetched: AtomicU64,
    failed_requests: AtomicU64,
    short_circuited: AtomicU64,
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("HTTP {status}: {reason}")]
    Status { status: u16, reason: String, retry_after: Option<Duration> },
    #[error("transport: {message}")]
    Transport {
        message: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("date out of the API's range: {0}")]
    OutOfRange(String),
    #[error("circuit open")]
    CircuitOpen,
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
}

impl FetchError {
    fn retryable(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status == 429 || *status >= 500,
            FetchError::Transport { .. } | FetchError::Malformed(_) => true,
            FetchError::OutOfRange(_) | FetchError::CircuitOpen | FetchError::TooLarge(_) => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Endpoint {
    Forecast,
    Archive,
}

/// The weather client; build once at init and share across invocations.
#[derive(Debug)]
pub struct WeatherClient {
    http: reqwest::Client,
    cfg: WeatherConfig,
    cache: Mutex<lru::LruCache<CellDay, Arc<DaySeries>>>,
    /// Cell-days being fetched by a lookup now, with a channel that closes when that lookup is done.
    inflight: Mutex<HashMap<CellDay, watch::Receiver<()>>>,
    breaker: Mutex<Breaker>,
    counters: Counters,
}

impl WeatherClient {
    /// A client with its connection pool, per-attempt timeout and empty cache. It follows no redirect (the URL
    /// may carry the API key, which a redirect would hand to another origin) and sends no `Referer`.
    pub fn new(cfg: WeatherConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .build()?;
        let capacity = NonZeroUsize::new(cfg.cache_cells).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            http,
            cfg,
            cache: Mutex::new(lru::LruCache::new(capacity)),
            inflight: Mutex::new(HashMap::new()),
            breaker: Mutex::new(Breaker::default()),
            counters: Counters::default(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> WeatherStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        WeatherStats {
            requests: get(&c.requests),
            cache_hits: get(&c.cache_hits),
            cells_fetched: get(&c.cells_fetched),
            failed_requests: get(&c.failed_requests),
            short_circuited: get(&c.short_circuited),
        }
    }

    /// Weather for every cell-day in `cells`; `today` decides forecast, archive or out of range. No retry is
    /// started that could not finish before `deadline` (the invocation's).
    #[instrument(skip_all, fields(cells = cells.len()))]
    pub async fn lookup(
        &self,
        cells: &BTreeSet<CellDay>,
        today: NaiveDate,
        deadline: Option<Instant>,
    ) -> HashMap<CellDay, Lookup> {
        let mut answers = HashMap::with_capacity(cells.len());
        let mut to_fetch: BTreeMap<(Endpoint, NaiveDate), Vec<CellDay>> = BTreeMap::new();
        // Cells another lookup is fetching right now (objects are enriched concurrently and share their cells): wait
        // for its answer instead of asking the API again.
        let mut waiting: Vec<(CellDay, watch::Receiver<()>)> = Vec::new();
        // Held until this lookup's own fetches are in the cache: dropping it wakes the lookups waiting on them.
        let (fetched, fetching) = watch::channel(());
        {
            let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for &cell in cells {
                if let Some(series) = cache.get(&cell) {
                    answers.insert(cell, Lookup::Found(series.clone()));
                    self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Some(other) = inflight.get(&cell) {
                    waiting.push((cell, other.clone()));
                    continue;
                }
                match self.endpoint_for(cell.day, today) {
                    Some(endpoint) => {
                        to_fetch.entry((endpoint, cell.day)).or_default().push(cell);
                        inflight.insert(cell, fetching.clone());
                    }
                    None => {
                        answers.insert(cell, Lookup::OutOfRange);
                    }
                }
            }
        }
        let mine: Vec<CellDay> = to_fetch.values().flatten().copied().collect();
        self.fetch_into(to_fetch, &mut answers, deadline).await;
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for cell in &mine {
                if inflight.get(cell).is_some_and(|r| r.same_channel(&fetching)) {
                    inflight.remove(cell);
                }
            }
        }
        drop(fetched);
        if waiting.is_empty() {
            return answers;
        }
        // The other lookups' answers, from the cache; a cell they could not get is asked for again here.
        let mut again: BTreeMap<(Endpoint, NaiveDate), Vec<CellDay>> = BTreeMap::new();
        for (cell, mut done) in waiting {
            // Err: its fetcher is finished (the sender is gone), which is all this waits for.
            let _ = done.changed().await;
            let cached = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&cell).cloned();
            match (cached, self.endpoint_for(cell.day, today)) {
                (Some(series), _) => {
                    self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                    answers.insert(cell, Lookup::Found(series));
                }
                (None, Some(endpoint)) => again.entry((endpoint, cell.day)).or_default().push(cell),
                (None, None) => {
                    answers.insert(cell, Lookup::OutOfRange);
                }
            }
        }
        self.fetch_into(again, &mut answers, deadline).await;
        answers
    }

    /// Fetches the cells (by endpoint and day, in batches of `WEATHER_BATCH_SIZE`, `WEATHER_CONCURRENCY` at a time),
    /// caching what it gets and answering every cell.
    async fn fetch_into(
        &self,
        to_fetch: BTreeMap<(Endpoint, NaiveDate), Vec<CellDay>>,
        answers: &mut HashMap<CellDay, Lookup>,
        deadline: Option<Instant>,
    ) {
        let requests: Vec<(Endpoint, NaiveDate, Vec<CellDay>)> = to_fetch
            .into_iter()
            .flat_map(|((endpoint, day), cells)| {
                cells.chunks(self.cfg.batch_size).map(|c| (endpoint, day, c.to_vec())).collect::<Vec<_>>()
            })
            .collect();
        let mut results = futures::stream::iter(requests)
            .map(|(endpoint, day, cells)| async move {
                let outcome = self.fetch_with_retries(endpoint, day, &cells, deadline).await;
                (cells, outcome)
            })
            .buffer_unordered(self.cfg.concurrency);
        while let Some((batch, outcome)) = results.next().await {
            match outcome {
                Ok(series) => {
                    let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    self.counters.cells_fetched.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for (cell, s) in batch.into_iter().zip(series) {
                        let s = Arc::new(s);
                        cache.put(cell, s.clone());
                        answers.insert(cell, Lookup::Found(s));
                    }
                }
                Err(FetchError::OutOfRange(reason)) => {
                    debug!(reason, cells = batch.len(), "weather: out of range");
                    answers.extend(batch.into_iter().map(|c| (c, Lookup::OutOfRange)));
                }
                Err(e) => {
                    warn!(error = %e, cells = batch.len(), "weather unavailable for a batch of cells");
                    answers.extend(batch.into_iter().map(|c| (c, Lookup::Unavailable)));
                }
            }
        }
    }

    fn endpoint_for(&self, day: NaiveDate, today: NaiveDate) -> Option<Endpoint> {
        if day > today.checked_add_days(Days::new(self.cfg.forecast_days.saturating_sub(1)))? {
            None
        } else if day < today.checked_sub_days(Days::new(self.cfg.forecast_past_days))? {
            Some(Endpoint::Archive)
        } else {
            Some(Endpoint::Forecast)
        }
    }

    #[instrument(skip(self, cells, deadline), fields(cells = cells.len()))]
    async fn fetch_with_retries(
        &self,
        endpoint: Endpoint,
        day: NaiveDate,
        cells: &[CellDay],
        deadline: Option<Instant>,
    ) -> Result<Vec<DaySeries>, FetchError> {
        let mut attempt = 0_u32;
        loop {
            if !self.breaker_allows() {
                self.counters.short_circuited.fetch_add(1, Ordering::Relaxed);
                return Err(FetchError::CircuitOpen);
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let result = self.fetch_once(endpoint, day, cells).await;
            self.breaker_record(match &result {
                Ok(_) | Err(FetchError::OutOfRange(_)) => true,
                Err(e) => !e.retryable() && !matches!(e, FetchError::Status { status: 401 | 403, .. }),
            });
            let e = match result {
                Ok(series) => return Ok(series),
                Err(e) => e,
            };
            let wait = match &e {
                // The server named its own wait: honour it, or give up now if it is longer than we may wait.
                FetchError::Status { retry_after: Some(after), .. } if *after > self.cfg.backoff_cap => {
                    self.open_breaker_for(*after);
                    None
                }
                FetchError::Status { retry_after: Some(after), .. } => Some(*after),
                _ => {
                    let ceiling = self.cfg.backoff_base.saturating_mul(1 << attempt.min(16)).min(self.cfg.backoff_cap);
                    Some(ceiling.mul_f64(fastrand::f64()))
                }
            };
            // Another attempt must fit before the invocation's deadline, with a second to spare for writing.
            let fits = |wait: Duration| {
                deadline.is_none_or(|d| Instant::now() + wait + self.cfg.timeout + Duration::from_secs(1) < d)
            };
            match wait {
                Some(wait) if e.retryable() && attempt < self.cfg.max_retries && fits(wait) => {
                    debug!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "weather request failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => {
                    if !matches!(e, FetchError::OutOfRange(_)) {
                        self.counters.failed_requests.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Opens the circuit for `wait` (a `Retry-After` longer than any backoff): no call until then.
    fn open_breaker_for(&self, wait: Duration) {
        let mut b = self.breaker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        b.open_until = Some(Instant::now() + wait);
        warn!(
            wait_s = wait.as_secs(),
            "weather API asked to wait longer than the backoff cap; circuit opened until then"
        );
    }

    fn breaker_allows(&self) -> bool {
        let b = self.breaker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        b.open_until.is_none_or(|until| Instant::now() >= until)
    }

    /// Counts an attempt; after `breaker_threshold` consecutive failures the circuit opens for the cooldown.
    /// Once the cooldown has passed, attempts go through again (half-open): the first failure re-opens it at
    /// once, the first success closes it.
    fn breaker_record(&self, success: bool) {
        let mut b = self.breaker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if success {
            *b = Breaker::default();
            return;
        }
        b.consecutive_failures += 1;
        if b.consecutive_failures >= self.cfg.breaker_threshold {
            if b.open_until.is_none_or(|until| Instant::now() >= until) {
                warn!(
                    failures = b.consecutive_failures,
                    cooldown_ms = self.cfg.breaker_cooldown.as_millis() as u64,
                    "weather API circuit opened"
                );
            }
            b.open_until = Some(Instant::now() + self.cfg.breaker_cooldown);
        }
    }

    async fn fetch_once(
        &self,
        endpoint: Endpoint,
        day: NaiveDate,
        cells: &[CellDay],
    ) -> Result<Vec<DaySeries>, FetchError> {
        let (mut lats, mut lons) = (String::new(), String::new());
        for (i, cell) in cells.iter().enumerate() {
            let (lat, lon) = cell.centre(self.cfg.grid_deg);
            if i > 0 {
                lats.push(',');
                lons.push(',');
            }
            lats.push_str(&lat.to_string());
            lons.push_str(&lon.to_string());
        }
        let path = match endpoint {
            Endpoint::Forecast => "forecast",
            Endpoint::Archive => "archive",
        };
        let mut url = format!(
            "{}/v1/{path}?latitude={lats}&longitude={lons}&hourly={HOURLY}&start_date={day}&end_date={day}&timezone=GMT",
            self.cfg.base_url
        );
        if let Some(key) = &self.cfg.api_key {
            url.push_str("&apikey=");
            url.push_str(key);
        }
        // The URL may carry the API key: errors are rendered without it.
        let resp = self.http.get(&url).send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let body = read_capped(resp, MAX_RESPONSE_BYTES).await?;
        if status != 200 {
            let reason = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
            if status == 400 && reason.contains("out of allowed range") {
                return Err(FetchError::OutOfRange(reason));
            }
            return Err(FetchError::Status { status, reason, retry_after });
        }
        parse_response(&body, cells.len(), day).map_err(FetchError::Malformed)
    }
}

/// The response body, refused (as malformed) past `cap` bytes, whatever its `Content-Length` says.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, FetchError> {
    let too_large = || FetchError::TooLarge(cap);
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` as seconds (`120`) or as an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

/// A reqwest error without its URL (which may carry the API key).
fn transport(source: reqwest::Error) -> FetchError {
    FetchError::Transport { message: describe(&source), source }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "body could not be read"
    } else {
        "request failed"
    };
    let mut msg = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
    }

    #[test]
    fn config_is_validated_and_the_key_never_shows() {
        let env = Env::from_pairs([("WEATHER_BATCH_SIZE", "1001")]);
        assert_eq!(WeatherConfig::from_env(&env).unwrap_err().var, "WEATHER_BATCH_SIZE");
        let env = Env::from_pairs([("WEATHER_API_URL", "ftp://x")]);
        assert_eq!(WeatherConfig::from_env(&env).unwrap_err().var, "WEATHER_API_URL");
        let mut cfg = WeatherConfig::from_env(&Env::default()).unwrap();
        cfg.api_key = Some("s3cr3t".into());
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
        assert_eq!(cfg.batch_size, 100);
    }

    #[test]
    fn a_key_travels_only_over_https_or_to_this_machine() {
        let with = |url: &str| {
            WeatherConfig::from_env(&Env::from_pairs([("WEATHER_API_URL", url), ("WEATHER_API_KEY_PARAM", "/k")]))
        };
        assert_eq!(with("http://api.example.com").unwrap_err().var, "WEATHER_API_URL");
        assert_eq!(with("http://127.0.0.1.example.com:80").unwrap_err().var, "WEATHER_API_URL");
        for ok in ["https://api.example.com", "http://127.0.0.1:8089", "http://localhost", "http://[::1]:9"] {
            assert!(with(ok).is_ok(), "{ok}");
        }
        // Without a key, plain http is the operator's choice.
        assert!(WeatherConfig::from_env(&Env::from_pairs([("WEATHER_API_URL", "http://api.example.com")])).is_ok());
    }

    /// A one-answer HTTP server on this machine: every request gets `response`; the requests are kept.
    async fn canned(response: Vec<u8>) -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let requests = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (requests, response) = (requests.clone(), response.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    requests.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    let _ = sock.write_all(&response).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (url, seen)
    }

    async fn look_up_one(url: &str) -> (Lookup, WeatherStats) {
        let env =
            Env::from_pairs([("WEATHER_API_URL", url), ("WEATHER_MAX_RETRIES", "2"), ("WEATHER_BACKOFF_BASE_MS", "1")]);
        let mut cfg = WeatherConfig::from_env(&env).unwrap();
        cfg.api_key = Some("s3cr3t".into());
        let client = WeatherClient::new(cfg).unwrap();
        let cell = CellDay::of(53.5, 9.9, day(), 0.1);
        let mut answers = client.lookup(&BTreeSet::from([cell]), day(), None).await;
        (answers.remove(&cell).unwrap(), client.stats())
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_so_the_key_stays_with_its_origin() {
        let (url, seen) = canned(
            b"HTTP/1.1 302 Found\r\nLocation: /stolen\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        )
        .await;
        let (lookup, stats) = look_up_one(&url).await;
        assert!(matches!(lookup, Lookup::Unavailable));
        assert_eq!(stats.requests, 1, "a redirect is an answer, not retried");
        let requests = seen.lock().unwrap().clone();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert!(requests[0].starts_with("GET /v1/forecast?"), "{}", requests[0]);
        assert!(!requests[0].to_ascii_lowercase().contains("referer"));
    }

    #[tokio::test]
    async fn a_response_past_the_size_cap_is_refused_without_being_held() {
        let mut huge = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".to_vec();
        huge.resize(huge.len() + MAX_RESPONSE_BYTES + 1, b' ');
        let (url, _) = canned(huge).await;
        let (lookup, stats) = look_up_one(&url).await;
        assert!(matches!(lookup, Lookup::Unavailable));
        assert_eq!(stats.requests, 1, "too large is not retried");
        let announced = b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\nConnection: close\r\n\r\n{}".to_vec();
        let (url, _) = canned(announced).await;
        assert!(matches!(look_up_one(&url).await.0, Lookup::Unavailable));
    }

    #[tokio::test]
    async fn concurrent_lookups_of_the_same_cells_ask_the_api_once() {
        let nulls = vec![Value::Null; 24];
        let warm = vec![4.5; 24];
        let times: Vec<String> = (0..24).map(|h| format!("{}T{h:02}:00", day())).collect();
        let body = json!({"hourly": {"time": times, "temperature_2m": warm, "wind_speed_10m": nulls,
                                     "precipitation": nulls, "weather_code": nulls}})
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (url, seen) = canned(response.into_bytes()).await;
        let client =
            WeatherClient::new(WeatherConfig::from_env(&Env::from_pairs([("WEATHER_API_URL", url.as_str())])).unwrap())
                .unwrap();
        let cells = BTreeSet::from([CellDay::of(53.5, 9.9, day(), 0.1)]);
        // Objects of one invocation are enriched at once and share their cells.
        let (a, b, c) = tokio::join!(
            client.lookup(&cells, day(), None),
            client.lookup(&cells, day(), None),
            client.lookup(&cells, day(), None)
        );
        for answers in [a, b, c] {
            assert!(matches!(answers.values().next(), Some(Lookup::Found(s)) if s.temperature_c[3] == Some(4.5)));
        }
        assert_eq!(seen.lock().unwrap().len(), 1, "one request for the three lookups");
        assert_eq!(client.stats().cache_hits, 2);
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let got = parse_retry_after(&soon).unwrap();
        assert!((Duration::from_secs(28)..=Duration::from_secs(30)).contains(&got), "{got:?}");
        assert_eq!(parse_retry_after("Mon, 01 Jan 2001 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn dates_pick_forecast_archive_or_out_of_range() {
        let client = WeatherClient::new(WeatherConfig::from_env(&Env::default()).unwrap()).unwrap();
        let today = day();
        assert_eq!(client.endpoint_for(today, today), Some(Endpoint::Forecast));
        assert_eq!(client.endpoint_for(today - Days::new(92), today), Some(Endpoint::Forecast));
        assert_eq!(client.endpoint_for(today - Days::new(93), today), Some(Endpoint::Archive));
        assert_eq!(client.endpoint_for(today + Days::new(15), today), Some(Endpoint::Forecast));
        assert_eq!(client.endpoint_for(today + Days::new(16), today), None);
    }
}
