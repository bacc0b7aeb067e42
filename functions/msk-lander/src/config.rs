//! msk-lander's configuration, read once at init.

use fleetlake_core::config::{ConfigError, Env, LakeConfig};
use fleetlake_core::landing::{TopicDatasets, DEFAULT_TOPIC_DATASETS};

/// Everything msk-lander reads from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `LAKE_BUCKET`, `LANDING_PREFIX`, `QUARANTINE_PREFIX`.
    pub(crate) lake: LakeConfig,
    /// `TOPIC_DATASETS`: `topic=dataset,…`; the `locations` dataset holds positions, every other one Debezium changes.
    pub(crate) topics: TopicDatasets,
}

impl Config {
    pub(crate) fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            lake: LakeConfig::from_env(env)?,
            topics: TopicDatasets::parse(
                "TOPIC_DATASETS",
                env.get("TOPIC_DATASETS").unwrap_or(DEFAULT_TOPIC_DATASETS),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_a_custom_mapping() {
        let cfg = Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake")])).unwrap();
        assert_eq!(cfg.topics.dataset("pg.public.transport_units"), Some("transport_units"));
        let cfg =
            Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake"), ("TOPIC_DATASETS", "t1=locations")])).unwrap();
        assert_eq!(cfg.topics.dataset("fleet.locations"), None);
        let err =
            Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake"), ("TOPIC_DATASETS", "nonsense")])).unwrap_err();
        assert_eq!(err.var, "TOPIC_DATASETS");
    }
}
