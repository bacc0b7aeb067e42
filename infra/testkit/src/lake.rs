//! Change logs written for tests through the real converter and Delta adapter, as delta-writer writes them.

use fleetlake_core::bronze::{Converter, LineOrigin, Lineage, PERFORMANCE_STATS};
use fleetlake_delta::{open_or_create, Appender, DeltaSettings};
use serde_json::{json, Value};

use crate::{venv_bin, workspace_root};

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
