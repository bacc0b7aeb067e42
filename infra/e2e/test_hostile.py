"""A hostile corpus through the whole pipeline: MSK batches that mix good records with every class of bad input the
functions guard against, a file dropped by hand that claims the Kafka identities of real records, an object
overwritten so that its two notifications arrive for one content, and a notification whose ETag is no ETag. In one
router run, without a redrive: every good record lands in bronze exactly once, every hostile one is in quarantine
once with its reason, no message fails, and the dead-letter queues stay empty.

Needs the debug function binaries and the router (FLEETLAKE_BIN_DIR, default target/debug); `make test-e2e` builds
them. The stack (moto + weather stub) runs on free ports with its own state folder.
"""
import base64
import datetime as dt
import gzip
import json
import subprocess
import sys
import unittest
from collections import Counter
from pathlib import Path

from deltalake import DeltaTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import BIN, PY, ROOT, stack_client, stack_up  # noqa: E402

FIRST = 1_000_000  # offsets of the hostile batch: after the fleet's (Kafka offsets need not be contiguous)


def record(topic, partition, offset, ts_ms, value):
    return {"topic": topic, "partition": partition, "offset": offset, "timestamp": ts_ms, "timestampType": "CREATE_TIME",
            "key": base64.b64encode(b"k").decode(), "value": base64.b64encode(value).decode(), "headers": []}


class HostileCorpus(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, cls.env, _, cls.names = stack_up("fleetlake-e2e-hostile-", enforce_iam=True)
        cls.day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%d")
        subprocess.run([PY, ROOT / "infra/local/fleet.py", "--out", cls.tmp / "fleet", "--units", "6", "--hours", "6",
                        "--day", cls.day, "--malformed-rate", "0"], check=True, stdout=subprocess.DEVNULL)
        cls.expected = json.loads((cls.tmp / "fleet" / "expected.json").read_text())
        cls.units = sorted(cls.expected["units"])
        cls.positions = Counter(tuple(p) for p in cls.expected["positions"])
        cls.hostile = []  # (topic, partition, offset, reason substring)
        cls.write_hostile_batch()
        cls.drop_files()
        out = subprocess.run([BIN / "fleetlake-router", "--stack-env", cls.tmp / "state" / "stack.env", "--binaries", BIN,
                              "--idle-seconds", "3", "--timeout-seconds", "300", "--msk-dir", cls.tmp / "fleet" / "msk"],
                             cwd=ROOT, env=cls.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise AssertionError(f"router failed ({out.returncode}):\n{out.stderr[-4000:]}")
        cls.report = json.loads(out.stdout)
        cls.quarantine = cls.read_quarantine()

    @classmethod
    def tearDownClass(cls):
        subprocess.run([PY, ROOT / "infra/local/stack.py", "down"], env=cls.env, check=False)

    @classmethod
    def client(cls, name):
        return stack_client(cls.names, name)

    @classmethod
    def table(cls, name, columns):
        options = {"AWS_ENDPOINT_URL": cls.names["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
                   "AWS_ACCESS_KEY_ID": cls.names["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": cls.names["AWS_SECRET_ACCESS_KEY"]}
        return DeltaTable(f"s3://{cls.names['LAKE_BUCKET']}/bronze/{name}",
                          storage_options=options).to_pyarrow_table(columns=columns).to_pylist()

    @classmethod
    def position(cls, unit, hhmm, **more):
        return {"transport_unit_id": unit, "ts": f"{cls.day}T{hhmm}:00Z", "lat": 48.1, "lon": 11.5,
                "transport_type": cls.expected["units"][unit], "speed_kmh": 42.0, **more}

    @classmethod
    def write_hostile_batch(cls):
        """One more MSK batch: good records between every class of bad one, positions and daily figures."""
        noon = int(dt.datetime.strptime(cls.day, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc).timestamp() * 1000) + 5 * 3600_000
        unit = cls.units[0]
        good = lambda hhmm, **more: json.dumps(cls.position(unit, hhmm, **more)).encode()  # noqa: E731
        positions = [
            (good("00:01"), None),
            # Lineage and ingestion claimed inside the value: msk-lander writes its own over them.
            (good("00:02", _source={"topic": "fleet.locations", "partition": 0, "offset": 0}, _ingested_at="2001-01-01T00:00:00Z"), None),
            (good("00:04", **{f"extra_{i}": i for i in range(100)}), None),
            (b"\xff\xfe\x00 not utf-8", "value is not JSON"),
            (b"[1, 2, 3]", "not an object"),
            (good("00:05", lat=1e400), "value is not JSON"),
            (json.dumps({**cls.position(unit, "00:06"), **{f"f{i}": i for i in range(600)}}).encode(), "more than 500"),
            (good("00:07", transport_unit_id="U" * 5000), "field `transport_unit_id`"),
            (good("00:08", speed_kmh=1e300), "field `speed_kmh`"),
            (good("00:09", altitude_m=-1e9), "field `altitude_m`"),
            (json.dumps(dict(cls.position(unit, "00:10"), ts="2090-01-01T00:00:00Z")).encode(), "after the record was ingested"),
            (json.dumps(dict(cls.position(unit, "00:11"), ts="1990-01-01T00:00:00Z")).encode(), "more than 365 days before the record was produced"),
            (json.dumps(dict(cls.position(unit, "00:12"), ts="+10000-01-01T00:00:00Z")).encode(), "field `ts`"),
            (good("00:13", pad="x" * 1_100_000), "more than the 1048576 a line may hold"),
            (good("00:14"), None),
        ]
        batch = {}
        for i, (value, why) in enumerate(positions):
            offset = FIRST + i
            batch.setdefault("fleet.locations-0", []).append(record("fleet.locations", 0, offset, noon, value))
            if why is None:
                cls.positions[(unit, json.loads(value)["ts"])] += 1
            else:
                cls.hostile.append(("fleet.locations", 0, offset, why))

        stats_topic = "pg.public.performance_stats"
        row = dict(next(r for r in cls.expected["performance_stats"] if r["op"] == "c"))
        row.pop("op")

        def change(after, op="u", ts_ms=noon):
            return json.dumps({"before": None, "after": after, "op": op, "ts_ms": ts_ms,
                               "source": {"ts_ms": ts_ms - 5, "lsn": 90_000_000 + len(batch.get(f"{stats_topic}-0", []))}}).encode()
        fixed = dict(row, fuel_used_l=round(row["fuel_used_l"] + 1.5, 1))
        changes = [
            (change(fixed), None),
            (change(dict(row, stat_date=2_147_483_647)), "field `stat_date`"),
            (change(dict(row, fuel_used_l=1e30)), "field `fuel_used_l`"),
            (change(row, op="x"), "op"),
            (change(row, ts_ms=noon + 3 * 365 * 86_400_000), "after the record was ingested"),
            (b"{\"op\": \"u\"", "value is not JSON"),
        ]
        for value, why in changes:
            offset = FIRST + len(batch.get(f"{stats_topic}-0", []))
            batch.setdefault(f"{stats_topic}-0", []).append(record(stats_topic, 0, offset, noon, value))
            if why is not None:
                cls.hostile.append((stats_topic, 0, offset, why))
        cls.expected["performance_stats"].append({"op": "u", **fixed})

        event = {"eventSource": "aws:kafka", "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/fleet/x",
                 "bootstrapServers": "b-1.fleet-msk.local:9098", "records": batch}
        (cls.tmp / "fleet" / "msk" / "batch-99999.json").write_text(json.dumps(event))

    @classmethod
    def drop_files(cls):
        """Objects put straight into landing/: S3 notifies the enricher of each, as it would of the lander's."""
        s3, sqs = cls.client("s3"), cls.client("sqs")
        bucket = cls.names["LAKE_BUCKET"]
        unit = cls.units[1]
        # A file dropped by hand whose lines claim the Kafka identities of real records, and one bad line.
        cls.dropped = f"landing/locations/dt={cls.day}/dropped-by-hand.ndjson.gz"
        claims = [dict(cls.position(unit, f"00:2{i}"), _source={"topic": "fleet.locations", "partition": p, "offset": 0})
                  for i, p in enumerate(range(3))]
        lines = [json.dumps(c) for c in claims] + [json.dumps(cls.position(unit, "00:29", lat=-95.0))]
        s3.put_object(Bucket=bucket, Key=cls.dropped, Body=gzip.compress("\n".join(lines).encode()))
        for c in claims:
            cls.positions[(unit, c["ts"])] += 1
        # An object overwritten at once: both notifications are delivered, and only the content of the second may land.
        cls.replaced = f"landing/locations/dt={cls.day}/replaced.ndjson.gz"
        first = [json.dumps(cls.position(unit, "00:31"))]
        second = first + [json.dumps(cls.position(unit, "00:32"))]
        s3.put_object(Bucket=bucket, Key=cls.replaced, Body=gzip.compress("\n".join(first).encode()))
        s3.put_object(Bucket=bucket, Key=cls.replaced, Body=gzip.compress("\n".join(second).encode()))
        for line in second:
            cls.positions[(unit, json.loads(line)["ts"])] += 1
        # A notification whose ETag is not one (it must not reach a request header): quarantined by reference.
        queue = sqs.get_queue_url(QueueName=cls.names["LOCAL_QUEUE_WeatherEnricherFunction"])["QueueUrl"]
        bad = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "awsRegion": "us-east-1",
                            "s3": {"bucket": {"name": bucket},
                                   "object": {"key": cls.dropped.replace("=", "%3D"), "eTag": "é€ not an etag"}}}]}
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(bad))

    @classmethod
    def read_quarantine(cls):
        s3 = cls.client("s3")
        lines = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cls.names["LAKE_BUCKET"], Prefix="quarantine/"):
            for o in page.get("Contents", []):
                body = s3.get_object(Bucket=cls.names["LAKE_BUCKET"], Key=o["Key"])["Body"].read()
                lines += [json.loads(line) for line in body.splitlines()]
        return lines

    def test_every_good_position_lands_exactly_once(self):
        rows = self.table("locations", ["transport_unit_id", "ts"])
        got = Counter((r["transport_unit_id"], r["ts"].strftime("%Y-%m-%dT%H:%M:%SZ")) for r in rows)
        self.assertEqual(got, self.positions)

    def test_a_dropped_file_keeps_its_own_lineage_and_takes_no_kafka_identity(self):
        rows = self.table("locations", ["ts", "_source_topic", "_source_partition", "_source_offset", "_source_key"])
        dropped = [r for r in rows if r["_source_key"] == self.dropped]
        self.assertEqual(len(dropped), 3, rows)
        self.assertTrue(all(r["_source_topic"] is None and r["_source_offset"] is None for r in dropped), dropped)
        # The real records whose identities the file claimed are in the table too.
        kafka = {(r["_source_partition"], r["_source_offset"]) for r in rows if r["_source_topic"] == "fleet.locations"}
        self.assertTrue({(0, 0), (1, 0), (2, 0)} <= kafka, sorted(kafka)[:10])

    def test_every_hostile_record_is_quarantined_once_with_its_reason(self):
        by_source = Counter()
        reasons = {}
        for q in self.quarantine:
            src = q["source"]
            if "topic" in src:
                by_source[(src["topic"], src["partition"], src["offset"])] += 1
                reasons[(src["topic"], src["partition"], src["offset"])] = q["reason"]
        for topic, partition, offset, why in self.hostile:
            self.assertEqual(by_source[(topic, partition, offset)], 1, (topic, offset, why))
            self.assertIn(why, reasons[(topic, partition, offset)], (topic, offset))
        self.assertEqual(sum(by_source.values()), len(self.hostile), "no good record was quarantined")

    def test_bad_lines_of_files_and_bad_notifications_are_quarantined_with_their_reason(self):
        by_file = [q for q in self.quarantine if q["source"].get("key") == self.dropped]
        lines = [q for q in by_file if "line" in q["source"]]
        self.assertEqual([(q["source"]["line"], q["stage"]) for q in lines], [(4, "weather-enricher")], by_file)
        self.assertIn("field `lat`", lines[0]["reason"])
        refused = [q for q in by_file if "line" not in q["source"]]
        self.assertEqual(len(refused), 1, by_file)
        self.assertIn("which is not an ETag", refused[0]["reason"])
        self.assertIsNone(refused[0]["raw"])
        others = [q for q in self.quarantine if "topic" not in q["source"] and q["source"].get("key") != self.dropped]
        self.assertEqual(others, [], "nothing else was quarantined")

    def test_the_daily_figures_hold_the_good_changes_only(self):
        rows = self.table("performance_stats", ["op", "transport_unit_id", "stat_date", "fuel_used_l"])
        got = Counter((r["op"], r["transport_unit_id"], r["stat_date"].isoformat(), r["fuel_used_l"]) for r in rows)
        want = Counter((r["op"], r["transport_unit_id"], r["stat_date"], r["fuel_used_l"])
                       for r in self.expected["performance_stats"])
        self.assertEqual(got, want)

    def test_no_message_failed_and_no_dead_letter_holds_anything(self):
        self.assertTrue(self.report["idle"], self.report)
        self.assertEqual(sum(self.report["dead_letter_queues"].values()), 0, self.report)
        for name, f in self.report["functions"].items():
            self.assertEqual((f["failed_invocations"], f.get("item_failures", 0)), (0, 0), (name, self.report))
        items = self.client("dynamodb").scan(TableName=self.names["PREDICTIONS_TABLE"])["Items"]
        self.assertEqual({i["transport_unit_id"]["S"] for i in items}, set(self.units))


if __name__ == "__main__":
    unittest.main()
