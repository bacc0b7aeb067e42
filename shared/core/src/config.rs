//! Typed configuration read once from the environment, failing fast with the name of the bad variable.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// A missing or invalid configuration variable, named so the operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration variable {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// An error about `var`.
    pub fn new(var: &str, reason: impl Into<String>) -> Self {
        Self { var: var.to_owned(), reason: reason.into() }
    }
}

/// Where configuration values come from: the process environment in Lambda, a map in tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// A snapshot of the process environment (read once, at init).
    pub fn process() -> Self {
        Self { vars: std::env::vars().collect() }
    }

    /// An environment made of the given pairs, for tests and tools.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self { vars: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect() }
    }

    /// The value of `var`; an empty value counts as unset.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars.get(var).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    /// The value of `var`, or an error naming it.
    pub fn required(&self, var: &str) -> Result<&str, ConfigError> {
        self.get(var).ok_or_else(|| ConfigError::new(var, "required but not set"))
    }

    /// `var` parsed as `T`, or `default` when unset.
    pub fn parse_or<T>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e| ConfigError::new(var, format!("cannot parse {raw:?}: {e}"))),
        }
    }

    /// `var` as a count of at least 1 (a size, a chunk length), or `default` when unset.
    pub fn count_or(&self, var: &str, default: usize) -> Result<usize, ConfigError> {
        match self.parse_or(var, default)? {
            0 => Err(ConfigError::new(var, "must be at least 1")),
            n => Ok(n),
        }
    }
}

/// Whether `name` is a DynamoDB table name: 3-255 characters of `a-z A-Z 0-9 _ - .`.
pub fn dynamodb_table_name_ok(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// An S3 bucket name, checked against S3's naming rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketName(String);

impl BucketName {
    /// Validates `name` (3–63 characters of lowercase letters, digits, `.` and `-`, starting and ending alphanumeric).
    pub fn parse(var: &str, name: &str) -> Result<Self, ConfigError> {
        let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        let ok_ends = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
        if (3..=63).contains(&name.len()) && ok_chars && ok_ends {
            Ok(Self(name.to_owned()))
        } else {
            Err(ConfigError::new(var, format!("{name:?} is not a valid S3 bucket name")))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key prefix inside the lake bucket: relative, no `..` segment, always ending in `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// Validates `raw` and appends the trailing `/` when missing.
    pub fn parse(var: &str, raw: &str) -> Result<Self, ConfigError> {
        let raw = raw.trim();
        let bad = raw.is_empty()
            || raw.starts_with('/')
            || raw.split('/').any(|seg| seg == "..")
            || raw.chars().any(|c| c.is_control() || c == '\\');
        if bad {
            return Err(ConfigError::new(var, format!("{raw:?} is not a relative key prefix")));
        }
        Ok(Self(if raw.ends_with('/') { raw.to_owned() } else { format!("{raw}/") }))
    }

    /// The prefix, ending in `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the lake lives: the settings every function shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeConfig {
    /// `LAKE_BUCKET` (required): the one bucket of the lake.
    pub bucket: BucketName,
    /// `LANDING_PREFIX` (default `landing/`): raw landed objects.
    pub landing_prefix: Prefix,
    /// `QUARANTINE_PREFIX` (default `quarantine/`): rejected input with its reason.
    pub quarantine_prefix: Prefix,
    /// `EVENT_TIME_MAX_AHEAD_HOURS` (default 24) and `EVENT_TIME_MAX_AGE_DAYS` (default 365): how far an event time
    /// may lie from its record's ingestion; every stage that reads records applies the same window.
    pub event_window: crate::bronze::EventWindow,
}

impl LakeConfig {
    /// Reads `LAKE_BUCKET`, `LANDING_PREFIX`, `QUARANTINE_PREFIX` and the event-time window.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            bucket: BucketName::parse("LAKE_BUCKET", env.required("LAKE_BUCKET")?)?,
            landing_prefix: Prefix::parse("LANDING_PREFIX", env.get("LANDING_PREFIX").unwrap_or("landing/"))?,
            quarantine_prefix: Prefix::parse(
                "QUARANTINE_PREFIX",
                env.get("QUARANTINE_PREFIX").unwrap_or("quarantine/"),
            )?,
            event_window: crate::bronze::EventWindow::from_env(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lake_config_defaults_and_missing_bucket() {
        let cfg = LakeConfig::from_env(&Env::from_pairs([("LAKE_BUCKET", "my-lake")])).unwrap();
        assert_eq!(cfg.bucket.as_str(), "my-lake");
        assert_eq!(cfg.landing_prefix.as_str(), "landing/");
        assert_eq!(cfg.quarantine_prefix.as_str(), "quarantine/");

        let err = LakeConfig::from_env(&Env::default()).unwrap_err();
        assert_eq!(err.var, "LAKE_BUCKET");
        assert_eq!(err.to_string(), "configuration variable LAKE_BUCKET: required but not set");
    }

    #[test]
    fn prefixes_are_normalised_and_checked() {
        assert_eq!(Prefix::parse("P", "raw/in").unwrap().as_str(), "raw/in/");
        for bad in ["/abs/", "a/../b/", "", "a\\b"] {
            let err = Prefix::parse("LANDING_PREFIX", bad).unwrap_err();
            assert_eq!(err.var, "LANDING_PREFIX", "{bad:?}");
        }
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        assert!(BucketName::parse("B", "fleetlake-lake.1").is_ok());
        for bad in ["ab", "Upper", "-start", "end-", "has_underscore"] {
            assert!(BucketName::parse("B", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_or_names_the_variable() {
        let env = Env::from_pairs([("N", "x")]);
        assert_eq!(env.parse_or("M", 7_u32).unwrap(), 7);
        let err = env.parse_or("N", 7_u32).unwrap_err();
        assert_eq!(err.var, "N");
        assert!(err.reason.contains("\"x\""), "{}", err.reason);
    }
}
