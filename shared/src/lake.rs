//! The lake's key layout, one place for every object name the functions write.

use chrono::NaiveDate;

use crate::config::Prefix;

/// `landing/<dataset>/dt=YYYY-MM-DD/<topic>-<partition>-<first>-<last>.ndjson.gz`: deterministic, so a retried
/// MSK batch addresses the same object.
pub fn landing_key(landing: &Prefix, dataset: &str, dt: NaiveDate, batch: &BatchName) -> String {
    format!("{landing}{dataset}/dt={}/{batch}.ndjson.gz", dt.format("%Y-%m-%d"))
}

/// `quarantine/<stage>/dt=YYYY-MM-DD/<source-name>.ndjson`.
pub fn quarantine_key(quarantine: &Prefix, stage: &str, dt: NaiveDate, source_name: &str) -> String {
    format!("{quarantine}{stage}/dt={}/{source_name}.ndjson", dt.format("%Y-%m-%d"))
}

/// The identity of one topic-partition slice of an MSK batch: `<topic>-<partition>-<first>-<last>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchName {
    /// Kafka topic (validated: `[A-Za-z0-9._-]`, as Kafka itself allows).
    pub topic: String,
    /// Kafka partition.
    pub partition: i64,
    /// Lowest offset in the slice.
    pub first_offset: i64,
    /// Highest offset in the slice.
    pub last_offset: i64,
}

impl std::fmt::Display for BatchName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}-{}", self.topic, self.partition, self.first_offset, self.last_offset)
    }
}

/// Whether `topic` is a legal Kafka topic name (and therefore safe inside an S3 key).
pub fn is_valid_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_design_layout() {
        let landing = Prefix::parse("L", "landing/").unwrap();
        let q = Prefix::parse("Q", "quarantine").unwrap();
        let dt = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let name = BatchName { topic: "fleet.locations".into(), partition: 3, first_offset: 100, last_offset: 199 };
        assert_eq!(
            landing_key(&landing, "locations", dt, &name),
            "landing/locations/dt=2026-11-23/fleet.locations-3-100-199.ndjson.gz"
        );
        assert_eq!(
            quarantine_key(&q, "msk-lander", dt, &name.to_string()),
            "quarantine/msk-lander/dt=2026-11-23/fleet.locations-3-100-199.ndjson"
        );
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(is_valid_topic("pg.public.transport_units"));
        for bad in ["", "..", "a/b", "a b", "ü"] {
            assert!(!is_valid_topic(bad), "{bad:?}");
        }
    }
}
