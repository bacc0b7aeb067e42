//! AWS SDK setup done once at init: explicit timeouts and retries, and the local-stack endpoint.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// Loads the shared SDK configuration from the environment (credentials, region, `AWS_ENDPOINT_URL`) with
/// explicit deadlines: 3 s to connect, 20 s per attempt, 60 s per operation, 4 attempts with backoff.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(20))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(4).with_initial_backoff(Duration::from_millis(200)))
        .load()
        .await
}

/// An S3 client; path-style addressing when an endpoint override (the local stack) is configured.
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some()).build();
    aws_sdk_s3::Client::from_conf(conf)
}
