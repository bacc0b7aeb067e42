"""The operator's redrive (infra/ops/redrive.py) on the local stack, with IAM enforced: a dead-letter queue's
messages go back to their queue and are processed once, and quarantined records are re-submitted to the stage that
refused them once the cause is fixed. Each command run twice lands nothing twice; --dry-run changes nothing."""
import base64
import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import unittest
from pathlib import Path

import boto3
from deltalake import DeltaTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import BIN, PY, ROOT, stack_up  # noqa: E402

REDRIVE = ROOT / "infra/ops/redrive.py"


class Redrive(unittest.TestCase):
    def setUp(self):
        self.tmp, self.env, self.stack_env, self.names = stack_up("fleetlake-e2e-redrive-", enforce_iam=True)
        self.addCleanup(subprocess.run, [PY, ROOT / "infra/local/stack.py", "down"], env=self.env, check=False)
        self.bucket = self.names["LAKE_BUCKET"]
        self.creds = dict(endpoint_url=self.names["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=self.names["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=self.names["AWS_SECRET_ACCESS_KEY"])
        self.s3 = boto3.client("s3", **self.creds)
        self.sqs = boto3.client("sqs", **self.creds)

    def redrive(self, *args):
        env = dict(self.env, **{k: v for k, v in self.names.items() if k.startswith(("AWS_", "LAKE_"))})
        out = subprocess.run([PY, REDRIVE, *map(str, args)], env=env, capture_output=True, text=True, cwd=ROOT)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        return out.stdout

    def route(self, *args):
        out = subprocess.run([BIN / "fleetlake-router", "--stack-env", self.stack_env, "--binaries", BIN,
                              "--idle-seconds", "2", "--timeout-seconds", "180", *map(str, args)],
                             cwd=ROOT, env=self.env, capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        return json.loads(out.stdout)

    def rows(self, table):
        options = {"AWS_ENDPOINT_URL": self.names["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true",
                   "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": self.names["AWS_ACCESS_KEY_ID"],
                   "AWS_SECRET_ACCESS_KEY": self.names["AWS_SECRET_ACCESS_KEY"]}
        try:
            return DeltaTable(f"s3://{self.bucket}/bronze/{table}", storage_options=options).to_pyarrow_table().to_pylist()
        except Exception:  # no table yet
            return []

    def depth(self, name):
        url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                          "ApproximateNumberOfMessagesNotVisible"])
        return sum(int(v) for v in attrs["Attributes"].values())

    def test_dead_letters_go_back_to_their_queue_and_land_once(self):
        line = b'{"op":"r","ts_ms":1,"lsn":1,"row":{"transport_unit_id":"TU-7","transport_type":"maritime"},' \
               b'"_source":{"topic":"pg.public.transport_units","partition":0,"offset":7,"timestamp":1}}\n'
        key = "landing/transport_units/dt=2026-11-24/pg.public.transport_units-0-7-7.ndjson.gz"
        etag = self.s3.put_object(Bucket=self.bucket, Key=key, Body=gzip.compress(line))["ETag"].strip('"')
        notification = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                                     "eventName": "ObjectCreated:Put",
                                     "s3": {"bucket": {"name": self.bucket}, "object": {"key": key, "eTag": etag}}}]}
        # A message that failed before its cause was fixed: it sits in the dead-letter queue.
        source, dlq = self.names["QUEUE_DeltaWriterQueue"], self.names["QUEUE_DeltaWriterDeadLetterQueue"]
        self.sqs.send_message(QueueUrl=self.sqs.get_queue_url(QueueName=dlq)["QueueUrl"], MessageBody=json.dumps(notification))

        # The put itself notified the queue as well (the redriven message and that one name the same object:
        # delta-writer commits it once).
        waiting = self.depth(source)
        dry = self.redrive("queue", "--queue", source, "--dry-run")
        self.assertIn('"moved": 0', dry)
        self.assertEqual((self.depth(dlq), self.depth(source)), (1, waiting), "a dry run moves nothing")
        self.assertIn('"moved": 1', self.redrive("queue", "--queue", source))
        self.assertEqual((self.depth(dlq), self.depth(source)), (0, waiting + 1))
        self.route()
        self.assertEqual([r["transport_unit_id"] for r in self.rows("transport_units")], ["TU-7"])
        self.assertIn('"moved": 0', self.redrive("queue", "--queue", source), "a second run finds nothing")
        self.route()
        self.assertEqual(len(self.rows("transport_units")), 1)

    def test_quarantined_records_are_resubmitted_once_the_cause_is_fixed(self):
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        old = now - dt.timedelta(days=800)  # a backfill: older than EVENT_TIME_MAX_AGE_DAYS (365) allows
        produced_ms = int(now.timestamp() * 1000)

        def record(offset, ts, unit):
            value = {"transport_unit_id": unit, "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "lat": 53.5, "lon": 9.9,
                     "transport_type": "maritime", "speed_kmh": 20.0}
            return {"topic": "fleet.locations", "partition": 0, "offset": offset, "timestamp": produced_ms,
                    "timestampType": "CREATE_TIME", "value": base64.b64encode(json.dumps(value).encode()).decode(),
                    "headers": []}

        msk = self.tmp / "msk"
        msk.mkdir()
        event = {"eventSource": "aws:kafka", "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/c/1",
                 "bootstrapServers": "b-1:9098",
                 "records": {"fleet.locations-0": [record(100, now - dt.timedelta(hours=1), "TU-NEW"),
                                                   record(101, old, "TU-OLD")]}}
        (msk / "batch-00001.json").write_text(json.dumps(event))
        self.route("--msk-dir", msk)
        self.assertEqual([r["transport_unit_id"] for r in self.rows("locations")], ["TU-NEW"])
        quarantined = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="quarantine/msk-lander/")["KeyCount"]
        self.assertEqual(quarantined, 1)

        # Before the fix the records would be refused again: a dry run shows what would go, and sends nothing.
        args = ["quarantine", "--stage", "msk-lander", "--router", BIN / "fleetlake-router", "--stack-env", self.stack_env]
        dry = json.loads(self.redrive(*args, "--dry-run"))
        self.assertEqual((dry["records"], dry["msk_event_records"], "answer" in dry), (1, 1, False))

        # The fix: this deployment backfills, so every function accepts event times up to 1000 days old.
        with open(self.stack_env, "a") as f:
            f.write("EVENT_TIME_MAX_AGE_DAYS=1000\n")
        first = json.loads(self.redrive(*args))
        self.assertEqual((first["answer"]["landed"], first["answer"]["quarantined"]), (1, 0), first)
        self.route()
        units = sorted(r["transport_unit_id"] for r in self.rows("locations"))
        self.assertEqual(units, ["TU-NEW", "TU-OLD"])

        second = json.loads(self.redrive(*args))
        self.assertEqual(second["answer"]["already_landed"], 1, "the lander's create-only put found the object")
        self.route()
        self.assertEqual(sorted(r["transport_unit_id"] for r in self.rows("locations")), units,
                         f"a second redrive lands nothing twice: {second}")
