#!/usr/bin/env python3
"""End-to-end latency of the pipeline on this machine: from handing one MSK batch to msk-lander until its rows are
queryable through Glue (the partition registered and its manifest listing the new files) and until the units'
predictions are in DynamoDB. The release binaries run under infra/router on a local stack of their own.

usage: latency.py --bin-dir TARGET/release --tools-dir TARGET/tools [--runs 3] [--units 30]
(release functions from --bin-dir; the router and the weather stub, debug builds are fine, from --tools-dir)
Each run: a fresh stack, the fleet's first hour as one MSK batch (positions and the Debezium snapshot), the router
with a 1 s batching window; this script polls Glue, S3 and DynamoDB every 50 ms. Prints one JSON line per run and
the medians.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(bin_dir, tools_dir, units):
    tmp = Path(tempfile.mkdtemp(prefix="fleetlake-latency-"))
    env = dict(os.environ, FLEETLAKE_STATE=str(tmp / "state"))
    subprocess.run([sys.executable, ROOT / "infra/local/stack.py", "up", "--moto-port", str(free_port()),
                    "--weather-port", str(free_port()), "--weather-stub", str(tools_dir / "weather-stub")],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    try:
        names = dict(line.split("=", 1) for line in (tmp / "state" / "stack.env").read_text().split())
        kw = dict(endpoint_url=names["AWS_ENDPOINT_URL"], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
        glue, s3, ddb = boto3.client("glue", **kw), boto3.client("s3", **kw), boto3.client("dynamodb", **kw)
        subprocess.run([sys.executable, ROOT / "infra/local/fleet.py", "--out", tmp / "fleet", "--units", str(units),
                        "--hours", "1", "--malformed-rate", "0"], check=True, stdout=subprocess.DEVNULL)
        msk = tmp / "one"
        msk.mkdir()
        shutil.copy(tmp / "fleet" / "msk" / "batch-00000.json", msk)
        day = json.loads((tmp / "fleet" / "expected.json").read_text())["day"]
        manifest = f"bronze/locations/_symlink_format_manifest/event_date={day}/manifest"
        router = subprocess.Popen([tools_dir / "fleetlake-router", "--stack-env", tmp / "state" / "stack.env",
                                   "--binaries", bin_dir, "--msk-dir", msk, "--idle-seconds", "2"],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        queryable = predicted = None
        while (queryable is None or predicted is None) and time.monotonic() - t0 < 120:
            now = time.monotonic() - t0
            if queryable is None:
                parts = glue.get_partitions(DatabaseName=names["GLUE_DATABASE"], TableName="bronze_locations")["Partitions"]
                if parts and s3.list_objects_v2(Bucket=names["LAKE_BUCKET"], Prefix=manifest).get("KeyCount"):
                    queryable = now
            if predicted is None and ddb.scan(TableName=names["PREDICTIONS_TABLE"], Select="COUNT")["Count"] >= units:
                predicted = now
            time.sleep(0.05)
        router.wait(timeout=120)
        return {"queryable_s": round(queryable, 2) if queryable else None,
                "predicted_s": round(predicted, 2) if predicted else None}
    finally:
        subprocess.run([sys.executable, ROOT / "infra/local/stack.py", "down"], env=env, check=False,
                       stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True, type=Path)
    ap.add_argument("--tools-dir", required=True, type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--units", type=int, default=30)
    a = ap.parse_args()
    results = []
    for _ in range(a.runs):
        r = run_once(a.bin_dir, a.tools_dir, a.units)
        print(json.dumps(r), flush=True)
        results.append(r)
    q = [r["queryable_s"] for r in results if r["queryable_s"] is not None]
    p = [r["predicted_s"] for r in results if r["predicted_s"] is not None]
    print(f"one MSK batch of {a.units} units' positions: queryable through Glue after {statistics.median(q):.2f} s, "
          f"predictions in DynamoDB after {statistics.median(p):.2f} s (medians of {len(results)} runs; local "
          f"batching window 1 s per SQS hop)")


if __name__ == "__main__":
    main()
