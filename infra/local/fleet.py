#!/usr/bin/env python3
"""A synthetic fleet, deterministic by seed, as the MSK event source mapping would hand it to msk-lander.

usage: fleet.py --out DIR [--units 30] [--hours 24] [--day 2026-11-24] [--seed 7] [--batch-minutes 60]
                [--partitions 3] [--malformed-rate 0.01]

Units of the three transport types move along plausible paths: ships at sea in the North Atlantic, trucks on
European roads, aircraft at cruising altitude. Every unit reports its position every 15 minutes on
`fleet.locations` (keyed by unit, partitioned by a stable hash of the unit id). PostgreSQL changes come as Debezium
events: `pg.public.transport_units` (a snapshot read of every unit, a few renames, one retired unit deleted) and
`pg.public.performance_stats` (the day before and the day itself per unit, distance consistent with the path
travelled, fuel by type, one correction per few units). A small share of position messages is malformed (not JSON,
latitude out of range, no timestamp).

Writes DIR/msk/batch-NNNNN.json (Lambda MSK events, one per --batch-minutes of data, records of all topics) and
DIR/expected.json: what the pipeline must end with (valid positions, malformed messages and why, the CDC rows).
Sizes: the default is a smoke run (30 units, 2,880 positions); --units 10000 --hours 24 is 960,000 positions.
"""
import argparse
import base64
import datetime as dt
import json
import math
import random
import zlib
from pathlib import Path

EARTH_RADIUS_KM = 6371.0088
KINDS = {
    # type: (lat range, lon range, speed km/h range, altitude m, litres per km)
    "maritime": ((35.0, 55.0), (-45.0, -15.0), (22.0, 38.0), 0.0, 9.0),
    "terrestrial": ((44.0, 53.0), (0.0, 16.0), (55.0, 90.0), None, 0.32),
    "aerial": ((38.0, 58.0), (-10.0, 25.0), (760.0, 880.0), 10_600.0, 11.5),
}
CLUSTER = "arn:aws:kafka:us-east-1:123456789012:cluster/fleet-msk/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0-2"


def haversine_km(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def step(lat, lon, heading, km):
    """Moves `km` along `heading` (degrees) on a sphere."""
    d = km / EARTH_RADIUS_KM
    p1, l1, h = math.radians(lat), math.radians(lon), math.radians(heading)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(h))
    l2 = l1 + math.atan2(math.sin(h) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 540) % 360 - 180


def partition_of(key, partitions):
    return zlib.crc32(key.encode()) % partitions


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def ms(t):
    return int(t.timestamp() * 1000)


def generate(args):
    rnd = random.Random(args.seed)
    day = dt.datetime.strptime(args.day, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    kinds = list(KINDS)
    units = []
    for i in range(args.units):
        kind = kinds[i % 3]
        (la0, la1), (lo0, lo1), (s0, s1), alt, _ = KINDS[kind]
        units.append({"id": f"TU-{i:06d}", "type": kind, "lat": rnd.uniform(la0, la1), "lon": rnd.uniform(lo0, lo1),
                      "heading": rnd.uniform(0, 360), "speed": rnd.uniform(s0, s1), "alt": alt, "km": 0.0, "hours": 0.0})

    events = []  # (time, topic, key, value bytes, expectation)
    expected = {"positions": [], "malformed": [], "performance_stats": [], "transport_units": [], "units": {}}
    lsn = [24_000_000]

    def change(topic, key, before, after, op, t):
        lsn[0] += 1
        source = {"version": "2.7.3.Final", "connector": "postgresql", "name": "pg", "ts_ms": ms(t) - 500,
                  "snapshot": "true" if op == "r" else "false", "db": "fleet", "schema": "public",
                  "table": topic.split(".")[-1], "lsn": lsn[0]}
        value = {"before": before, "after": after, "source": source, "op": op, "ts_ms": ms(t)}
        events.append((t, topic, json.dumps(key), json.dumps(value).encode(), None))
        return lsn[0]

    # transport_units: a snapshot of every unit, a retired unit deleted, a few renames later in the day.
    t0 = day + dt.timedelta(seconds=1)
    for u in units:
        row = {"transport_unit_id": u["id"], "transport_type": u["type"], "name": f"{u['type'][:3].upper()} {u['id']}",
               "capacity_t": {"maritime": 8200, "terrestrial": 24, "aerial": 110}[u["type"]]}
        change("pg.public.transport_units", {"transport_unit_id": u["id"]}, None, row, "r", t0)
        expected["transport_units"].append({"op": "r", **row})
        expected["units"][u["id"]] = u["type"]
    retired = {"transport_unit_id": "TU-999999", "transport_type": "terrestrial", "name": "Retired truck", "capacity_t": 24}
    change("pg.public.transport_units", {"transport_unit_id": "TU-999999"}, None, retired, "r", t0)
    change("pg.public.transport_units", {"transport_unit_id": "TU-999999"}, retired, None, "d", day + dt.timedelta(hours=6))
    expected["transport_units"] += [{"op": "r", **retired}, {"op": "d", "transport_unit_id": "TU-999999"}]
    for u in units[: max(1, len(units) // 10)]:
        before = {"transport_unit_id": u["id"], "transport_type": u["type"], "name": f"{u['type'][:3].upper()} {u['id']}",
                  "capacity_t": {"maritime": 8200, "terrestrial": 24, "aerial": 110}[u["type"]]}
        after = dict(before, name=before["name"] + " (renamed)")
        change("pg.public.transport_units", {"transport_unit_id": u["id"]}, before, after, "u", day + dt.timedelta(hours=12))
        expected["transport_units"].append({"op": "u", **after})

    # The day before: one performance row per unit, as if it had sailed/driven/flown at its speed for 20 h.
    yesterday = (day - dt.timedelta(days=1)).strftime("%Y-%m-%d")
    for n, u in enumerate(units):
        km = u["speed"] * 20 * rnd.uniform(0.8, 1.1)
        row = {"transport_unit_id": u["id"], "stat_date": yesterday, "distance_km": round(km, 1),
               "fuel_used_l": round(km * KINDS[u["type"]][4] * rnd.uniform(0.9, 1.1), 1), "engine_hours": 20.0}
        key = {"transport_unit_id": u["id"], "stat_date": yesterday}
        change("pg.public.performance_stats", key, None, row, "c", day + dt.timedelta(minutes=5))
        expected["performance_stats"].append({"op": "c", **row})
        if n % 7 == 0:  # a correction of the fuel figure
            fixed = dict(row, fuel_used_l=round(row["fuel_used_l"] * 1.02, 1))
            change("pg.public.performance_stats", key, row, fixed, "u", day + dt.timedelta(hours=2))
            expected["performance_stats"].append({"op": "u", **fixed})

    # Positions every 15 minutes.
    ticks = args.hours * 4
    for k in range(ticks):
        t = day + dt.timedelta(minutes=15 * k)
        for u in units:
            if k > 0:
                (la0, la1), (lo0, lo1), (s0, s1), _, _ = KINDS[u["type"]]
                u["heading"] = (u["heading"] + rnd.gauss(0, 6)) % 360
                u["speed"] = min(s1, max(s0, u["speed"] + rnd.gauss(0, 1.5)))
                lat, lon = step(u["lat"], u["lon"], u["heading"], u["speed"] * 0.25)
                if not (la0 <= lat <= la1 and lo0 <= lon <= lo1):  # turn back at the edge of the area
                    u["heading"] = (u["heading"] + 180) % 360
                    lat, lon = step(u["lat"], u["lon"], u["heading"], u["speed"] * 0.25)
                u["km"] += haversine_km(u["lat"], u["lon"], lat, lon)
                u["hours"] += 0.25
                u["lat"], u["lon"] = lat, lon
            record = {"transport_unit_id": u["id"], "ts": iso(t), "lat": round(u["lat"], 5), "lon": round(u["lon"], 5),
                      "transport_type": u["type"], "speed_kmh": round(u["speed"], 1), "heading_deg": round(u["heading"], 1),
                      "altitude_m": u["alt"]}
            r = rnd.random()
            if r < args.malformed_rate / 3:
                value, why = f"lat={record['lat']},lon={record['lon']} (not json)".encode(), "value is not JSON"
            elif r < 2 * args.malformed_rate / 3:
                value, why = json.dumps(dict(record, lat=91.5)).encode(), "field `lat`"
            elif r < args.malformed_rate:
                value, why = json.dumps({k: v for k, v in record.items() if k != "ts"}).encode(), "missing required field `ts`"
            else:
                value, why = json.dumps(record).encode(), None
            events.append((t + dt.timedelta(milliseconds=rnd.randrange(0, 60_000)), "fleet.locations", u["id"], value, why))

    # The day itself, reported at its end (after the last position).
    end = day + dt.timedelta(hours=args.hours)
    for u in units:
        row = {"transport_unit_id": u["id"], "stat_date": args.day, "distance_km": round(u["km"], 1),
               "fuel_used_l": round(u["km"] * KINDS[u["type"]][4] * rnd.uniform(0.95, 1.05), 1),
               "engine_hours": round(u["hours"], 2)}
        change("pg.public.performance_stats", {"transport_unit_id": u["id"], "stat_date": args.day}, None, row, "c", end)
        expected["performance_stats"].append({"op": "c", **row})

    # Offsets per topic-partition in time order; one MSK event per --batch-minutes.
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    offsets = {}
    batches = {}
    for t, topic, key, value, why in events:
        partitions = args.partitions if topic == "fleet.locations" else 1
        p = partition_of(key, partitions)
        offset = offsets.get((topic, p), 0)
        offsets[(topic, p)] = offset + 1
        rec = {"topic": topic, "partition": p, "offset": offset, "timestamp": ms(t), "timestampType": "CREATE_TIME",
               "key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode(), "headers": []}
        slot = int((t - day).total_seconds() // (60 * args.batch_minutes))
        batches.setdefault(slot, {}).setdefault(f"{topic}-{p}", []).append(rec)
        if topic == "fleet.locations":
            if why is None:
                record = json.loads(value)
                expected["positions"].append([record["transport_unit_id"], record["ts"]])
            else:
                expected["malformed"].append({"topic": topic, "partition": p, "offset": offset, "reason": why})

    out = Path(args.out)
    (out / "msk").mkdir(parents=True, exist_ok=True)
    for old in (out / "msk").glob("*.json"):
        old.unlink()
    for n, slot in enumerate(sorted(batches)):
        event = {"eventSource": "aws:kafka", "eventSourceArn": CLUSTER,
                 "bootstrapServers": "b-1.fleet-msk.local:9098,b-2.fleet-msk.local:9098", "records": batches[slot]}
        (out / "msk" / f"batch-{n:05d}.json").write_text(json.dumps(event))
    expected["day"] = args.day
    expected["batches"] = len(batches)
    (out / "expected.json").write_text(json.dumps(expected))
    return expected


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--units", type=int, default=30)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--day", default="2026-11-24")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch-minutes", type=int, default=60)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--malformed-rate", type=float, default=0.01)
    args = ap.parse_args()
    e = generate(args)
    print(f"fleet: {args.units} units, {len(e['positions'])} valid positions, {len(e['malformed'])} malformed, "
          f"{len(e['performance_stats'])} performance_stats and {len(e['transport_units'])} transport_units changes "
          f"in {e['batches']} MSK batches under {args.out}/msk")


if __name__ == "__main__":
    main()
