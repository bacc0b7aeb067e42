//! The predictions table adapter against moto's DynamoDB, and behind a proxy that throttles BatchWriteItem the way
//! DynamoDB does (answering with every item in `UnprocessedItems`), which moto cannot do.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use fleetlake_aws::predictions::{Prediction, PredictionStore};
use fleetlake_testkit::Moto;

const TABLE: &str = "predictions";

fn prediction(unit: usize, version: u64, value: f64) -> Prediction {
    Prediction {
        transport_unit_id: format!("TU-{unit:06}"),
        predicted_at: "2026-11-24T23:45:00Z".into(),
        target: "fuel_next_24h".into(),
        value,
        unit: "l".into(),
        model_version: "fuel-24h-0123456789abcdef".into(),
        features: vec![("distance_km".into(), 12.5), ("is_maritime".into(), 1.0)],
        source_version: version,
        expires_at: 1_796_000_000,
    }
}

async fn stored_value(client: &aws_sdk_dynamodb::Client, unit: usize) -> (String, String) {
    let out = client
        .query()
        .table_name(TABLE)
        .key_condition_expression("transport_unit_id = :u")
        .expression_attribute_values(":u", aws_sdk_dynamodb::types::AttributeValue::S(format!("TU-{unit:06}")))
        .scan_index_forward(false)
        .limit(1)
        .send()
        .await
        .unwrap();
    let item = &out.items()[0];
    (item["value"].as_n().unwrap().clone(), item["source_version"].as_n().unwrap().clone())
}

async fn count(client: &aws_sdk_dynamodb::Client) -> i32 {
    client.scan().table_name(TABLE).send().await.unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_are_written_once_and_never_replaced_by_an_older_version() {
    let moto = Moto::start().await;
    let client = moto.predictions_table(TABLE).await;
    let store = PredictionStore::new(client.clone(), TABLE);
    let deadline = Instant::now() + Duration::from_secs(30);

    let first: Vec<Prediction> = (0..60).map(|u| prediction(u, 5, 100.0 + u as f64)).collect();
    let stats = store.write(&first, deadline).await.unwrap();
    assert_eq!((stats.written, stats.kept, stats.batch_calls), (60, 0, 3), "60 items in chunks of 25");
    assert_eq!(count(&client).await, 60);
    assert_eq!(stored_value(&client, 7).await, ("107".to_owned(), "5".to_owned()));

    // A replay writes nothing.
    let stats = store.write(&first, deadline).await.unwrap();
    assert_eq!((stats.written, stats.kept, stats.batch_calls), (0, 60, 0));
    // An older version of the same key does not replace the newer one; a newer version does.
    let stats = store.write(&[prediction(7, 4, 1.0), prediction(8, 6, 2.0)], deadline).await.unwrap();
    assert_eq!((stats.written, stats.kept), (1, 1));
    assert_eq!(stored_value(&client, 7).await, ("107".to_owned(), "5".to_owned()));
    assert_eq!(stored_value(&client, 8).await, ("2".to_owned(), "6".to_owned()));
}

/// A proxy to moto that answers the first `throttle` BatchWriteItem calls with every item unprocessed (nothing
/// written), as DynamoDB does when a partition is throttled. Returns its endpoint.
async fn throttling_proxy(moto_endpoint: String, throttle: u32) -> String {
    let calls = Arc::new(AtomicU32::new(0));
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let (calls, http, moto) = (calls.clone(), http.clone(), moto_endpoint.clone());
        async move {
            let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            if target.ends_with(".BatchWriteItem") && calls.fetch_add(1, Ordering::SeqCst) < throttle {
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let answer = serde_json::json!({"UnprocessedItems": request["RequestItems"]});
                return (
                    StatusCode::OK,
                    [("content-type", "application/x-amz-json-1.0")],
                    answer.to_string().into_bytes(),
                );
            }
            let mut forward = http.post(&moto).body(body);
            for (k, v) in &headers {
                if k != "host" && k != "content-length" {
                    forward = forward.header(k, v);
                }
            }
            let response = forward.send().await.unwrap();
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            (status, [("content-type", "application/x-amz-json-1.0")], response.bytes().await.unwrap().to_vec())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    endpoint
}

/// moto, a client straight to its predictions table, and a store that reaches it through a proxy handing back every
/// item of the first `throttle` BatchWriteItem calls (backoff 5 ms).
async fn throttled_store(throttle: u32) -> (Moto, aws_sdk_dynamodb::Client, PredictionStore) {
    let moto = Moto::start().await;
    let direct = moto.predictions_table(TABLE).await;
    let proxy = throttling_proxy(moto.endpoint.clone(), throttle).await;
    let config = aws_sdk_dynamodb::config::Builder::from(&moto.sdk_config()).endpoint_url(&proxy).build();
    let mut store = PredictionStore::new(aws_sdk_dynamodb::Client::from_conf(config), TABLE);
    store.backoff_base = Duration::from_millis(5);
    (moto, direct, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_batch_writes_are_retried_until_every_item_is_in() {
    let (_moto, direct, mut store) = throttled_store(3).await;
    // One call at a time, so that which calls are throttled is known.
    store.concurrency = 1;

    // GIVEN DynamoDB hands back every item of the first 3 BatchWriteItem calls
    let predictions: Vec<Prediction> = (0..30).map(|u| prediction(u, 1, u as f64)).collect();
    let stats = store.write(&predictions, Instant::now() + Duration::from_secs(30)).await.unwrap();
    // THEN the first chunk of 25 went out 4 times, the second once, and every item is in
    assert_eq!((stats.written, stats.batch_calls, stats.retried_items), (30, 5, 75));
    assert_eq!(count(&direct).await, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_batch_writes_in_flight_together_are_each_retried_until_every_item_is_in() {
    let (_moto, direct, store) = throttled_store(3).await;

    // GIVEN 130 predictions (6 chunks, sent together) and DynamoDB handing back every item of the first 3 calls
    let predictions: Vec<Prediction> = (0..130).map(|u| prediction(u, 1, u as f64)).collect();
    let stats = store.write(&predictions, Instant::now() + Duration::from_secs(30)).await.unwrap();
    // THEN three calls were sent again, whichever they were, and every item is in once
    assert_eq!((stats.written, stats.batch_calls), (130, 9));
    assert!(stats.retried_items >= 3 * 5 && stats.retried_items <= 3 * 25, "{stats:?}");
    assert_eq!(count(&direct).await, 130);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_still_unprocessed_at_the_deadline_fail_the_write() {
    let moto = Moto::start().await;
    let direct = moto.predictions_table(TABLE).await;
    let proxy = throttling_proxy(moto.endpoint.clone(), u32::MAX).await;
    let config = aws_sdk_dynamodb::config::Builder::from(&moto.sdk_config()).endpoint_url(&proxy).build();
    let mut store = PredictionStore::new(aws_sdk_dynamodb::Client::from_conf(config), TABLE);
    store.backoff_base = Duration::from_millis(20);
    let err = store.write(&[prediction(1, 1, 1.0)], Instant::now() + Duration::from_millis(300)).await.unwrap_err();
    assert!(err.to_string().contains("still unprocessed at the deadline"), "{err}");
    assert_eq!(count(&direct).await, 0);
}
