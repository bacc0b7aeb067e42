//! The record of what was served: the predictions a table version put in DynamoDB are landed as one gzipped
//! NDJSON object under `<landing>predictions/dt=<date>/predictor-<scope>-<source version>.ndjson.gz` (one line per
//! prediction, [`Prediction::record_line`]), and delta-writer appends it to `bronze/predictions`.
//!
//! It is landed after DynamoDB is written, so it never holds a prediction that was not served. The object is written
//! create-only under a name fixed by what it answers (a commit of `bronze/locations`, or a scheduled refresh of one
//! of its versions), dated by the whole set computed (the same on every attempt), and each item names the object
//! (`written_by`). A retry after a failure between DynamoDB and the landing finds its own items in DynamoDB and
//! lands them then; a replay finds the object in place and leaves it; items another run wrote are never landed
//! again here. So the record holds each write to DynamoDB once, unless the landing of a retry recomputed values
//! after the table moved on (it lands what it computed, not what the first attempt wrote).

use std::io::Write as _;

use flate2::write::GzEncoder;
use flate2::Compression;
use fleetlake_aws::predictions::Prediction;
use fleetlake_aws::s3::{PutOutcome, S3Store};
use fleetlake_core::config::Prefix;
use tracing::info;

/// What a set of predictions answers: a commit, or a scheduled refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Commit,
    Refresh,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Commit => "commit",
            Scope::Refresh => "refresh",
        }
    }
}

/// The object's key: dated by the newest prediction's UTC day (`predicted_at` is RFC 3339 in UTC) of the whole set
/// computed, so that every attempt names the same object.
pub(crate) fn record_key(landing: &Prefix, scope: Scope, source_version: u64, computed: &[Prediction]) -> String {
    let day = computed.iter().map(|p| p.predicted_at.get(..10).unwrap_or("0001-01-01")).max().unwrap_or("0001-01-01");
    key_of_day(landing, scope, source_version, day)
}

/// The object's key for the UTC day `day` (`YYYY-MM-DD`).
pub(crate) fn key_of_day(landing: &Prefix, scope: Scope, source_version: u64, day: &str) -> String {
    format!("{landing}predictions/dt={day}/predictor-{}-{source_version:020}.ndjson.gz", scope.as_str())
}

/// The gzipped lines of `predictions`.
pub(crate) fn record_body(predictions: &[&Prediction]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for p in predictions {
        // Writing into a Vec cannot fail.
        let _ = gz.write_all(&p.record_line());
        let _ = gz.write_all(b"\n");
    }
    gz.finish().unwrap_or_default()
}

/// The record of `served`, ready to land: `None` when no prediction was served (nothing is written).
#[derive(Debug)]
pub(crate) struct Record {
    body: Option<Vec<u8>>,
    predictions: usize,
}

impl Record {
    pub(crate) fn of(served: &[&Prediction]) -> Self {
        Self { body: (!served.is_empty()).then(|| record_body(served)), predictions: served.len() }
    }
}

/// Lands `record` at `key` ([`record_key`]). Returns whether this call created the object.
pub(crate) async fn land(store: &S3Store, key: &str, record: Record) -> Result<bool, fleetlake_aws::Error> {
    let Some(body) = record.body else { return Ok(false) };
    let outcome = store.put_if_absent(key, body, "application/x-ndjson").await?;
    let created = outcome == PutOutcome::Created;
    info!(key, predictions = record.predictions, created, "predictions landed for bronze/predictions");
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn prediction(unit: &str, at: &str) -> Prediction {
        Prediction {
            transport_unit_id: unit.into(),
            predicted_at: at.into(),
            target: "fuel_next_24h".into(),
            value: 12.5,
            unit: "l".into(),
            model_version: "fuel-24h-abc".into(),
            features: vec![("distance_km".into(), 3.5), ("is_aerial".into(), 1.0)],
            source_version: 7,
            expires_at: 0,
        }
    }

    #[test]
    fn the_record_is_named_by_what_it_answers_and_holds_one_line_per_prediction() {
        let landing = Prefix::parse("LANDING_PREFIX", "landing/").unwrap();
        let computed =
            [prediction("TU-1", "2026-11-24T23:45:00.000000Z"), prediction("TU-2", "2026-11-25T00:15:00.000000Z")];
        let set = [&computed[0], &computed[1]];
        assert_eq!(
            record_key(&landing, Scope::Commit, 7, &computed),
            "landing/predictions/dt=2026-11-25/predictor-commit-00000000000000000007.ndjson.gz"
        );
        assert_eq!(
            record_key(&landing, Scope::Refresh, 7, &computed[..1]),
            "landing/predictions/dt=2026-11-24/predictor-refresh-00000000000000000007.ndjson.gz"
        );
        let mut text = String::new();
        flate2::read::GzDecoder::new(&record_body(&set)[..]).read_to_string(&mut text).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["transport_unit_id"], "TU-2");
        assert_eq!(lines[0]["source_version"], 7);
        let features: serde_json::Value = serde_json::from_str(lines[0]["features"].as_str().unwrap()).unwrap();
        assert_eq!(features, serde_json::json!({"distance_km": 3.5, "is_aerial": 1.0}));
        // The same predictions give the same bytes: a retry's object equals the first one.
        assert_eq!(record_body(&set), record_body(&set));
    }
}
