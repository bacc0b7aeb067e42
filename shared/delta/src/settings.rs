//! Where the bronze tables live, how they are created, and deltalake's storage options from the environment.

use super::*;

/// Where the bronze tables live and how they are created.
#[derive(Debug, Clone)]
pub struct DeltaSettings {
    /// `s3://<bucket>/<bronze prefix>`, ending in `/`.
    pub bronze_url: Url,
    /// deltalake storage options (endpoint, region, `allow_http`); credentials come from the environment.
    pub storage_options: HashMap<String, String>,
    /// `delta.checkpointInterval` of new tables: a checkpoint every this many commits.
    pub checkpoint_interval: u64,
    /// `delta.logRetentionDuration` of new tables, e.g. `interval 30 days`.
    pub log_retention: String,
    /// `delta.setTransactionRetentionDuration` of new tables: how long Kafka watermarks are kept.
    pub txn_retention: String,
}

impl DeltaSettings {
    /// Settings of a function that reads the bronze tables delta-writer creates: `s3://<bucket>/<bronze prefix>` and
    /// the storage options. The creation settings are delta-writer's defaults (a checkpoint every 100 commits, log
    /// retention 30 days, `txn` retention 7 days): partition-sync and lake-maintainer create the state tables with
    /// them.
    pub fn reader(
        bucket: &str,
        bronze_prefix: &str,
        storage_options: HashMap<String, String>,
    ) -> Result<Self, url::ParseError> {
        Ok(Self {
            bronze_url: Url::parse(&format!("s3://{bucket}/{bronze_prefix}"))?,
            storage_options,
            checkpoint_interval: 100,
            log_retention: "interval 30 days".to_owned(),
            txn_retention: "interval 7 days".to_owned(),
        })
    }

    /// The URL of one table.
    pub fn table_url(&self, spec: &TableSpec) -> Result<Url, DeltaError> {
        self.bronze_url.join(&format!("{}/", spec.name)).map_err(|e| DeltaError::Data {
            table: spec.name,
            message: format!("table URL: {e}"),
            source: Some(Box::new(e)),
        })
    }
}

/// deltalake storage options from the standard environment: the endpoint (`AWS_ENDPOINT_URL_S3` or
/// `AWS_ENDPOINT_URL`, with `allow_http` for `http://`), the region, and request deadlines. Credentials are read
/// by the object store from the environment itself.
pub fn storage_options(env: &fleetlake_core::config::Env) -> HashMap<String, String> {
    let mut options = HashMap::from([
        // Every request has a deadline; the object store retries within it.
        ("timeout".to_owned(), "30s".to_owned()),
        ("connect_timeout".to_owned(), "5s".to_owned()),
    ]);
    if let Some(endpoint) = env.get("AWS_ENDPOINT_URL_S3").or(env.get("AWS_ENDPOINT_URL")) {
        options.insert("AWS_ENDPOINT_URL".to_owned(), endpoint.to_owned());
        if endpoint.starts_with("http://") {
            options.insert("AWS_ALLOW_HTTP".to_owned(), "true".to_owned());
        }
    }
    if let Some(region) = env.get("AWS_REGION").or(env.get("AWS_DEFAULT_REGION")) {
        options.insert("AWS_REGION".to_owned(), region.to_owned());
    }
    options
}
