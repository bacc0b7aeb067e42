//! The model's feature contract (`models/<model>/contract.json`, shared with the training script) and the features
//! of one unit computed from its positions and its latest daily performance figures. No I/O.

use serde::Deserialize;

/// Mean Earth radius (IUGG), km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// The shipped model's contract.
pub const SHIPPED_CONTRACT: &str = include_str!("../../../models/fuel-24h/contract.json");

/// One feature of the contract.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FeatureDef {
    /// Name (what the training script and this module call it).
    pub name: String,
    /// Unit.
    pub unit: String,
    /// How it is computed.
    #[serde(default)]
    pub doc: String,
}

/// A model's feature contract: names, order and units of its input, and what it predicts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Contract {
    /// Model name.
    pub name: String,
    /// What it predicts.
    pub target: String,
    /// Unit of the prediction.
    pub target_unit: String,
    /// Hours of positions a prediction looks back on.
    pub window_hours: u32,
    /// Name of the ONNX input.
    pub input: String,
    /// Name of the ONNX output.
    pub output: String,
    /// Input features, in order.
    pub features: Vec<FeatureDef>,
}

/// The features this module can compute; a contract naming anything else is refused.
const KNOWN: [&str; 11] = [
    "distance_km",
    "mean_speed_kmh",
    "hours_observed",
    "is_aerial",
    "is_maritime",
    "is_terrestrial",
    "mean_wind_kmh",
    "precipitation_mm",
    "last_distance_km",
    "last_fuel_l",
    "last_engine_hours",
];

impl Contract {
    /// Parses a contract and checks that every feature is one this module computes.
    pub fn parse(text: &str) -> Result<Contract, String> {
        let c: Contract = serde_json::from_str(text).map_err(|e| format!("feature contract: {e}"))?;
        if let Some(f) = c.features.iter().find(|f| !KNOWN.contains(&f.name.as_str())) {
            return Err(format!("feature contract {}: the predictor cannot compute feature {:?}", c.name, f.name));
        }
        if c.features.is_empty() || c.window_hours == 0 {
            return Err(format!("feature contract {}: no features or an empty window", c.name));
        }
        Ok(c)
    }
}

/// One position of a unit, as read from `bronze/locations`.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// `ts`, UTC microseconds.
    pub ts_us: i64,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Reported speed.
    pub speed_kmh: Option<f64>,
    /// Wind along the way.
    pub wind_speed_kmh: Option<f64>,
    /// Precipitation along the way.
    pub precipitation_mm: Option<f64>,
}

/// A unit's latest daily performance figures.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DailyFigures {
    /// Distance that day.
    pub distance_km: f64,
    /// Fuel that day.
    pub fuel_used_l: f64,
    /// Engine hours that day.
    pub engine_hours: f64,
}

/// Great-circle distance between two points, km.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// The features of one unit in the contract's order. `positions` may come in any order; only those within
/// `window_hours` before the latest one count.
pub fn unit_features(
    contract: &Contract,
    transport_type: Option<&str>,
    positions: &[Position],
    last: Option<DailyFigures>,
) -> Vec<f32> {
    let mut window: Vec<&Position> = positions.iter().collect();
    window.sort_by_key(|p| p.ts_us);
    if let Some(latest) = window.last().map(|p| p.ts_us) {
        let start = latest - i64::from(contract.window_hours) * 3_600_000_000;
        window.retain(|p| p.ts_us >= start);
    }
    let distance: f64 = window.windows(2).map(|w| haversine_km(w[0].lat, w[0].lon, w[1].lat, w[1].lon)).sum();
    let hours = match (window.first(), window.last()) {
        (Some(a), Some(b)) => (b.ts_us - a.ts_us) as f64 / 3.6e9,
        _ => 0.0,
    };
    let mean = |xs: Vec<f64>| if xs.is_empty() { None } else { Some(xs.iter().sum::<f64>() / xs.len() as f64) };
    let speed = mean(window.iter().filter_map(|p| p.speed_kmh).collect()).unwrap_or(if hours > 0.0 {
        distance / hours
    } else {
        0.0
    });
    let wind = mean(window.iter().filter_map(|p| p.wind_speed_kmh).collect()).unwrap_or(0.0);
    let rain: f64 = window.iter().filter_map(|p| p.precipitation_mm).sum();
    let last = last.unwrap_or_default();
    let is = |t: &str| if transport_type == Some(t) { 1.0 } else { 0.0 };
    contract
        .features
        .iter()
        .map(|f| match f.name.as_str() {
            "distance_km" => distance,
            "mean_speed_kmh" => speed,
            "hours_observed" => hours,
            "is_aerial" => is("aerial"),
            "is_maritime" => is("maritime"),
            "is_terrestrial" => is("terrestrial"),
            "mean_wind_kmh" => wind,
            "precipitation_mm" => rain,
            "last_distance_km" => last.distance_km,
            "last_fuel_l" => last.fuel_used_l,
            "last_engine_hours" => last.engine_hours,
            // Contract::parse refuses any other name.
            _ => 0.0,
        } as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(minutes: i64, lat: f64, lon: f64) -> Position {
        Position {
            ts_us: 1_795_500_000_000_000 + minutes * 60_000_000,
            lat,
            lon,
            speed_kmh: Some(20.0),
            wind_speed_kmh: Some(10.0),
            precipitation_mm: Some(0.5),
        }
    }

    #[test]
    fn haversine_matches_a_hand_computation() {
        // One degree of longitude on the equator is 2πR/360 = 111.19508 km.
        assert!((haversine_km(0.0, 0.0, 0.0, 1.0) - 2.0 * std::f64::consts::PI * EARTH_RADIUS_KM / 360.0).abs() < 1e-9);
        // Hamburg port to Munich airport (same formula worked by hand with R = 6371.0088 km): 591.2149 km.
        assert!((haversine_km(53.5461, 9.9661, 48.3538, 11.7861) - 591.2149).abs() < 1e-3);
        assert_eq!(haversine_km(53.5, 9.9, 53.5, 9.9), 0.0);
    }

    #[test]
    fn features_follow_the_contract_order_and_the_window() {
        let c = Contract::parse(SHIPPED_CONTRACT).unwrap();
        // Out of order, and one position 30 h before the latest (outside the 24 h window).
        let positions = [pos(30, 0.0, 0.5), pos(0, 0.0, 0.0), pos(60, 0.0, 1.0), pos(-30 * 60 + 60, 10.0, 10.0)];
        let last = DailyFigures { distance_km: 480.0, fuel_used_l: 5200.0, engine_hours: 20.0 };
        let f = unit_features(&c, Some("maritime"), &positions, Some(last));
        let by_name: std::collections::HashMap<&str, f32> =
            c.features.iter().map(|d| d.name.as_str()).zip(f.iter().copied()).collect();
        assert!((by_name["distance_km"] - 111.195_08).abs() < 1e-3, "{by_name:?}");
        assert_eq!(by_name["hours_observed"], 1.0);
        assert_eq!(by_name["mean_speed_kmh"], 20.0);
        assert_eq!((by_name["is_aerial"], by_name["is_maritime"], by_name["is_terrestrial"]), (0.0, 1.0, 0.0));
        assert_eq!(by_name["precipitation_mm"], 1.5, "summed over the 3 positions in the window");
        assert_eq!(by_name["last_fuel_l"], 5200.0);
        assert_eq!(f.len(), c.features.len());
    }

    #[test]
    fn a_contract_with_a_feature_nobody_computes_is_refused() {
        let text = SHIPPED_CONTRACT.replace("\"precipitation_mm\"", "\"snow_cm\"");
        let err = Contract::parse(&text).unwrap_err();
        assert!(err.contains("cannot compute feature \"snow_cm\""), "{err}");
    }
}
