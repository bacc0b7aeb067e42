//! lake-maintainer: bronze table maintenance beside running writers, on a schedule or on demand.

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
    let deps = handler::Deps::new(config)
        .inspect_err(|e| tracing::error!(error = %e, "invalid LAKE_BUCKET or BRONZE_PREFIX"))?;
    // Lives as long as the execution environment; 'static so the runner can run the work on a task of its own.
    let deps: &'static handler::Deps = Box::leak(Box::new(deps));
    let runner = &*Box::leak(Box::new(Runner::new(handler::STAGE)));
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let request = handler::Request::parse(&event.payload, &deps.config);
        runner.job(&event.context, move |invocation| deps.maintain(request, invocation)).await
    }))
    .await
}
