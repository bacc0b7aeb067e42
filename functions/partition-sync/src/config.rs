//! partition-sync's configuration, read once at init.

use std::collections::HashMap;

use fleetlake_core::bronze::TABLES;
use fleetlake_core::config::{BucketName, ConfigError, Env, Prefix};

/// Everything partition-sync reads from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `LAKE_BUCKET` (required).
    pub(crate) bucket: BucketName,
    /// `BRONZE_PREFIX` (default `bronze/`): where the Delta tables live.
    pub(crate) bronze_prefix: Prefix,
    /// `GLUE_DATABASE` (required): the Glue database of the bronze tables.
    pub(crate) glue_database: String,
    /// `GLUE_TABLES` (default: `<table>=bronze_<table>` for every bronze table, the state tables included): the
    /// Glue table of each bronze table.
    pub(crate) glue_tables: HashMap<&'static str, String>,
    /// deltalake storage options from `AWS_ENDPOINT_URL` and `AWS_REGION`.
    pub(crate) storage_options: HashMap<String, String>,
    /// `S3_CONCURRENCY` (default 16, at most 64): manifests of one commit written at once. Each is a HEAD and a
    /// conditional PUT; a commit touching 30 partitions waited for 60 round trips one after another.
    pub(crate) s3_concurrency: usize,
    /// `STATE_TABLES` (default `true`): on each commit of a change log, rewrite the touched partitions of its
    /// current-state and history tables.
    pub(crate) state_tables: bool,
    /// `STATE_CONCURRENCY` (default 4, at most 16): touched partitions whose state tables are rewritten at once.
    pub(crate) state_concurrency: usize,
}

/// Most manifests written at once: S3 takes thousands of requests per second per prefix; this bounds the
/// connections and memory of one invocation.
const MAX_S3_CONCURRENCY: usize = 64;

/// The default Glue table names: `bronze_<table>`.
pub(crate) const DEFAULT_GLUE_TABLES: &str =
    "locations=bronze_locations,performance_stats=bronze_performance_stats,transport_units=bronze_transport_units,\
     predictions=bronze_predictions,performance_stats_current=bronze_performance_stats_current,\
     performance_stats_history=bronze_performance_stats_history,transport_units_current=bronze_transport_units_current,\
     transport_units_history=bronze_transport_units_history";

fn glue_name_ok(name: &str) -> bool {
    (1..=255).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Config {
    pub(crate) fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let glue_database = env.required("GLUE_DATABASE")?.to_owned();
        if !glue_name_ok(&glue_database.replace('-', "_")) {
            return Err(ConfigError::new("GLUE_DATABASE", format!("{glue_database:?} is not a Glue database name")));
        }
        let mut glue_tables = HashMap::new();
        for pair in env.get("GLUE_TABLES").unwrap_or(DEFAULT_GLUE_TABLES).split(',').filter(|p| !p.trim().is_empty()) {
            let (table, glue) = pair
                .split_once('=')
                .map(|(a, b)| (a.trim(), b.trim()))
                .ok_or_else(|| ConfigError::new("GLUE_TABLES", format!("{pair:?} is not table=glue_table")))?;
            let spec = TABLES
                .into_iter()
                .find(|t| t.name == table)
                .ok_or_else(|| ConfigError::new("GLUE_TABLES", format!("{table:?} is not a bronze table")))?;
            if !glue_name_ok(glue) {
                return Err(ConfigError::new("GLUE_TABLES", format!("{glue:?} is not a Glue table name")));
            }
            glue_tables.insert(spec.name, glue.to_owned());
        }
        Ok(Self {
            bucket: BucketName::parse("LAKE_BUCKET", env.required("LAKE_BUCKET")?)?,
            bronze_prefix: Prefix::parse("BRONZE_PREFIX", env.get("BRONZE_PREFIX").unwrap_or("bronze/"))?,
            glue_database,
            glue_tables,
            storage_options: fleetlake_delta::storage_options(env),
            s3_concurrency: match env.count_or("S3_CONCURRENCY", 16)? {
                n if n > MAX_S3_CONCURRENCY => {
                    return Err(ConfigError::new("S3_CONCURRENCY", format!("{n} is more than {MAX_S3_CONCURRENCY}")))
                }
                n => n,
            },
            state_concurrency: match env.count_or("STATE_CONCURRENCY", 4)? {
                n if n > 16 => return Err(ConfigError::new("STATE_CONCURRENCY", format!("{n} is more than 16"))),
                n => n,
            },
            state_tables: match env.get("STATE_TABLES").unwrap_or("true") {
                "true" => true,
                "false" => false,
                other => return Err(ConfigError::new("STATE_TABLES", format!("{other:?} is not true or false"))),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_variable() {
        let cfg =
            Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake"), ("GLUE_DATABASE", "fleetlake")])).unwrap();
        assert_eq!(cfg.glue_tables["locations"], "bronze_locations");
        // Every bronze table has its Glue table, the state tables too.
        assert_eq!(cfg.glue_tables.len(), TABLES.len());
        assert_eq!(cfg.glue_tables["transport_units_history"], "bronze_transport_units_history");
        assert_eq!(cfg.s3_concurrency, 16);
        assert!(cfg.state_tables);
        for (var, value) in [
            ("S3_CONCURRENCY", "0"),
            ("S3_CONCURRENCY", "65"),
            ("S3_CONCURRENCY", "many"),
            ("GLUE_TABLES", "locations"),
            ("GLUE_TABLES", "nope=x"),
            ("GLUE_TABLES", "locations=Bad-Name"),
            ("GLUE_DATABASE", "a b"),
            ("STATE_TABLES", "yes"),
            ("STATE_CONCURRENCY", "0"),
            ("STATE_CONCURRENCY", "17"),
        ] {
            let err =
                Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake"), ("GLUE_DATABASE", "db"), (var, value)]))
                    .unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
        let err = Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake")])).unwrap_err();
        assert_eq!(err.var, "GLUE_DATABASE");
    }
}
