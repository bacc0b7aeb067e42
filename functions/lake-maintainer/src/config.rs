//! lake-maintainer's configuration, read once at init.

use std::collections::HashMap;

use fleetlake_core::config::{BucketName, ConfigError, Env, Prefix};
use fleetlake_delta::maintain::MIN_RETENTION_HOURS;

/// Everything lake-maintainer reads from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `LAKE_BUCKET` (required).
    pub(crate) bucket: BucketName,
    /// `BRONZE_PREFIX` (default `bronze/`): where the Delta tables live.
    pub(crate) bronze_prefix: Prefix,
    /// `VACUUM_RETENTION_HOURS` (default 168, at least 24): how long a data file no version references is kept
    /// after its removal (or, never committed, after its upload).
    pub(crate) retention_hours: u32,
    /// `VACUUM_DRY_RUN` (default `false`): scheduled vacuums list what they would delete and delete nothing.
    pub(crate) dry_run: bool,
    /// `CHECKPOINT_INTERVAL` (default 100, as delta-writer's): a checkpoint older than this many versions is
    /// replaced by one at the current version.
    pub(crate) checkpoint_interval: u64,
    /// `COMPACT_TARGET_MB` (default 128, 1 to 1024): the size compacted files are packed to; files at least this
    /// big are left alone.
    pub(crate) compact_target_bytes: u64,
    /// `COMPACT_IDLE_MINUTES` (default 60): a partition is compacted once it has had no append for this long (late
    /// data may still arrive afterwards: it is one more small file, compacted on a later run).
    pub(crate) compact_idle_minutes: u32,
    /// deltalake storage options from `AWS_ENDPOINT_URL` and `AWS_REGION`.
    pub(crate) storage_options: HashMap<String, String>,
}

impl Config {
    pub(crate) fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let retention_hours: u32 = env.parse_or("VACUUM_RETENTION_HOURS", 168)?;
        if retention_hours < MIN_RETENTION_HOURS {
            return Err(ConfigError::new(
                "VACUUM_RETENTION_HOURS",
                format!("{retention_hours} is below {MIN_RETENTION_HOURS}: manifests and queries in flight may still name a removed file"),
            ));
        }
        let checkpoint_interval: u64 = env.parse_or("CHECKPOINT_INTERVAL", 100)?;
        if checkpoint_interval == 0 {
            return Err(ConfigError::new("CHECKPOINT_INTERVAL", "must be at least 1"));
        }
        let target_mb: u64 = env.parse_or("COMPACT_TARGET_MB", 128)?;
        if !(1..=1024).contains(&target_mb) {
            return Err(ConfigError::new("COMPACT_TARGET_MB", format!("{target_mb} is not between 1 and 1024")));
        }
        Ok(Self {
            compact_target_bytes: target_mb << 20,
            compact_idle_minutes: env.parse_or("COMPACT_IDLE_MINUTES", 60)?,
            bucket: BucketName::parse("LAKE_BUCKET", env.required("LAKE_BUCKET")?)?,
            bronze_prefix: Prefix::parse("BRONZE_PREFIX", env.get("BRONZE_PREFIX").unwrap_or("bronze/"))?,
            retention_hours,
            dry_run: match env.get("VACUUM_DRY_RUN").unwrap_or("false") {
                "true" => true,
                "false" => false,
                other => return Err(ConfigError::new("VACUUM_DRY_RUN", format!("{other:?} is not true or false"))),
            },
            checkpoint_interval,
            storage_options: fleetlake_delta::storage_options(env),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_variable() {
        let cfg = Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake")])).unwrap();
        assert_eq!((cfg.retention_hours, cfg.dry_run, cfg.checkpoint_interval), (168, false, 100));
        assert_eq!((cfg.compact_target_bytes, cfg.compact_idle_minutes), (128 << 20, 60));
        for (var, value) in [
            ("VACUUM_RETENTION_HOURS", "23"),
            ("VACUUM_RETENTION_HOURS", "a week"),
            ("VACUUM_DRY_RUN", "yes"),
            ("CHECKPOINT_INTERVAL", "0"),
            ("COMPACT_TARGET_MB", "0"),
            ("COMPACT_TARGET_MB", "4096"),
            ("COMPACT_IDLE_MINUTES", "-1"),
            ("BRONZE_PREFIX", "/bronze"),
        ] {
            let err = Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake"), (var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
        assert_eq!(Config::from_env(&Env::from_pairs([])).unwrap_err().var, "LAKE_BUCKET");
    }
}
