//! pg-poller's configuration, read once at init.

use std::path::PathBuf;
use std::time::Duration;

use fleetlake_core::config::{ConfigError, Env, LakeConfig, Prefix};
use fleetlake_core::lake::is_identifier;
use fleetlake_core::poll::{parse_poll_tables, PollTable, DEFAULT_POLL_TABLES};

/// Where the CA bundle is read from at init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaSource {
    /// A file (relative paths: in the function's package).
    File(PathBuf),
    /// An S3 object (`s3://bucket/key`).
    S3 { bucket: String, key: String },
}

/// How the connection is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tls {
    /// TLS required, the server's certificate checked against the CA bundle and its name against the host
    /// (`PG_TLS=verify-full`, the default).
    VerifyFull(CaSource),
    /// No TLS (`PG_TLS=disable`): for a database on the same host only, such as the local stack's.
    Disable,
}

/// How pg-poller authenticates to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// `PG_AUTH=secret` (the default): user name and password from the Secrets Manager secret `PG_SECRET_ARN`, in
    /// the RDS format (`username`, `password`, and optionally `host`, `port`, `dbname`).
    Secret(String),
    /// `PG_AUTH=iam`: an RDS IAM authentication token for the database user `PG_USER`, made with the function's
    /// own credentials for each connection (RDS accepts it for 15 minutes); no password anywhere. Needs `PG_HOST`,
    /// TLS, and the region (`AWS_REGION`, which Lambda sets).
    Iam { user: String, region: String },
}

/// Everything pg-poller reads from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `LAKE_BUCKET`, `LANDING_PREFIX`, `QUARANTINE_PREFIX`, and the event-time window of the plausibility contract.
    pub(crate) lake: LakeConfig,
    /// `STATE_PREFIX` (default `state/pg-poller/`): cursor states and key snapshots, per table.
    pub(crate) state_prefix: Prefix,
    /// `POLL_TABLES` (default `public.performance_stats=performance_stats,public.transport_units=transport_units`).
    pub(crate) tables: Vec<PollTable>,
    /// `PG_AUTH` and what it needs: the secret, or the user of IAM authentication.
    pub(crate) auth: Auth,
    /// `PG_HOST`, `PG_PORT`, `PG_DATABASE`: override the secret's.
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) database: Option<String>,
    /// `PG_TLS` (`verify-full`, the default, or `disable`) and `PG_CA_BUNDLE` (a PEM file; relative paths are
    /// read from the function's package, `LAMBDA_TASK_ROOT`).
    pub(crate) tls: Tls,
    /// `PG_CONNECT_TIMEOUT_S` (default 10).
    pub(crate) connect_timeout: Duration,
    /// `PG_STATEMENT_TIMEOUT_S` (default 300): the longest one statement (one page) may run.
    pub(crate) statement_timeout: Duration,
    /// `POLL_UPDATED_AT_COLUMN` (default `updated_at`): the column the writer or a trigger sets on every change.
    pub(crate) updated_at: String,
    /// `POLL_SOFT_DELETE_COLUMN` (default `deleted_at`): used where a table has it; a row whose column is set
    /// (not null, or true for a boolean) lands as a delete.
    pub(crate) soft_delete: String,
    /// `POLL_OVERLAP_SECONDS` (default 300): how far before the cursor each walk starts again (the backstop for an
    /// `updated_at` older than its transaction's start).
    pub(crate) overlap: Duration,
    /// `POLL_KEY_CHECK_HOURS` (default 24): how often every key is compared to find deletes.
    pub(crate) key_check: Duration,
    /// `POLL_PAGE_ROWS` (default 5000): rows fetched from the server-side cursor at a time.
    pub(crate) page_rows: usize,
    /// `POLL_OBJECT_ROWS` (default 50000): lines per landed object.
    pub(crate) object_rows: usize,
    /// `POLL_KEEP_STATES` (default 24): cursor states kept per table (older ones are deleted after a run records).
    pub(crate) keep_states: u64,
}

impl Config {
    pub(crate) fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let tables = parse_poll_tables("POLL_TABLES", env.get("POLL_TABLES").unwrap_or(DEFAULT_POLL_TABLES))?;
        let tls = match env.get("PG_TLS").unwrap_or("verify-full") {
            "verify-full" => {
                let bundle = env.required("PG_CA_BUNDLE")?;
                if let Some(rest) = bundle.strip_prefix("s3://") {
                    match rest.split_once('/') {
                        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                            Tls::VerifyFull(CaSource::S3 { bucket: bucket.to_owned(), key: key.to_owned() })
                        }
                        _ => {
                            return Err(ConfigError::new("PG_CA_BUNDLE", format!("{bundle:?} is not s3://bucket/key")))
                        }
                    }
                } else {
                    let path = PathBuf::from(bundle);
                    let path = match (path.is_relative(), env.get("LAMBDA_TASK_ROOT")) {
                        (true, Some(root)) => PathBuf::from(root).join(path),
                        _ => path,
                    };
                    Tls::VerifyFull(CaSource::File(path))
                }
            }
            "disable" => Tls::Disable,
            other => return Err(ConfigError::new("PG_TLS", format!("{other:?} is not verify-full or disable"))),
        };
        let ident = |var: &str, default: &str| -> Result<String, ConfigError> {
            let v = env.get(var).unwrap_or(default);
            if is_identifier(v) {
                Ok(v.to_owned())
            } else {
                Err(ConfigError::new(var, format!("{v:?} is not a lowercase unquoted column name")))
            }
        };
        let positive = |var: &str, default: usize| -> Result<usize, ConfigError> {
            match env.count_or(var, default)? {
                0 => Err(ConfigError::new(var, "must be at least 1")),
                n => Ok(n),
            }
        };
        let secs = |var: &str, default: u64| -> Result<Duration, ConfigError> {
            env.parse_or(var, default).map(Duration::from_secs)
        };
        Ok(Self {
            lake: LakeConfig::from_env(env)?,
            state_prefix: Prefix::parse("STATE_PREFIX", env.get("STATE_PREFIX").unwrap_or("state/pg-poller/"))?,
            tables,
            auth: match env.get("PG_AUTH").unwrap_or("secret") {
                "secret" => Auth::Secret(env.required("PG_SECRET_ARN")?.to_owned()),
                "iam" => {
                    if tls == Tls::Disable {
                        return Err(ConfigError::new("PG_TLS", "IAM authentication (PG_AUTH=iam) needs TLS"));
                    }
                    env.required("PG_HOST")?;
                    Auth::Iam {
                        user: env.required("PG_USER")?.to_owned(),
                        region: env.required("AWS_REGION")?.to_owned(),
                    }
                }
                other => return Err(ConfigError::new("PG_AUTH", format!("{other:?} is not secret or iam"))),
            },
            host: env.get("PG_HOST").filter(|h| !h.is_empty()).map(str::to_owned),
            port: match env.get("PG_PORT").filter(|p| !p.is_empty()) {
                Some(p) => Some(p.parse().map_err(|_| ConfigError::new("PG_PORT", format!("{p:?} is not a port")))?),
                None => None,
            },
            database: env.get("PG_DATABASE").filter(|d| !d.is_empty()).map(str::to_owned),
            tls,
            connect_timeout: secs("PG_CONNECT_TIMEOUT_S", 10)?,
            statement_timeout: secs("PG_STATEMENT_TIMEOUT_S", 300)?,
            updated_at: ident("POLL_UPDATED_AT_COLUMN", "updated_at")?,
            soft_delete: ident("POLL_SOFT_DELETE_COLUMN", "deleted_at")?,
            overlap: secs("POLL_OVERLAP_SECONDS", 300)?,
            key_check: Duration::from_secs(env.parse_or::<u64>("POLL_KEY_CHECK_HOURS", 24)?.saturating_mul(3600)),
            page_rows: positive("POLL_PAGE_ROWS", 5000)?,
            object_rows: positive("POLL_OBJECT_ROWS", 50_000)?,
            keep_states: env.parse_or::<u64>("POLL_KEEP_STATES", 24)?.max(2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_variable() {
        let base = [("LAKE_BUCKET", "lake"), ("PG_SECRET_ARN", "arn:s"), ("PG_CA_BUNDLE", "rds.pem")];
        let cfg = Config::from_env(&Env::from_pairs(base)).unwrap();
        assert_eq!(cfg.tables.len(), 2);
        assert_eq!(cfg.tls, Tls::VerifyFull(CaSource::File(PathBuf::from("rds.pem"))));
        assert_eq!((cfg.page_rows, cfg.object_rows, cfg.keep_states), (5000, 50_000, 24));
        assert_eq!((cfg.updated_at.as_str(), cfg.soft_delete.as_str()), ("updated_at", "deleted_at"));
        let cfg =
            Config::from_env(&Env::from_pairs(base.into_iter().chain([("LAMBDA_TASK_ROOT", "/var/task")]))).unwrap();
        assert_eq!(cfg.tls, Tls::VerifyFull(CaSource::File(PathBuf::from("/var/task/rds.pem"))));
        let s3 = [("LAKE_BUCKET", "lake"), ("PG_SECRET_ARN", "s"), ("PG_CA_BUNDLE", "s3://certs/rds/global.pem")];
        let want = CaSource::S3 { bucket: "certs".into(), key: "rds/global.pem".into() };
        assert_eq!(Config::from_env(&Env::from_pairs(s3)).unwrap().tls, Tls::VerifyFull(want));
        for (var, value) in [
            ("PG_TLS", "prefer"),
            ("PG_CA_BUNDLE", "s3://bucket-only"),
            ("PG_PORT", "x"),
            ("POLL_UPDATED_AT_COLUMN", "Updated_At"),
            ("POLL_UPDATED_AT_COLUMN", "a;drop"),
            ("POLL_PAGE_ROWS", "0"),
            ("POLL_TABLES", "public.x=locations"),
        ] {
            let err = Config::from_env(&Env::from_pairs(base.into_iter().chain([(var, value)]))).unwrap_err();
            assert_eq!(err.var, var, "{var}={value}");
        }
        // TLS is required unless turned off by name: no CA bundle, no start.
        let err = Config::from_env(&Env::from_pairs([("LAKE_BUCKET", "lake"), ("PG_SECRET_ARN", "s")])).unwrap_err();
        assert_eq!(err.var, "PG_CA_BUNDLE");
        let off = [("LAKE_BUCKET", "lake"), ("PG_SECRET_ARN", "s"), ("PG_TLS", "disable")];
        assert_eq!(Config::from_env(&Env::from_pairs(off)).unwrap().tls, Tls::Disable);
        assert_eq!(Config::from_env(&Env::from_pairs(base)).unwrap().auth, Auth::Secret("arn:s".into()));
    }

    #[test]
    fn iam_authentication_needs_a_user_a_host_a_region_and_tls_but_no_secret() {
        let iam = [
            ("LAKE_BUCKET", "lake"),
            ("PG_AUTH", "iam"),
            ("PG_USER", "fleetlake_poller"),
            ("PG_HOST", "db.abc.eu-west-1.rds.amazonaws.com"),
            ("AWS_REGION", "eu-west-1"),
            ("PG_CA_BUNDLE", "s3://certs/global-bundle.pem"),
        ];
        let cfg = Config::from_env(&Env::from_pairs(iam)).unwrap();
        assert_eq!(cfg.auth, Auth::Iam { user: "fleetlake_poller".into(), region: "eu-west-1".into() });
        for missing in ["PG_USER", "PG_HOST", "AWS_REGION"] {
            let err = Config::from_env(&Env::from_pairs(iam.into_iter().filter(|(k, _)| *k != missing))).unwrap_err();
            assert_eq!(err.var, missing);
        }
        let plain = Config::from_env(&Env::from_pairs(iam.into_iter().chain([("PG_TLS", "disable")]))).unwrap_err();
        assert_eq!(plain.var, "PG_TLS", "IAM authentication is refused without TLS");
        let other = Config::from_env(&Env::from_pairs(iam.into_iter().chain([("PG_AUTH", "kerberos")]))).unwrap_err();
        assert_eq!(other.var, "PG_AUTH");
    }
}
