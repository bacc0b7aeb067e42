//! Weather as the lake sees it: the cell-day a position is looked up by, the hourly series of one cell-day, the
//! answer of a lookup, and the validation of an Open-Meteo answer. No I/O: the client lives in `fleetlake-weather`.

use std::sync::Arc;

use chrono::NaiveDate;
use serde_json::Value;

/// Hourly variables requested, in the order of [`DaySeries`].
pub const HOURLY: &str = "temperature_2m,wind_speed_10m,precipitation,weather_code";

/// A grid cell on one UTC day: the unit of lookup, request and cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellDay {
    /// Latitude index: `round(lat / grid)`.
    pub lat_idx: i32,
    /// Longitude index: `round(lon / grid)`.
    pub lon_idx: i32,
    /// The UTC day.
    pub day: NaiveDate,
}

impl CellDay {
    /// The cell-day of a position.
    pub fn of(lat: f64, lon: f64, day: NaiveDate, grid: f64) -> Self {
        Self { lat_idx: (lat / grid).round() as i32, lon_idx: (lon / grid).round() as i32, day }
    }

    /// The cell's centre, as sent to the API (rounded to 4 decimals, clamped to the valid range).
    pub fn centre(&self, grid: f64) -> (f64, f64) {
        let r = |v: f64| (v * 10_000.0).round() / 10_000.0;
        (
            r((f64::from(self.lat_idx) * grid).clamp(-90.0, 90.0)),
            r((f64::from(self.lon_idx) * grid).clamp(-180.0, 180.0)),
        )
    }
}

/// Hourly weather of one cell-day (index = UTC hour); `None` where the API had no value.
#[derive(Debug, Clone, PartialEq)]
pub struct DaySeries {
    /// `temperature_2m`, °C.
    pub temperature_c: [Option<f64>; 24],
    /// `wind_speed_10m`, km/h.
    pub wind_speed_kmh: [Option<f64>; 24],
    /// `precipitation`, mm.
    pub precipitation_mm: [Option<f64>; 24],
    /// `weather_code`, WMO code.
    pub weather_code: [Option<i64>; 24],
}

/// The answer for one cell-day.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The day's series.
    Found(Arc<DaySeries>),
    /// The API could not be reached or failed, after retries (or the circuit is open).
    Unavailable,
    /// The API cannot serve that date.
    OutOfRange,
}

/// Validates an Open-Meteo answer for `n` coordinates of one day: one object (n = 1) or a list of n, each with
/// 24 hourly times of that day and a value (or null) per time for every variable.
pub fn parse_response(body: &[u8], n: usize, day: NaiveDate) -> Result<Vec<DaySeries>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let locations = match value {
        Value::Array(list) => list,
        obj @ Value::Object(_) if n == 1 => vec![obj],
        other => return Err(format!("expected {n} locations, got a JSON {}", crate::records::json_type(&other))),
    };
    if locations.len() != n {
        return Err(format!("expected {n} locations, got {}", locations.len()));
    }
    locations.iter().map(|loc| parse_location(loc, day)).collect()
}

fn parse_location(loc: &Value, day: NaiveDate) -> Result<DaySeries, String> {
    let hourly = loc.get("hourly").ok_or("location without hourly")?;
    let times = hourly.get("time").and_then(Value::as_array).ok_or("hourly without time")?;
    if times.len() != 24 {
        return Err(format!("expected 24 hourly times, got {}", times.len()));
    }
    for (h, t) in times.iter().enumerate() {
        let want = format!("{day}T{h:02}:00");
        if t.as_str() != Some(want.as_str()) {
            return Err(format!("hourly time {h} is {t}, expected {want}"));
        }
    }
    let floats = |name: &str| -> Result<[Option<f64>; 24], String> {
        let list = hourly.get(name).and_then(Value::as_array).ok_or_else(|| format!("hourly without {name}"))?;
        if list.len() != 24 {
            return Err(format!("{name} has {} values for 24 times", list.len()));
        }
        let mut out = [None; 24];
        for (slot, v) in out.iter_mut().zip(list) {
            *slot = match v {
                Value::Null => None,
                Value::Number(n) => Some(n.as_f64().ok_or_else(|| format!("{name} value {n} is not a number"))?),
                other => return Err(format!("{name} value {other} is not a number")),
            };
        }
        Ok(out)
    };
    let codes = floats("weather_code")?;
    Ok(DaySeries {
        temperature_c: floats("temperature_2m")?,
        wind_speed_kmh: floats("wind_speed_10m")?,
        precipitation_mm: floats("precipitation")?,
        weather_code: codes.map(|c| c.map(|v| v.round() as i64)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
    }

    fn location(day: NaiveDate) -> Value {
        let times: Vec<String> = (0..24).map(|h| format!("{day}T{h:02}:00")).collect();
        json!({"latitude": 1.0, "longitude": 2.0, "hourly": {"time": times,
            "temperature_2m": (0..24).map(|h| h as f64 / 2.0).collect::<Vec<_>>(),
            "wind_speed_10m": vec![3.5; 24], "precipitation": [null, 0.2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "weather_code": vec![61; 24]}})
    }

    #[test]
    fn cells_round_to_the_grid() {
        let c = CellDay::of(53.5461, 9.9661, day(), 0.1);
        assert_eq!((c.lat_idx, c.lon_idx), (535, 100));
        assert_eq!(c.centre(0.1), (53.5, 10.0));
        assert_eq!(CellDay::of(-0.04, -179.99, day(), 0.1).centre(0.1), (-0.0, -180.0));
    }

    #[test]
    fn single_objects_and_lists_parse() {
        let one = parse_response(location(day()).to_string().as_bytes(), 1, day()).unwrap();
        assert_eq!(one[0].temperature_c[3], Some(1.5));
        assert_eq!(one[0].precipitation_mm[0], None);
        assert_eq!(one[0].weather_code[23], Some(61));
        let two = parse_response(json!([location(day()), location(day())]).to_string().as_bytes(), 2, day()).unwrap();
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let other_day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let mut short = location(day());
        short["hourly"]["wind_speed_10m"] = json!([1, 2]);
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (b"<html>oops".to_vec(), 1, "not JSON"),
            (json!([location(day())]).to_string().into_bytes(), 2, "expected 2 locations, got 1"),
            (location(day()).to_string().into_bytes(), 2, "expected 2 locations, got a JSON object"),
            (location(other_day).to_string().into_bytes(), 1, "hourly time 0"),
            (short.to_string().into_bytes(), 1, "wind_speed_10m has 2 values"),
            (json!({"hourly": {}}).to_string().into_bytes(), 1, "hourly without time"),
        ];
        for (body, n, want) in cases {
            let err = parse_response(&body, n, day()).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
