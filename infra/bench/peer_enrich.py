#!/usr/bin/env python3
"""Python baseline for weather-enricher: what a Python Lambda author would write for the same step, with the same
batching (0.1-degree cells, one day per request, 100 coordinates per request) and an in-memory cache.

boto3 get_object -> gzip -> json.loads per line -> look up missing cells (urllib, 4 threads) -> add fields ->
json.dumps -> gzip level 1 -> put_object. Prints one JSON line: records, wall_s, records_per_s, api_requests,
peak_rss_mib (ru_maxrss of this process).
usage: peer_enrich.py --endpoint URL --bucket B --prefix landing/locations/ --out-prefix peer-enriched/ --weather-url URL
"""
import argparse
import gzip
import json
import resource
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import boto3

ap = argparse.ArgumentParser()
for flag in ("--endpoint", "--bucket", "--prefix", "--out-prefix", "--weather-url"):
    ap.add_argument(flag, required=True)
a = ap.parse_args()
s3 = boto3.client("s3", endpoint_url=a.endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
GRID, BATCH = 0.1, 100
cache, requests = {}, 0


def fetch(day, cells):
    global requests
    lats = ",".join(str(round(c[0] * GRID, 4)) for c in cells)
    lons = ",".join(str(round(c[1] * GRID, 4)) for c in cells)
    url = (f"{a.weather_url}/v1/forecast?latitude={lats}&longitude={lons}"
           f"&hourly=temperature_2m,wind_speed_10m,precipitation,weather_code&start_date={day}&end_date={day}&timezone=GMT")
    requests += 1
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    return cells, day, body if isinstance(body, list) else [body]


t0 = time.perf_counter()
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=a.bucket, Prefix=a.prefix) for o in p.get("Contents", [])]
n = 0
with ThreadPoolExecutor(4) as pool:
    for key in keys:
        records = [json.loads(line) for line in gzip.decompress(s3.get_object(Bucket=a.bucket, Key=key)["Body"].read()).splitlines() if line.strip()]
        wanted = {}
        for r in records:
            ts = datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).astimezone(timezone.utc)
            r["_cell"] = (round(r["lat"] / GRID), round(r["lon"] / GRID), ts.date().isoformat(), ts.hour)
            if r["_cell"][:3] not in cache:
                wanted.setdefault(r["_cell"][2], set()).add(r["_cell"][:2])
        jobs = [pool.submit(fetch, day, sorted(cells)[i:i + BATCH]) for day, cells in wanted.items() for i in range(0, len(cells), BATCH)]
        for job in jobs:
            cells, day, locations = job.result()
            for cell, loc in zip(cells, locations):
                cache[(cell[0], cell[1], day)] = loc["hourly"]
        out = []
        for r in records:
            lat_i, lon_i, day, hour = r.pop("_cell")
            h = cache[(lat_i, lon_i, day)]
            r.update(temperature_c=h["temperature_2m"][hour], wind_speed_kmh=h["wind_speed_10m"][hour],
                     precipitation_mm=h["precipitation"][hour], weather_code=h["weather_code"][hour], weather_status="ok")
            out.append(json.dumps(r))
        s3.put_object(Bucket=a.bucket, Key=a.out_prefix + key.split("/", 2)[2], Body=gzip.compress("\n".join(out).encode() + b"\n", 1))
        n += len(records)
wall = time.perf_counter() - t0
print(json.dumps({"idiom": "python", "records": n, "wall_s": round(wall, 3), "records_per_s": round(n / wall),
                  "api_requests": requests, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
