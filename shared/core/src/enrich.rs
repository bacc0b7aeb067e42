//! Landed position lines + weather lookups → enriched lines: the functional core of weather-enricher.

use chrono::Timelike;
use serde_json::{json, Value};

use crate::quarantine::QuarantineLine;
use serde::Deserialize as _;

use std::borrow::Cow;

use crate::bronze::{column, EventWindow, LOCATIONS, MAX_LINE_MEMBERS};
use crate::lake::BatchName;
use crate::records::{parse_object, validate_position, Fields, Position, Received};
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

/// The fields weather-enricher adds, in output order: the weather columns of the bronze `locations` spec.
pub const WEATHER_FIELDS: [&str; 5] = crate::bronze::WEATHER_COLUMNS;

/// A landed line that passed validation, with the cell-day and hour its weather comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The record's JSON object text, without weather fields; enrichment appends to it.
    pub line: Vec<u8>,
    /// Whether the record lacks `_source` (a file dropped straight into landing/) and gets `{key, etag}`.
    pub add_source: bool,
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
    /// The lander batch the object is named after ([`BatchName::from_key`]): Kafka lineage is believed only within
    /// it. A line of any other object (a file dropped by hand) gets the file's own lineage instead of what it claims.
    pub batch: Option<&'a BatchName>,
}

/// The fields a position is validated on, decoded without building the whole record: other fields are only
/// skipped over, and the record's own text is kept for the output (so unknown fields pass through untouched).
#[derive(Debug, serde::Deserialize)]
struct View<'a> {
    transport_unit_id: Option<Value>,
    ts: Option<Value>,
    lat: Option<Value>,
    lon: Option<Value>,
    transport_type: Option<Value>,
    speed_kmh: Option<Value>,
    heading_deg: Option<Value>,
    altitude_m: Option<Value>,
    #[serde(rename = "_source", default, borrow, deserialize_with = "source_seen")]
    source: SourceSeen<'a>,
    #[serde(rename = "_ingested_at", default, deserialize_with = "micros_of")]
    ingested_us: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    temperature_c: bool,
    #[serde(default, deserialize_with = "present")]
    wind_speed_kmh: bool,
    #[serde(default, deserialize_with = "present")]
    precipitation_mm: bool,
    #[serde(default, deserialize_with = "present")]
    weather_code: bool,
    #[serde(default, deserialize_with = "present")]
    weather_status: bool,
}

/// Whether `_source` is present (whatever its value, `null` included) and the Kafka coordinates it claims.
#[derive(Debug, Default)]
struct SourceSeen<'a> {
    present: bool,
    /// `topic`, `partition` or `offset` present and not null: a claim of Kafka identity.
    claims_kafka: bool,
    topic: Option<Cow<'a, str>>,
    partition: Option<i64>,
    offset: Option<i64>,
    timestamp_ms: Option<i64>,
}

/// The members of `_source` read here, named without copying the name.
enum SourceMember {
    Topic,
    Partition,
    Offset,
    Timestamp,
    Other,
}

impl<'de> serde::Deserialize<'de> for SourceMember {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SourceMember;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SourceMember, E> {
                Ok(match s {
                    "topic" => SourceMember::Topic,
                    "partition" => SourceMember::Partition,
                    "offset" => SourceMember::Offset,
                    "timestamp" => SourceMember::Timestamp,
                    _ => SourceMember::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON string, borrowed from the line when it has no escapes; `None` for any other value.
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'de>, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
        }
        d.deserialize_any(V)
    }
}

fn source_seen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SourceSeen<'de>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = SourceSeen<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SourceSeen<'de>, A::Error> {
            let mut seen = SourceSeen { present: true, ..SourceSeen::default() };
            while let Some(member) = map.next_key()? {
                let value = match member {
                    SourceMember::Other => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    SourceMember::Topic => {
                        let Text(topic) = map.next_value()?;
                        seen.claims_kafka |= topic.is_some();
                        seen.topic = topic;
                        continue;
                    }
                    _ => map.next_value::<Value>()?,
                };
                match member {
                    SourceMember::Partition => {
                        seen.claims_kafka |= !value.is_null();
                        seen.partition = value.as_i64();
                    }
                    SourceMember::Offset => {
                        seen.claims_kafka |= !value.is_null();
                        seen.offset = value.as_i64();
                    }
                    _ => seen.timestamp_ms = value.as_i64(),
                }
            }
            Ok(seen)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<SourceSeen<'de>, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(SourceSeen { present: true, ..SourceSeen::default() })
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<SourceSeen<'de>, E> {
            Ok(SourceSeen { present: true, ..SourceSeen::default() })
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SourceSeen<'de>, E> {
            self.visit_unit()
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SourceSeen<'de>, E> {
            self.visit_unit()
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SourceSeen<'de>, E> {
            self.visit_unit()
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SourceSeen<'de>, E> {
            self.visit_unit()
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SourceSeen<'de>, E> {
            self.visit_unit()
        }
    }
    d.deserialize_any(V)
}

/// An RFC 3339 text as microseconds since the epoch, without copying it; `None` for anything else.
fn micros_of<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Option<i64>, E> {
            Ok(crate::bronze::rfc3339_micros_fast(s)
                .or_else(|| chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros())))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<i64>, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<i64>, A::Error> {
            while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// `true` for a field that is present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

impl Fields for View<'_> {
    fn field(&self, name: &str) -> Option<&Value> {
        match name {
            "transport_unit_id" => self.transport_unit_id.as_ref(),
            "ts" => self.ts.as_ref(),
            "lat" => self.lat.as_ref(),
            "lon" => self.lon.as_ref(),
            "transport_type" => self.transport_type.as_ref(),
            "speed_kmh" => self.speed_kmh.as_ref(),
            "heading_deg" => self.heading_deg.as_ref(),
            "altitude_m" => self.altitude_m.as_ref(),
            _ => None,
        }
    }
}

/// One pass over a line: whether it needs the full parse before its text may be copied to the output (a `\u` escape,
/// which may be a lone surrogate, or a number with an exponent, which may overflow: skipped fields are not checked by
/// the fast path, and nothing unparseable may reach the enriched zone), and how many members its object has (the
/// commas at the top level, plus one). Linear, whatever the line.
fn scan(bytes: &[u8]) -> (bool, usize) {
    let (mut in_string, mut escaped, mut prev, mut depth) = (false, false, 0_u8, 0_usize);
    let (mut full, mut commas, mut any) = (false, 0_usize, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, b'u') => {
                    full = true;
                    escaped = false;
                }
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => {
                    in_string = true;
                    any |= depth == 1;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.saturating_sub(1),
                b',' if depth == 1 => commas += 1,
                b'e' | b'E' if prev.is_ascii_digit() || prev == b'.' => full = true,
                _ => {}
            }
        }
        prev = b;
    }
    (full, if any { commas + 1 } else { 0 })
}

/// Parses and validates one landed line (a leading UTF-8 byte-order mark is ignored). With `window`, `ts` must
/// also lie in the event-time window around the line's `_ingested_at` (the second value, µs, for a line without
/// one: a file dropped straight into landing/) and its Kafka timestamp.
pub fn prepare(
    bytes: &[u8],
    src: LineSource<'_>,
    grid_deg: f64,
    window: Option<(EventWindow, i64)>,
) -> Result<Pending, Box<QuarantineLine>> {
    let quarantine = |reason: String| {
        Box::new(QuarantineLine::new(
            reason,
            STAGE,
            &json!({"key": src.key, "line": src.line}),
            Some(String::from_utf8_lossy(bytes).into_owned()),
        ))
    };
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes).trim_ascii();
    // Say what is wrong as the other stages do (not JSON, not an object); a duplicate field is the rest.
    let reason = |e: serde_json::Error| {
        parse_object(text).err().map_or_else(|| format!("value is not a valid record: {e}"), |r| r.to_string())
    };
    if std::str::from_utf8(text).is_err() {
        return Err(quarantine("value is not JSON: invalid UTF-8".into()));
    }
    if !(text.starts_with(b"{") && text.ends_with(b"}")) {
        return Err(quarantine(
            parse_object(text).err().map_or_else(|| "value is not a JSON object".into(), |r| r.to_string()),
        ));
    }
    let (full_parse, members) = scan(text);
    if members > MAX_LINE_MEMBERS {
        return Err(quarantine(format!("has {members} fields, more than {MAX_LINE_MEMBERS} with lineage and weather")));
    }
    let view: View<'_> = serde_json::from_slice(text).map_err(|e| quarantine(reason(e)))?;
    // Lineage is believed only from the lander's own objects, and there only within the batch the object is named
    // after: a claimed Kafka identity elsewhere would make the real record with it a "duplicate" later.
    let believed = match src.batch {
        Some(batch) => {
            let seen = &view.source;
            if seen.claims_kafka {
                if let Some(reason) = batch.refuse_claim(seen.topic.as_deref(), seen.partition, seen.offset) {
                    return Err(quarantine(reason));
                }
            }
            true
        }
        None => false,
    };
    let received = window.map(|(window, now_us)| Received {
        window,
        ingested_us: view.ingested_us.filter(|_| believed).unwrap_or(now_us),
        produced_us: view.source.timestamp_ms.filter(|ms| believed && *ms > 0).map(|ms| ms.saturating_mul(1000)),
    });
    let Position { ts, lat, lon, .. } =
        validate_position(&view, received.as_ref()).map_err(|e| quarantine(e.to_string()))?;
    let had_weather =
        view.temperature_c || view.wind_speed_kmh || view.precipitation_mm || view.weather_code || view.weather_status;
    // A dropped file's own `_source` claim is replaced by the file's lineage.
    let replace_source = view.source.present && !believed;
    let line = if had_weather || replace_source || full_parse {
        // Rare: parse the whole record, refuse what does not parse, drop old weather fields (and an unbelieved
        // `_source`), write it anew.
        let mut map = parse_object(text).map_err(|e| quarantine(e.to_string()))?;
        for f in WEATHER_FIELDS {
            map.remove(f);
        }
        if replace_source {
            map.remove("_source");
        }
        serde_json::to_vec(&map).unwrap_or_else(|_| unreachable!("a JSON map serialises"))
    } else {
        text.to_vec()
    };
    Ok(Pending {
        line,
        add_source: !view.source.present || replace_source,
        cell: CellDay::of(lat, lon, ts.date_naive(), grid_deg),
        hour: ts.hour() as usize,
    })
}

/// Appends the enriched record and a newline to `out`: the record's own text with `_source = {key, etag}` when it
/// had none, then `temperature_c`, `wind_speed_kmh`, `precipitation_mm`, `weather_code` (nulls when there is no
/// weather) and `weather_status`. Returns the status.
pub fn write_enriched(
    out: &mut Vec<u8>,
    p: &Pending,
    lookup: Option<&Lookup>,
    key: &str,
    etag: Option<&str>,
) -> WeatherStatus {
    let (values, status) = match lookup {
        Some(Lookup::Found(s)) if p.hour < 24 => {
            let h = p.hour;
            let mut values =
                [s.temperature_c[h], s.wind_speed_kmh[h], s.precipitation_mm[h], s.weather_code[h].map(|c| c as f64)];
            // A value beyond the column's physical bounds is the weather service's error: no value, not a
            // position refused later.
            for (v, name) in values.iter_mut().zip(WEATHER_FIELDS) {
                if v.is_some_and(|x| !column(&LOCATIONS, name).is_none_or(|c| c.admits(x))) {
                    *v = None;
                }
            }
            let status =
                if values.iter().all(Option::is_none) { WeatherStatus::Unavailable } else { WeatherStatus::Ok };
            (values, status)
        }
        Some(Lookup::OutOfRange) => ([None; 4], WeatherStatus::OutOfRange),
        _ => ([None; 4], WeatherStatus::Unavailable),
    };
    // `line` is a JSON object: everything up to its closing brace, then the added fields.
    let body = p.line.strip_suffix(b"}").unwrap_or(&p.line);
    out.extend_from_slice(body);
    let mut sep: &[u8] = if body.trim_ascii() == b"{" { b"" } else { b"," };
    if p.add_source {
        out.extend_from_slice(sep);
        out.extend_from_slice(b"\"_source\":");
        let source = json!({"key": key, "etag": etag});
        serde_json::to_writer(&mut *out, &source).unwrap_or_else(|_| unreachable!("writing to a Vec cannot fail"));
        sep = b",";
    }
    for (i, (name, v)) in WEATHER_FIELDS.iter().zip(values).enumerate() {
        out.extend_from_slice(sep);
        sep = b",";
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match v {
            // weather_code is an integer code; the others keep the API's decimals.
            Some(v) if i == 3 => out.extend_from_slice((v as i64).to_string().as_bytes()),
            Some(v) => {
                serde_json::to_writer(&mut *out, &v).unwrap_or_else(|_| unreachable!("writing to a Vec cannot fail"))
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b",\"weather_status\":\"");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b"\"}\n");
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weather::DaySeries;
    use std::sync::Arc;

    fn src() -> LineSource<'static> {
        LineSource { key: "landing/locations/dt=2026-11-24/drop.ndjson.gz", etag: Some("e1"), line: 3, batch: None }
    }

    const BATCH_KEY: &str = "landing/locations/dt=2026-11-24/t-0-0-9.ndjson.gz";

    /// The lander's batch `t-0-0-9`, and a line of its object.
    fn batch() -> BatchName {
        BatchName::from_key(BATCH_KEY).unwrap()
    }

    fn of_batch(batch: &BatchName) -> LineSource<'_> {
        LineSource { key: BATCH_KEY, batch: Some(batch), ..src() }
    }

    fn enriched(p: &Pending, lookup: Option<&Lookup>) -> (Value, WeatherStatus) {
        let mut out = Vec::new();
        let status = write_enriched(&mut out, p, lookup, src().key, src().etag);
        assert_eq!(out.last(), Some(&b'\n'));
        (serde_json::from_slice(&out).unwrap(), status)
    }

    fn no_weather() -> DaySeries {
        DaySeries {
            temperature_c: [None; 24],
            wind_speed_kmh: [None; 24],
            precipitation_mm: [None; 24],
            weather_code: [None; 24],
        }
    }

    fn found() -> Lookup {
        let mut series = no_weather();
        series.temperature_c[8] = Some(12.3);
        series.precipitation_mm[8] = Some(0.0);
        series.weather_code[8] = Some(3);
        Lookup::Found(Arc::new(series))
    }

    #[test]
    fn valid_lines_get_a_cell_an_hour_and_lineage() {
        let p = prepare(br#"{"transport_unit_id":"T","ts":"2026-11-24T10:45:00+02:00","lat":53.54,"lon":9.97,"x":[1,{"y":null}]}  "#, src(), 0.1, None).unwrap();
        assert_eq!((p.cell.lat_idx, p.cell.lon_idx, p.hour), (535, 100, 8));
        let (rec, status) = enriched(&p, Some(&found()));
        assert_eq!(status, WeatherStatus::Ok);
        assert_eq!(
            rec,
            json!({"transport_unit_id": "T", "ts": "2026-11-24T10:45:00+02:00", "lat": 53.54, "lon": 9.97, "x": [1, {"y": null}],
                   "_source": {"key": "landing/locations/dt=2026-11-24/drop.ndjson.gz", "etag": "e1"},
                   "temperature_c": 12.3, "wind_speed_kmh": null, "precipitation_mm": 0.0, "weather_code": 3, "weather_status": "ok"})
        );
    }

    #[test]
    fn a_line_of_too_many_fields_is_refused_in_one_pass() {
        let fields =
            |n: usize| (0..n).map(|i| format!(",\"f{i}\":[{i},{{\"a\":1,\"b\":\"x,y\"}}]")).collect::<String>();
        let line = |n: usize| {
            format!(r#"{{"transport_unit_id":"T","ts":"2026-11-24T10:00:00Z","lat":1,"lon":2{}}}"#, fields(n))
        };
        // 4 fields of the record, and commas nested in arrays, objects and strings are not members.
        assert_eq!(scan(line(3).as_bytes()), (false, 7));
        assert_eq!(scan(b"{}"), (false, 0));
        assert!(prepare(line(MAX_LINE_MEMBERS - 4).as_bytes(), src(), 0.1, None).is_ok());
        let q = prepare(line(MAX_LINE_MEMBERS - 3).as_bytes(), src(), 0.1, None).unwrap_err();
        assert_eq!(
            q.reason,
            format!("has {} fields, more than {MAX_LINE_MEMBERS} with lineage and weather", MAX_LINE_MEMBERS + 1)
        );
    }

    #[test]
    fn kafka_lineage_is_believed_only_within_the_batch_the_object_is_named_after() {
        let landed = |offset: i64| {
            format!(
                r#"{{"transport_unit_id":"T","ts":"2026-11-24T10:45:00Z","lat":1,"lon":2,"_source":{{"topic":"t","partition":0,"offset":{offset},"timestamp":1}}}}"#
            )
        };
        let key = "landing/locations/dt=2026-11-24/t-0-5-9.ndjson.gz";
        let batch = BatchName::from_key(key).unwrap();
        let of_batch = LineSource { key, batch: Some(&batch), ..src() };
        let p = prepare(landed(5).as_bytes(), of_batch, 0.1, None).unwrap();
        let (rec, _) = enriched(&p, None);
        assert_eq!(rec["_source"]["offset"], json!(5), "the lander's lineage is kept");
        // A line of the batch's object that claims an offset outside it: refused, with the reason.
        let q = prepare(landed(10).as_bytes(), of_batch, 0.1, None).unwrap_err();
        assert_eq!(q.reason, "_source: names t-0 offset 10, which is not in the batch t-0-5-9 this object holds");
        let q = prepare(
            br#"{"transport_unit_id":"T","ts":"2026-11-24T10:45:00Z","lat":1,"lon":2,"_source":{"offset":7}}"#,
            of_batch,
            0.1,
            None,
        )
        .unwrap_err();
        assert!(q.reason.contains("names ?-? offset 7"), "{}", q.reason);
        // A file dropped by hand claims Kafka coordinates: it gets its own lineage instead.
        let p = prepare(landed(5).as_bytes(), src(), 0.1, None).unwrap();
        let (rec, _) = enriched(&p, None);
        assert_eq!(rec["_source"], json!({"key": src().key, "etag": "e1"}), "{rec}");
        assert_eq!(rec["transport_unit_id"], json!("T"));
    }

    #[test]
    fn statuses_for_missing_hours_failures_and_out_of_range_days() {
        let p = prepare(br#"{"transport_unit_id":"T","ts":"2026-11-24T09:00:00Z","lat":1,"lon":2}"#, src(), 0.1, None)
            .unwrap();
        let (rec, status) = enriched(&p, Some(&found()));
        assert_eq!((status, &rec["temperature_c"]), (WeatherStatus::Unavailable, &Value::Null));
        let (rec, status) = enriched(&p, Some(&Lookup::OutOfRange));
        assert_eq!((status, &rec["weather_status"]), (WeatherStatus::OutOfRange, &json!("out_of_range")));
        assert_eq!(enriched(&p, Some(&Lookup::Unavailable)).1, WeatherStatus::Unavailable);
        assert_eq!(enriched(&p, None).1, WeatherStatus::Unavailable);
    }

    #[test]
    fn weather_fields_already_present_are_replaced_not_repeated() {
        let line = br#"{"transport_unit_id":"T","ts":"2026-11-24T08:00:00Z","lat":1,"lon":2,"temperature_c":99,"weather_status":"old","_source":null}"#;
        let p = prepare(line, of_batch(&batch()), 0.1, None).unwrap();
        assert!(!p.add_source, "a null _source is still a _source");
        let mut out = Vec::new();
        write_enriched(&mut out, &p, Some(&found()), "k", None);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("temperature_c").count(), 1, "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["temperature_c"], json!(12.3));
    }

    #[test]
    fn bad_lines_become_quarantine_lines_with_the_shared_reasons() {
        let q = prepare(b"{\"lat\":1}", src(), 0.1, None).unwrap_err();
        assert_eq!(q.reason, "missing required field `transport_unit_id`");
        assert_eq!(q.source, json!({"key": "landing/locations/dt=2026-11-24/drop.ndjson.gz", "line": 3}));
        assert_eq!(q.raw.as_deref(), Some("{\"lat\":1}"));
        assert_eq!(q.stage, STAGE);
        assert!(prepare(b"[1]", src(), 0.1, None).unwrap_err().reason.starts_with("value is JSON array"));
        assert!(prepare(b"{oops", src(), 0.1, None).unwrap_err().reason.starts_with("value is not JSON"));
        let dup = br#"{"transport_unit_id":"T","ts":"2026-11-24T08:00:00Z","lat":1,"lat":3,"lon":2}"#;
        assert!(prepare(dup, src(), 0.1, None).unwrap_err().reason.contains("duplicate field `lat`"));
        let q =
            prepare(br#"{"transport_unit_id":"T","ts":"2026-11-24T08:00:00Z","lat":"1","lon":2}"#, src(), 0.1, None)
                .unwrap_err();
        assert_eq!(q.reason, "field `lat` must be a number, got a string");
    }

    #[test]
    fn only_clean_json_objects_reach_the_output() {
        let ok = |line: &[u8]| {
            let p = prepare(line, src(), 0.1, None).unwrap();
            let mut out = Vec::new();
            write_enriched(&mut out, &p, None, "k", None);
            serde_json::from_slice::<Value>(&out).unwrap()
        };
        let base = r#""transport_unit_id":"T","ts":"2026-11-24T08:00:00Z","lat":1,"lon":2"#;
        // An array with the right values in order is not a record.
        let arr = br#"["T","2026-11-24T08:00:00Z",1,2,null,null,null,null]"#;
        assert_eq!(prepare(arr, src(), 0.1, None).unwrap_err().reason, "value is JSON array, not an object");
        // Values in fields the fast path skips are checked all the same.
        for bad in [format!("{{{base},\"x\":1e400}}"), format!("{{{base},\"x\":\"\\uD800\"}}")] {
            assert!(
                prepare(bad.as_bytes(), src(), 0.1, None).unwrap_err().reason.starts_with("value is not JSON"),
                "{bad}"
            );
        }
        let mut invalid_utf8 = format!("{{{base},\"x\":\"").into_bytes();
        invalid_utf8.extend_from_slice(&[0xff, b'"', b'}']);
        assert_eq!(prepare(&invalid_utf8, src(), 0.1, None).unwrap_err().reason, "value is not JSON: invalid UTF-8");
        // Valid escapes and exponents survive the full parse.
        assert_eq!(ok(format!("{{{base},\"x\":\"caf\\u00e9\",\"y\":1.5e3}}").as_bytes())["x"], json!("café"));
        // A byte-order mark and surrounding blanks are dropped; words with e after digits inside strings are fine.
        let bom = [b"\xEF\xBB\xBF".as_slice(), format!(" {{{base},\"x\":\"3e\"}} ").as_bytes()].concat();
        assert_eq!(ok(&bom)["x"], json!("3e"));
        assert!(!scan(format!("{{{base},\"b\":true,\"f\":false,\"s\":\"12e4\"}}").as_bytes()).0);
    }

    #[test]
    fn weather_beyond_physical_bounds_is_no_weather() {
        let p = prepare(br#"{"transport_unit_id":"T","ts":"2026-11-24T08:00:00Z","lat":1,"lon":2}"#, src(), 0.1, None)
            .unwrap();
        let mut series = no_weather();
        series.temperature_c[8] = Some(1e30);
        series.wind_speed_kmh[8] = Some(12.0);
        series.weather_code[8] = Some(1234);
        let (rec, status) = enriched(&p, Some(&Lookup::Found(Arc::new(series))));
        assert_eq!(status, WeatherStatus::Ok, "the plausible value is kept");
        assert_eq!(rec["temperature_c"], Value::Null);
        assert_eq!(rec["wind_speed_kmh"], json!(12.0));
        assert_eq!(rec["weather_code"], Value::Null);
    }

    #[test]
    fn the_event_window_is_read_against_the_lines_own_ingestion_and_production() {
        let now = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().timestamp_micros();
        let window = Some((EventWindow::default(), now));
        // Landed in 2026 by msk-lander: judged by its `_ingested_at` and Kafka timestamp, not by today.
        let landed = br#"{"transport_unit_id":"T","ts":"2026-11-24T08:00:00Z","lat":1,"lon":2,"_source":{"topic":"t","partition":0,"offset":1,"timestamp":1795478400000},"_ingested_at":"2026-11-24T09:00:00.000Z"}"#;
        let batch = batch();
        assert!(prepare(landed, of_batch(&batch), 0.1, window).is_ok());
        let future = br#"{"transport_unit_id":"T","ts":"2027-11-24T08:00:00Z","lat":1,"lon":2,"_ingested_at":"2026-11-24T09:00:00.000Z"}"#;
        let q = prepare(future, of_batch(&batch), 0.1, window).unwrap_err();
        assert!(q.reason.starts_with("field `ts` is more than 24 h after the record was ingested"), "{}", q.reason);
        // A file dropped straight into landing/ is judged by the time it is read, whatever lineage it claims.
        let dropped = br#"{"transport_unit_id":"T","ts":"2026-11-24T08:00:00Z","lat":1,"lon":2}"#;
        for line in [&dropped[..], &landed[..]] {
            let q = prepare(line, src(), 0.1, window).unwrap_err();
            assert!(q.reason.contains("more than 365 days before the record was ingested"), "{}", q.reason);
        }
    }
}
