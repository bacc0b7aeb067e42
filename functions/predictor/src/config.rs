//! The predictor's configuration, read once at init.

use std::collections::HashMap;

use fleetlake_core::config::{BucketName, ConfigError, Env, Prefix};

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModelSource {
    /// The model shipped in the binary (`models/fuel-24h`).
    Shipped,
    /// `s3://bucket/key`; its contract is `contract.json` beside it.
    S3 { bucket: String, key: String },
    /// A file path (a Lambda layer or a local run); its contract is `contract.json` beside it.
    Path(std::path::PathBuf),
}

/// Everything the predictor reads from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `LAKE_BUCKET` (required).
    pub(crate) bucket: BucketName,
    /// `BRONZE_PREFIX` (default `bronze/`): where the Delta tables live.
    pub(crate) bronze_prefix: Prefix,
    /// `LANDING_PREFIX` (default `landing/`): where the record of served predictions is landed
    /// (`<landing>predictions/`, appended to `bronze/predictions` by delta-writer).
    pub(crate) landing_prefix: Prefix,
    /// `PREDICTIONS_TABLE` (required): the DynamoDB table.
    pub(crate) predictions_table: String,
    /// `MODEL_URI` (default: the shipped model).
    pub(crate) model: ModelSource,
    /// `PREDICTION_TTL_DAYS` (default 7): items expire this long after the data they were made from.
    pub(crate) ttl_days: u32,
    /// `STATS_LOOKBACK_DAYS` (default 7): how far back a unit's last daily performance row is looked for.
    pub(crate) stats_lookback_days: u32,
    /// deltalake storage options from `AWS_ENDPOINT_URL` and `AWS_REGION`.
    pub(crate) storage_options: HashMap<String, String>,
}

impl ModelSource {
    fn parse(raw: Option<&str>) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::new("MODEL_URI", reason);
        let Some(raw) = raw.map(str::trim) else { return Ok(ModelSource::Shipped) };
        if let Some(rest) = raw.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
                    Ok(ModelSource::S3 { bucket: bucket.to_owned(), key: key.to_owned() })
                }
                _ => Err(err(format!("{raw:?} is not s3://bucket/key"))),
            };
        }
        if raw.contains("://") {
            return Err(err(format!("{raw:?}: only s3:// URIs and file paths are supported")));
        }
        Ok(ModelSource::Path(raw.into()))
    }
}

impl Config {
    pub(crate) fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let predictions_table = env.required("PREDICTIONS_TABLE")?.to_owned();
        if !fleetlake_core::config::dynamodb_table_name_ok(&predictions_table) {
            return Err(ConfigError::new(
                "PREDICTIONS_TABLE",
                format!("{predictions_table:?} is not a DynamoDB table name"),
            ));
        }
        let ttl_days = env.parse_or("PREDICTION_TTL_DAYS", 7u32)?;
        if !(1..=3650).contains(&ttl_days) {
            return Err(ConfigError::new("PREDICTION_TTL_DAYS", format!("{ttl_days} is not within 1..=3650")));
        }
        let stats_lookback_days = env.parse_or("STATS_LOOKBACK_DAYS", 7u32)?;
        if !(1..=366).contains(&stats_lookback_days) {
            return Err(ConfigError::new(
                "STATS_LOOKBACK_DAYS",
                format!("{stats_lookback_days} is not within 1..=366"),
            ));
        }
        Ok(Self {
            bucket: BucketName::parse("LAKE_BUCKET", env.required("LAKE_BUCKET")?)?,
            bronze_prefix: Prefix::parse("BRONZE_PREFIX", env.get("BRONZE_PREFIX").unwrap_or("bronze/"))?,
            landing_prefix: Prefix::parse("LANDING_PREFIX", env.get("LANDING_PREFIX").unwrap_or("landing/"))?,
            predictions_table,
            model: ModelSource::parse(env.get("MODEL_URI"))?,
            ttl_days,
            stats_lookback_days,
            storage_options: fleetlake_delta::storage_options(env),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(extra: &[(&'static str, &'static str)]) -> Env {
        let mut pairs = vec![("LAKE_BUCKET", "lake"), ("PREDICTIONS_TABLE", "fleetlake-predictions")];
        pairs.extend_from_slice(extra);
        Env::from_pairs(pairs)
    }

    #[test]
    fn defaults_model_sources_and_errors_name_the_variable() {
        let cfg = Config::from_env(&env(&[])).unwrap();
        assert_eq!((cfg.model.clone(), cfg.ttl_days, cfg.stats_lookback_days), (ModelSource::Shipped, 7, 7));
        assert_eq!((cfg.bronze_prefix.as_str(), cfg.landing_prefix.as_str()), ("bronze/", "landing/"));
        let cfg = Config::from_env(&env(&[("MODEL_URI", "s3://models/fuel-24h/v3/model.onnx")])).unwrap();
        assert_eq!(cfg.model, ModelSource::S3 { bucket: "models".into(), key: "fuel-24h/v3/model.onnx".into() });
        let cfg = Config::from_env(&env(&[("MODEL_URI", "/opt/models/fuel-24h/model.onnx")])).unwrap();
        assert_eq!(cfg.model, ModelSource::Path("/opt/models/fuel-24h/model.onnx".into()));
        for (var, value) in [
            ("MODEL_URI", "s3://bucket-only"),
            ("MODEL_URI", "https://example.com/model.onnx"),
            ("PREDICTION_TTL_DAYS", "0"),
            ("PREDICTION_TTL_DAYS", "a week"),
            ("STATS_LOOKBACK_DAYS", "400"),
            ("PREDICTIONS_TABLE", "no spaces allowed"),
        ] {
            let err = Config::from_env(&env(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
        let err = Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake")])).unwrap_err();
        assert_eq!(err.var, "PREDICTIONS_TABLE");
    }
}
