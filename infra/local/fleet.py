#!/usr/bin/env python3
"""A synthetic fleet, deterministic by seed, as the MSK event source mapping would hand it to msk-lander.

usage: fleet.py --out DIR [--units 30] [--hours 24] [--day 2026-11-24] [--seed 7] [--batch-minutes 60]
                [--batch-seconds N] [--batch-records N] [--partitions 3] [--malformed-rate 0.01]
                [--stats-from msk|postgres]

Units of the three transport types move along plausible paths: ships at sea in the North Atlantic, trucks on
European roads, aircraft at cruising altitude. Every unit reports its position every 15 minutes on
`fleet.locations` (keyed by unit, partitioned by a stable hash of the unit id). PostgreSQL changes come as Debezium
events: `pg.public.transport_units` (a snapshot read of every unit, a few renames, one retired unit deleted) and
`pg.public.performance_stats` (the day before and the day itself per unit, distance consistent with the path
travelled, fuel by type, one correction per few units). A small share of position messages is malformed (not JSON,
latitude out of range, no timestamp).

Writes DIR/msk/batch-NNNNN.json (Lambda MSK events, one per --batch-minutes (or --batch-seconds) of data, at most
--batch-records records each, records of all topics; each written as soon as its time is complete) and
DIR/expected.json: what the pipeline must end with (valid positions, malformed messages and why, the CDC rows).
With --stats-from postgres the performance_stats changes are not Debezium events: they go to DIR/postgres.json,
the writes a PostgreSQL database receives (time, op, key, row), which infra/local/pg_source.py applies hour by
hour, polling with pg-poller after each hour; expected.json is the same.
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
# Per transport type: area (lat, lon ranges), cruise speed range km/h, altitude m (None: not reported), litres per
# km, and the day's duty: ships sail around the clock (a port day now and then), trucks drive one shift, aircraft
# fly two or three legs with turnarounds on the ground.
KINDS = {
    "maritime": {"lat": (35.0, 55.0), "lon": (-45.0, -15.0), "speed": (22.0, 38.0), "alt": 0.0, "l_per_km": 9.0},
    "terrestrial": {"lat": (44.0, 53.0), "lon": (0.0, 16.0), "speed": (55.0, 90.0), "alt": None, "l_per_km": 0.32},
    "aerial": {"lat": (38.0, 58.0), "lon": (-10.0, 25.0), "speed": (760.0, 880.0), "alt": 10_600.0, "l_per_km": 11.5},
}
TICK_H = 0.25  # positions every 15 minutes


def duty(kind, rnd):
    """The 15-minute slots of one day in which a unit of `kind` moves."""
    slots = [False] * 96
    if kind == "maritime":
        if rnd.random() >= 0.1:  # one day in ten in port
            slots = [True] * 96
    elif kind == "terrestrial":
        start = rnd.randrange(20, 36)  # 05:00–09:00
        for k in range(start, min(96, start + rnd.randrange(32, 46))):  # an 8–11 h shift
            slots[k] = True
    else:
        k = rnd.randrange(24, 40)  # first departure 06:00–10:00
        for _ in range(rnd.choice((2, 3))):
            leg = rnd.randrange(6, 13)  # 1.5–3 h
            for j in range(k, min(96, k + leg)):
                slots[j] = True
            k += leg + rnd.randrange(4, 9)  # 1–2 h on the ground
    return slots


def weather(rnd):
    """A unit's weather for one day: wind (km/h) around a daily mean, and rain (mm per 15 min) in showers."""
    mean_wind, wet = rnd.uniform(5, 45), rnd.random() < 0.35
    return [(max(0.0, rnd.gauss(mean_wind, 5)), rnd.expovariate(4.0) if wet and rnd.random() < 0.3 else 0.0)
            for _ in range(96)]


def fuel_factor(wind, rain):
    """More fuel against the wind and in rain."""
    return 1 + 0.004 * wind + 0.01 * min(rain * 4, 10)


def new_unit(i, rnd):
    kind = ("maritime", "terrestrial", "aerial")[i % 3]
    k = KINDS[kind]
    return {"id": f"TU-{i:06d}", "type": kind, "lat": rnd.uniform(*k["lat"]), "lon": rnd.uniform(*k["lon"]),
            "heading": rnd.uniform(0, 360), "speed": rnd.uniform(*k["speed"])}


def simulate_day(u, rnd):
    """Moves unit `u` through one day; returns its 96 ticks: (lat, lon, speed, heading, altitude, km, litres, wind,
    rain) at the end of each 15 minutes (the first tick is midnight, before any move)."""
    k = KINDS[u["type"]]
    moving, sky = duty(u["type"], rnd), weather(rnd)
    ticks = []
    for slot in range(96):
        km = 0.0
        if moving[slot] and slot > 0:
            u["heading"] = (u["heading"] + rnd.gauss(0, 6)) % 360
            u["speed"] = min(k["speed"][1], max(k["speed"][0], u["speed"] + rnd.gauss(0, 1.5)))
            lat, lon = step(u["lat"], u["lon"], u["heading"], u["speed"] * TICK_H)
            if not (k["lat"][0] <= lat <= k["lat"][1] and k["lon"][0] <= lon <= k["lon"][1]):
                u["heading"] = (u["heading"] + 180) % 360  # turn back at the edge of the area
                lat, lon = step(u["lat"], u["lon"], u["heading"], u["speed"] * TICK_H)
            km = haversine_km(u["lat"], u["lon"], lat, lon)
            u["lat"], u["lon"] = lat, lon
        speed = u["speed"] if moving[slot] else 0.0
        alt = (k["alt"] if moving[slot] else 0.0) if k["alt"] is not None else None
        wind, rain = sky[slot]
        litres = km * k["l_per_km"] * fuel_factor(wind, rain) * rnd.gauss(1.0, 0.02)
        ticks.append((u["lat"], u["lon"], speed, u["heading"], alt, km, litres, wind, rain))
    return ticks


def daily_row(u, day, ticks):
    """The performance_stats row of one simulated day."""
    return {"transport_unit_id": u["id"], "stat_date": day, "distance_km": round(sum(t[5] for t in ticks), 1),
            "fuel_used_l": round(sum(t[6] for t in ticks), 1),
            "engine_hours": round(sum(TICK_H for t in ticks if t[2] > 0), 2)}


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
    units = [new_unit(i, rnd) for i in range(args.units)]
    capacity = {"maritime": 8200, "terrestrial": 24, "aerial": 110}
    events = []  # (time, topic, key, value bytes, expectation)
    expected = {"positions": [], "malformed": [], "performance_stats": [], "transport_units": [], "units": {}}
    lsn = [24_000_000]
    database = []  # the performance_stats writes, with --stats-from postgres

    def change(topic, key, before, after, op, t):
        if topic == "pg.public.performance_stats" and args.stats_from == "postgres":
            database.append({"at": t.isoformat(timespec="milliseconds"), "op": op, "key": key, "row": after})
            return None
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
               "capacity_t": capacity[u["type"]]}
        change("pg.public.transport_units", {"transport_unit_id": u["id"]}, None, row, "r", t0)
        expected["transport_units"].append({"op": "r", **row})
        expected["units"][u["id"]] = u["type"]
    retired = {"transport_unit_id": "TU-999999", "transport_type": "terrestrial", "name": "Retired truck", "capacity_t": 24}
    change("pg.public.transport_units", {"transport_unit_id": "TU-999999"}, None, retired, "r", t0)
    change("pg.public.transport_units", {"transport_unit_id": "TU-999999"}, retired, None, "d", day + dt.timedelta(hours=6))
    expected["transport_units"] += [{"op": "r", **retired}, {"op": "d", "transport_unit_id": "TU-999999"}]
    for u in units[: max(1, len(units) // 10)]:
        before = {"transport_unit_id": u["id"], "transport_type": u["type"], "name": f"{u['type'][:3].upper()} {u['id']}",
                  "capacity_t": capacity[u["type"]]}
        after = dict(before, name=before["name"] + " (renamed)")
        change("pg.public.transport_units", {"transport_unit_id": u["id"]}, before, after, "u", day + dt.timedelta(hours=12))
        expected["transport_units"].append({"op": "u", **after})

    # The day before (simulated, only its performance row is reported), then the day itself.
    yesterday = (day - dt.timedelta(days=1)).strftime("%Y-%m-%d")
    today = [None] * len(units)
    for n, u in enumerate(units):
        row = daily_row(u, yesterday, simulate_day(u, rnd))
        key = {"transport_unit_id": u["id"], "stat_date": yesterday}
        change("pg.public.performance_stats", key, None, row, "c", day + dt.timedelta(minutes=5))
        expected["performance_stats"].append({"op": "c", **row})
        if n % 7 == 0:  # a correction of the fuel figure
            fixed = dict(row, fuel_used_l=round(row["fuel_used_l"] * 1.02, 1))
            change("pg.public.performance_stats", key, row, fixed, "u", day + dt.timedelta(hours=2))
            expected["performance_stats"].append({"op": "u", **fixed})
        today[n] = simulate_day(u, rnd)

    # The day itself, reported at its end (after the last position).
    end = day + dt.timedelta(hours=args.hours)
    for u, ticks in zip(units, today):
        row = daily_row(u, args.day, ticks[: args.hours * 4])
        change("pg.public.performance_stats", {"transport_unit_id": u["id"], "stat_date": args.day}, None, row, "c", end)
        expected["performance_stats"].append({"op": "c", **row})

    # One MSK event per --batch-minutes, written as soon as its slot is complete: the changes above are few (a few
    # per unit); the positions, most of the day, are generated slot by slot and never held all at once.
    out = Path(args.out)
    (out / "msk").mkdir(parents=True, exist_ok=True)
    for old in (out / "msk").glob("*.json"):
        old.unlink()
    batch_seconds = args.batch_seconds or 60 * args.batch_minutes
    slot_of = lambda t: int((t - day).total_seconds() // batch_seconds)  # noqa: E731
    changes = {}
    for e in events:
        changes.setdefault(slot_of(e[0]), []).append(e)
    offsets = {}
    written = [0]

    def flush(slot, slot_events):
        """Offsets per topic-partition in time order; the slot's MSK event."""
        slot_events.sort(key=lambda e: (e[0], e[1], e[2]))
        records = {}
        for t, topic, key, value, why in slot_events:
            partitions = args.partitions if topic == "fleet.locations" else 1
            p = partition_of(key, partitions)
            offset = offsets.get((topic, p), 0)
            offsets[(topic, p)] = offset + 1
            rec = {"topic": topic, "partition": p, "offset": offset, "timestamp": ms(t), "timestampType": "CREATE_TIME",
                   "key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode(),
                   "headers": []}
            records.setdefault(f"{topic}-{p}", []).append(rec)
            if topic == "fleet.locations":
                if why is None:
                    record = json.loads(value)
                    expected["positions"].append([record["transport_unit_id"], record["ts"]])
                else:
                    expected["malformed"].append({"topic": topic, "partition": p, "offset": offset, "reason": why})
        if not records:
            return
        # At most --batch-records records per event (the mapping's BatchSize), in time order.
        chunks = [records]
        if args.batch_records:
            flat = sorted((r for rs in records.values() for r in rs), key=lambda r: (r["timestamp"], r["topic"], r["key"]))
            chunks = []
            for i in range(0, len(flat), args.batch_records):
                chunk = {}
                for r in flat[i:i + args.batch_records]:
                    chunk.setdefault(f"{r['topic']}-{r['partition']}", []).append(r)
                chunks.append(chunk)
        for chunk in chunks:
            event = {"eventSource": "aws:kafka", "eventSourceArn": CLUSTER,
                     "bootstrapServers": "b-1.fleet-msk.local:9098,b-2.fleet-msk.local:9098", "records": chunk}
            (out / "msk" / f"batch-{written[0]:05d}.json").write_text(json.dumps(event))
            written[0] += 1

    # Positions every 15 minutes; after each tick the slots before the next tick are complete.
    pending = {}
    ticks_of_day = min(96, args.hours * 4)
    for k in range(ticks_of_day):
        t = day + dt.timedelta(minutes=15 * k)
        tick = []
        for u, ticks in zip(units, today):
            lat, lon, speed, heading, alt, *_ = ticks[k]
            record = {"transport_unit_id": u["id"], "ts": iso(t), "lat": round(lat, 5), "lon": round(lon, 5),
                      "transport_type": u["type"], "speed_kmh": round(speed, 1), "heading_deg": round(heading, 1),
                      "altitude_m": alt}
            r = rnd.random()
            if r < args.malformed_rate / 3:
                value, why = f"lat={record['lat']},lon={record['lon']} (not json)".encode(), "value is not JSON"
            elif r < 2 * args.malformed_rate / 3:
                value, why = json.dumps(dict(record, lat=91.5)).encode(), "field `lat`"
            elif r < args.malformed_rate:
                value, why = json.dumps({k: v for k, v in record.items() if k != "ts"}).encode(), "missing required field `ts`"
            else:
                value, why = json.dumps(record).encode(), None
            tick.append((t + dt.timedelta(milliseconds=rnd.randrange(0, 60_000)), "fleet.locations", u["id"], value, why))
        for e in tick:
            pending.setdefault(slot_of(e[0]), []).append(e)
        complete = slot_of(day + dt.timedelta(minutes=15 * (k + 1))) if k + 1 < ticks_of_day else None
        for slot in sorted(set(pending) | set(changes)):
            if complete is not None and slot >= complete:
                break
            flush(slot, pending.pop(slot, []) + changes.pop(slot, []))
    for slot in sorted(set(pending) | set(changes)):
        flush(slot, pending.pop(slot, []) + changes.pop(slot, []))
    batches = written[0]

    expected["day"] = args.day
    expected["batches"] = batches
    expected["stats_from"] = args.stats_from
    (out / "expected.json").write_text(json.dumps(expected))
    database.sort(key=lambda c: c["at"])
    if args.stats_from == "postgres":
        (out / "postgres.json").write_text(json.dumps({"day": args.day, "hours": args.hours, "changes": database}))
    else:
        (out / "postgres.json").unlink(missing_ok=True)
    return expected


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--units", type=int, default=30)
    ap.add_argument("--hours", type=int, default=24, choices=range(1, 25), metavar="1..24")
    ap.add_argument("--day", default="2026-11-24")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch-minutes", type=int, default=60)
    ap.add_argument("--batch-seconds", type=int, default=0, help="batching window in seconds (overrides minutes)")
    ap.add_argument("--batch-records", type=int, default=0,
                    help="most records per MSK event (the mapping's BatchSize; 0: no limit)")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--malformed-rate", type=float, default=0.01)
    ap.add_argument("--stats-from", choices=("msk", "postgres"), default="msk",
                    help="performance_stats as Debezium events on MSK, or as writes to PostgreSQL (postgres.json)")
    args = ap.parse_args()
    e = generate(args)
    print(f"fleet: {args.units} units, {len(e['positions'])} valid positions, {len(e['malformed'])} malformed, "
          f"{len(e['performance_stats'])} performance_stats and {len(e['transport_units'])} transport_units changes "
          f"in {e['batches']} MSK batches under {args.out}/msk"
          + (" (performance_stats as PostgreSQL writes in postgres.json)" if args.stats_from == "postgres" else ""))


if __name__ == "__main__":
    main()
