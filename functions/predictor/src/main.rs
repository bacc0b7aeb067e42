//! predictor: resource-usage predictions per transport unit, from each bronze/locations commit and on a schedule,
//! written to DynamoDB.

mod config;
mod handler;
mod record;
mod source;

use fleetlake_core::config::Env;
use fleetlake_core::features::{Contract, SHIPPED_CONTRACT};
use fleetlake_model::Model;
use fleetlake_runner::{Reply, Runner};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;

use crate::config::{Config, ModelSource};

/// The shipped model (`models/fuel-24h`), used when `MODEL_URI` is not set.
const SHIPPED_MODEL: &[u8] = include_bytes!("../../../models/fuel-24h/model.onnx");

/// The model and its contract (`contract.json` beside the model file), checked against each other.
async fn load_model(config: &Config, s3: &aws_sdk_s3::Client) -> Result<(Model, Contract), String> {
    let (model, contract, origin) = match &config.model {
        ModelSource::Shipped => (SHIPPED_MODEL.to_vec(), SHIPPED_CONTRACT.to_owned(), "the shipped model".to_owned()),
        ModelSource::S3 { bucket, key } => {
            let store = fleetlake_aws::s3::S3Store::new(s3.clone(), bucket.as_str());
            let contract_key = fleetlake_core::lake::contract_key(key);
            let get = |k: String| {
                let store = &store;
                async move { store.get_bytes(&k).await.map_err(|e| format!("MODEL_URI s3://{bucket}/{key}: {e}")) }
            };
            let contract = String::from_utf8(get(contract_key).await?)
                .map_err(|e| format!("MODEL_URI s3://{bucket}/{key}: contract.json is not UTF-8: {e}"))?;
            (get(key.clone()).await?, contract, format!("s3://{bucket}/{key}"))
        }
        ModelSource::Path(path) => {
            let origin = path.display().to_string();
            let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("MODEL_URI {}: {e}", p.display()));
            let contract = read(&path.with_file_name("contract.json"))?;
            let contract = String::from_utf8(contract)
                .map_err(|e| format!("MODEL_URI {origin}: contract.json is not UTF-8: {e}"))?;
            (read(path)?, contract, origin)
        }
    };
    let contract = Contract::parse(&contract).map_err(|e| format!("MODEL_URI {origin}: {e}"))?;
    let loaded = Model::load(&model, contract.clone()).map_err(|e| format!("MODEL_URI {origin}: {e}"))?;
    tracing::info!(model = origin, version = loaded.version(), features = contract.features.len(), "model loaded");
    Ok((loaded, contract))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    fleetlake_aws::telemetry::init_logging();
    let config =
        Config::from_env(&Env::process()).inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let sdk = fleetlake_aws::sdk::load_sdk_config().await;
    let s3 = fleetlake_aws::sdk::s3_client(&sdk);
    let (model, contract) =
        load_model(&config, &s3).await.inspect_err(|e| tracing::error!(error = %e, "model refused"))?;
    let deps = handler::Deps::new(config, s3, aws_sdk_dynamodb::Client::new(&sdk), model, contract)
        .inspect_err(|e| tracing::error!(error = %e, "invalid LAKE_BUCKET or BRONZE_PREFIX"))?;
    // Lives as long as the execution environment; 'static so the runner can run work on tasks of their own.
    let deps: &'static handler::Deps = Box::leak(Box::new(deps));
    let runner = &*Box::leak(Box::new(Runner::new(handler::STAGE)));
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        if handler::is_schedule(&event.payload) {
            runner.job(&event.context, move |invocation| deps.scheduled(invocation)).await.map(Reply::Summary)
        } else {
            runner.objects(&event.payload, &event.context, deps).await
        }
    }))
    .await
}
