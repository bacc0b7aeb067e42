//! predictions-api's configuration, read once at init.

use fleetlake_core::config::{ConfigError, Env};

/// Shortest `PAGINATION_KEY` accepted, in bytes (the HMAC-SHA256 block of security it keys).
pub(crate) const MIN_KEY_BYTES: usize = 32;

/// Everything predictions-api reads from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `PREDICTIONS_TABLE` (required): the DynamoDB table the predictor writes.
    pub(crate) table: String,
    /// `PAGINATION_KEY` (required, at least 32 bytes): signs pagination tokens. Every instance must share it
    /// (the template generates it in Secrets Manager); changing it invalidates the tokens handed out.
    pub(crate) pagination_key: Vec<u8>,
    /// `CACHE_MAX_AGE_SECONDS` (default 300): `Cache-Control: private, max-age=…` of a prediction.
    pub(crate) cache_max_age_s: u32,
    /// `CORS_ALLOW_ORIGINS` (default empty: CORS off): `*` or a comma-separated list of origins.
    pub(crate) cors: Cors,
}

/// Which browser origins may read the answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cors {
    /// No CORS headers, and `OPTIONS` is not a method of the API.
    Off,
    /// Any origin.
    Any,
    /// These origins (`scheme://host[:port]`, compared exactly).
    Origins(Vec<String>),
}

impl Cors {
    fn parse(raw: Option<&str>) -> Result<Self, ConfigError> {
        let raw = raw.map(str::trim).unwrap_or_default();
        if raw.is_empty() {
            return Ok(Cors::Off);
        }
        if raw == "*" {
            return Ok(Cors::Any);
        }
        let origins: Vec<String> = raw.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).collect();
        for o in &origins {
            let ok = url::Url::parse(o).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/" && u.query().is_none()
            });
            if !ok {
                return Err(ConfigError::new(
                    "CORS_ALLOW_ORIGINS",
                    format!("{o:?} is not an origin (scheme://host[:port]); use * or a comma-separated list"),
                ));
            }
        }
        Ok(Cors::Origins(origins))
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, when it may read the answer.
    pub(crate) fn allow(&self, origin: Option<&str>) -> Option<String> {
        match (self, origin) {
            (Cors::Off, _) | (_, None) => None,
            (Cors::Any, Some(_)) => Some("*".to_owned()),
            (Cors::Origins(list), Some(o)) => list.iter().any(|l| l == o).then(|| o.to_owned()),
        }
    }
}

impl Config {
    pub(crate) fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let table = env.required("PREDICTIONS_TABLE")?.to_owned();
        if !fleetlake_core::config::dynamodb_table_name_ok(&table) {
            return Err(ConfigError::new("PREDICTIONS_TABLE", format!("{table:?} is not a DynamoDB table name")));
        }
        let key = env.required("PAGINATION_KEY")?.as_bytes().to_vec();
        if key.len() < MIN_KEY_BYTES {
            return Err(ConfigError::new(
                "PAGINATION_KEY",
                format!("must be at least {MIN_KEY_BYTES} bytes, got {}", key.len()),
            ));
        }
        let cache_max_age_s: u32 = env.parse_or("CACHE_MAX_AGE_SECONDS", 300)?;
        if cache_max_age_s > 86_400 {
            return Err(ConfigError::new("CACHE_MAX_AGE_SECONDS", "must be at most 86400 (a day)"));
        }
        Ok(Self { table, pagination_key: key, cache_max_age_s, cors: Cors::parse(env.get("CORS_ALLOW_ORIGINS"))? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_and_refusals() {
        let c = Config::from_env(&Env::from_pairs([("PREDICTIONS_TABLE", "p"), ("PAGINATION_KEY", KEY)]));
        assert!(c.unwrap_err().to_string().contains("PREDICTIONS_TABLE"));
        let c = Config::from_env(&Env::from_pairs([("PREDICTIONS_TABLE", "preds"), ("PAGINATION_KEY", KEY)])).unwrap();
        assert_eq!((c.cache_max_age_s, c.cors), (300, Cors::Off));
        let short = Config::from_env(&Env::from_pairs([("PREDICTIONS_TABLE", "preds"), ("PAGINATION_KEY", "short")]));
        assert!(short.unwrap_err().to_string().contains("at least 32 bytes"));
        let cors = |v: &str| {
            Config::from_env(&Env::from_pairs([
                ("PREDICTIONS_TABLE", "preds"),
                ("PAGINATION_KEY", KEY),
                ("CORS_ALLOW_ORIGINS", v),
            ]))
        };
        assert_eq!(cors("*").unwrap().cors, Cors::Any);
        let list = cors("https://ops.example.com, http://localhost:3000/").unwrap().cors;
        assert_eq!(list.allow(Some("http://localhost:3000")).as_deref(), Some("http://localhost:3000"));
        assert_eq!(list.allow(Some("https://evil.example.com")), None);
        assert!(cors("ops.example.com").is_err());
        assert!(cors("https://ops.example.com/path").is_err());
    }
}
