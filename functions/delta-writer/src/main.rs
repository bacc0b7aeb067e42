//! delta-writer: appends landed and enriched objects, named by S3 notifications on SQS, to the bronze Delta tables.

mod config;
mod handler;

use fleetlake::config::Env;
use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fleetlake::telemetry::init_logging();
    let config = config::Config::from_env(&Env::process())
        .inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let sdk = fleetlake::aws::load_sdk_config().await;
    // Lives as long as the execution environment; 'static so objects can be converted on a task of their own.
    let deps: &'static handler::Deps = Box::leak(Box::new(handler::Deps::new(config, fleetlake::aws::s3_client(&sdk))));
    run(service_fn(move |event| handler::handle(event, deps))).await
}
