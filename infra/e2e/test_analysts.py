"""The current-state and history views on change logs that exercise their rules, through the real pipeline.

Debezium change files are landed as msk-lander lands them, out of order (the later slice first, each in its own
commit), and delta-writer writes them; then the views (infra/athena/views) run on DuckDB over the manifests that
partition-sync wrote, and must hold what a replay of the changes holds, for keys with several updates, an update and
a delete, a delete and a re-insert, two changes with the same ts_ms, and a change delivered twice.

Needs the debug binaries (FLEETLAKE_BIN_DIR); `make test-e2e` builds them.
"""
import datetime as dt
import gzip
import json
import subprocess
import unittest
from collections import Counter

from analysts import assert_views_replay, local_engine
from test_pipeline import BIN, PY, ROOT, stack_client, stack_up

DAY = dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc)


def at(hours):
    return int((DAY + dt.timedelta(hours=hours)).timestamp() * 1000)


UNITS = "pg.public.transport_units"
STATS = "pg.public.performance_stats"
# (topic, op, ts_ms, lsn, row): in the order the source made them; the Kafka offsets follow this order per topic.
CHANGES = [
    (UNITS, "c", at(1), 101, {"transport_unit_id": "TU-A", "transport_type": "maritime", "name": "A1", "capacity_t": 10.0}),
    (UNITS, "c", at(1), 102, {"transport_unit_id": "TU-B", "transport_type": "aerial", "name": "B1", "capacity_t": 2.0}),
    (UNITS, "c", at(1), 103, {"transport_unit_id": "TU-C", "transport_type": "terrestrial", "name": "C1", "capacity_t": 3.0}),
    (UNITS, "c", at(1), 104, {"transport_unit_id": "TU-D", "transport_type": "terrestrial", "name": "D1", "capacity_t": 4.0}),
    (UNITS, "u", at(2), 201, {"transport_unit_id": "TU-A", "transport_type": "maritime", "name": "A2", "capacity_t": 10.0}),
    (UNITS, "u", at(2), 202, {"transport_unit_id": "TU-B", "transport_type": "aerial", "name": "B2", "capacity_t": 2.5}),
    (UNITS, "d", at(2), 203, {"transport_unit_id": "TU-C", "transport_type": "terrestrial", "name": "C1", "capacity_t": 3.0}),
    # Two changes of TU-D in one transaction: the same ts_ms, the lsn orders them.
    (UNITS, "u", at(2), 204, {"transport_unit_id": "TU-D", "transport_type": "terrestrial", "name": "D2", "capacity_t": 4.0}),
    (UNITS, "u", at(2), 205, {"transport_unit_id": "TU-D", "transport_type": "terrestrial", "name": "D3", "capacity_t": 4.0}),
    (UNITS, "u", at(3), 301, {"transport_unit_id": "TU-A", "transport_type": "maritime", "name": "A3", "capacity_t": 12.0}),
    (UNITS, "d", at(3), 302, {"transport_unit_id": "TU-B", "transport_type": "aerial", "name": "B2", "capacity_t": 2.5}),
    (UNITS, "c", at(4), 401, {"transport_unit_id": "TU-C", "transport_type": "terrestrial", "name": "C2", "capacity_t": 3.5}),
    # TU-A's last update again: a connector that restarted re-emits it at a new offset.
    (UNITS, "u", at(3), 301, {"transport_unit_id": "TU-A", "transport_type": "maritime", "name": "A3", "capacity_t": 12.0}),
    (STATS, "c", at(1), 111, {"transport_unit_id": "TU-A", "stat_date": "2026-11-23", "distance_km": 100.0, "fuel_used_l": 50.0, "engine_hours": 5.0}),
    (STATS, "c", at(1), 112, {"transport_unit_id": "TU-B", "stat_date": "2026-11-23", "distance_km": 200.0, "fuel_used_l": 90.0, "engine_hours": 6.0}),
    (STATS, "u", at(2), 211, {"transport_unit_id": "TU-A", "stat_date": "2026-11-23", "distance_km": 100.0, "fuel_used_l": 51.0, "engine_hours": 5.0}),
    (STATS, "d", at(3), 311, {"transport_unit_id": "TU-B", "stat_date": "2026-11-23", "distance_km": 200.0, "fuel_used_l": 90.0, "engine_hours": 6.0}),
    (STATS, "c", at(5), 511, {"transport_unit_id": "TU-A", "stat_date": "2026-11-24", "distance_km": 80.0, "fuel_used_l": 40.0, "engine_hours": 4.0}),
]


def landed_objects():
    """Each topic's changes as two landed slices (msk-lander's object names: topic-partition-first-last)."""
    offsets, lines = {}, {}
    for topic, op, ts_ms, lsn, row in CHANGES:
        offset = offsets.get(topic, 0)
        offsets[topic] = offset + 1
        source = {"topic": topic, "partition": 0, "offset": offset, "timestamp": ts_ms + 300}
        lines.setdefault(topic, []).append((offset, json.dumps({"op": op, "ts_ms": ts_ms, "lsn": lsn, "row": row,
                                                                 "_source": source})))
    objects = []
    for topic, rows in lines.items():
        dataset = topic.split(".")[-1]
        half = len(rows) // 2
        for part in (rows[:half], rows[half:]):
            key = f"landing/{dataset}/dt=2026-11-24/{topic}-0-{part[0][0]}-{part[-1][0]}.ndjson.gz"
            objects.append((key, gzip.compress("\n".join(line for _, line in part).encode() + b"\n")))
    return objects


def router(test, *args):
    """The router on the test's stack and the debug binaries; fails the test when it fails."""
    out = subprocess.run([BIN / "fleetlake-router", "--stack-env", test.stack_env, "--binaries", BIN, *args],
                         cwd=ROOT, env=test.env, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"router failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


class ChangeLogViews(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, cls.env, cls.stack_env, cls.names = stack_up("fleetlake-e2e-views-", weather=False, enforce_iam=True)
        cls.s3 = stack_client(cls.names, "s3")
        objects = landed_objects()
        # The later slice of each topic first, each routed to its commit before the next is landed.
        for key, body in sorted(objects, key=lambda o: -int(o[0].rsplit("-", 2)[1])):
            cls.s3.put_object(Bucket=cls.names["LAKE_BUCKET"], Key=key, Body=body)
            router(cls, "--idle-seconds", "2", "--timeout-seconds", "120")
        # The daily maintenance, under its own grants (moto enforces IAM here), after the pipeline built everything.
        cls.maintained = json.loads(router(cls, "--invoke", "lake-maintainer", "--event",
                                           ROOT / "events/lake-maintainer/schedule.json").stdout)
        # Compaction of the change logs on demand, under its own grants too (their partitions are not idle yet, so
        # the schedule left them); the router then carries its commits to partition-sync like any other.
        ask = cls.tmp / "compact.json"
        ask.write_text(json.dumps({"task": "compact", "tables": ["performance_stats", "transport_units"],
                                   "idle_minutes": 0}))
        cls.compacted = json.loads(router(cls, "--invoke", "lake-maintainer", "--event", ask).stdout)
        router(cls, "--idle-seconds", "2", "--timeout-seconds", "120")
        cls.con = local_engine(cls)

    @classmethod
    def tearDownClass(cls):
        subprocess.run([PY, ROOT / "infra/local/stack.py", "down"], env=cls.env, check=False)

    @classmethod
    def client(cls, name):
        return stack_client(cls.names, name)

    def rows(self, sql):
        cur = self.con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def test_current_units_are_the_last_change_of_each_key_without_the_deleted(self):
        got = {r["transport_unit_id"]: (r["name"], r["capacity_t"]) for r in self.rows("SELECT * FROM transport_units_current")}
        self.assertEqual(got, {"TU-A": ("A3", 12.0), "TU-C": ("C2", 3.5), "TU-D": ("D3", 4.0)})

    def test_unit_history_has_one_version_per_change_and_a_gap_after_a_delete(self):
        hours = lambda t: None if t is None else round((t.replace(tzinfo=dt.timezone.utc) - DAY).total_seconds() / 3600, 6)  # noqa: E731
        got = sorted((r["transport_unit_id"], r["name"], hours(r["valid_from"]), hours(r["valid_to"]), r["is_current"])
                     for r in self.rows("SELECT * FROM transport_units_history"))
        self.assertEqual(got, [
            ("TU-A", "A1", 1, 2, False), ("TU-A", "A2", 2, 3, False), ("TU-A", "A3", 3, None, True),
            ("TU-B", "B1", 1, 2, False), ("TU-B", "B2", 2, 3, False),
            ("TU-C", "C1", 1, 2, False), ("TU-C", "C2", 4, None, True),
            ("TU-D", "D1", 1, 2, False), ("TU-D", "D2", 2, 2, False), ("TU-D", "D3", 2, None, True),
        ])

    def test_current_daily_figures_and_their_history(self):
        got = {(r["transport_unit_id"], r["stat_date"].isoformat()): r["fuel_used_l"]
               for r in self.rows("SELECT * FROM performance_stats_current")}
        self.assertEqual(got, {("TU-A", "2026-11-23"): 51.0, ("TU-A", "2026-11-24"): 40.0})
        versions = self.rows("SELECT * FROM performance_stats_history WHERE stat_date = DATE '2026-11-23'")
        self.assertEqual(sorted((r["transport_unit_id"], r["fuel_used_l"], r["is_current"]) for r in versions),
                         [("TU-A", 50.0, False), ("TU-A", 51.0, True), ("TU-B", 90.0, False)])

    def test_the_views_equal_a_replay_of_what_bronze_holds(self):
        from deltalake import DeltaTable
        options = {"AWS_ENDPOINT_URL": self.names["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
                   "AWS_ACCESS_KEY_ID": self.names["AWS_ACCESS_KEY_ID"],
                   "AWS_SECRET_ACCESS_KEY": self.names["AWS_SECRET_ACCESS_KEY"]}
        for table, key, columns in (("transport_units", ("transport_unit_id",), ("transport_type", "name", "capacity_t")),
                                    ("performance_stats", ("transport_unit_id", "stat_date"),
                                     ("distance_km", "fuel_used_l", "engine_hours"))):
            changes = DeltaTable(f"s3://{self.names['LAKE_BUCKET']}/bronze/{table}",
                                 storage_options=options).to_pyarrow_table().to_pylist()
            with self.subTest(table):
                # The re-emitted change is in bronze once: delta-writer's identity of a change is (op, key, lsn).
                self.assertEqual(len(changes), sum(1 for c in CHANGES if c[0].endswith(table)) - (table == "transport_units"))
                assert_views_replay(self, self.con, table, changes, key, columns)

    def test_the_daily_maintenance_ran_under_its_own_grants_and_had_nothing_to_do(self):
        # Everything is younger than the vacuum's retention and partition-sync built every state partition; a
        # grant missing from its template policy would have failed the run (moto enforces IAM here).
        answer = self.maintained.get("answer")
        self.assertIsNotNone(answer, self.maintained)
        tables = answer["tables"]
        self.assertEqual(set(tables), {"performance_stats", "transport_units", "performance_stats_current",
                                       "performance_stats_history", "transport_units_current",
                                       "transport_units_history"})
        self.assertEqual(answer["tables_left"], [])
        for name, done in tables.items():
            with self.subTest(name):
                self.assertEqual(done["files_vacuumed"], 0, done)
                self.assertEqual(done.get("state_partitions_built", 0), 0, done)

    def test_compaction_left_one_file_per_partition_and_the_manifests_name_only_it(self):
        from deltalake import DeltaTable
        answer = self.compacted.get("answer")
        self.assertIsNotNone(answer, self.compacted)
        s3 = self.client("s3")
        bucket = self.names["LAKE_BUCKET"]
        for table in ("performance_stats", "transport_units"):
            with self.subTest(table):
                done = answer["tables"][table]["compaction"]
                self.assertGreater(done["files_removed"], done["files_added"], done)
                active = DeltaTable(f"s3://{bucket}/bronze/{table}", storage_options=self.storage_options()).file_uris()
                partitions = {uri.rsplit("/", 2)[-2] if "=" in uri.rsplit("/", 2)[-2] else "" for uri in active}
                self.assertEqual(len(active), len(partitions), "one file per partition")
                listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"bronze/{table}/_symlink_format_manifest/")
                named = set()
                for o in listed.get("Contents", []):
                    body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().decode()
                    named.update(line for line in body.splitlines() if line)
                self.assertEqual(named, set(active))

    def storage_options(self):
        return {"AWS_ENDPOINT_URL": self.names["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": self.names["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": self.names["AWS_SECRET_ACCESS_KEY"]}

    def test_the_state_tables_read_through_their_manifests_equal_the_views(self):
        # What Spectrum and BI tools read (the Glue symlink tables partition-sync keeps) against what Athena's views
        # compute from the change logs, after every slice arrived out of order.
        for name in ("transport_units_current", "transport_units_history",
                     "performance_stats_current", "performance_stats_history"):
            with self.subTest(name):
                view = self.rows(f"SELECT * FROM {name}")
                table = self.rows(f"SELECT * FROM bronze_{name}")
                self.assertTrue(view)
                self.assertEqual(set(table[0]), set(view[0]))
                ordered = lambda rows: sorted(rows, key=lambda r: [str(r[c]) for c in sorted(r)])  # noqa: E731
                self.assertEqual(ordered(table), ordered(view))



class PredictionRecordWithRefreshes(unittest.TestCase):
    """bronze/predictions holds each write to DynamoDB once, with scheduled refreshes in the mix: a small fleet
    through the pipeline, then the hourly refresh twice at the same table version (the second finds every item in
    place). Each item is its key's newest record row, nothing is recorded that DynamoDB was not given, no write is
    recorded twice, and the second refresh adds nothing."""

    @classmethod
    def setUpClass(cls):
        cls.tmp, cls.env, cls.stack_env, cls.names = stack_up("fleetlake-e2e-record-", enforce_iam=True)
        day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%d")
        subprocess.run([PY, ROOT / "infra/local/fleet.py", "--out", cls.tmp / "fleet", "--units", "6", "--hours", "6",
                        "--day", day], check=True, stdout=subprocess.DEVNULL)
        cls.route("--msk-dir", cls.tmp / "fleet" / "msk")
        # One unit reports once more, in a file of its own: the latest commit predicts that unit only, so the
        # refresh at that version predicts every other unit's latest position again, from a newer version.
        expected = json.loads((cls.tmp / "fleet" / "expected.json").read_text())
        unit, ts = max(expected["positions"], key=lambda p: p[1])
        later = (dt.datetime.fromisoformat(ts.replace("Z", "+00:00")) + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = {"transport_unit_id": unit, "ts": later, "lat": 50.0, "lon": 8.0, "transport_type": expected["units"][unit]}
        stack_client(cls.names, "s3").put_object(Bucket=cls.names["LAKE_BUCKET"],
                                                 Key=f"landing/locations/dt={day}/late-report.ndjson.gz",
                                                 Body=gzip.compress(json.dumps(line).encode() + b"\n"))
        cls.route()
        cls.before = cls.recorded()
        schedule = ROOT / "events/predictor/schedule.json"
        cls.refreshes = []
        for _ in range(2):
            cls.refreshes.append(json.loads(cls.router("--invoke", "predictor", "--event", schedule).stdout))
            cls.route()
            cls.refreshes[-1]["record"] = cls.recorded()

    @classmethod
    def tearDownClass(cls):
        subprocess.run([PY, ROOT / "infra/local/stack.py", "down"], env=cls.env, check=False)

    @classmethod
    def router(cls, *args):
        return router(cls, *args)

    @classmethod
    def route(cls, *args):
        cls.router("--idle-seconds", "2", "--timeout-seconds", "180", *args)

    @classmethod
    def recorded(cls):
        from deltalake import DeltaTable
        options = {"AWS_ENDPOINT_URL": cls.names["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
                   "AWS_ACCESS_KEY_ID": cls.names["AWS_ACCESS_KEY_ID"],
                   "AWS_SECRET_ACCESS_KEY": cls.names["AWS_SECRET_ACCESS_KEY"]}
        t = DeltaTable(f"s3://{cls.names['LAKE_BUCKET']}/bronze/predictions", storage_options=options)
        rows = t.to_pyarrow_table(columns=["transport_unit_id", "predicted_at", "source_version", "value",
                                           "_file"]).to_pylist()
        return {"version": t.version(), "rows": rows}

    def items(self):
        items = stack_client(self.names, "dynamodb").scan(TableName=self.names["PREDICTIONS_TABLE"])["Items"]
        at = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
        return {(i["transport_unit_id"]["S"], at(i["predicted_at"]["S"])):
                (int(i["source_version"]["N"]), float(i["value"]["N"])) for i in items}

    def test_the_refresh_wrote_and_recorded_predictions(self):
        first = self.refreshes[0]
        self.assertTrue(first["answer"]["refresh"], first)
        self.assertGreater(first["answer"]["predictions"], 0)
        self.assertGreater(len(first["record"]["rows"]), len(self.before["rows"]), "the refresh's writes were recorded")
        self.assertTrue(any("predictor-refresh-" in r["_file"] for r in first["record"]["rows"]))

    def test_each_item_is_its_keys_newest_record_row_and_nothing_else_is_recorded(self):
        items, rows = self.items(), self.refreshes[-1]["record"]["rows"]
        newest = {}
        for r in rows:
            k = (r["transport_unit_id"], r["predicted_at"])
            self.assertIn(k, items, "a recorded prediction DynamoDB never held")
            self.assertLessEqual(r["source_version"], items[k][0], "recorded from a version DynamoDB never held")
            if k not in newest or r["source_version"] > newest[k]["source_version"]:
                newest[k] = r
        self.assertEqual({k: (r["source_version"], r["value"]) for k, r in newest.items()}, items)

    def test_each_write_is_recorded_once(self):
        rows = self.refreshes[-1]["record"]["rows"]
        writes = Counter((r["transport_unit_id"], r["predicted_at"], r["source_version"]) for r in rows)
        self.assertEqual([w for w, n in writes.items() if n > 1], [])

    def test_a_second_refresh_of_the_same_version_adds_nothing(self):
        first, second = self.refreshes
        self.assertEqual(second["answer"]["source_version"], first["answer"]["source_version"])
        self.assertEqual(second["record"]["version"], first["record"]["version"])


if __name__ == "__main__":
    unittest.main()
