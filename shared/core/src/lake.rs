//! The lake's key layout, one place for every object name the functions write.

use chrono::NaiveDate;

use crate::config::Prefix;

/// `landing/<dataset>/dt=YYYY-MM-DD/<topic>-<partition>-<first>-<last>.ndjson.gz`: deterministic, so a retried
/// MSK batch addresses the same object.
pub fn landing_key(landing: &Prefix, dataset: &str, dt: NaiveDate, batch: &BatchName) -> String {
    format!("{landing}{dataset}/dt={}/{batch}.ndjson.gz", dt.format("%Y-%m-%d"))
}

/// `landing/<dataset>/dt=YYYY-MM-DD/<name>.ndjson.gz`: an object named by its writer (pg-poller's [`PollName`]).
pub fn landing_key_named(landing: &Prefix, dataset: &str, dt: NaiveDate, name: &str) -> String {
    format!("{landing}{dataset}/dt={}/{name}.ndjson.gz", dt.format("%Y-%m-%d"))
}

/// `enriched/locations/<path below landing/locations/>`: an enriched object mirrors the landed one's name.
pub fn enriched_key(enriched: &Prefix, dataset: &str, below_dataset: &str) -> String {
    format!("{enriched}{dataset}/{below_dataset}")
}

/// `s3://<bucket>/<bronze prefix><table>/`: the root of a bronze Delta table.
pub fn table_root(bucket: &str, bronze: &Prefix, table: &str) -> String {
    format!("s3://{bucket}/{bronze}{table}/")
}

/// The folder of a table's symlink manifests, as Delta's `GENERATE symlink_format_manifest` names it.
pub const MANIFEST_FOLDER: &str = "_symlink_format_manifest";

/// `<bronze prefix><table>/_symlink_format_manifest/<partition folder>manifest`, where the partition folder is
/// `<column>=<value>/` (empty for an unpartitioned table). The value must have been checked for a key already.
pub fn manifest_key(bronze: &Prefix, table: &str, partition_folder: &str) -> String {
    format!("{bronze}{table}/{MANIFEST_FOLDER}/{partition_folder}manifest")
}

/// The absolute location of a partition's manifest folder, as Glue partitions name it.
pub fn manifest_location(table_root: &str, partition_folder: &str) -> String {
    format!("{table_root}{MANIFEST_FOLDER}/{partition_folder}")
}

/// The key of the contract (`contract.json`) beside a model file's key.
pub fn contract_key(model_key: &str) -> String {
    match model_key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/contract.json"),
        None => "contract.json".to_owned(),
    }
}

/// `quarantine/<stage>/dt=YYYY-MM-DD/<source-name>.ndjson`.
pub fn quarantine_key(quarantine: &Prefix, stage: &str, dt: NaiveDate, source_name: &str) -> String {
    format!("{quarantine}{stage}/dt={}/{source_name}.ndjson", dt.format("%Y-%m-%d"))
}

/// The `dt=YYYY-MM-DD` of a key, if it has a valid one.
pub fn key_date(key: &str) -> Option<NaiveDate> {
    key.split('/').find_map(|seg| seg.strip_prefix("dt=")).and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
}

/// Characters of an ETag kept in a quarantine object's name.
const ETAG_CHARS_IN_NAME: usize = 16;

/// The name a quarantine object takes after the input object it holds lines (or a reference) of: the path below
/// the `dt=` folder (or the file name when there is none), without `.ndjson.gz`, then `.` and the first 16 of the
/// ETag's characters that are safe in a key (ASCII letters, digits, `-`, `_`), when there is an ETag. So two files
/// of one name in different folders, or a file dropped again with other content, each keep their own object.
pub fn quarantine_source_name(key: &str, etag: Option<&str>) -> String {
    let mut segments = key.split('/');
    let below_dt = segments.position(|seg| seg.starts_with("dt=")).and_then(|i| key.splitn(i + 2, '/').nth(i + 1));
    let name = below_dt.unwrap_or_else(|| key.rsplit('/').next().unwrap_or(key)).trim_end_matches(".ndjson.gz");
    let tag: String = etag
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(ETAG_CHARS_IN_NAME)
        .collect();
    if tag.is_empty() {
        name.to_owned()
    } else {
        format!("{name}.{tag}")
    }
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

impl BatchName {
    /// The batch an object is named after, when its key follows the lander's scheme exactly: the file name
    /// `<topic>-<partition>-<first>-<last>.ndjson.gz` (as [`BatchName`] prints it, no other spelling of the numbers)
    /// directly in a `dt=YYYY-MM-DD` folder. The enriched mirror of a landed object has the same name. Any other
    /// object (a file dropped by hand) is named by nobody's batch.
    pub fn from_key(key: &str) -> Option<BatchName> {
        let name = dated_name(key)?;
        let mut parts = name.rsplitn(4, '-');
        let (last, first, partition, topic) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let batch = BatchName {
            topic: topic.to_owned(),
            partition: partition.parse().ok()?,
            first_offset: first.parse().ok()?,
            last_offset: last.parse().ok()?,
        };
        let plausible = is_valid_topic(topic)
            && batch.partition >= 0
            && (0..=batch.last_offset).contains(&batch.first_offset)
            && batch.to_string() == name;
        plausible.then_some(batch)
    }

    /// Whether a record of `topic`, `partition` and `offset` belongs to this batch.
    pub fn holds(&self, topic: &str, partition: i64, offset: i64) -> bool {
        topic == self.topic && partition == self.partition && (self.first_offset..=self.last_offset).contains(&offset)
    }

    /// Why a line of this batch's object claiming these Kafka coordinates (any of them missing: `None`) is refused,
    /// or `None` when the claim holds.
    pub fn refuse_claim(&self, topic: Option<&str>, partition: Option<i64>, offset: Option<i64>) -> Option<String> {
        if let (Some(t), Some(p), Some(o)) = (topic, partition, offset) {
            if self.holds(t, p, o) {
                return None;
            }
        }
        let shown = |n: Option<i64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        Some(format!(
            "_source: names {}-{} offset {}, which is not in the batch {self} this object holds",
            topic.unwrap_or("?"),
            shown(partition),
            shown(offset)
        ))
    }
}

/// The name of one object a pg-poller run lands: `poll-<schema>.<table>-<seq>-<run>-<part>`, where `seq` is the
/// 16-digit sequence number of the cursor state the run records (so a run's objects sort after the previous run's),
/// `run` is `r` and 8 to 32 lowercase hex digits (the run's own, so two runs of one `seq` never share a name), and
/// `part` counts the run's objects of that table from 0. It can never parse as a [`BatchName`] (the zero-padded
/// `seq` is not how a partition is printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollName {
    /// `<schema>.<table>`, both lowercase identifiers.
    pub table: String,
    /// The cursor state's sequence number.
    pub seq: u64,
    /// The run's id: `r` and hex digits.
    pub run: String,
    /// The object's number within the run and table.
    pub part: u32,
}

impl std::fmt::Display for PollName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "poll-{}-{:016}-{}-{}", self.table, self.seq, self.run, self.part)
    }
}

impl PollName {
    /// The poll an object is named after, when its key follows pg-poller's scheme exactly: the file name
    /// `poll-<schema>.<table>-<seq>-<run>-<part>.ndjson.gz` (as [`PollName`] prints it) directly in a `dt=YYYY-MM-DD`
    /// folder.
    pub fn from_key(key: &str) -> Option<PollName> {
        let name = dated_name(key)?.strip_prefix("poll-")?;
        let mut parts = name.rsplitn(4, '-');
        let (part, run, seq, table) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let poll =
            PollName { table: table.to_owned(), seq: seq.parse().ok()?, run: run.to_owned(), part: part.parse().ok()? };
        let hex = run.strip_prefix('r').is_some_and(|h| {
            (8..=32).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        let plausible = is_qualified_table(table) && hex && poll.to_string() == format!("poll-{name}");
        plausible.then_some(poll)
    }
}

/// The name of an object `<name>.ndjson.gz` directly in a valid `dt=YYYY-MM-DD` folder.
fn dated_name(key: &str) -> Option<&str> {
    let mut segments = key.rsplit('/');
    let name = segments.next()?.strip_suffix(".ndjson.gz")?;
    let dt = segments.next()?.strip_prefix("dt=")?;
    NaiveDate::parse_from_str(dt, "%Y-%m-%d").ok()?;
    Some(name)
}

/// Whether `name` is `<schema>.<table>` of lowercase unquoted PostgreSQL identifiers (letters, digits, `_`, not
/// starting with a digit, at most 63 bytes each): safe in an S3 key and in SQL without quoting.
pub fn is_qualified_table(name: &str) -> bool {
    name.split_once('.').is_some_and(|(schema, table)| is_identifier(schema) && is_identifier(table))
}

/// Whether `name` is a lowercase unquoted PostgreSQL identifier: letters, digits and `_`, not starting with a
/// digit, 1 to 63 bytes.
pub fn is_identifier(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
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
    fn quarantine_names_keep_the_path_below_dt_and_a_safe_etag() {
        assert_eq!(
            quarantine_source_name(
                "landing/transport_units/dt=2026-11-24/pg.public.transport_units-0-1-3.ndjson.gz",
                Some("0123456789abcdef0123")
            ),
            "pg.public.transport_units-0-1-3.0123456789abcdef"
        );
        assert_eq!(quarantine_source_name("enriched/locations/x.ndjson.gz", None), "x");
        assert_eq!(quarantine_source_name("landing/xdt=1/x.ndjson.gz", None), "x");
        assert_eq!(quarantine_source_name("landing/locations/dt=2026-11-24/a/b.ndjson.gz", Some("e1")), "a/b.e1");
        // A non-ASCII ETag (a hostile notification) is no reason to panic: unsafe characters are left out.
        assert_eq!(quarantine_source_name("landing/locations/dt=2026-11-24/x.ndjson.gz", Some("é€ab/../c")), "x.abc");
        assert_eq!(quarantine_source_name("landing/locations/dt=2026-11-24/x.ndjson.gz", Some("ééé")), "x");
    }

    #[test]
    fn only_the_landers_own_names_are_batches() {
        let b = BatchName::from_key("landing/locations/dt=2026-11-24/fleet.loc-ations-3-100-199.ndjson.gz").unwrap();
        assert_eq!((b.topic.as_str(), b.partition, b.first_offset, b.last_offset), ("fleet.loc-ations", 3, 100, 199));
        assert!(b.holds("fleet.loc-ations", 3, 100) && b.holds("fleet.loc-ations", 3, 199));
        assert!(!b.holds("fleet.loc-ations", 3, 200) && !b.holds("fleet.loc-ations", 2, 150) && !b.holds("x", 3, 150));
        let mirrored = BatchName::from_key("enriched/locations/dt=2026-11-24/fleet.loc-ations-3-100-199.ndjson.gz");
        assert_eq!(mirrored, Some(b));
        for key in [
            "landing/locations/dt=2026-11-24/drop.ndjson.gz",
            "landing/locations/dt=2026-11-24/sub/fleet-0-1-2.ndjson.gz",
            "landing/locations/fleet-0-1-2.ndjson.gz",
            "landing/locations/dt=2026-13-01/fleet-0-1-2.ndjson.gz",
            "landing/locations/dt=2026-11-24/fleet-0-1-2.json",
            "landing/locations/dt=2026-11-24/fleet-0-01-2.ndjson.gz",
            "landing/locations/dt=2026-11-24/fleet-0-+1-2.ndjson.gz",
            "landing/locations/dt=2026-11-24/fleet-0-5-2.ndjson.gz",
            "landing/locations/dt=2026-11-24/fleet-x-1-2.ndjson.gz",
            "landing/locations/dt=2026-11-24/fl et-0-1-2.ndjson.gz",
            "landing/locations/dt=2026-11-24/0-1-2.ndjson.gz",
        ] {
            assert_eq!(BatchName::from_key(key), None, "{key}");
        }
    }

    #[test]
    fn only_the_pollers_own_names_are_polls() {
        let key = "landing/performance_stats/dt=2026-12-05/poll-public.performance_stats-0000000000000042-r0a1b2c3d-7.ndjson.gz";
        let poll = PollName::from_key(key).unwrap();
        assert_eq!(
            (poll.table.as_str(), poll.seq, poll.run.as_str(), poll.part),
            ("public.performance_stats", 42, "r0a1b2c3d", 7)
        );
        assert_eq!(BatchName::from_key(key), None);
        assert_eq!(format!("{poll}.ndjson.gz"), key.rsplit('/').next().unwrap());
        for bad in [
            "landing/x/dt=2026-12-05/poll-public.t-42-r0a1b2c3d-0.ndjson.gz",
            "landing/x/dt=2026-12-05/poll-public.t-0000000000000042-0a1b2c3d-0.ndjson.gz",
            "landing/x/dt=2026-12-05/poll-public.t-0000000000000042-r0A1B2C3D-0.ndjson.gz",
            "landing/x/dt=2026-12-05/poll-public.t-0000000000000042-r0a1b2c3d-00.ndjson.gz",
            "landing/x/dt=2026-12-05/poll-Public.t-0000000000000042-r0a1b2c3d-0.ndjson.gz",
            "landing/x/dt=2026-12-05/poll-t-0000000000000042-r0a1b2c3d-0.ndjson.gz",
            "landing/x/poll-public.t-0000000000000042-r0a1b2c3d-0.ndjson.gz",
            "landing/x/dt=2026-12-05/poll-public.t-0000000000000042-r0a1b2c3d-0.json",
        ] {
            assert_eq!(PollName::from_key(bad), None, "{bad}");
        }
        assert!(is_qualified_table("public.transport_units") && !is_qualified_table("public.1x"));
        assert!(!is_qualified_table("public") && !is_qualified_table("a.b.c") && !is_qualified_table("p.\"T\""));
    }

    #[test]
    fn every_name_is_built_here() {
        let p = |s: &str| Prefix::parse("P", s).unwrap();
        assert_eq!(
            enriched_key(&p("enriched/"), "locations", "dt=2026-11-24/a.ndjson.gz"),
            "enriched/locations/dt=2026-11-24/a.ndjson.gz"
        );
        assert_eq!(table_root("lake", &p("bronze/"), "locations"), "s3://lake/bronze/locations/");
        assert_eq!(
            manifest_key(&p("bronze/"), "locations", "event_date=2026-11-24/"),
            "bronze/locations/_symlink_format_manifest/event_date=2026-11-24/manifest"
        );
        assert_eq!(
            manifest_key(&p("bronze/"), "transport_units", ""),
            "bronze/transport_units/_symlink_format_manifest/manifest"
        );
        assert_eq!(
            manifest_location("s3://lake/bronze/locations/", "event_date=2026-11-24/"),
            "s3://lake/bronze/locations/_symlink_format_manifest/event_date=2026-11-24/"
        );
        assert_eq!(contract_key("models/fuel-24h/model.onnx"), "models/fuel-24h/contract.json");
        assert_eq!(contract_key("model.onnx"), "contract.json");
    }

    #[test]
    fn key_dates_are_read_from_the_dt_folder() {
        assert_eq!(key_date("landing/locations/dt=2026-11-24/x.ndjson.gz"), NaiveDate::from_ymd_opt(2026, 11, 24));
        assert_eq!(key_date("landing/locations/dt=2026-13-24/x.ndjson.gz"), None);
        assert_eq!(key_date("landing/locations/x.ndjson.gz"), None);
    }

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
