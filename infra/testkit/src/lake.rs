//! Change logs written for tests through the real converter and Delta adapter, as delta-writer writes them.

use std::io::BufRead;

use fleetlake_core::bronze::{Converter, EventWindow, LineOrigin, Lineage, TableSpec, PERFORMANCE_STATS};
use fleetlake_core::lake::BatchName;
use fleetlake_delta::{open_or_create, Appender, DeltaSettings};
use serde_json::{json, Value};

use crate::{venv_bin, workspace_root, Moto};

/// A Delta table as the Python `deltalake` package reads it (`infra/testkit/py/read_delta.py`): version, files,
/// schema, rows, history.
pub fn read_delta(endpoint: &str, uri: &str) -> Value {
    let out = std::process::Command::new(venv_bin("python"))
        .arg(workspace_root().join("infra/testkit/py/read_delta.py"))
        .arg(endpoint)
        .arg(uri)
        .output()
        .expect("run read_delta.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("read_delta.py prints JSON")
}

/// A Debezium change of `performance_stats` as msk-lander lands it.
pub fn stat_change(op: &str, ts_ms: i64, lsn: i64, unit: &str, day: &str, fuel: f64) -> Value {
    json!({"op": op, "ts_ms": ts_ms, "lsn": lsn,
           "row": {"transport_unit_id": unit, "stat_date": day, "distance_km": 10.0, "fuel_used_l": fuel,
                   "engine_hours": 1.0}})
}

/// Appends landed changes of `performance_stats` to the table under `settings` in one commit, one Kafka offset
/// each from `first_offset`; returns the version.
pub async fn commit_stat_changes(settings: &DeltaSettings, first_offset: i64, changes: &[Value]) -> u64 {
    let table = open_or_create(settings, &PERFORMANCE_STATS).await.expect("open performance_stats");
    let mut appender = Appender::new(&PERFORMANCE_STATS, table, 128 << 20).expect("appender");
    let mut converter = Converter::new(&PERFORMANCE_STATS);
    for (offset, change) in (first_offset..).zip(changes) {
        let mut line = change.clone();
        line["_source"] =
            json!({"topic": "pg.public.performance_stats", "partition": 0, "offset": offset, "timestamp": 1});
        let origin = LineOrigin { key: "k", etag: "", line: 1, lineage: Lineage::Vouched };
        converter.push(line.to_string().as_bytes(), origin).expect("a valid change");
    }
    let (batch, ids) = converter.finish().expect("converted");
    appender.write(batch, ids).await.expect("written");
    appender.commit(vec![]).await.expect("committed").version.expect("a new version")
}

/// Appends landed objects to `spec`'s table as delta-writer does (its converter, lineage rule and exactly-once
/// append), one commit per object, in the order given; returns the rows each added. A line the converter refuses
/// fails the test: what a stage lands, delta-writer must take.
pub async fn append_landed(moto: &Moto, bucket: &str, spec: &'static TableSpec, keys: &[String]) -> Vec<usize> {
    let settings = moto.delta_settings(bucket);
    let mut added = Vec::new();
    for key in keys {
        let table = open_or_create(&settings, spec).await.expect("open the table");
        let mut appender = Appender::new(spec, table, 128 << 20).expect("appender");
        let body = moto.get(bucket, key).await;
        let batch_name = BatchName::from_key(key);
        let mut converter = Converter::new(spec).with_window(EventWindow::default(), now_us());
        for (n, line) in std::io::BufReader::new(flate2::read::GzDecoder::new(&body[..])).lines().enumerate() {
            let line = line.expect("a gzip NDJSON object");
            let origin = LineOrigin {
                key,
                etag: "etag",
                line: n as u64 + 1,
                lineage: Lineage::of_key(key, batch_name.as_ref()),
            };
            if let Err(e) = converter.push(line.as_bytes(), origin) {
                panic!("delta-writer would refuse line {} of {key}: {e}", n + 1);
            }
        }
        let (batch, ids) = converter.finish().expect("converted");
        added.push(appender.write(batch, ids).await.expect("written"));
        appender.commit(vec![]).await.expect("committed");
    }
    added
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
