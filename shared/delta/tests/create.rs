//! Creating a table: many writers meeting a table that does not exist yet, at once (a first deployment, or a new
//! table, under a burst of notifications).
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // tests fail loudly

use std::time::Duration;

use fleetlake_core::bronze::LOCATIONS;
use fleetlake_testkit::{forwarding_proxy, serialising_proxy, Moto};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_creating_one_table_at_once_all_get_the_table_at_version_zero() {
    let moto = Moto::start().await;
    let bucket = moto.bucket("create").await;
    // S3's round trip (moto answers in well under a millisecond) and its atomic create-only PUTs.
    let serial = serialising_proxy(moto.endpoint.clone()).await;
    let slow = forwarding_proxy(serial, Duration::from_millis(20), None).await;
    // Rounds on fresh tables: the race has several ways to go, and each round is a new draw.
    for round in 0..5 {
        let mut options = moto.delta_storage_options();
        options.insert("AWS_ENDPOINT_URL".to_owned(), slow.clone());
        let settings = fleetlake_delta::DeltaSettings::reader(&bucket, &format!("round-{round}/"), options).unwrap();
        // Sixteen execution environments: each its own object store and connections.
        let writers = (0..16).map(|_| {
            let settings = settings.clone();
            tokio::spawn(async move { fleetlake_delta::open_or_create(&settings, &LOCATIONS).await })
        });
        let opened = futures::future::join_all(writers).await;
        let mut failed = Vec::new();
        for (w, result) in opened.into_iter().enumerate() {
            match result.unwrap() {
                Ok(table) => assert_eq!(table.version(), Some(0), "round {round}, writer {w}"),
                Err(e) => failed.push(format!("writer {w}: {e}")),
            }
        }
        assert_eq!(failed, Vec::<String>::new(), "round {round}");
        let log = moto.keys(&bucket, &format!("round-{round}/locations/_delta_log/")).await;
        // One creation: a writer that lost version 0 does not create the table again as version 1.
        assert_eq!(log.iter().filter(|k| k.ends_with(".json")).count(), 1, "round {round}: {log:?}");
    }
}
