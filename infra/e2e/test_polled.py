"""The pipeline with the performance statistics polled from PostgreSQL instead of streamed by Debezium, as
`make demo DEMO_STATS=postgres` runs it: a real PostgreSQL 15 (a throwaway cluster with TLS, `stack.py up
--postgres`) receives the fleet's writes hour by hour, pg-poller polls it after each hour through the Lambda
runtime protocol, and the positions go through MSK as usual. moto enforces IAM: every function, pg-poller
included, runs under an identity holding exactly its template policy (its secret, its CA bundle, its state and
its own landing objects).

Needs the debug binaries and the router (FLEETLAKE_BIN_DIR), and PostgreSQL's server programs (`make postgres`).
"""
import datetime as dt
import json
import subprocess
import unittest
from collections import Counter

from test_pipeline import BIN, PY, ROOT, OnStack, stack_up


class PolledStats(OnStack, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, cls.env, cls.stack_env, cls.names = stack_up("fleetlake-polled-", enforce_iam=True, postgres=True)
        day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%d")
        subprocess.run([PY, ROOT / "infra/local/fleet.py", "--out", cls.tmp / "fleet", "--units", "8", "--hours", "6",
                        "--day", day, "--stats-from", "postgres"], check=True, stdout=subprocess.DEVNULL)
        cls.expected = json.loads((cls.tmp / "fleet" / "expected.json").read_text())
        cls.plan = json.loads((cls.tmp / "fleet" / "postgres.json").read_text())
        started = dt.datetime.now(dt.timezone.utc)
        cls.polls = cls.replay()
        cls.replay_span = (started, dt.datetime.now(dt.timezone.utc))
        cls.first = cls.route("--msk-dir", cls.tmp / "fleet" / "msk", "--record", cls.tmp / "events.jsonl")
        cls.landed = cls.objects("landing/performance_stats/")
        cls.version = cls.table("performance_stats").version()
        # An hour later nothing changed: two more polls, then every event delivered once more.
        cls.quiet = [cls.poll(), cls.poll()]
        cls.second = cls.route("--replay", cls.tmp / "events.jsonl")

    @classmethod
    def replay(cls):
        out = subprocess.run([PY, ROOT / "infra/local/pg_source.py", "replay", "--fleet", cls.tmp / "fleet",
                              "--stack-env", cls.stack_env, "--router", BIN / "fleetlake-router", "--binaries", BIN],
                             cwd=ROOT, env=cls.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise AssertionError(f"pg_source.py replay failed ({out.returncode}):\n{out.stdout}\n{out.stderr[-4000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    @classmethod
    def poll(cls):
        out = subprocess.run([BIN / "fleetlake-router", "--stack-env", cls.stack_env, "--binaries", BIN, "--invoke",
                              "pg-poller", "--event", ROOT / "events/pg-poller/schedule.json"],
                             cwd=ROOT, env=cls.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise AssertionError(f"router --invoke pg-poller failed ({out.returncode}):\n{out.stderr[-4000:]}")
        return json.loads(out.stdout)

    @classmethod
    def objects(cls, prefix):
        s3 = cls.client("s3")
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cls.names["LAKE_BUCKET"], Prefix=prefix):
            keys += [(o["Key"], o["ETag"]) for o in page.get("Contents", [])]
        return sorted(keys)

    def test_every_write_polled_lands_in_bronze_once_as_debezium_would_have_sent_it(self):
        self.assertEqual(self.expected["stats_from"], "postgres")
        self.assertEqual(self.polls["changes_landed"], self.polls["versions_visible"], self.polls)
        self.assertGreater(self.polls["polls_landing_nothing"], 0, "the empty hours were polled and landed nothing")
        rows = self.table("performance_stats").to_pyarrow_table(
            columns=["op", "transport_unit_id", "stat_date", "fuel_used_l", "ts_ms", "lsn"]).to_pylist()
        got = Counter((r["op"], r["transport_unit_id"], r["stat_date"].isoformat(), r["fuel_used_l"]) for r in rows)
        want = Counter((r["op"], r["transport_unit_id"], r["stat_date"], r["fuel_used_l"])
                       for r in self.expected["performance_stats"])
        self.assertEqual(got, want)
        self.assertTrue(any(op == "u" for op, *_ in got), "a correction came as an update")
        # ts_ms is the row's updated_at, which the database set at each hour's transaction (one time per hour with
        # writes, all during the replay); a polled change has no LSN.
        times = {r["ts_ms"].replace(tzinfo=dt.timezone.utc) for r in rows}
        hours = {dt.datetime.fromisoformat(c["at"]).replace(minute=0, second=0, microsecond=0) for c in self.plan["changes"]}
        self.assertEqual(len(times), len(hours))
        start, end = self.replay_span
        self.assertTrue(all(start <= t <= end for t in times), (self.replay_span, sorted(times)))
        self.assertTrue(all(r["lsn"] is None for r in rows))

    def test_the_rest_of_the_pipeline_is_unchanged(self):
        rows = self.table("locations").to_pyarrow_table(columns=["transport_unit_id", "ts"]).to_pylist()
        self.assertEqual(Counter((r["transport_unit_id"], r["ts"].strftime("%Y-%m-%dT%H:%M:%SZ")) for r in rows),
                         Counter(tuple(p) for p in self.expected["positions"]))
        units = self.table("transport_units").to_pyarrow_table(columns=["op", "transport_unit_id"]).to_pylist()
        self.assertEqual(Counter((r["op"], r["transport_unit_id"]) for r in units),
                         Counter((r["op"], r["transport_unit_id"]) for r in self.expected["transport_units"]))
        for name, f in self.first["functions"].items():
            self.assertEqual(f["failed_invocations"], 0, name)
        self.assertEqual(sum(self.first["dead_letter_queues"].values()), 0, self.first["dead_letter_queues"])

    def test_a_quiet_poll_writes_nothing_and_redelivery_adds_nothing(self):
        for answer in self.quiet:
            self.assertNotIn("error", answer)
            for report in answer["answer"]["tables"]:
                self.assertEqual((report["changes_landed"], report["objects"]), (0, []), report)
        self.assertEqual(self.objects("landing/performance_stats/"), self.landed)
        self.assertEqual(self.table("performance_stats").version(), self.version)

    def test_the_poller_identity_holds_exactly_its_grants(self):
        """pg-poller read its secret and CA bundle and wrote its state and objects under enforcement (above);
        here, what its policy does not grant is refused."""
        import boto3
        key, secret = self.names["FUNCTION_CREDENTIALS_PgPollerFunction"].split(":", 1)
        s3 = boto3.client("s3", endpoint_url=self.names["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=key, aws_secret_access_key=secret)
        bucket = self.names["LAKE_BUCKET"]
        landed = self.landed[0][0]
        for call in (lambda: s3.get_object(Bucket=bucket, Key=landed),
                     lambda: s3.put_object(Bucket=bucket, Key="landing/performance_stats/dt=2026-11-30/x.ndjson.gz", Body=b""),
                     lambda: s3.put_object(Bucket=bucket, Key="bronze/performance_stats/x.parquet", Body=b"")):
            with self.assertRaises(s3.exceptions.ClientError) as e:
                call()
            self.assertIn(e.exception.response["Error"]["Code"], ("AccessDenied", "403"))
        self.assertTrue(self.objects("state/pg-poller/"), "its states were written")


if __name__ == "__main__":
    unittest.main()
