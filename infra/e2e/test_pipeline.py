"""The whole pipeline on one machine, at smoke size: a synthetic fleet's MSK batches go through msk-lander,
weather-enricher, delta-writer, partition-sync and the predictor, chained by infra/router exactly as the local
stack's notifications and mappings chain them, each function run through the Lambda runtime protocol. Then every
MSK batch and every event the functions received is delivered a second time, and nothing may change.

Needs the debug function binaries and the router (FLEETLAKE_BIN_DIR, default target/debug); `make test-e2e` builds
them. The stack (moto + weather stub) runs on free ports with its own state folder.
"""
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import unittest
from collections import Counter
from pathlib import Path

import boto3
from deltalake import DeltaTable

from analysts import AnalystQueries, DashboardChecks

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("FLEETLAKE_BIN_DIR") or ROOT / "target" / "debug")
PY = sys.executable


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_up(prefix, weather=True, host="127.0.0.1", enforce_iam=False, postgres=False):
    """A local stack on free ports with its own state folder: (folder, environment for stack.py, stack.env path,
    the settings in it). With `enforce_iam`, moto enforces IAM and each function runs under an identity holding
    exactly its template policy (infra/policy/identities.py); the settings' credentials are an administrator's.
    With `postgres`, a throwaway PostgreSQL for pg-poller (infra/local/pg_source.py)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    env = dict(os.environ, FLEETLAKE_STATE=str(tmp / "state"))
    cmd = [PY, ROOT / "infra/local/stack.py", "up", "--host", host, "--moto-port", str(free_port())]
    if enforce_iam:
        cmd.append("--enforce-iam")
    if postgres:
        cmd += ["--postgres", "--postgres-port", str(free_port())]
    if weather:
        cmd += ["--weather-port", str(free_port()), "--weather-stub", str(BIN / "weather-stub")]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    stack_env = tmp / "state" / "stack.env"
    return tmp, env, stack_env, dict(line.split("=", 1) for line in stack_env.read_text().split())


def stack_client(names, service):
    """A boto3 client of the local stack, with the administrator's credentials of its settings."""
    return boto3.client(service, endpoint_url=names["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=names["AWS_ACCESS_KEY_ID"], aws_secret_access_key=names["AWS_SECRET_ACCESS_KEY"])


class OnStack:
    """A test class's own local stack (`stack_up` in setUpClass sets tmp, env, stack_env, names): routing through
    it, its clients and its bronze tables, and stopping it."""

    @classmethod
    def tearDownClass(cls):
        subprocess.run([PY, ROOT / "infra/local/stack.py", "down"], env=cls.env, check=False)

    @classmethod
    def route(cls, *args):
        out = subprocess.run([BIN / "fleetlake-router", "--stack-env", cls.stack_env, "--binaries", BIN,
                              "--idle-seconds", "3", "--timeout-seconds", "300", *args],
                             cwd=ROOT, env=cls.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise AssertionError(f"router failed ({out.returncode}):\n{out.stderr[-4000:]}")
        return json.loads(out.stdout)

    @classmethod
    def client(cls, name):
        return stack_client(cls.names, name)

    @classmethod
    def table(cls, name):
        options = {"AWS_ENDPOINT_URL": cls.names["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
                   "AWS_ACCESS_KEY_ID": cls.names["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": cls.names["AWS_SECRET_ACCESS_KEY"]}
        return DeltaTable(f"s3://{cls.names['LAKE_BUCKET']}/bronze/{name}", storage_options=options)


class Pipeline(OnStack, AnalystQueries, DashboardChecks, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, cls.env, cls.stack_env, cls.names = stack_up("fleetlake-e2e-", enforce_iam=True)
        day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%d")
        subprocess.run([PY, ROOT / "infra/local/fleet.py", "--out", cls.tmp / "fleet", "--units", "24", "--day", day],
                       check=True, stdout=subprocess.DEVNULL)
        cls.expected = json.loads((cls.tmp / "fleet" / "expected.json").read_text())
        # The day's first hour settles before the rest arrives, as in real time: its commit (and predictions) are
        # its own, so the day's start has a prediction however fast the rest is routed.
        cls.first = cls.route("--msk-dir", cls.tmp / "fleet" / "msk", "--record", cls.tmp / "events.jsonl",
                              "--settle-after", "1")
        cls.before = cls.state()
        cls.second = cls.route("--msk-dir", cls.tmp / "fleet" / "msk", "--replay", cls.tmp / "events.jsonl")
        cls.after = cls.state()


    @classmethod
    def state(cls):
        """Every object with its ETag, every prediction, every table version."""
        s3 = cls.client("s3")
        objects = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cls.names["LAKE_BUCKET"]):
            objects.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        items = cls.client("dynamodb").scan(TableName=cls.names["PREDICTIONS_TABLE"])["Items"]
        versions = {t: cls.table(t).version() for t in ("locations", "performance_stats", "transport_units", "predictions")}
        return {"objects": objects, "items": sorted(json.dumps(i, sort_keys=True) for i in items), "versions": versions}

    def test_every_valid_position_is_in_bronze_exactly_once(self):
        rows = self.table("locations").to_pyarrow_table(columns=["transport_unit_id", "ts", "weather_status"]).to_pylist()
        got = Counter((r["transport_unit_id"], r["ts"].strftime("%Y-%m-%dT%H:%M:%SZ")) for r in rows)
        want = Counter(tuple(p) for p in self.expected["positions"])
        self.assertEqual(got, want)
        self.assertTrue(all(r["weather_status"] for r in rows), "every row went through weather-enricher")

    def test_the_change_logs_hold_what_postgres_sent(self):
        stats = self.table("performance_stats").to_pyarrow_table(
            columns=["op", "transport_unit_id", "stat_date", "fuel_used_l"]).to_pylist()
        got = Counter((r["op"], r["transport_unit_id"], r["stat_date"].isoformat(), r["fuel_used_l"]) for r in stats)
        want = Counter((r["op"], r["transport_unit_id"], r["stat_date"], r["fuel_used_l"])
                       for r in self.expected["performance_stats"])
        self.assertEqual(got, want)
        units = self.table("transport_units").to_pyarrow_table(columns=["op", "transport_unit_id", "name"]).to_pylist()
        self.assertEqual(Counter((r["op"], r["transport_unit_id"]) for r in units),
                         Counter((r["op"], r["transport_unit_id"]) for r in self.expected["transport_units"]))

    def test_each_malformed_message_is_quarantined_with_its_reason(self):
        s3 = self.client("s3")
        found = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.names["LAKE_BUCKET"], Prefix="quarantine/"):
            for o in page.get("Contents", []):
                body = s3.get_object(Bucket=self.names["LAKE_BUCKET"], Key=o["Key"])["Body"].read()
                for line in body.splitlines():
                    q = json.loads(line)
                    src = q["source"]
                    found[(src.get("topic"), src.get("partition"), src.get("offset"))] = q["reason"]
        self.assertTrue(self.expected["malformed"], "the generator made malformed messages")
        for m in self.expected["malformed"]:
            reason = found.get((m["topic"], m["partition"], m["offset"]))
            self.assertIsNotNone(reason, f"{m} not quarantined")
            self.assertIn(m["reason"], reason)
        self.assertEqual(len(found), len(self.expected["malformed"]), "nothing else was quarantined")

    def test_glue_partitions_and_manifests_cover_exactly_the_active_files(self):
        glue, s3 = self.client("glue"), self.client("s3")
        bucket = self.names["LAKE_BUCKET"]
        for table, column in (("locations", "event_date"), ("performance_stats", "stat_date")):
            dt_ = self.table(table)
            files = {}
            for uri in dt_.file_uris():
                value = uri.split(f"/{column}=")[1].split("/")[0]
                files.setdefault(value, set()).add(uri)
            parts = glue.get_partitions(DatabaseName=self.names["GLUE_DATABASE"], TableName=f"bronze_{table}")["Partitions"]
            self.assertEqual(sorted(p["Values"][0] for p in parts), sorted(files), table)
            for value, uris in files.items():
                key = f"bronze/{table}/_symlink_format_manifest/{column}={value}/manifest"
                manifest = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().split()
                self.assertEqual(set(manifest), uris, key)
        dates = {ts[:10] for _, ts in self.expected["positions"]}
        parts = glue.get_partitions(DatabaseName=self.names["GLUE_DATABASE"], TableName="bronze_locations")["Partitions"]
        self.assertEqual({p["Values"][0] for p in parts}, dates)

    def test_one_prediction_per_active_unit_at_its_latest_position(self):
        items = self.client("dynamodb").scan(TableName=self.names["PREDICTIONS_TABLE"])["Items"]
        latest = {}
        for i in items:
            unit, at = i["transport_unit_id"]["S"], i["predicted_at"]["S"]
            latest[unit] = max(latest.get(unit, ""), at)
        want = {}
        for unit, ts in self.expected["positions"]:
            want[unit] = max(want.get(unit, ""), ts)
        # The sort key is RFC 3339 in UTC with six fractional digits (time order is byte order).
        utc = lambda ts: dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))  # noqa: E731
        self.assertTrue(all(len(at) == len("2026-01-01T00:00:00.000000Z") for at in latest.values()), latest)
        self.assertEqual({u: utc(at) for u, at in latest.items()}, {u: utc(ts) for u, ts in want.items()})
        self.assertTrue(all(float(i["value"]["N"]) > 0 for i in items))

    def test_predictions_api_over_http_follows_its_contract(self):
        """predictions-api behind the router's Function URL emulation, over real HTTP, on the predictions the
        pipeline made: every answer matches openapi.yaml, and each unit's latest is DynamoDB's newest item."""
        import gzip
        import time
        import urllib.error
        import urllib.request
        import yaml
        from openapi_schema_validator import OAS31Validator
        from openapi_spec_validator import validate as validate_spec

        spec = yaml.safe_load((ROOT / "functions/predictions-api/openapi.yaml").read_text())
        validate_spec(spec)
        port = free_port()
        server = subprocess.Popen([BIN / "fleetlake-router", "--stack-env", self.stack_env, "--binaries", BIN,
                                   "--serve-http", str(port)], cwd=ROOT, env=self.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        def stop():
            server.kill()
            server.wait()
            server.stderr.close()
        self.addCleanup(stop)
        base = f"http://127.0.0.1:{port}/lambda-url/predictions-api"

        def get(path, headers=None):
            req = urllib.request.Request(base + path, headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
            except urllib.error.HTTPError as e:
                return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

        for _ in range(100):
            try:
                if get("/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            self.fail(f"the router did not serve: {server.stderr.read().decode()[-2000:] if server.poll() is not None else ''}")

        def check(template, path, status, headers=None):
            code, hdrs, body = get(path, headers)
            self.assertEqual(code, status, (path, body[:500]))
            if code == 304:
                return hdrs, None
            if hdrs.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            doc = json.loads(body)
            responses = spec["paths"][template]["get"]["responses"]
            response = responses.get(str(code)) or responses[f"{str(code)[0]}XX"]
            if "$ref" in response:
                response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
            media = hdrs["content-type"]
            schema = dict(response["content"][media]["schema"], components=spec["components"])
            OAS31Validator(schema).validate(doc)
            return hdrs, doc

        check("/health", "/health", 200)
        ddb = self.client("dynamodb")
        items = ddb.scan(TableName=self.names["PREDICTIONS_TABLE"])["Items"]
        units = sorted({i["transport_unit_id"]["S"] for i in items})
        self.assertTrue(units)
        for unit in units:
            newest = max(i["predicted_at"]["S"] for i in items if i["transport_unit_id"]["S"] == unit)
            hdrs, doc = check("/units/{id}/prediction", f"/units/{unit}/prediction", 200)
            self.assertEqual((doc["transport_unit_id"], doc["predicted_at"]), (unit, newest))
            etag = hdrs["etag"]
            check("/units/{id}/prediction", f"/units/{unit}/prediction", 304, {"If-None-Match": etag})
            # Every prediction of the unit, one page of 2 at a time, newest first.
            seen, path = [], f"/units/{unit}/predictions?limit=2"
            while path:
                _, page = check("/units/{id}/predictions", path, 200, {"Accept-Encoding": "gzip"})
                seen += [p["predicted_at"] for p in page["predictions"]]
                path = page["next"] and f"/units/{unit}/predictions?limit=2&next={page['next']}"
            want = sorted((i["predicted_at"]["S"] for i in items if i["transport_unit_id"]["S"] == unit), reverse=True)
            self.assertEqual(seen, want)
            _, at = check("/units/{id}/predictions", f"/units/{unit}/predictions?at={want[-1]}", 200)
            self.assertEqual(at["predicted_at"], want[-1])
        check("/units/{id}/prediction", "/units/no-such-unit/prediction", 404)
        check("/units/{id}/predictions", f"/units/{units[0]}/predictions?limit=0", 400)
        check("/units/{id}/predictions", f"/units/{units[0]}/predictions?next=forged", 400)
        check("/units/{id}/predictions", f"/units/{units[0]}/predictions?at=tomorrow", 400)

    def test_the_routing_lost_nothing_and_a_second_delivery_changes_nothing(self):
        for report in (self.first, self.second):
            self.assertTrue(report["idle"])
            self.assertEqual(len(report["dead_letter_queues"]), 3, report)
            self.assertEqual(sum(report["dead_letter_queues"].values()), 0, report)
            for name, f in report["functions"].items():
                self.assertEqual(f["failed_invocations"], 0, (name, report))
        self.assertGreater(self.second["replayed"], 0)
        self.assertEqual(self.after["versions"], self.before["versions"])
        self.assertEqual(self.after["items"], self.before["items"])
        self.assertEqual(self.after["objects"], self.before["objects"])


class FailedMessages(unittest.TestCase):
    """One failure policy (the invocation runner): an object delta-writer cannot read is quarantined by reference
    and acknowledged; a message that names no object is reported in batchItemFailures, retried with backoff and
    then moved to the dead-letter queue; the rest of the batch is committed."""

    def test_a_bad_object_is_quarantined_a_bad_message_dead_lettered_and_the_batch_goes_on(self):
        tmp, env, _, names = stack_up("fleetlake-e2e-dlq-", weather=False, enforce_iam=True)
        try:
            creds = dict(endpoint_url=names["AWS_ENDPOINT_URL"], region_name="us-east-1",
                         aws_access_key_id=names["AWS_ACCESS_KEY_ID"], aws_secret_access_key=names["AWS_SECRET_ACCESS_KEY"])
            s3 = boto3.client("s3", **creds)
            sqs = boto3.client("sqs", **creds)
            bucket = names["LAKE_BUCKET"]
            good = b'{"op":"r","ts_ms":1,"lsn":1,"row":{"transport_unit_id":"TU-1","transport_type":"maritime"},' \
                   b'"_source":{"topic":"pg.public.transport_units","partition":0,"offset":1,"timestamp":1}}\n'
            import gzip
            s3.put_object(Bucket=bucket, Key="landing/transport_units/dt=2026-11-24/pg.public.transport_units-0-1-1.ndjson.gz",
                          Body=gzip.compress(good))
            broken = s3.put_object(Bucket=bucket, Key="landing/transport_units/dt=2026-11-24/broken.ndjson.gz",
                                   Body=b"not gzip at all")
            queue = sqs.get_queue_url(QueueName=names["QUEUE_DeltaWriterQueue"])["QueueUrl"]
            sqs.send_message(QueueUrl=queue, MessageBody="this is no S3 notification")
            out = subprocess.run([BIN / "fleetlake-router", "--stack-env", tmp / "state" / "stack.env", "--binaries", BIN,
                                  "--idle-seconds", "2", "--timeout-seconds", "120"],
                                 cwd=ROOT, env=env, capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, out.stderr[-3000:])
            report = json.loads(out.stdout)
            writer = report["functions"]["delta-writer"]
            self.assertEqual(report["dead_letter_queues"]["fleetlake-delta-writer-dlq"], 1, report)
            self.assertGreaterEqual(writer["item_failures"], 5, report)  # maxReceiveCount
            self.assertEqual(writer["failed_invocations"], 0, report)
            etag = broken["ETag"].strip('"')[:16]
            reference = s3.get_object(Bucket=bucket,
                                      Key=f"quarantine/delta-writer/dt=2026-11-24/broken.{etag}.ndjson")["Body"].read()
            line = json.loads(reference)
            self.assertTrue(line["reason"].startswith("object refused: "), line)
            self.assertEqual(line["source"]["key"], "landing/transport_units/dt=2026-11-24/broken.ndjson.gz")
            self.assertIsNone(line["raw"])
            options = {"AWS_ENDPOINT_URL": names["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
                       "AWS_ACCESS_KEY_ID": names["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": names["AWS_SECRET_ACCESS_KEY"]}
            rows = DeltaTable(f"s3://{bucket}/bronze/transport_units", storage_options=options).to_pyarrow_table().num_rows
            self.assertEqual(rows, 1, "the readable object was committed")
        finally:
            subprocess.run([PY, ROOT / "infra/local/stack.py", "down"], env=env, check=False)


if __name__ == "__main__":
    unittest.main()
