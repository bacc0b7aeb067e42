//! Enriched objects as weather-enricher writes them, for the benchmarks that feed delta-writer.

use std::io::Write;

use serde_json::json;

/// One enriched object: the shape of `peer/gen_enriched.py` (2,000 units, two UTC days, six Kafka partitions).
pub(crate) fn enriched_object(file: usize, per_file: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(file as u64);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let types = ["aerial", "maritime", "terrestrial"];
    for i in 0..per_file {
        let off = file * per_file + i;
        let line = json!({
            "transport_unit_id": format!("TU-{:06}", off % 2000), "transport_type": types[off % 3],
            "ts": format!("2026-11-{:02}T{:02}:{:02}:00Z", 23 + (off / 96_000) % 2, (off / 4000) % 24, (off % 4) * 15),
            "lat": ((rng.f64() * 160.0 - 80.0) * 1e5).round() / 1e5, "lon": ((rng.f64() * 340.0 - 170.0) * 1e5).round() / 1e5,
            "speed_kmh": (rng.f64() * 90_000.0).round() / 100.0, "heading_deg": (rng.f64() * 3600.0).round() / 10.0, "altitude_m": null,
            "_source": {"topic": "fleet.locations", "partition": file % 6, "offset": off, "timestamp": 1_763_892_900_000_u64 + off as u64},
            "_ingested_at": "2026-11-24T00:00:00Z",
            "temperature_c": ((rng.f64() * 60.0 - 20.0) * 100.0).round() / 100.0, "wind_speed_kmh": (rng.f64() * 8000.0).round() / 100.0,
            "precipitation_mm": (rng.f64() * 500.0).round() / 100.0, "weather_code": rng.u32(0..100), "weather_status": "ok"
        });
        serde_json::to_writer(&mut gz, &line).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.finish().unwrap()
}

/// The key of object `file` of `per_file` records, named as msk-lander names a batch (topic-partition-first-last),
/// so that delta-writer believes its lineage.
pub(crate) fn enriched_key(file: usize, per_file: usize) -> String {
    let (first, last) = (file * per_file, (file + 1) * per_file - 1);
    format!("enriched/locations/dt=2026-11-23/fleet.locations-{}-{first}-{last}.ndjson.gz", file % 6)
}
