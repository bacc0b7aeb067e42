//! msk-lander: lands MSK batches of positions and Debezium changes as gzip NDJSON objects in S3.

mod config;
mod event;
mod handler;

use fleetlake_core::config::Env;
use fleetlake_core::landing::STAGE;
use fleetlake_runner::Runner;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    fleetlake_aws::telemetry::init_logging();
    let config = config::Config::from_env(&Env::process())
        .inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let sdk = fleetlake_aws::sdk::load_sdk_config().await;
    // Lives as long as the execution environment; 'static so the runner can run the batch on a task of its own.
    let deps: &'static handler::Deps =
        Box::leak(Box::new(handler::Deps::new(config, fleetlake_aws::sdk::s3_client(&sdk))));
    let runner = &*Box::leak(Box::new(Runner::new(STAGE)));
    run(service_fn(move |event: LambdaEvent<event::MskEvent>| async move {
        let LambdaEvent { payload, context } = event;
        runner.job(&context, move |invocation| handler::handle(payload, deps, invocation)).await
    }))
    .await
}
