//! predictions-api: the latest, past and in-force predictions of a transport unit over HTTP (a Lambda Function URL,
//! or an API Gateway HTTP API), read from the DynamoDB table the predictor writes. Contract: `openapi.yaml`.

mod api;
mod config;
mod respond;
mod token;

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::DateTime;
use fleetlake_aws::predictions::{Prediction, PredictionReader, PredictionsError};
use fleetlake_core::config::Env;
use lambda_http::{service_fn, Body, Error, Request, Response};
use serde_json::{json, Map, Value};
use tracing::{error, warn};

use crate::api::{Problem, Route};
use crate::config::Config;
use crate::token::{Scope, Tokens};

/// What every invocation shares, built once at init.
#[derive(Debug)]
struct Deps {
    config: Config,
    reader: PredictionReader,
    tokens: Tokens,
}

/// A prediction as the API shows it.
fn prediction_json(p: &Prediction) -> Value {
    let features: Map<String, Value> = p.features.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let expires_at =
        DateTime::from_timestamp(p.expires_at, 0).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    json!({
        "transport_unit_id": p.transport_unit_id,
        "predicted_at": p.predicted_at,
        "target": p.target,
        "value": p.value,
        "unit": p.unit,
        "model_version": p.model_version,
        "features": features,
        "source_version": p.source_version,
        "expires_at": expires_at,
    })
}

/// A failed read: 503 (retry shortly) when DynamoDB throttled, 502 otherwise. Never the caller's fault.
fn store_problem(e: &PredictionsError) -> Problem {
    error!(error = %e, "predictions table read failed");
    if e.is_throttling() {
        Problem::new(503, "throttled", "Service unavailable", "the predictions table is busy: retry in a second")
    } else {
        Problem::new(502, "store-unavailable", "Bad gateway", "the predictions table could not be read")
    }
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

async fn answer(deps: &Deps, route: Route) -> Result<Value, Problem> {
    let no_prediction = |unit: &str, what: &str| {
        Problem::new(404, "no-prediction", "Not found", format!("unit {unit:?} has no prediction{what}"))
    };
    match route {
        Route::Latest { unit, consistency } => {
            match deps.reader.latest(&unit, None, consistency, now_s()).await.map_err(|e| store_problem(&e))? {
                Some(p) => Ok(prediction_json(&p)),
                None => Err(no_prediction(&unit, "")),
            }
        }
        Route::At { unit, at, consistency } => {
            match deps.reader.latest(&unit, Some(&at), consistency, now_s()).await.map_err(|e| store_problem(&e))? {
                Some(p) => Ok(prediction_json(&p)),
                None => Err(no_prediction(&unit, &format!(" at or before {at}"))),
            }
        }
        Route::Range { unit, from, to, limit, after, consistency } => {
            let page = deps
                .reader
                .range(&unit, (&from, &to), limit, after.as_deref(), consistency, now_s())
                .await
                .map_err(|e| store_problem(&e))?;
            let next = page.next_after.map(|a| deps.tokens.issue(Scope { unit: &unit, from: &from, to: &to }, &a));
            let items: Vec<Value> = page.items.iter().map(prediction_json).collect();
            Ok(json!({"transport_unit_id": unit, "predictions": items, "next": next}))
        }
        Route::Health | Route::Preflight => Ok(Value::Null),
    }
}

async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    let (method, headers, uri) = (request.method(), request.headers(), request.uri());
    let path = uri.path();
    let respond = respond::Request { method, headers, path, cors: &deps.config.cors };
    let route = match api::route(method, path, uri.query(), &deps.tokens, deps.config.cors != config::Cors::Off) {
        Ok(route) => route,
        Err(problem) => {
            warn!(status = problem.status, method = %method, detail = %problem.detail, "request refused");
            return respond.problem(&problem);
        }
    };
    match route {
        Route::Health => respond.health(),
        Route::Preflight => respond.preflight(),
        route => match answer(deps, route).await {
            Ok(value) => respond.json(&value, deps.config.cache_max_age_s),
            Err(problem) => respond.problem(&problem),
        },
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    fleetlake_aws::telemetry::init_logging();
    let config =
        Config::from_env(&Env::process()).inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let sdk = fleetlake_aws::sdk::load_sdk_config().await;
    // An HTTP answer cannot wait a minute: tighter deadlines than the pipeline's, and one retry.
    let (timeouts, retries) = fleetlake_aws::sdk::deadlines([1_000, 2_000, 5_000], 2, 50);
    let dynamodb = aws_sdk_dynamodb::config::Builder::from(&sdk).timeout_config(timeouts).retry_config(retries).build();
    let reader = PredictionReader::new(aws_sdk_dynamodb::Client::from_conf(dynamodb), config.table.clone());
    let tokens = Tokens::new(&config.pagination_key);
    let deps: &'static Deps = Box::leak(Box::new(Deps { config, reader, tokens }));
    lambda_http::run(service_fn(move |request: Request| async move { Ok::<_, Error>(handle(deps, request).await) }))
        .await
}
