//! delta-writer: appends landed and enriched objects, named by S3 notifications on SQS, to the bronze Delta tables.

mod config;
mod handler;

use fleetlake_core::config::Env;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    fleetlake_aws::telemetry::init_logging();
    let config = config::Config::from_env(&Env::process())
        .inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let sdk = fleetlake_aws::sdk::load_sdk_config().await;
    // Lives as long as the execution environment; 'static so objects can be converted on a task of their own.
    let deps: &'static handler::Deps =
        Box::leak(Box::new(handler::Deps::new(config, fleetlake_aws::sdk::s3_client(&sdk))));
    let runner = &*Box::leak(Box::new(deps.runner()));
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        runner.objects(&event.payload, &event.context, deps).await
    }))
    .await
}
