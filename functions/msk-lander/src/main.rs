//! msk-lander: lands MSK batches of positions and Debezium changes as gzip NDJSON objects in S3.

mod config;
mod event;
mod handler;

use fleetlake::config::Env;
use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fleetlake::telemetry::init_logging();
    let config = config::Config::from_env(&Env::process())
        .inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let sdk = fleetlake::aws::load_sdk_config().await;
    let deps = handler::Deps::new(config, fleetlake::aws::s3_client(&sdk));
    let deps = &deps;
    run(service_fn(move |event| handler::handle(event, deps))).await
}
