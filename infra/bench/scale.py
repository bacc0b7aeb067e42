#!/usr/bin/env python3
"""The whole pipeline at fleet scale on this machine (`make bench-scale`): a day of a synthetic fleet through every
function under infra/router, release binaries, with the mappings' batch sizes and batching windows as deployed
(template.yaml's defaults), the day played S times faster than it happened (--time-scale; the windows shrink by the
same factor, so that a window gathers what it would gather in AWS).

usage: scale.py --bin-dir TARGET/release --tools-dir TARGET/tools --dynoxide PATH [--units 10000] [--hours 24]
                [--time-scale 96] [--out FILE.json]

Reports per function: invocations, duration p50/p99/max (to the function's answer), peak RSS, CPU seconds,
records/s (records over the sum of durations), and the sums of its metrics; per bronze table: commits, active
files, bytes; the requests the functions made of each AWS service, counted by a proxy; end to end: wall time, and
the latency from an MSK batch being handed to msk-lander to its positions being committed in bronze/locations
(p50/p99 over the day). Checks that every valid position is in bronze/locations exactly once and that every unit
has a prediction; exits non-zero when either fails. DynamoDB is dynoxide (moto's DynamoDB slows down with the
table's size: a day of 10,000 units is 960,000 predictions).
"""
import argparse
import collections
import io
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra/local"))
import stack  # noqa: E402  (the template loader and the stack's definition)

BRONZE = ["locations", "transport_units", "performance_stats", "transport_units_current", "transport_units_history",
          "performance_stats_current", "performance_stats_history", "predictions"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs, q):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * q)] if xs else None


def deployed_mappings(time_scale):
    """Batch size and batching window (ms, scaled) of each SQS mapping, and the MSK mapping's, from template.yaml."""
    t = stack.load_template(ROOT / "template.yaml")
    params = t.get("Parameters", {})

    def value(v):
        if isinstance(v, dict) and "Ref" in v:
            return params[v["Ref"]]["Default"]
        return v

    out = {}
    for logical, binary in [("DeltaWriterFunction", "delta-writer"), ("PartitionSyncFunction", "partition-sync"),
                            ("PredictorFunction", "predictor")]:
        for ev in t["Resources"][logical]["Properties"].get("Events", {}).values():
            if ev["Type"] == "SQS":
                p = ev["Properties"]
                window_s = float(value(p.get("MaximumBatchingWindowInSeconds", 0)))
                out[binary] = (int(value(p.get("BatchSize", 10))), window_s, round(window_s * 1000 / time_scale))
    msk = next(ev["Properties"] for ev in t["Resources"]["MskLanderFunction"]["Properties"]["Events"].values()
               if ev["Type"] == "MSK")
    return out, (int(value(msk["BatchSize"])), int(value(msk["MaximumBatchingWindowInSeconds"])))


def dynamodb_table(endpoint, name):
    defn = json.loads((ROOT / "infra/local/stack.json").read_text())["tables"][0]
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": defn["hash_key"], "AttributeType": "S"},
                                           {"AttributeName": defn["range_key"], "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": defn["hash_key"], "KeyType": "HASH"},
                                {"AttributeName": defn["range_key"], "KeyType": "RANGE"}])
    return ddb


def start_dynoxide(binary):
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--log", "quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    for _ in range(300):
        try:
            ddb.list_tables()
            return proc, endpoint
        except Exception:  # noqa: BLE001  (not answering yet)
            time.sleep(0.1)
    raise SystemExit("dynoxide did not answer")


def lake_figures(s3, bucket, storage):
    """Per bronze table: commits, active files and their bytes."""
    tables = {}
    for name in BRONZE:
        uri = f"s3://{bucket}/bronze/{name}"
        try:
            dt = DeltaTable(uri, storage_options=storage)
        except Exception:  # noqa: BLE001  (a table nothing was written to)
            continue
        adds = pa.table(dt.get_add_actions(flatten=True)).to_pydict()
        tables[name] = {"commits": dt.version() + 1, "files": len(adds["path"]), "bytes": sum(adds["size_bytes"])}
    return tables


def commit_latencies(s3, bucket, msk_dir, msk_log):
    """For each MSK batch: from being handed to msk-lander to the commit of bronze/locations holding the last of its
    valid positions (ms). Commit times are the commits' own `commitInfo.timestamp`: the writer's clock when it built
    the commit, which is when it became visible as long as one delta-writer runs (the router runs one process per
    function); with writers racing, a commit that lost a race and was retried would show earlier than it was."""
    where = {}  # (partition, offset) -> commit time (ms)
    prefix = "bronze/locations/_delta_log/"
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json")]
    for key in sorted(keys):
        actions = [json.loads(line) for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()
                   if line.strip()]
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        at = info.get("timestamp")
        for a in actions:
            add = a.get("add")
            if not add or add.get("dataChange") is False or at is None:
                continue
            body = s3.get_object(Bucket=bucket, Key=f"bronze/locations/{add['path']}")["Body"].read()
            cols = pq.read_table(io.BytesIO(body), columns=["_source_partition", "_source_offset"]).to_pydict()
            for p, o in zip(cols["_source_partition"], cols["_source_offset"]):
                where[(p, o)] = min(at, where.get((p, o), at))
    handed = {b["file"]: b["handed_ms"] for b in msk_log}
    out = []
    for f in sorted(msk_dir.glob("*.json")):
        event = json.loads(f.read_text())
        times = [where.get((r["partition"], r["offset"])) for rs in event["records"].values() for r in rs
                 if r["topic"] == "fleet.locations"]
        times = [t for t in times if t is not None]  # malformed ones are in quarantine
        if times and f.name in handed:
            out.append(max(times) - handed[f.name])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True, type=Path)
    ap.add_argument("--tools-dir", required=True, type=Path)
    ap.add_argument("--dynoxide", required=True)
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--time-scale", type=float, default=96.0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fleetlake-scale-"))
    env = dict(os.environ, FLEETLAKE_STATE=str(tmp / "state"))
    mappings, (msk_batch, msk_window) = deployed_mappings(a.time_scale)

    started = time.monotonic()
    subprocess.run([sys.executable, ROOT / "infra/local/fleet.py", "--out", tmp / "fleet", "--units", str(a.units),
                    "--hours", str(a.hours), "--batch-seconds", str(msk_window), "--batch-records", str(msk_batch)],
                   check=True)
    fleet_s = time.monotonic() - started
    fleet_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    expected = json.loads((tmp / "fleet" / "expected.json").read_text())
    batches = sorted((tmp / "fleet" / "msk").glob("*.json"))
    print(f"fleet: {len(expected['positions'])} valid positions in {len(batches)} MSK batches, generated in "
          f"{fleet_s:.0f} s (peak RSS {fleet_rss / 2**20:.0f} MiB)", file=sys.stderr)

    subprocess.run([sys.executable, ROOT / "infra/local/stack.py", "up", "--moto-port", str(free_port()),
                    "--weather-port", str(free_port()), "--weather-stub", str(a.tools_dir / "weather-stub")],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    dynoxide, ddb_endpoint = start_dynoxide(a.dynoxide)
    try:
        names = dict(line.split("=", 1) for line in (tmp / "state" / "stack.env").read_text().split())
        ddb = dynamodb_table(ddb_endpoint, names["PREDICTIONS_TABLE"])
        (tmp / "scale.env").write_text((tmp / "state" / "stack.env").read_text()
                                       + f"\nAWS_ENDPOINT_URL_DYNAMODB={ddb_endpoint}\n")
        kw = dict(endpoint_url=names["AWS_ENDPOINT_URL"], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
        s3 = boto3.client("s3", **kw)
        cmd = [a.tools_dir / "fleetlake-router", "--stack-env", tmp / "scale.env", "--binaries", a.bin_dir,
               "--msk-dir", tmp / "fleet" / "msk", "--time-scale", str(a.time_scale), "--count-requests", "true",
               "--idle-seconds", "20", "--timeout-seconds", "14400"]
        for binary, (size, _, window_ms) in mappings.items():
            cmd += ["--mapping", f"{binary}={size}:{window_ms}"]
        print("router:", " ".join(map(str, cmd[1:])), file=sys.stderr)
        t0 = time.monotonic()
        # The deployed log level (template.yaml: ApplicationLogLevel INFO): the logs' bytes are part of the cost.
        out = subprocess.run(cmd, cwd=ROOT, env=dict(env, FUNCTION_LOG_LEVEL="info"), stdout=subprocess.PIPE,
                             check=False)
        wall = time.monotonic() - t0
        report = json.loads(out.stdout)
        if out.returncode != 0:
            raise SystemExit(f"the router did not finish: {report}")

        # What a user would notice: every valid position once, every unit predicted.
        storage = {"AWS_ENDPOINT_URL": names["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true",
                   "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        rows = DeltaTable(f"s3://{names['LAKE_BUCKET']}/bronze/locations", storage_options=storage).to_pyarrow_table(
            columns=["transport_unit_id", "ts"]).to_pydict()
        got = collections.Counter(zip(rows["transport_unit_id"], (t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in rows["ts"])))
        want = collections.Counter(map(tuple, expected["positions"]))
        duplicates = sum(n - 1 for n in got.values() if n > 1)
        missing = sum((want - got).values())
        extra = sum((got - want).values())
        predicted = set()
        for page in ddb.get_paginator("scan").paginate(TableName=names["PREDICTIONS_TABLE"],
                                                       ProjectionExpression="transport_unit_id"):
            predicted |= {i["transport_unit_id"]["S"] for i in page["Items"]}
        units = {u for u, _ in expected["positions"]}
        unpredicted = len(units - predicted)

        latencies = commit_latencies(s3, names["LAKE_BUCKET"], tmp / "fleet" / "msk", report["msk_batches"])
        functions = {}
        records_of = {"msk-lander": "records_in", "weather-enricher": "records_enriched",
                      "delta-writer": "records_in", "partition-sync": "commits", "predictor": "positions_read"}
        for name, f in report["functions"].items():
            d = f["durations"]
            n = f["metrics"].get(records_of.get(name, ""), 0)
            functions[name] = {
                "invocations": f["invocations"], "failed": f["failed_invocations"],
                "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"], "max_ms": d["max_ms"], "sum_s": d["sum_ms"] / 1000,
                "peak_rss_mib": round((f.get("peak_rss_bytes") or 0) / 2**20, 1), "cpu_s": f.get("cpu_seconds"),
                "records": n, "records_per_s": round(n / (d["sum_ms"] / 1000)) if d["sum_ms"] else None,
                "log_bytes": f.get("log_bytes"), "messages": f.get("messages_deleted", 0),
                "metrics": f["metrics"]}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        # What was measured is the code: changes to the docs alone do not count.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        result = {
            "measured": f"measured on {time.strftime('%Y-%m-%d')} at commit {commit.stdout.strip()}"
                        + (" with uncommitted changes" if dirty else ""),
            "units": a.units, "hours": a.hours, "time_scale": a.time_scale,
            "positions_valid": len(expected["positions"]), "msk_batches": len(batches),
            "mappings": {k: {"batch_size": v[0], "window_s": v[1], "window_ms_scaled": v[2]} for k, v in mappings.items()},
            "msk_mapping": {"batch_size": msk_batch, "window_s": msk_window},
            "wall_s": round(wall, 1), "fleet_generation_s": round(fleet_s, 1),
            "fleet_generation_peak_rss_mib": round(fleet_rss / 2**20),
            "checks": {"duplicates": duplicates, "missing": missing, "unexpected": extra,
                       "units": len(units), "units_without_prediction": unpredicted},
            "msk_to_bronze_ms": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                                 "max": max(latencies) if latencies else None, "batches": len(latencies)},
            "functions": functions, "tables": lake_figures(s3, names["LAKE_BUCKET"], storage),
            "requests": report.get("requests"), "dead_letter_queues": report.get("dead_letter_queues"),
        }
        text = json.dumps(result, indent=1)
        print(text)
        if a.out:
            a.out.write_text(text + "\n")
        print(f"\n{a.units} units, {a.hours} h ({len(expected['positions'])} positions) in {wall:.0f} s at "
              f"{a.time_scale:g}x; MSK batch -> bronze p50 {result['msk_to_bronze_ms']['p50']} ms, "
              f"p99 {result['msk_to_bronze_ms']['p99']} ms; duplicates {duplicates}, missing {missing}, "
              f"units without a prediction {unpredicted}", file=sys.stderr)
        for name, f in sorted(functions.items()):
            print(f"  {name:17} {f['invocations']:6} invocations  p50 {f['p50_ms']} ms  p99 {f['p99_ms']} ms  "
                  f"peak RSS {f['peak_rss_mib']} MiB  {f['records_per_s']} records/s", file=sys.stderr)
        if duplicates or missing or extra or unpredicted:
            raise SystemExit("the pipeline lost, duplicated or invented data (see checks)")
    finally:
        dynoxide.kill()
        subprocess.run([sys.executable, ROOT / "infra/local/stack.py", "down"], env=env, check=False,
                       stdout=subprocess.DEVNULL)
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
