//! The S3 and quarantine adapters against moto: create-only puts, missing objects, streaming gzip reads.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use chrono::NaiveDate;
use fleetlake_aws::quarantine::{QuarantineLine, QuarantineWriter};
use fleetlake_aws::s3::{PutOutcome, S3Store};
use fleetlake_aws::Error;
use fleetlake_core::config::Prefix;
use fleetlake_core::fault::Fault;
use fleetlake_core::ndjson::{gzip_lines, Line, MAX_LINE_BYTES};
use fleetlake_testkit::Moto;
use serde_json::json;

#[tokio::test]
async fn create_only_puts_keep_the_first_object() {
    let moto = Moto::start().await;
    let store = S3Store::new(moto.s3(), moto.bucket("lake").await);
    assert_eq!(store.put_if_absent("a/b.txt", b"first".to_vec(), "text/plain").await.unwrap(), PutOutcome::Created);
    assert_eq!(
        store.put_if_absent("a/b.txt", b"second".to_vec(), "text/plain").await.unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(store.get_bytes("a/b.txt").await.unwrap(), b"first");
    store.put("a/b.txt", b"third".to_vec(), "text/plain").await.unwrap();
    assert_eq!(store.get_bytes("a/b.txt").await.unwrap(), b"third");
}

/// Create-only PUTs racing for one key have one winner: of 16 writers, exactly one creates it and the others are
/// told it exists, in each of 100 races, and the object holds the winner's bytes. S3 guarantees it; moto does not
/// under load (two winners were seen in `make test`), so the races go through the serialising proxy, as every test
/// that races writers for one key must.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_only_puts_have_one_winner_among_16_concurrent_writers() {
    let moto = Moto::start().await;
    let bucket = moto.bucket("lake").await;
    let proxy = fleetlake_testkit::serialising_proxy(moto.endpoint.clone()).await;
    let conf = aws_sdk_s3::config::Builder::from(&moto.sdk_config()).endpoint_url(proxy).force_path_style(true).build();
    let store = S3Store::new(aws_sdk_s3::Client::from_conf(conf), bucket);
    for race in 0..100 {
        let key = format!("race/{race}");
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move {
                    (w, store.put_if_absent(&key, format!("writer {w}").into_bytes(), "text/plain").await.unwrap())
                })
            })
            .collect();
        let mut outcomes: Vec<(i32, PutOutcome)> = Vec::with_capacity(writers.len());
        for writer in writers {
            outcomes.push(writer.await.unwrap());
        }
        let winners: Vec<i32> = outcomes.iter().filter(|(_, o)| *o == PutOutcome::Created).map(|(w, _)| *w).collect();
        assert_eq!(winners.len(), 1, "race {race}: {outcomes:?}");
        assert_eq!(store.get_bytes(&key).await.unwrap(), format!("writer {}", winners[0]).into_bytes());
    }
}

#[tokio::test]
async fn a_conditional_replace_loses_to_a_write_made_after_the_read() {
    let moto = Moto::start().await;
    let store = S3Store::new(moto.s3(), moto.bucket("lake").await);
    let meta = |v: &'static str| [("delta-version", v)];
    // Absent: created only once, by whichever writer read it absent first.
    assert!(store.head("m").await.unwrap().is_none());
    assert!(store.put_if_unchanged("m", b"v1".to_vec(), "text/plain", &meta("1"), None).await.unwrap());
    assert!(!store.put_if_unchanged("m", b"v1'".to_vec(), "text/plain", &meta("1"), None).await.unwrap());
    // Two writers read the same object; the first to write wins, the other must read again.
    let (a, b) = (store.head("m").await.unwrap(), store.head("m").await.unwrap());
    assert_eq!(a.as_ref().unwrap().metadata["delta-version"], "1");
    assert!(store.put_if_unchanged("m", b"v3".to_vec(), "text/plain", &meta("3"), a.as_ref()).await.unwrap());
    assert!(!store.put_if_unchanged("m", b"v2".to_vec(), "text/plain", &meta("2"), b.as_ref()).await.unwrap());
    assert_eq!(store.get_bytes("m").await.unwrap(), b"v3");
    assert_eq!(store.metadata("m").await.unwrap().unwrap()["delta-version"], "3");
}

#[tokio::test]
async fn missing_objects_and_missing_buckets_are_told_apart() {
    let moto = Moto::start().await;
    let store = S3Store::new(moto.s3(), moto.bucket("lake").await);
    let err = store.get_bytes("nope").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(err.fault(), Fault::Permanent);

    let err = S3Store::new(moto.s3(), "no-such-bucket-here").put("k", vec![1], "x").await.unwrap_err();
    assert!(matches!(err, Error::S3 { op: "PutObject", .. }), "{err}");
    assert_eq!(err.fault(), Fault::Retryable);
}

#[tokio::test]
async fn a_read_pinned_to_an_etag_refuses_a_replaced_object() {
    let moto = Moto::start().await;
    let store = S3Store::new(moto.s3(), moto.bucket("lake").await);
    let first = gzip_lines([b"{\"v\":1}".as_slice()]).unwrap();
    store.put("in/x.ndjson.gz", first, "application/gzip").await.unwrap();
    let old = store.head("in/x.ndjson.gz").await.unwrap().unwrap().etag.unwrap();
    // Notifications carry the ETag bare; S3 returns it quoted. Both pin the read.
    let bare = old.trim_matches('"').to_owned();
    for etag in [old.as_str(), bare.as_str()] {
        let mut lines = store.gzip_lines("in/x.ndjson.gz", Some(etag)).await.unwrap();
        assert!(matches!(lines.next_line().await.unwrap(), Some(Line::Text { bytes, .. }) if bytes == b"{\"v\":1}"));
    }
    store.put("in/x.ndjson.gz", gzip_lines([b"{\"v\":2}".as_slice()]).unwrap(), "application/gzip").await.unwrap();
    let Err(err) = store.gzip_lines("in/x.ndjson.gz", Some(&bare)).await else { panic!("the old version is gone") };
    assert!(matches!(err, Error::Superseded { .. }), "{err}");
    // An ETag no object can have (a corrupt or hostile notification) never reaches a request header.
    for bad in ["é€ab", "a\"b", "", "a b"] {
        let Err(err) = store.gzip_lines("in/x.ndjson.gz", Some(bad)).await else { panic!("{bad:?} is no ETag") };
        assert!(matches!(err, Error::BadEtag { .. }), "{err}");
        assert_eq!(err.fault(), Fault::Permanent, "reported, not retried");
    }
    // Unpinned, the current content.
    let mut lines = store.gzip_lines("in/x.ndjson.gz", None).await.unwrap();
    assert!(matches!(lines.next_line().await.unwrap(), Some(Line::Text { bytes, .. }) if bytes == b"{\"v\":2}"));
}

#[tokio::test]
async fn gzip_objects_stream_line_by_line_across_members() {
    let moto = Moto::start().await;
    let store = S3Store::new(moto.s3(), moto.bucket("lake").await);
    // GIVEN an object of two gzip members (as `cat a.gz b.gz` makes), 50,000 lines and one over-long line
    let first: Vec<Vec<u8>> = (0..25_000).map(|i| format!("{{\"n\":{i}}}").into_bytes()).collect();
    let long = vec![b'x'; MAX_LINE_BYTES + 1];
    let mut second: Vec<Vec<u8>> = vec![long];
    second.extend((25_000..50_000).map(|i| format!("{{\"n\":{i}}}").into_bytes()));
    let mut body = gzip_lines(first.iter().map(Vec::as_slice)).unwrap();
    body.extend(gzip_lines(second.iter().map(Vec::as_slice)).unwrap());
    store.put("in/x.ndjson.gz", body, "application/gzip").await.unwrap();

    // WHEN it is read as a stream
    let mut lines = store.gzip_lines("in/x.ndjson.gz", None).await.unwrap();
    let (mut numbers, mut too_long) = (Vec::new(), Vec::new());
    while let Some(line) = lines.next_line().await.unwrap() {
        match line {
            Line::Text { bytes, .. } => {
                numbers.push(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["n"].as_i64().unwrap())
            }
            Line::TooLong { number, .. } => too_long.push(number),
        }
    }
    // THEN every line comes back once, in order, and the over-long one is reported by its line number
    assert_eq!(numbers, (0..50_000).collect::<Vec<i64>>());
    assert_eq!(too_long, [25_001]);
}

#[tokio::test]
async fn an_object_that_is_not_gzip_is_the_objects_fault() {
    let moto = Moto::start().await;
    let store = S3Store::new(moto.s3(), moto.bucket("lake").await);
    store.put("in/plain.ndjson.gz", b"{\"not\":\"gzip\"}\n".to_vec(), "application/gzip").await.unwrap();
    let mut lines = store.gzip_lines("in/plain.ndjson.gz", None).await.unwrap();
    let err = lines.next_line().await.unwrap_err();
    assert!(matches!(err, Error::Read { .. }), "{err}");
    assert_eq!(err.fault(), Fault::Permanent, "{err}");

    // A gzip stream cut short (an upload that stopped half-way) is the object's fault too: retrying cannot help.
    let whole = gzip_lines((0..2_000).map(|_| b"{\"n\":1}".as_slice())).unwrap();
    store.put("in/cut.ndjson.gz", whole[..whole.len() / 2].to_vec(), "application/gzip").await.unwrap();
    let mut lines = store.gzip_lines("in/cut.ndjson.gz", None).await.unwrap();
    let err = loop {
        match lines.next_line().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a truncated stream must not end cleanly"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.fault(), Fault::Permanent, "{err}");
}

#[tokio::test]
async fn quarantine_objects_hold_one_reason_per_line_and_are_written_once() {
    let moto = Moto::start().await;
    let bucket = moto.bucket("lake").await;
    let store = S3Store::new(moto.s3(), bucket.clone());
    let writer = QuarantineWriter::new(store, Prefix::parse("QUARANTINE_PREFIX", "quarantine/").unwrap(), "test-stage");
    let dt = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
    let lines = [
        QuarantineLine::new("bad one", "test-stage", &json!({"offset": 1}), Some("{".into())),
        QuarantineLine::new("bad two", "test-stage", &json!({"offset": 2}), None),
    ];
    assert_eq!(writer.write(dt, "src-1", &[]).await.unwrap(), None, "nothing to quarantine, nothing written");
    let key = writer.write(dt, "src-1", &lines).await.unwrap().unwrap();
    assert_eq!(key, "quarantine/test-stage/dt=2026-11-24/src-1.ndjson");
    assert_eq!(writer.write(dt, "src-1", &lines[..1]).await.unwrap().unwrap(), key);
    let text = String::from_utf8(moto.get(&bucket, &key).await).unwrap();
    let got: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        got,
        [
            json!({"reason": "bad one", "stage": "test-stage", "source": {"offset": 1}, "raw": "{"}),
            json!({"reason": "bad two", "stage": "test-stage", "source": {"offset": 2}, "raw": null}),
        ]
    );
}
