//! weather-enricher's configuration, read once at init.

use fleetlake_core::config::{ConfigError, Env, LakeConfig, Prefix};
use fleetlake_weather::WeatherConfig;

/// Everything weather-enricher reads from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `LAKE_BUCKET`, `LANDING_PREFIX`, `QUARANTINE_PREFIX`.
    pub(crate) lake: LakeConfig,
    /// `ENRICHED_PREFIX` (default `enriched/`).
    pub(crate) enriched_prefix: Prefix,
    /// `CHUNK_RECORDS` (default 5000) and `CHUNK_BYTES` (default 4 MiB): a step decodes, looks up and writes
    /// records until it holds either many; together they bound memory whatever the lines' length.
    pub(crate) chunk_records: usize,
    pub(crate) chunk_bytes: usize,
    /// `OUTPUT_PART_BYTES` (default 8 MiB, at least 5 MiB): compressed output buffered before it is sent as
    /// one multipart part.
    pub(crate) output_part_bytes: usize,
    /// `QUARANTINE_PART_BYTES` (default 16 MiB): quarantine lines held before they are written as one part.
    pub(crate) quarantine_part_bytes: usize,
    /// `WEATHER_*`.
    pub(crate) weather: WeatherConfig,
}

impl Config {
    pub(crate) fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            lake: LakeConfig::from_env(env)?,
            enriched_prefix: Prefix::parse("ENRICHED_PREFIX", env.get("ENRICHED_PREFIX").unwrap_or("enriched/"))?,
            chunk_records: env.count_or("CHUNK_RECORDS", 5_000)?,
            chunk_bytes: env.count_or("CHUNK_BYTES", 4 << 20)?,
            output_part_bytes: match env.parse_or("OUTPUT_PART_BYTES", 8 << 20)? {
                n if n < fleetlake_aws::s3::MIN_PART_BYTES => {
                    return Err(ConfigError::new("OUTPUT_PART_BYTES", "must be at least 5242880 (S3's smallest part)"))
                }
                n => n,
            },
            quarantine_part_bytes: env
                .count_or("QUARANTINE_PART_BYTES", fleetlake_aws::quarantine::DEFAULT_PART_BYTES)?,
            weather: WeatherConfig::from_env(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_variable() {
        let cfg = Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake")])).unwrap();
        assert_eq!(cfg.enriched_prefix.as_str(), "enriched/");
        assert_eq!(cfg.weather.base_url, "https://api.open-meteo.com");
        let err = Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake"), ("WEATHER_GRID_DEG", "x")])).unwrap_err();
        assert_eq!(err.var, "WEATHER_GRID_DEG");
        let err = Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake"), ("CHUNK_RECORDS", "0")])).unwrap_err();
        assert_eq!(err.var, "CHUNK_RECORDS");
    }
}
