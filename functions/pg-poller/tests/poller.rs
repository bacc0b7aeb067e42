//! pg-poller against a real PostgreSQL 15 (a throwaway cluster per test, TLS on with a CA made for it) and moto's
//! S3 and Secrets Manager: the real binary behind a Lambda runtime API, real transactions, and what it lands
//! appended to bronze as delta-writer appends it, read back with the Python `deltalake` package.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, clippy::string_slice)] // test helpers, like the tests themselves, fail loudly

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fleetlake_core::bronze::{TableSpec, PERFORMANCE_STATS, TRANSPORT_UNITS};
use fleetlake_testkit::lake::{append_landed, read_delta};
use fleetlake_testkit::{unique_name, LambdaHarness, Moto, Postgres};
use serde_json::{json, Value};

const SCHEMA: &str = "
    CREATE TABLE performance_stats (
        transport_unit_id text NOT NULL, stat_date date NOT NULL, distance_km float8, fuel_used_l float8,
        engine_hours float8, updated_at timestamptz DEFAULT now(), PRIMARY KEY (transport_unit_id, stat_date));
    CREATE INDEX performance_stats_updated_at ON performance_stats (updated_at);
    CREATE TABLE transport_units (
        transport_unit_id text PRIMARY KEY, transport_type text, name text, capacity_t float8,
        updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz);
    CREATE ROLE poller LOGIN PASSWORD 'poller-pw';
    GRANT pg_read_all_stats TO poller;
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO poller;
    CREATE ROLE blind LOGIN PASSWORD 'blind-pw';
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO blind;
";

struct Stack {
    moto: Moto,
    pg: Postgres,
    bucket: String,
    secret: String,
    db: tokio_postgres::Client,
}

impl Stack {
    async fn new() -> Stack {
        let moto = Moto::start().await;
        let bucket = moto.bucket("poll").await;
        let pg = Postgres::start().await;
        pg.admin("postgres").await.batch_execute("CREATE DATABASE fleet").await.unwrap();
        let db = pg.admin("fleet").await;
        db.batch_execute(SCHEMA).await.unwrap();
        let stack = Stack { secret: String::new(), moto, pg, bucket, db };
        let secret = stack.secret("poller", "poller-pw").await;
        Stack { secret, ..stack }
    }

    /// A secret in the RDS format for `user`; returns its ARN.
    async fn secret(&self, user: &str, password: &str) -> String {
        let sm = self.moto.secrets_manager();
        let value = json!({"engine": "postgres", "username": user, "password": password, "host": "127.0.0.1",
                           "port": self.pg.port, "dbname": "fleet"});
        let out = sm
            .create_secret()
            .name(unique_name("pg"))
            .secret_string(value.to_string())
            .send()
            .await
            .expect("create the secret");
        out.arn().unwrap().to_owned()
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.moto.env();
        let ca = self.pg.ca_file.display().to_string();
        for (k, v) in [
            ("LAKE_BUCKET", self.bucket.as_str()),
            ("PG_SECRET_ARN", self.secret.as_str()),
            ("PG_CA_BUNDLE", ca.as_str()),
            ("RUST_LOG", "info"),
        ] {
            env.push((k.to_owned(), v.to_owned()));
        }
        for (k, v) in extra {
            env.retain(|(n, _)| n != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        env
    }

    async fn poller(&self, extra: &[(&str, &str)]) -> LambdaHarness {
        LambdaHarness::start(Path::new(env!("CARGO_BIN_EXE_pg-poller")), "pg-poller", &self.env(extra)).await
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        self.moto.keys(&self.bucket, prefix).await
    }

    /// The rows of a bronze table, as the Python `deltalake` package reads them.
    fn bronze(&self, table: &str) -> Vec<Value> {
        let t = read_delta(&self.moto.endpoint, &format!("s3://{}/bronze/{table}", self.bucket));
        t["rows"].as_array().unwrap().clone()
    }

    /// Appends the landed objects not appended yet (those not in `seen`) to `spec`'s table; returns the rows added.
    async fn append_new(&self, spec: &'static TableSpec, seen: &mut Vec<String>) -> usize {
        let fresh: Vec<String> =
            self.keys(&format!("landing/{}/", spec.name)).await.into_iter().filter(|k| !seen.contains(k)).collect();
        seen.extend(fresh.iter().cloned());
        append_landed(&self.moto, &self.bucket, spec, &fresh).await.iter().sum()
    }
}

async fn poll(f: &mut LambdaHarness) -> Value {
    match f.answer(&json!({})).await {
        Ok(v) => v,
        Err(e) => panic!("poll failed: {e}\n{}", f.stderr()),
    }
}

fn report<'a>(answer: &'a Value, table: &str) -> &'a Value {
    answer["tables"].as_array().unwrap().iter().find(|t| t["table"] == table).unwrap()
}

/// `(unit, day or "", op, fuel or name)` of each bronze change row, in the order of `ts_ms`, then unit.
fn changes(rows: &[Value], value: &str) -> Vec<(String, String, String, Value)> {
    let mut out: Vec<(String, String, String, String, Value)> = rows
        .iter()
        .map(|r| {
            assert!(r["lsn"].is_null(), "a polled change has no LSN: {r}");
            (
                r["ts_ms"].as_str().unwrap().to_owned(),
                r["transport_unit_id"].as_str().unwrap().to_owned(),
                r["stat_date"].as_str().unwrap_or_default().to_owned(),
                r["op"].as_str().unwrap().to_owned(),
                r[value].clone(),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out.into_iter().map(|(_, u, d, op, v)| (u, d, op, v)).collect()
}

/// Waits until `n` poller sessions wait on a lock.
async fn wait_for_pollers_on_the_lock(db: &tokio_postgres::Client, n: i64) {
    for _ in 0..400 {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = 'fleetlake-pg-poller' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} pollers never waited on the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_visible_at_a_poll_lands_in_bronze_once_and_a_quiet_poll_writes_nothing() {
    let s = Stack::new().await;
    let mut f = s.poller(&[("POLL_KEY_CHECK_HOURS", "0"), ("POLL_KEEP_STATES", "2")]).await;
    let (mut stats_seen, mut units_seen) = (Vec::new(), Vec::new());

    s.db.batch_execute(
        "INSERT INTO performance_stats VALUES ('TU-1', '2026-11-01', 100, 10, 5);
         INSERT INTO performance_stats VALUES ('TU-2', '2026-11-01', 200, 20, 6);
         INSERT INTO transport_units VALUES ('TU-1', 'maritime', 'Ada', 1000);
         INSERT INTO transport_units VALUES ('TU-2', 'aerial', 'Bo', 10);",
    )
    .await
    .unwrap();
    let first = poll(&mut f).await;
    assert_eq!(report(&first, "public.performance_stats")["changes_landed"], 2, "{first}");
    assert_eq!(s.append_new(&PERFORMANCE_STATS, &mut stats_seen).await, 2);

    // An update, an insert, a soft delete.
    s.db.batch_execute(
        "UPDATE performance_stats SET fuel_used_l = 11, updated_at = now() WHERE transport_unit_id = 'TU-1';
         INSERT INTO performance_stats VALUES ('TU-3', '2026-11-01', 300, 30, 7);
         UPDATE transport_units SET deleted_at = now(), updated_at = now() WHERE transport_unit_id = 'TU-2';",
    )
    .await
    .unwrap();
    let second = poll(&mut f).await;
    assert_eq!(report(&second, "public.performance_stats")["changes_landed"], 2, "{second}");
    // TU-2 is read again inside the overlap, and skipped: it was landed already.
    assert_eq!(report(&second, "public.performance_stats")["versions_skipped"], 1);
    assert_eq!(s.append_new(&PERFORMANCE_STATS, &mut stats_seen).await, 2);

    // A hard delete, found by the key comparison.
    s.db.batch_execute("DELETE FROM performance_stats WHERE transport_unit_id = 'TU-2'").await.unwrap();
    let third = poll(&mut f).await;
    assert_eq!(report(&third, "public.performance_stats")["deletes_landed"], 1, "{third}");
    assert_eq!(s.append_new(&PERFORMANCE_STATS, &mut stats_seen).await, 1);
    // The run that found the delete dies before recording: the next run finds it again, with the same identity.
    let newest = s.keys("state/pg-poller/public.performance_stats/state-").await.pop().unwrap();
    s.moto.s3().delete_object().bucket(&s.bucket).key(&newest).send().await.unwrap();
    let again = poll(&mut f).await;
    assert_eq!(report(&again, "public.performance_stats")["deletes_landed"], 1, "{again}");
    assert_eq!(s.append_new(&PERFORMANCE_STATS, &mut stats_seen).await, 0, "the delete landed again is one change");

    let fuel = changes(&s.bronze("performance_stats"), "fuel_used_l");
    let day = "2026-11-01".to_owned();
    let v = |u: &str, op: &str, fuel: Value| (u.to_owned(), day.clone(), op.to_owned(), fuel);
    assert_eq!(
        fuel,
        [
            v("TU-1", "c", json!(10.0)),
            v("TU-2", "c", json!(20.0)),
            v("TU-1", "u", json!(11.0)),
            v("TU-3", "c", json!(30.0)),
            v("TU-2", "d", Value::Null),
        ]
    );
    assert_eq!(s.append_new(&TRANSPORT_UNITS, &mut units_seen).await, 3);
    let names = changes(&s.bronze("transport_units"), "name");
    let u = |id: &str, op: &str, name: &str| (id.to_owned(), String::new(), op.to_owned(), json!(name));
    assert_eq!(names, [u("TU-1", "c", "Ada"), u("TU-2", "c", "Bo"), u("TU-2", "d", "Bo")]);

    // Two states are kept, and no key snapshot older than the one the older of them names.
    let folder = "state/pg-poller/public.performance_stats/";
    let states = s.keys(&format!("{folder}state-")).await;
    assert_eq!(
        states.iter().map(|k| &k[folder.len()..]).collect::<Vec<_>>(),
        ["state-0000000000000002.json", "state-0000000000000003.json"]
    );
    let snapshots = s.keys(&format!("{folder}keys-")).await;
    assert!(
        !snapshots.is_empty() && snapshots.iter().all(|k| k[folder.len()..] >= *"keys-0000000000000002"),
        "{snapshots:?}"
    );

    // Redelivering every landed object adds nothing.
    let all = s.keys("landing/performance_stats/").await;
    assert_eq!(append_landed(&s.moto, &s.bucket, &PERFORMANCE_STATS, &all).await.iter().sum::<usize>(), 0);

    // With the comparison not due, a poll of unchanged tables writes no object at all.
    drop(f);
    let mut quiet = s.poller(&[]).await;
    let before = s.keys("").await;
    let answer = poll(&mut quiet).await;
    assert_eq!(s.keys("").await, before, "{answer}");
    assert_eq!(report(&answer, "public.performance_stats")["recorded"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_across_two_polls_is_caught_though_its_updated_at_is_older() {
    let s = Stack::new().await;
    // The CA bundle from S3, as the template passes it.
    let pem = std::fs::read(&s.pg.ca_file).unwrap();
    s.moto.s3().put_object().bucket(&s.bucket).key("certs/ca.pem").body(pem.into()).send().await.unwrap();
    let ca = format!("s3://{}/certs/ca.pem", s.bucket);
    // No overlap: only the cursor's rule about open transactions can catch it.
    let mut f = s
        .poller(&[
            ("POLL_OVERLAP_SECONDS", "0"),
            ("POLL_TABLES", "public.performance_stats=performance_stats"),
            ("PG_CA_BUNDLE", &ca),
        ])
        .await;
    let mut seen = Vec::new();
    let slow = s.pg.admin("fleet").await;
    slow.batch_execute("BEGIN; INSERT INTO performance_stats VALUES ('TU-SLOW', '2026-11-01', 1, 1, 1)").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.db.batch_execute("INSERT INTO performance_stats VALUES ('TU-FAST', '2026-11-01', 2, 2, 2)").await.unwrap();
    let first = poll(&mut f).await;
    assert_eq!(report(&first, "public.performance_stats")["changes_landed"], 1, "{first}");
    slow.batch_execute("COMMIT").await.unwrap();
    let second = poll(&mut f).await;
    assert_eq!(report(&second, "public.performance_stats")["changes_landed"], 1, "{second}");
    s.append_new(&PERFORMANCE_STATS, &mut seen).await;
    let rows = s.bronze("performance_stats");
    let units: Vec<String> = changes(&rows, "fuel_used_l").into_iter().map(|c| c.0).collect();
    // In source order: the slow transaction's row is the older version.
    assert_eq!(units, ["TU-SLOW", "TU-FAST"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_times_across_pages_two_runs_at_once_and_a_run_that_died_before_recording() {
    let s = Stack::new().await;
    let env = [
        ("POLL_PAGE_ROWS", "3"),
        ("POLL_OBJECT_ROWS", "4"),
        ("POLL_TABLES", "public.performance_stats=performance_stats"),
    ];
    let mut f = s.poller(&env).await;
    let mut seen = Vec::new();
    // Ten rows of one transaction: one updated_at across four pages and three objects.
    s.db.batch_execute(
        "INSERT INTO performance_stats SELECT 'TU-' || i, '2026-11-02', i, i, 1 FROM generate_series(1, 10) i",
    )
    .await
    .unwrap();
    let first = poll(&mut f).await;
    let r = report(&first, "public.performance_stats");
    assert_eq!((r["changes_landed"].as_u64(), r["objects"].as_array().unwrap().len()), (Some(10), 3), "{first}");
    assert_eq!(s.append_new(&PERFORMANCE_STATS, &mut seen).await, 10);

    // Two runs at once, both from the same recorded state (the table is locked until both wait on it): one
    // records the next state, the other is superseded; bronze holds each version once.
    s.db.batch_execute(
        "INSERT INTO performance_stats SELECT 'TU-' || i, '2026-11-03', i, i, 1 FROM generate_series(1, 5) i",
    )
    .await
    .unwrap();
    let mut g = s.poller(&env).await;
    let locker = s.pg.admin("fleet").await;
    locker.batch_execute("BEGIN; LOCK TABLE performance_stats IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let runs = [tokio::spawn(async move { poll(&mut f).await }), tokio::spawn(async move { poll(&mut g).await })];
    wait_for_pollers_on_the_lock(&s.db, 2).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    let [a, b] = runs;
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let flags = |x: &Value| {
        let r = report(x, "public.performance_stats");
        (r["recorded"].as_bool().unwrap(), r["superseded"].as_bool().unwrap(), r["changes_landed"].as_u64().unwrap())
    };
    let mut both = [flags(&a), flags(&b)];
    both.sort();
    assert_eq!(both, [(false, true, 5), (true, false, 5)], "{a}\n{b}");
    let mut f = s.poller(&env).await;
    let states = s.keys("state/pg-poller/public.performance_stats/state-").await;
    assert_eq!(states.len(), 2, "{states:?}");
    s.append_new(&PERFORMANCE_STATS, &mut seen).await;
    assert_eq!(s.bronze("performance_stats").len(), 15);

    // A run that landed its objects and died before recording: the next run polls from the recorded cursor again.
    s.db.batch_execute(
        "UPDATE performance_stats SET fuel_used_l = 99, updated_at = now() WHERE transport_unit_id = 'TU-1'",
    )
    .await
    .unwrap();
    let third = poll(&mut f).await;
    assert_eq!(report(&third, "public.performance_stats")["changes_landed"], 2, "{third}");
    let newest = s.keys("state/pg-poller/public.performance_stats/state-").await.pop().unwrap();
    s.moto.s3().delete_object().bucket(&s.bucket).key(&newest).send().await.unwrap();
    let again = poll(&mut f).await;
    assert_eq!(report(&again, "public.performance_stats")["changes_landed"], 2, "{again}");
    assert_eq!(s.append_new(&PERFORMANCE_STATS, &mut seen).await, 2, "the second landing is a duplicate bronze drops");
    let rows = s.bronze("performance_stats");
    assert_eq!(rows.len(), 17);
    let ops: BTreeMap<String, usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["op"].as_str().unwrap().to_owned()).or_default() += 1;
        m
    });
    assert_eq!(ops, BTreeMap::from([("c".to_owned(), 15), ("u".to_owned(), 2)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rows_are_quarantined_once_with_their_reason_and_never_block_the_cursor() {
    let s = Stack::new().await;
    let mut f = s.poller(&[]).await;
    s.db.batch_execute(
        "INSERT INTO performance_stats VALUES ('TU-1', '2026-11-01', 1, 1, 1);
         INSERT INTO performance_stats VALUES ('TU-NAN', '2026-11-01', 1, 'NaN', 1);
         INSERT INTO performance_stats VALUES ('TU-BC', '0044-03-15 BC', 1, 1, 1);
         INSERT INTO performance_stats VALUES ('TU-INF', '2026-11-01', 1, 1, 1, 'infinity');
         INSERT INTO performance_stats VALUES ('TU-NULL', '2026-11-01', 1, 1, 1, NULL);
         INSERT INTO performance_stats VALUES ('TU-AHEAD', '2026-11-01', 1, 1, 1, now() + interval '3 days');
         INSERT INTO transport_units VALUES ('TU-BIG', 'aerial', repeat('x', 2000000), 1);
         INSERT INTO transport_units VALUES ('TU-OK', 'aerial', 'fine', 1);",
    )
    .await
    .unwrap();
    let first = poll(&mut f).await;
    let stats = report(&first, "public.performance_stats");
    assert_eq!((stats["changes_landed"].as_u64(), stats["quarantined"].as_u64()), (Some(1), Some(5)), "{first}");
    let units = report(&first, "public.transport_units");
    assert_eq!((units["changes_landed"].as_u64(), units["quarantined"].as_u64()), (Some(1), Some(1)), "{first}");
    let mut reasons = Vec::new();
    for key in s.keys("quarantine/pg-poller/").await {
        for line in String::from_utf8(s.moto.get(&s.bucket, &key).await).unwrap().lines() {
            let q: Value = serde_json::from_str(line).unwrap();
            assert_eq!(q["stage"], "pg-poller");
            reasons.push(format!("{} {}", q["source"]["key"][0].as_str().unwrap(), q["reason"].as_str().unwrap()));
        }
    }
    reasons.sort();
    let expect = [
        "TU-AHEAD updated_at: ",
        "TU-BC field `stat_date`",
        "TU-BIG field `name` must be at most 4096 bytes",
        "TU-INF updated_at: infinity",
        "TU-NAN field `fuel_used_l`",
        "TU-NULL updated_at: null",
    ];
    assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
    for (r, e) in reasons.iter().zip(expect) {
        assert!(r.starts_with(e), "{r:?} should start with {e:?}");
    }
    // The cursor went on: a later row lands, and nothing is quarantined again.
    s.db.batch_execute("INSERT INTO performance_stats VALUES ('TU-2', '2026-11-01', 2, 2, 2)").await.unwrap();
    let second = poll(&mut f).await;
    let stats = report(&second, "public.performance_stats");
    assert_eq!((stats["changes_landed"].as_u64(), stats["quarantined"].as_u64()), (Some(1), Some(0)), "{second}");
    let mut seen = Vec::new();
    assert_eq!(s.append_new(&PERFORMANCE_STATS, &mut seen).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_land_nothing_and_say_why() {
    let s = Stack::new().await;
    let only_stats = ("POLL_TABLES", "public.performance_stats=performance_stats");
    s.db.batch_execute("INSERT INTO performance_stats VALUES ('TU-1', '2026-11-01', 1, 1, 1)").await.unwrap();
    let fail = |answer: Result<Value, Value>| -> (String, String) {
        let e = answer.expect_err("the run must fail");
        (e["errorType"].as_str().unwrap().to_owned(), e["errorMessage"].as_str().unwrap().to_owned())
    };

    let wrong_password = s.secret("poller", "not-the-password").await;
    let mut f = s.poller(&[only_stats, ("PG_SECRET_ARN", &wrong_password)]).await;
    let (kind, message) = fail(f.answer(&json!({})).await);
    assert!(message.contains("password authentication failed"), "{message}");
    assert_eq!(kind, "fleetlake.Retryable");

    // IAM authentication: the token goes to the server as the password (a PostgreSQL that is not RDS refuses
    // it), and neither the error nor the logs show it.
    let port = s.pg.port.to_string();
    let iam = [("PG_AUTH", "iam"), ("PG_USER", "poller"), ("PG_HOST", "127.0.0.1"), ("PG_PORT", port.as_str())];
    let mut f = s.poller(&[only_stats, iam[0], iam[1], iam[2], iam[3], ("PG_DATABASE", "fleet")]).await;
    let (kind, message) = fail(f.answer(&json!({})).await);
    assert!(message.contains("password authentication failed for user \"poller\""), "{message}");
    assert_eq!(kind, "fleetlake.Retryable");
    assert!(!message.contains("X-Amz-") && !f.stderr().contains("X-Amz-"), "the token leaked: {message}");

    let other_ca = s.pg.other_ca_file.display().to_string();
    let mut f = s.poller(&[only_stats, ("PG_CA_BUNDLE", &other_ca)]).await;
    let (_, message) = fail(f.answer(&json!({})).await);
    assert!(message.to_lowercase().contains("certificate"), "{message}");

    let blind = s.secret("blind", "blind-pw").await;
    let mut f = s.poller(&[only_stats, ("PG_SECRET_ARN", &blind)]).await;
    let (kind, message) = fail(f.answer(&json!({})).await);
    assert!(message.contains("pg_read_all_stats"), "{message}");
    assert_eq!(kind, "fleetlake.Permanent");

    // The connection is lost in the middle of the poll: the table is locked, the poller's backend is killed
    // while it waits.
    let mut f = s.poller(&[only_stats]).await;
    let locker = s.pg.admin("fleet").await;
    locker.batch_execute("BEGIN; LOCK TABLE performance_stats IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let run = tokio::spawn(async move { (f.answer(&json!({})).await, f) });
    wait_for_pollers_on_the_lock(&s.db, 1).await;
    s.db.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'fleetlake-pg-poller' AND wait_event_type = 'Lock'",
    )
    .await
    .unwrap();
    let (answer, mut f) = run.await.unwrap();
    let (kind, message) = fail(answer);
    assert!(message.contains("public.performance_stats"), "{message}");
    assert_eq!(kind, "fleetlake.Retryable");
    assert!(s.keys("landing/").await.is_empty() && s.keys("state/").await.is_empty());
    locker.batch_execute("ROLLBACK").await.unwrap();

    // Once the database is back, the same function lands the row.
    let answer = poll(&mut f).await;
    assert_eq!(report(&answer, "public.performance_stats")["changes_landed"], 1, "{answer}");
}
