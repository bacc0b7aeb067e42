//! AWS SDK setup done once at init: explicit timeouts and retries, and the local-stack endpoint.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// Loads the shared SDK configuration from the environment (credentials, region, `AWS_ENDPOINT_URL`) with
/// explicit deadlines: 3 s to connect, 20 s per attempt, 60 s per operation, 4 attempts with backoff.
pub async fn load_sdk_config() -> SdkConfig {
    let (timeouts, retries) = deadlines([3_000, 20_000, 60_000], 4, 200);
    aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts).retry_config(retries).load().await
}

/// Timeouts `[connect, per attempt, per operation]` in milliseconds, and standard retries of `attempts` attempts
/// whose first backoff is `backoff_ms`: for a client that must answer sooner than the pipeline's (an HTTP API).
pub fn deadlines(ms: [u64; 3], attempts: u32, backoff_ms: u64) -> (TimeoutConfig, RetryConfig) {
    let [connect, attempt, operation] = ms.map(Duration::from_millis);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(connect)
        .operation_attempt_timeout(attempt)
        .operation_timeout(operation)
        .build();
    (
        timeouts,
        RetryConfig::standard().with_max_attempts(attempts).with_initial_backoff(Duration::from_millis(backoff_ms)),
    )
}

/// An S3 client; path-style addressing when an endpoint override (the local stack) is configured.
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some()).build();
    aws_sdk_s3::Client::from_conf(conf)
}
