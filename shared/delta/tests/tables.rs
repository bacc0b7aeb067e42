//! Creating and evolving a table with many writers at once: a first deployment, a new table, or a release that adds
//! columns, met by a burst of notifications. Each writer is an execution environment of its own (its own object
//! store and connections), and the race for each log version goes through S3's round trip and create-only PUTs.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // tests fail loudly

use std::time::Duration;

use deltalake::kernel::StructField;
use deltalake::{DeltaTable, DeltaTableBuilder};
use fleetlake_core::bronze::LOCATIONS;
use fleetlake_delta::{delta_type, DeltaSettings};
use fleetlake_testkit::{counting_proxy, forwarding_proxy, serialising_proxy, Moto, RequestCounts};

/// Rounds of a race on fresh tables in one bucket of moto, behind a proxy making conditional PUTs atomic (as S3
/// does) and adding 20 ms to every request (moto on loopback answers in well under a millisecond), behind one
/// counting the requests.
struct Race {
    moto: Moto,
    bucket: String,
    endpoint: String,
    counts: RequestCounts,
}

impl Race {
    async fn start(name: &str) -> Race {
        let moto = Moto::start().await;
        let bucket = moto.bucket(name).await;
        let serial = serialising_proxy(moto.endpoint.clone()).await;
        let slow = forwarding_proxy(serial, Duration::from_millis(20), None).await;
        let (endpoint, counts) = counting_proxy(slow).await;
        Race { moto, bucket, endpoint, counts }
    }

    /// The settings of round `round`'s tables, through the proxies.
    fn settings(&self, round: usize) -> DeltaSettings {
        let mut options = self.moto.delta_storage_options();
        options.insert("AWS_ENDPOINT_URL".to_owned(), self.endpoint.clone());
        DeltaSettings::reader(&self.bucket, &format!("round-{round}/"), options).unwrap()
    }

    /// The commits in the log of round `round`'s table.
    async fn commits(&self, round: usize) -> usize {
        let log = self.moto.keys(&self.bucket, &format!("round-{round}/locations/_delta_log/")).await;
        log.iter().filter(|k| k.ends_with(".json")).count()
    }

    /// Create-only PUTs refused so far: races lost.
    fn lost(&self) -> u64 {
        let counts = self.counts.lock().unwrap();
        counts.iter().filter(|(k, _)| k.starts_with("s3:PutObject 4")).map(|(_, n)| n).sum()
    }
}

/// `writers` writers opening (creating or evolving) `bronze/locations` at once; each one's error, if any.
async fn open_at_once(settings: &DeltaSettings, writers: usize) -> Vec<String> {
    let opened = futures::future::join_all((0..writers).map(|_| {
        let settings = settings.clone();
        tokio::spawn(async move { fleetlake_delta::open_or_create(&settings, &LOCATIONS).await })
    }))
    .await;
    let mut failed = Vec::new();
    for (w, result) in opened.into_iter().enumerate() {
        if let Err(e) = result.unwrap() {
            failed.push(format!("writer {w}: {e}"));
        }
    }
    failed
}

/// The table as a reader opens it after the race.
async fn latest(settings: &DeltaSettings) -> DeltaTable {
    let url = settings.table_url(&LOCATIONS).unwrap();
    fleetlake_delta::open_existing(&LOCATIONS, url, settings.storage_options.clone()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_creating_one_table_at_once_create_it_once() {
    let race = Race::start("create").await;
    // Rounds on fresh tables: the race has several ways to go, and each round is a new draw.
    for round in 0..5 {
        let settings = race.settings(round);
        assert_eq!(open_at_once(&settings, 16).await, Vec::<String>::new(), "round {round}");
        // One creation: a writer that lost version 0 does not create the table again as version 1.
        assert_eq!(race.commits(round).await, 1, "round {round}");
        assert_eq!(latest(&settings).await.version(), Some(0));
    }
    // The rounds raced: some creations lost version 0 (a create-only PUT refused).
    assert!(race.lost() > 0, "no creation lost its race: {:?}", race.counts.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_evolving_an_older_table_at_once_change_it_once() {
    let race = Race::start("evolve").await;
    for round in 0..3 {
        let settings = race.settings(round);
        // The table as an older release created it: without the last two weather columns, and `speed_kmh` still
        // required.
        let (dropped, relaxed) = (["weather_code", "weather_status"], "speed_kmh");
        let columns: Vec<StructField> = LOCATIONS
            .columns()
            .into_iter()
            .filter(|(name, ..)| !dropped.contains(name))
            .map(|(name, kind, nullable)| StructField::new(name, delta_type(kind), nullable && name != relaxed))
            .collect();
        DeltaTableBuilder::from_url(settings.table_url(&LOCATIONS).unwrap())
            .unwrap()
            .with_storage_options(race.moto.delta_storage_options())
            .build()
            .unwrap()
            .create()
            .with_table_name("locations")
            .with_columns(columns)
            .with_partition_columns(LOCATIONS.partition_columns())
            .await
            .unwrap();

        assert_eq!(open_at_once(&settings, 8).await, Vec::<String>::new(), "round {round}");

        // The table has this release's schema, changed once: the creation, `speed_kmh` made nullable, the columns
        // added; a writer that lost a change to another's took the winner's.
        let table = latest(&settings).await;
        let schema = table.snapshot().unwrap().schema();
        for (name, kind, nullable) in LOCATIONS.columns() {
            let field = schema.field(name).unwrap_or_else(|| panic!("round {round}: no column {name}"));
            assert_eq!(
                (field.data_type(), field.is_nullable()),
                (&delta_type(kind), nullable),
                "round {round}: {name}"
            );
        }
        assert_eq!(race.commits(round).await, 3, "round {round}");
    }
    assert!(race.lost() > 0, "no change lost its race: {:?}", race.counts.lock().unwrap());
}
