//! partition-sync: keeps Glue partitions and symlink manifests in step with every bronze Delta commit.

mod config;
mod handler;

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
    let deps = handler::Deps::new(config, fleetlake_aws::sdk::s3_client(&sdk), aws_sdk_glue::Client::new(&sdk))
        .inspect_err(|e| tracing::error!(error = %e, "invalid LAKE_BUCKET or BRONZE_PREFIX"))?;
    // Lives as long as the execution environment; 'static so the runner can run commits on tasks of their own.
    let deps: &'static handler::Deps = Box::leak(Box::new(deps));
    let runner = &*Box::leak(Box::new(Runner::new(handler::STAGE)));
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        runner.objects(&event.payload, &event.context, deps).await
    }))
    .await
}
