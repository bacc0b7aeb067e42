//! delta-writer's configuration, read once at init.

use fleetlake_core::config::{ConfigError, Env, LakeConfig, Prefix};
use fleetlake_delta::DeltaSettings;
use url::Url;

/// Everything delta-writer reads from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `LAKE_BUCKET`, `LANDING_PREFIX`, `QUARANTINE_PREFIX`.
    pub(crate) lake: LakeConfig,
    /// `ENRICHED_PREFIX` (default `enriched/`): where enriched positions are read.
    pub(crate) enriched_prefix: Prefix,
    /// `CHUNK_RECORDS` (default 20000) and `CHUNK_BYTES` (default 8 MiB of input lines): a step converts and
    /// checks rows until it holds either many; together they bound memory whatever the lines' length.
    pub(crate) chunk_records: usize,
    pub(crate) chunk_bytes: usize,
    /// `QUARANTINE_PART_BYTES` (default 16 MiB): quarantine lines held before they are written as one part.
    pub(crate) quarantine_part_bytes: usize,
    /// `TARGET_FILE_BYTES` (default 128 MiB): a data file is closed once it reaches this size.
    pub(crate) target_file_bytes: u64,
    /// `ENCODERS` (default 1; 0: one per core the function may use, at most 4): Parquet writers encoding and
    /// uploading at once in one append. More than one measured no faster with two CPUs (docs/benchmarks.md).
    pub(crate) encoders: usize,
    /// The Delta settings: the tables under `BRONZE_PREFIX` (default `bronze/`), `CHECKPOINT_INTERVAL` (default 100), `LOG_RETENTION` (default `interval 30 days`),
    /// `TXN_RETENTION` (default `interval 7 days`), and the storage options built from `AWS_ENDPOINT_URL` and
    /// `AWS_REGION`.
    pub(crate) delta: DeltaSettings,
}

/// A Delta interval such as `interval 30 days`.
fn interval(env: &Env, var: &str, default: &str) -> Result<String, ConfigError> {
    let raw = env.get(var).unwrap_or(default).trim().to_owned();
    let mut words = raw.split_whitespace();
    let ok = words.next() == Some("interval")
        && words.next().is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0))
        && words
            .next()
            .is_some_and(|u| matches!(u, "hour" | "hours" | "day" | "days" | "week" | "weeks" | "minute" | "minutes"))
        && words.next().is_none();
    if ok {
        Ok(raw)
    } else {
        Err(ConfigError::new(var, format!("{raw:?} is not a Delta interval such as \"interval 7 days\"")))
    }
}

impl Config {
    pub(crate) fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let lake = LakeConfig::from_env(env)?;
        let bronze_prefix = Prefix::parse("BRONZE_PREFIX", env.get("BRONZE_PREFIX").unwrap_or("bronze/"))?;
        let checkpoint_interval: u64 = env.parse_or("CHECKPOINT_INTERVAL", 100)?;
        if checkpoint_interval == 0 {
            return Err(ConfigError::new("CHECKPOINT_INTERVAL", "must be at least 1"));
        }
        // deltalake 1.x commits to S3 with create-only PUTs. Its old DynamoDB locking provider is gone: setting it
        // would select a rename-based commit that is unsafe with concurrent writers.
        for var in ["AWS_S3_LOCKING_PROVIDER", "AWS_S3_ALLOW_UNSAFE_RENAME"] {
            if env.get(var).is_some() {
                return Err(ConfigError::new(
                    var,
                    "must not be set: commits use S3 conditional puts (If-None-Match), which need no lock",
                ));
            }
        }
        let bronze_url = Url::parse(&format!("s3://{}/{}", lake.bucket, bronze_prefix))
            .map_err(|e| ConfigError::new("BRONZE_PREFIX", format!("not usable in a URL: {e}")))?;
        let storage_options = fleetlake_delta::storage_options(env);
        Ok(Self {
            enriched_prefix: Prefix::parse("ENRICHED_PREFIX", env.get("ENRICHED_PREFIX").unwrap_or("enriched/"))?,
            chunk_records: env.count_or("CHUNK_RECORDS", 20_000)?,
            chunk_bytes: env.count_or("CHUNK_BYTES", 8 << 20)?,
            quarantine_part_bytes: env
                .count_or("QUARANTINE_PART_BYTES", fleetlake_aws::quarantine::DEFAULT_PART_BYTES)?,
            target_file_bytes: env.parse_or("TARGET_FILE_BYTES", 128 << 20)?,
            encoders: env.parse_or("ENCODERS", 1)?,
            delta: DeltaSettings {
                bronze_url,
                storage_options,
                checkpoint_interval,
                log_retention: interval(env, "LOG_RETENTION", "interval 30 days")?,
                txn_retention: interval(env, "TXN_RETENTION", "interval 7 days")?,
            },
            lake,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_variable() {
        let cfg = Config::from_env(&Env::from_pairs([
            ("LAKE_BUCKET", "lake"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ]))
        .unwrap();
        assert_eq!(cfg.delta.bronze_url.as_str(), "s3://lake/bronze/");
        assert_eq!(cfg.delta.checkpoint_interval, 100);
        assert_eq!(cfg.delta.storage_options["AWS_ALLOW_HTTP"], "true");
        for (var, value) in [
            ("CHECKPOINT_INTERVAL", "0"),
            ("CHUNK_RECORDS", "x"),
            ("ENCODERS", "-1"),
            ("LOG_RETENTION", "30 days"),
            ("TXN_RETENTION", "interval -1 days"),
            ("AWS_S3_LOCKING_PROVIDER", "dynamodb"),
            ("BRONZE_PREFIX", "/abs"),
        ] {
            let err = Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake"), (var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
    }
}
