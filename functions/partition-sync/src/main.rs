//! partition-sync: keeps Glue partitions and symlink manifests in step with every bronze Delta commit.

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
    let deps = handler::Deps::new(config, fleetlake::aws::s3_client(&sdk), aws_sdk_glue::Client::new(&sdk));
    run(service_fn(|event| handler::handle(event, &deps))).await
}
