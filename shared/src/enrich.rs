//! Landed position lines + weather lookups → enriched lines: the functional core of weather-enricher.

use chrono::{NaiveDate, Timelike};
use serde_json::{json, Map, Value};

use crate::quarantine::QuarantineLine;
use crate::records::{parse_object, validate_position, Position};
use crate::weather::{CellDay, Lookup};

/// The stage name weather-enricher uses in quarantine keys and lines.
pub const STAGE: &str = "weather-enricher";

/// Why a record carries no weather, or `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeatherStatus {
    /// Weather found for the record's cell and hour.
    Ok,
    /// The API failed or had no value for that hour.
    Unavailable,
    /// The API cannot serve the record's date.
    OutOfRange,
}

impl WeatherStatus {
    /// The `weather_status` value.
    pub fn as_str(self) -> &'static str {
        match self {
            WeatherStatus::Ok => "ok",
            WeatherStatus::Unavailable => "unavailable",
            WeatherStatus::OutOfRange => "out_of_range",
        }
    }
}

/// A landed line that passed validation, with the cell-day and hour its weather comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The full record (unknown fields included).
    pub record: Map<String, Value>,
    /// Its cell-day.
    pub cell: CellDay,
    /// UTC hour of `ts`, 0–23: the hourly value used.
    pub hour: usize,
}

/// Where a line came from, for lineage and quarantine.
#[derive(Debug, Clone, Copy)]
pub struct LineSource<'a> {
    /// Object key.
    pub key: &'a str,
    /// Object ETag, if known.
    pub etag: Option<&'a str>,
    /// 1-based line number.
    pub line: u64,
}

/// Parses and validates one landed line. A record without `_source` (a file dropped straight into the landing
/// zone) gets `_source = {key, etag}`.
pub fn prepare(bytes: &[u8], src: LineSource<'_>, grid_deg: f64) -> Result<Pending, Box<QuarantineLine>> {
    let quarantine = |reason: String| {
        Box::new(QuarantineLine::new(
            reason,
            STAGE,
            &json!({"key": src.key, "line": src.line}),
            Some(String::from_utf8_lossy(bytes).into_owned()),
        ))
    };
    let mut record = parse_object(bytes).map_err(|e| quarantine(e.to_string()))?;
    let Position { ts, lat, lon, .. } = validate_position(&record).map_err(|e| quarantine(e.to_string()))?;
    if !record.contains_key("_source") {
        record.insert("_source".into(), json!({"key": src.key, "etag": src.etag}));
    }
    Ok(Pending { record, cell: CellDay::of(lat, lon, ts.date_naive(), grid_deg), hour: ts.hour() as usize })
}

/// Adds `temperature_c`, `wind_speed_kmh`, `precipitation_mm`, `weather_code` and `weather_status` to the record
/// (nulls and the reason when there is no weather) and returns the status.
pub fn add_weather(record: &mut Map<String, Value>, lookup: Option<&Lookup>, hour: usize) -> WeatherStatus {
    let (values, status) = match lookup {
        Some(Lookup::Found(s)) if hour < 24 => {
            let values = [
                s.temperature_c[hour].map(Value::from),
                s.wind_speed_kmh[hour].map(Value::from),
                s.precipitation_mm[hour].map(Value::from),
                s.weather_code[hour].map(Value::from),
            ];
            let status =
                if values.iter().all(Option::is_none) { WeatherStatus::Unavailable } else { WeatherStatus::Ok };
            (values, status)
        }
        Some(Lookup::OutOfRange) => (Default::default(), WeatherStatus::OutOfRange),
        _ => (Default::default(), WeatherStatus::Unavailable),
    };
    for (name, v) in ["temperature_c", "wind_speed_kmh", "precipitation_mm", "weather_code"].into_iter().zip(values) {
        record.insert(name.into(), v.unwrap_or(Value::Null));
    }
    record.insert("weather_status".into(), Value::from(status.as_str()));
    status
}

/// The `dt=YYYY-MM-DD` of a key, if it has a valid one.
pub fn key_date(key: &str) -> Option<NaiveDate> {
    key.split('/').find_map(|seg| seg.strip_prefix("dt=")).and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weather::DaySeries;
    use std::sync::Arc;

    fn src() -> LineSource<'static> {
        LineSource { key: "landing/locations/dt=2026-11-24/drop.ndjson.gz", etag: Some("e1"), line: 3 }
    }

    #[test]
    fn valid_lines_get_a_cell_an_hour_and_lineage() {
        let p = prepare(
            br#"{"transport_unit_id":"T","ts":"2026-11-24T10:45:00+02:00","lat":53.54,"lon":9.97}"#,
            src(),
            0.1,
        )
        .unwrap();
        assert_eq!((p.cell.lat_idx, p.cell.lon_idx, p.hour), (535, 100, 8));
        assert_eq!(p.record["_source"], json!({"key": "landing/locations/dt=2026-11-24/drop.ndjson.gz", "etag": "e1"}));
        let landed = br#"{"transport_unit_id":"T","ts":"2026-11-24T10:45:00Z","lat":1,"lon":2,"_source":{"topic":"t","partition":0,"offset":5,"timestamp":1}}"#;
        assert_eq!(prepare(landed, src(), 0.1).unwrap().record["_source"]["offset"], json!(5));
    }

    #[test]
    fn bad_lines_become_quarantine_lines() {
        let q = prepare(b"{\"lat\":1}", src(), 0.1).unwrap_err();
        assert_eq!(q.reason, "missing required field `transport_unit_id`");
        assert_eq!(q.source, json!({"key": "landing/locations/dt=2026-11-24/drop.ndjson.gz", "line": 3}));
        assert_eq!(q.raw.as_deref(), Some("{\"lat\":1}"));
        assert_eq!(q.stage, STAGE);
    }

    #[test]
    fn weather_fields_and_status() {
        let mut series = DaySeries {
            temperature_c: [None; 24],
            wind_speed_kmh: [None; 24],
            precipitation_mm: [None; 24],
            weather_code: [None; 24],
        };
        series.temperature_c[8] = Some(12.3);
        series.weather_code[8] = Some(3);
        let found = Lookup::Found(Arc::new(series));
        let mut r = Map::new();
        assert_eq!(add_weather(&mut r, Some(&found), 8), WeatherStatus::Ok);
        assert_eq!(
            Value::Object(r.clone()),
            json!({"temperature_c": 12.3, "wind_speed_kmh": null, "precipitation_mm": null, "weather_code": 3, "weather_status": "ok"})
        );
        assert_eq!(add_weather(&mut r, Some(&found), 9), WeatherStatus::Unavailable);
        assert_eq!(add_weather(&mut r, Some(&Lookup::OutOfRange), 8), WeatherStatus::OutOfRange);
        assert_eq!(r["weather_status"], json!("out_of_range"));
        assert_eq!(r["temperature_c"], Value::Null);
        assert_eq!(add_weather(&mut r, None, 8), WeatherStatus::Unavailable);
    }

    #[test]
    fn dates_come_from_the_key() {
        assert_eq!(key_date("landing/locations/dt=2026-11-24/x.ndjson.gz"), NaiveDate::from_ymd_opt(2026, 11, 24));
        assert_eq!(key_date("landing/locations/dt=2026-13-24/x"), None);
        assert_eq!(key_date("landing/locations/x"), None);
    }
}
