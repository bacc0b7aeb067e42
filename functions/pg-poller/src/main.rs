//! pg-poller: the hourly PostgreSQL poll, for deployments without Debezium.

mod config;
mod handler;
mod pg;
mod store;

use fleetlake_core::config::Env;
use fleetlake_runner::Runner;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    fleetlake_aws::telemetry::init_logging();
    let config = config::Config::from_env(&Env::process())
        .inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let sdk = fleetlake_aws::sdk::load_sdk_config().await;
    let store = fleetlake_aws::s3::S3Store::new(fleetlake_aws::sdk::s3_client(&sdk), config.lake.bucket.as_str());
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let deps = handler::Deps::new(config, store, secrets, sdk.credentials_provider())
        .await
        .inspect_err(|e| tracing::error!(error = %e, "the CA bundle could not be read"))?;
    // Lives as long as the execution environment; 'static so the runner can run the work on a task of its own.
    let deps: &'static handler::Deps = Box::leak(Box::new(deps));
    let runner = &*Box::leak(Box::new(Runner::new(handler::STAGE)));
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        runner.job(&event.context, move |invocation| deps.poll(invocation)).await
    }))
    .await
}
