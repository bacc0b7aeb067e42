//! Delta commits → the partitions they touched, checked before they reach a Glue call or an S3 key, and the symlink
//! manifests that list a partition's data files. No I/O.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use serde_json::Value;

use crate::bronze::{Kind, TableSpec, TABLES};

/// A commit file named by a notification: `<bronze prefix><table>/_delta_log/<20-digit version>.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitKey {
    /// The bronze table.
    pub table: &'static TableSpec,
    /// The committed version.
    pub version: u64,
}

impl CommitKey {
    /// Recognises a commit key under `bronze_prefix`; `None` for anything else (checkpoints, data files, other
    /// folders).
    pub fn parse(bronze_prefix: &str, key: &str) -> Option<CommitKey> {
        let rest = key.strip_prefix(bronze_prefix)?;
        let (table, file) = rest.split_once("/_delta_log/")?;
        let digits = file.strip_suffix(".json")?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let table = TABLES.into_iter().find(|t| t.name == table)?;
        Some(CommitKey { table, version: digits.parse().ok()? })
    }

    /// A commit key of a bronze table in the lake bucket: `bucket` must be `lake_bucket`.
    pub fn in_lake(lake_bucket: &str, bronze_prefix: &str, bucket: &str, key: &str) -> Option<CommitKey> {
        if bucket == lake_bucket {
            Self::parse(bronze_prefix, key)
        } else {
            None
        }
    }
}

/// One partition of a table: its column and value (`event_date`, `2026-11-24`), or the whole of an unpartitioned
/// table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Partition {
    /// The table has no partition column.
    Whole,
    /// `column=value`.
    Value {
        /// Partition column.
        column: String,
        /// Checked value.
        value: String,
    },
}

impl Partition {
    /// The Hive-style folder below a table or manifest root: `column=value/`, or nothing.
    pub fn folder(&self) -> String {
        match self {
            Partition::Whole => String::new(),
            Partition::Value { column, value } => format!("{column}={value}/"),
        }
    }

    /// `(column, value)`, or `None` for the whole of an unpartitioned table.
    pub fn as_pair(&self) -> Option<(&str, &str)> {
        match self {
            Partition::Whole => None,
            Partition::Value { column, value } => Some((column.as_str(), value.as_str())),
        }
    }

    /// The partition's values in key order, as Glue wants them.
    pub fn values(&self) -> Vec<String> {
        match self {
            Partition::Whole => Vec::new(),
            Partition::Value { value, .. } => vec![value.clone()],
        }
    }
}

/// A partition value that was refused, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Column.
    pub column: String,
    /// The value as found in the log (`None` = null).
    pub value: Option<String>,
    /// Why.
    pub reason: String,
}

/// Checks a partition value against its column's type. Only values that are exactly what the type prints pass:
/// a date must be a real `YYYY-MM-DD` date. Whatever the type, no `/`, `'`, `"`, `=`, `\`, control characters or
/// `..`, so a value can never leave its folder, its Glue value or a quoted SQL literal.
pub fn check_value(kind: Kind, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("empty".into());
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || matches!(c, '/' | '\'' | '"' | '=' | '\\')) {
        return Err(format!("contains {c:?}"));
    }
    if value.contains("..") || value.len() > 255 {
        return Err("not a plain value".into());
    }
    match kind {
        Kind::Date => match NaiveDate::parse_from_str(value, "%Y-%m-%d") {
            Ok(d) if d.format("%Y-%m-%d").to_string() == value => Ok(()),
            _ => Err("not a YYYY-MM-DD date".into()),
        },
        Kind::Int32 | Kind::Int64 => value.parse::<i64>().map(|_| ()).map_err(|_| "not an integer".into()),
        Kind::Utf8 => Ok(()),
        other => Err(format!("{other:?} is not a partition type here")),
    }
}

/// The partitions a commit added files to or removed files from, checked; and the values refused.
pub fn touched_partitions(spec: &TableSpec, commit: &[u8]) -> Result<(BTreeSet<Partition>, Vec<Refused>), String> {
    let text = std::str::from_utf8(commit).map_err(|e| format!("commit is not UTF-8: {e}"))?;
    let mut touched = BTreeSet::new();
    let mut refused = Vec::new();
    let column = spec.partitioning.map(|p| p.column);
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let action: Value = serde_json::from_str(line).map_err(|e| format!("commit line {}: {e}", n + 1))?;
        let file = action.get("add").or_else(|| action.get("remove"));
        let Some(file) = file else { continue };
        let Some(column) = column else {
            touched.insert(Partition::Whole);
            continue;
        };
        let value = file.get("partitionValues").and_then(|p| p.get(column)).and_then(Value::as_str);
        let kind = spec.columns().into_iter().find(|c| c.0 == column).map_or(Kind::Utf8, |c| c.1);
        match value.map(|v| check_value(kind, v).map(|()| v)) {
            Some(Ok(v)) => {
                touched.insert(Partition::Value { column: column.to_owned(), value: v.to_owned() });
            }
            Some(Err(reason)) => {
                refused.push(Refused { column: column.to_owned(), value: value.map(str::to_owned), reason })
            }
            None => refused.push(Refused { column: column.to_owned(), value: None, reason: "null or missing".into() }),
        }
    }
    refused.dedup();
    Ok((touched, refused))
}

/// Whether a commit adds or removes rows: an `add` or `remove` without `dataChange: false`. A compaction's commit
/// (every file `dataChange: false`) rewrites rows without changing them; so does a commit of metadata only. A
/// commit that is not JSON lines counts as a change (the safe side).
pub fn changes_rows(commit: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(commit) else { return true };
    text.lines().filter(|l| !l.trim().is_empty()).any(|line| {
        let Ok(action) = serde_json::from_str::<Value>(line) else { return true };
        action
            .get("add")
            .or_else(|| action.get("remove"))
            .is_some_and(|file| file.get("dataChange").and_then(Value::as_bool) != Some(false))
    })
}

/// The symlink manifest's text: one absolute data file path per line, sorted.
pub fn manifest_text(mut paths: Vec<String>) -> String {
    paths.sort_unstable();
    let mut out = String::with_capacity(paths.iter().map(|p| p.len() + 1).sum());
    for p in paths {
        out.push_str(&p);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_compaction_changes_no_rows_and_an_append_or_a_removal_does() {
        let compaction = concat!(
            r#"{"commitInfo":{"operation":"OPTIMIZE"}}"#,
            "\n",
            r#"{"remove":{"path":"a.parquet","dataChange":false}}"#,
            "\n",
            r#"{"add":{"path":"b.parquet","dataChange":false}}"#
        );
        assert!(!super::changes_rows(compaction.as_bytes()));
        assert!(!super::changes_rows(br#"{"metaData":{"id":"x"}}"#));
        assert!(super::changes_rows(br#"{"add":{"path":"b.parquet","dataChange":true}}"#));
        assert!(super::changes_rows(br#"{"remove":{"path":"a.parquet"}}"#), "dataChange defaults to true");
        assert!(super::changes_rows(b"not json"));
    }

    use super::*;
    use crate::bronze::{LOCATIONS, TRANSPORT_UNITS};

    #[test]
    fn commit_keys_are_recognised_and_nothing_else() {
        let k = CommitKey::parse("bronze/", "bronze/locations/_delta_log/00000000000000000012.json").unwrap();
        assert_eq!((k.table.name, k.version), ("locations", 12));
        for other in [
            "bronze/locations/_delta_log/00000000000000000012.checkpoint.parquet",
            "bronze/locations/_delta_log/_last_checkpoint",
            "bronze/locations/_delta_log/12.json",
            "bronze/unknown/_delta_log/00000000000000000012.json",
            "bronze/locations/event_date=2026-11-24/part-1.parquet",
            "landing/locations/_delta_log/00000000000000000012.json",
        ] {
            assert_eq!(CommitKey::parse("bronze/", other), None, "{other}");
        }
    }

    #[test]
    fn partitions_come_from_adds_and_removes_and_bad_values_are_refused() {
        let commit = [
            r#"{"commitInfo":{"operation":"WRITE"}}"#,
            r#"{"add":{"path":"a","partitionValues":{"event_date":"2026-11-24"}}}"#,
            r#"{"add":{"path":"b","partitionValues":{"event_date":"2026-11-24"}}}"#,
            r#"{"remove":{"path":"c","partitionValues":{"event_date":"2026-11-23"}}}"#,
            r#"{"add":{"path":"d","partitionValues":{"event_date":"2026-11-24'/../x"}}}"#,
            r#"{"add":{"path":"e","partitionValues":{"event_date":"2026-02-30"}}}"#,
            r#"{"add":{"path":"f","partitionValues":{"event_date":null}}}"#,
            r#"{"txn":{"appId":"kafka:t:0","version":5}}"#,
        ]
        .join("\n");
        let (touched, refused) = touched_partitions(&LOCATIONS, commit.as_bytes()).unwrap();
        let values: Vec<String> = touched.iter().flat_map(Partition::values).collect();
        assert_eq!(values, ["2026-11-23", "2026-11-24"]);
        let reasons: Vec<&str> = refused.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["contains '\\''", "not a YYYY-MM-DD date", "null or missing"]);
        let (whole, _) = touched_partitions(&TRANSPORT_UNITS, br#"{"add":{"path":"a","partitionValues":{}}}"#).unwrap();
        assert_eq!(whole.into_iter().collect::<Vec<_>>(), [Partition::Whole]);
    }

    #[test]
    fn the_generated_glue_schema_is_up_to_date() {
        // infra/schema/bronze.json is generated from the specs (`make schema`); stack.json, template.yaml and the
        // Athena DDL are generated from it, and `make template-check` fails when any of them is stale.
        let committed: Value = serde_json::from_str(include_str!("../../../infra/schema/bronze.json")).unwrap();
        assert_eq!(committed, crate::bronze::glue_schema(), "infra/schema/bronze.json is stale: run `make schema`");
    }

    #[test]
    fn values_that_could_escape_are_refused_whatever_the_type() {
        for bad in ["a/b", "a'b", "a\"b", "a=b", "a\\b", "a\nb", "..", ""] {
            assert!(check_value(Kind::Utf8, bad).is_err(), "{bad:?}");
        }
        assert!(check_value(Kind::Date, "2026-1-5").is_err(), "not the canonical form");
        assert!(check_value(Kind::Date, "2026-11-24").is_ok());
        assert_eq!(manifest_text(vec!["s3://b/2".into(), "s3://b/1".into()]), "s3://b/1\ns3://b/2\n");
    }
}
