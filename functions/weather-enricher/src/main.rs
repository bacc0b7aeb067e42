//! weather-enricher: adds weather to landed positions and writes them to the enriched zone.

mod config;
mod handler;

use fleetlake_core::config::Env;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    fleetlake_aws::telemetry::init_logging();
    let mut config = config::Config::from_env(&Env::process())
        .inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let sdk = fleetlake_aws::sdk::load_sdk_config().await;
    if let Some(param) = config.weather.api_key_param.clone() {
        let ssm = aws_sdk_ssm::Client::new(&sdk);
        config.weather.api_key = Some(
            fleetlake_aws::ssm::read_secure_parameter(&ssm, &param)
                .await
                .inspect_err(|e| tracing::error!(error = %e, parameter = %param, "cannot read the weather API key"))?,
        );
    }
    // Lives as long as the execution environment; 'static so objects can be enriched on separate tasks.
    let deps: &'static handler::Deps =
        Box::leak(Box::new(handler::Deps::new(config, fleetlake_aws::sdk::s3_client(&sdk))?));
    let runner = &*Box::leak(Box::new(deps.runner()));
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        runner.objects(&event.payload, &event.context, deps).await
    }))
    .await
}
