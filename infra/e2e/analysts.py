"""The analysts' SQL (infra/athena) on a real SQL engine, checked against an independent computation.

The views and queries run on DuckDB over the Parquet files that partition-sync's manifests list, read the way
Athena reads the symlink tables (infra/local/lake_sql.py). The same figures are computed again from the Delta tables
themselves with the Python `deltalake` package and pyarrow/pandas, without any of the shipped SQL, and must agree.
Days are UTC days.
"""
import datetime as dt
import json
import math
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra/local"))
import lake_sql  # noqa: E402

EARTH_KM = 6371.0088


def change_order(change):
    """A change's position in its source: (ts_ms, lsn), then its Kafka position; a missing lsn sorts first."""
    lsn = change["lsn"]
    return (change["ts_ms"], lsn is not None, lsn if lsn is not None else 0,
            change["_source_partition"], change["_source_offset"])


def replay(changes, key):
    """Current state and SCD2 history of a change log, by replaying its changes one by one in source order."""
    current, history, open_version, seen = {}, [], {}, set()
    for c in sorted(changes, key=change_order):
        k = key(c)
        if (k, c["ts_ms"], c["lsn"]) in seen:
            continue  # the same change delivered again
        seen.add((k, c["ts_ms"], c["lsn"]))
        if k in open_version:
            open_version.pop(k)["valid_to"] = c["ts_ms"]
        if c["op"] == "d":
            current.pop(k, None)
        else:
            current[k] = c
            version = dict(c, valid_from=c["ts_ms"], valid_to=None)
            history.append(version)
            open_version[k] = version
    for v in history:
        v["is_current"] = v["valid_to"] is None
    return current, history


def p90_bounds(values):
    """The exact values at ranks 0.88n and 0.92n: an approximate p90 must lie between them."""
    s = sorted(values)
    n = len(s)
    return s[max(0, math.floor(0.88 * n) - 1)], s[min(n - 1, math.ceil(0.92 * n) - 1)]


def haversine_km(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(math.sqrt(min(1.0, a)))


def local_engine(test):
    """DuckDB over the stack's symlink tables, as lake_sql builds it for `make demo` too."""
    folder = tempfile.mkdtemp(prefix="fleetlake-lake-sql-", dir=test.tmp)
    lake = lake_sql.LocalLake(test.client("s3"), test.client("glue"), test.names["GLUE_DATABASE"], folder).fetch()
    return lake.connect()


class AnalystQueries:
    """Mixed into the end-to-end pipeline test: it needs `tmp`, `client(name)`, `table(name)`, `names`."""

    @classmethod
    def analysts(cls):
        if not hasattr(cls, "_analysts"):
            con = local_engine(cls)
            locations = cls.table("locations").to_pyarrow_table().to_pylist()
            stats = cls.table("performance_stats").to_pyarrow_table().to_pylist()
            units = cls.table("transport_units").to_pyarrow_table().to_pylist()
            days = sorted({r["ts"].astimezone(dt.timezone.utc).date() for r in locations})
            cls._analysts = (con, locations, stats, units, days)
        return cls._analysts

    def query(self, name, *values):
        con = self.analysts()[0]
        return lake_sql.run(con, lake_sql.queries()[name], *values)

    def span(self):
        days = self.analysts()[4]
        return (days[0] - dt.timedelta(days=1)).isoformat(), days[-1].isoformat()

    def test_every_shipped_sql_file_parses_as_trino_and_translates_for_duckdb(self):
        files = lake_sql.views() + list(lake_sql.queries().values())
        self.assertGreaterEqual(len(files), 10)
        for sql in files:
            with self.subTest(sql.path.name):
                sql.trino()
                sql.duckdb()

    def test_positions_per_unit_day_counts_every_position(self):
        _, locations, *_ = self.analysts()
        want = defaultdict(int)
        for r in locations:
            want[(r["ts"].astimezone(dt.timezone.utc).date(), r["transport_type"], r["transport_unit_id"])] += 1
        got = {(r["day"], r["transport_type"], r["transport_unit_id"]): r["positions"]
               for r in self.query("positions_per_unit_day", *self.span())}
        self.assertEqual(got, dict(want))

    def test_speed_per_type_and_day_has_the_exact_mean_and_a_p90_between_ranks_088_and_092(self):
        _, locations, *_ = self.analysts()
        speeds = defaultdict(list)
        for r in locations:
            if r["speed_kmh"] is not None:
                speeds[(r["ts"].astimezone(dt.timezone.utc).date(), r["transport_type"])].append(r["speed_kmh"])
        got = self.query("speed_by_type_day", *self.span())
        self.assertEqual({(r["day"], r["transport_type"]) for r in got}, set(speeds))
        for r in got:
            values = speeds[(r["day"], r["transport_type"])]
            self.assertEqual(r["positions"], len(values))
            self.assertAlmostEqual(r["mean_speed_kmh"], sum(values) / len(values), places=9)
            low, high = p90_bounds(values)
            self.assertTrue(low <= r["p90_speed_kmh"] <= high, (r, low, high))

    def test_weather_per_type_and_day_matches(self):
        _, locations, *_ = self.analysts()
        groups = defaultdict(list)
        for r in locations:
            groups[(r["ts"].astimezone(dt.timezone.utc).date(), r["transport_type"])].append(r)
        got = self.query("weather_by_type_day", *self.span())
        self.assertEqual({(r["day"], r["transport_type"]) for r in got}, set(groups))
        for r in got:
            rows = groups[(r["day"], r["transport_type"])]
            ok = [x for x in rows if x["weather_status"] == "ok"]
            self.assertEqual((r["positions"], r["with_weather"]), (len(rows), len(ok)))
            self.assertTrue(ok, "the stub answered for these positions")
            wet = sum(1 for x in ok if (x["precipitation_mm"] or 0) > 0)
            self.assertAlmostEqual(r["precipitation_share"], wet / len(ok), places=12)
            winds = [x["wind_speed_kmh"] for x in ok if x["wind_speed_kmh"] is not None]
            self.assertAlmostEqual(r["mean_wind_kmh"], sum(winds) / len(winds), places=9)

    def test_distance_per_unit_and_day_beside_the_reported_figure(self):
        _, locations, stats, _, _ = self.analysts()
        tracks = defaultdict(list)
        for r in locations:
            tracks[(r["ts"].astimezone(dt.timezone.utc).date(), r["transport_unit_id"])].append(r)
        current, _ = replay(stats, lambda c: (c["transport_unit_id"], c["stat_date"]))
        got = self.query("distance_by_unit_day", *self.span(), *self.span())
        self.assertEqual({(r["day"], r["transport_unit_id"]) for r in got}, set(tracks))
        reported = 0
        for r in got:
            track = sorted(tracks[(r["day"], r["transport_unit_id"])], key=lambda x: x["ts"])
            km = sum(haversine_km(a["lat"], a["lon"], b["lat"], b["lon"]) for a, b in zip(track, track[1:]))
            self.assertEqual(r["positions"], len(track))
            self.assertAlmostEqual(r["tracked_km"], km, delta=1e-6 * max(1.0, km))
            figure = current.get((r["transport_unit_id"], r["day"]))
            self.assertEqual(r["reported_km"], figure and figure["distance_km"])
            reported += figure is not None
        self.assertGreater(reported, 0, "some days were reported")

    def test_fuel_per_type_and_day_from_the_current_figures(self):
        _, _, stats, units, _ = self.analysts()
        figures, _ = replay(stats, lambda c: (c["transport_unit_id"], c["stat_date"]))
        described, _ = replay(units, lambda c: c["transport_unit_id"])
        first, last = (dt.date.fromisoformat(d) for d in self.span())
        groups = defaultdict(list)
        for (unit, day), f in figures.items():
            usable = (f["distance_km"] or 0) > 0 and f["fuel_used_l"] is not None
            if unit in described and first <= day <= last and usable:
                groups[(described[unit]["transport_type"], day)].append(100 * f["fuel_used_l"] / f["distance_km"])
        got = self.query("fuel_by_type_day", *self.span())
        self.assertEqual({(r["transport_type"], r["day"]) for r in got}, set(groups))
        for r in got:
            values = groups[(r["transport_type"], r["day"])]
            self.assertEqual(r["units"], len(values))
            self.assertAlmostEqual(r["mean_l_per_100km"], sum(values) / len(values), places=9)
            low, high = p90_bounds(values)
            self.assertTrue(low <= r["p90_l_per_100km"] <= high, (r, low, high))

    def test_latest_position_of_every_unit_with_its_current_name(self):
        _, locations, _, units, _ = self.analysts()
        described, _ = replay(units, lambda c: c["transport_unit_id"])
        latest = {}
        for r in locations:
            order = (r["ts"], r["_source_partition"], r["_source_offset"])
            if r["transport_unit_id"] not in latest or order > latest[r["transport_unit_id"]][0]:
                latest[r["transport_unit_id"]] = (order, r)
        got = self.query("latest_position", self.span()[0])
        self.assertEqual([r["transport_unit_id"] for r in got], sorted(latest))
        for r in got:
            want = latest[r["transport_unit_id"]][1]
            self.assertEqual((r["ts"], r["lat"], r["lon"]), (want["ts"].replace(tzinfo=None), want["lat"], want["lon"]))
            unit = described.get(r["transport_unit_id"])
            self.assertEqual(r["name"], unit and unit["name"])
        self.assertTrue(any(r["name"].endswith("(renamed)") for r in got), "renames are current")

    def served(self):
        """Every prediction in DynamoDB, as (unit, predicted_at as a naive UTC datetime) -> item."""
        items = self.client("dynamodb").scan(TableName=self.names["PREDICTIONS_TABLE"])["Items"]
        at = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00")).replace(tzinfo=None)  # noqa: E731
        return {(i["transport_unit_id"]["S"], at(i["predicted_at"]["S"])): i for i in items}

    def recorded(self):
        rows = self.table("predictions").to_pyarrow_table().to_pylist()
        for r in rows:
            r["predicted_at"] = r["predicted_at"].replace(tzinfo=None)
        return rows

    def test_every_prediction_served_is_in_bronze_predictions(self):
        """The record holds what DynamoDB was given: each item as its latest record row, nothing it was not given.
        Here every prediction was written once (commits only, then a replay that writes nothing): one row each."""
        served, rows = self.served(), self.recorded()
        self.assertEqual(Counter((r["transport_unit_id"], r["predicted_at"]) for r in rows), Counter(served.keys()))
        for r in rows:
            item = served[(r["transport_unit_id"], r["predicted_at"])]
            self.assertEqual((r["value"], r["model_version"], r["source_version"]),
                             (float(item["value"]["N"]), item["model_version"]["S"], int(item["source_version"]["N"])))
            self.assertEqual({k: float(v["N"]) for k, v in item["features"]["M"].items()}, json.loads(r["features"]))
            self.assertEqual(r["predicted_date"], r["predicted_at"].date())

    def test_prediction_error_pairs_the_prediction_nearest_each_days_start_with_its_reported_fuel(self):
        _, _, stats, _, _ = self.analysts()
        figures, _ = replay(stats, lambda c: (c["transport_unit_id"], c["stat_date"]))
        first, last = (dt.date.fromisoformat(d) for d in self.span())
        # The first prediction served for each position (the lowest table version it was made from).
        firsts = {}
        for r in self.recorded():
            k = (r["transport_unit_id"], r["predicted_at"])
            order = (r["source_version"], r["model_version"], r["_file"], r["_line"])
            if k not in firsts or order < firsts[k][0]:
                firsts[k] = (order, r)
        want = {}
        for (unit, at), (_, r) in firsts.items():
            for (u, day), f in figures.items():
                start = dt.datetime.combine(day, dt.time())
                if u != unit or not first <= day <= last or abs(at - start) > dt.timedelta(hours=3):
                    continue
                if f["fuel_used_l"] is None:
                    continue
                rank = (abs(at - start), at)
                if (unit, day) not in want or rank < want[(unit, day)][0]:
                    want[(unit, day)] = (rank, at, r["value"], f["fuel_used_l"])
        got = self.query("prediction_error", *self.span(), *self.span())
        self.assertGreater(len(want), 0, "some days have a prediction near their start and a reported fuel")
        self.assertEqual({(r["transport_unit_id"], r["day"]) for r in got}, set(want))
        for r in got:
            _, at, value, actual = want[(r["transport_unit_id"], r["day"])]
            self.assertEqual((r["predicted_at"], r["predicted_l"], r["actual_l"]), (at, value, actual))
            self.assertAlmostEqual(r["error_l"], value - actual, places=9)
            if actual:
                self.assertAlmostEqual(r["abs_pct_error"], abs(value - actual) / actual, places=12)

    def test_current_state_and_history_views_equal_a_replay_of_the_change_logs(self):
        _, _, stats, units, _ = self.analysts()
        con = self.analysts()[0]
        for view, changes, key, columns in (
                ("transport_units", units, ("transport_unit_id",), ("transport_type", "name", "capacity_t")),
                ("performance_stats", stats, ("transport_unit_id", "stat_date"),
                 ("distance_km", "fuel_used_l", "engine_hours"))):
            with self.subTest(view):
                assert_views_replay(self, con, view, changes, key, columns)


def assert_views_replay(test, con, view, changes, key, columns):
    """`<view>_current` and `<view>_history` (DuckDB over the manifests) equal a replay of the change log's rows."""
    current, history = replay(changes, lambda c: tuple(c[k] for k in key))
    naive = lambda t: t.replace(tzinfo=None) if t is not None else None  # noqa: E731

    def rows(sql):
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    got = {tuple(r[k] for k in key): r for r in rows(f"SELECT * FROM {view}_current")}
    test.assertEqual(set(got), set(current))
    for k, c in current.items():
        test.assertEqual({n: got[k][n] for n in columns}, {n: c[n] for n in columns}, k)
        test.assertEqual(got[k]["updated_at"], naive(c["ts_ms"]), k)
    got = Counter((tuple(r[k] for k in key), r["valid_from"], r["valid_to"], r["is_current"],
                   tuple(r[n] for n in columns)) for r in rows(f"SELECT * FROM {view}_history"))
    want = Counter((tuple(v[k] for k in key), naive(v["valid_from"]), naive(v["valid_to"]), v["is_current"],
                    tuple(v[n] for n in columns)) for v in history)
    test.assertEqual(got, want)


class DashboardChecks:
    """Mixed into the end-to-end pipeline test: the dashboard `make demo` writes, rendered by headless Chromium."""

    def test_the_dashboard_draws_one_mark_per_row_of_each_query_in_chromium(self):
        import dashboard

        out = Path(self.tmp) / "dashboard.html"
        _, rows = dashboard.build(self.stack_env, out)
        page = out.read_text()
        self.assertNotRegex(page, r"(src|href)\s*=\s*[\"']?(https?:)?//", "the page loads nothing from the network")
        drawn, keys = render_marks(out)
        self.assertEqual(set(drawn), {c["id"] for c in dashboard.CHARTS})
        for chart in dashboard.CHARTS:
            with self.subTest(chart["id"]):
                want = len(rows[chart["query"]])
                self.assertGreater(want, 0, f"{chart['query']} returned rows")
                self.assertEqual(drawn[chart["id"]], want)
        # What was drawn, against the lake read without the shipped SQL: a bar per unit seen that day, a dot per
        # position of the day, a bar per unit with a prediction in DynamoDB.
        _, locations, *_ = self.analysts()
        day = max(r["ts"].astimezone(dt.timezone.utc).date() for r in locations)
        of_day = [r for r in locations if r["ts"].astimezone(dt.timezone.utc).date() == day]
        self.assertEqual(sorted(keys["positions"]), sorted({r["transport_unit_id"] for r in of_day}))
        self.assertEqual(drawn["map"], len(of_day))
        units = {i["transport_unit_id"]["S"] for i in self.client("dynamodb").scan(
            TableName=self.names["PREDICTIONS_TABLE"])["Items"]}
        self.assertEqual(sorted(keys["predictions"]), sorted(units))


def chromium():
    import shutil
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise AssertionError("no chromium: `make browser` installs Debian's package")
    return found


def render_marks(page):
    """Opens the page in headless Chromium, lets its scripts run, and counts the elements of class `mark` inside
    each figure of the DOM Chromium ends with: (count per figure, the marks' `data-x` per figure)."""
    import subprocess
    from html.parser import HTMLParser

    with tempfile.TemporaryDirectory(prefix="fleetlake-chromium-") as profile:
        out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
                              Path(page).resolve().as_uri()], capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or 'data-drawn="true"' not in out.stdout:
        raise AssertionError(f"chromium did not draw the page ({out.returncode}): {out.stderr[-2000:]}")

    class Marks(HTMLParser):
        def __init__(self):
            super().__init__()
            self.figure, self.counts, self.keys = None, {}, {}

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "figure":
                self.figure = attrs.get("id")
                self.counts[self.figure] = 0
                self.keys[self.figure] = []
            elif self.figure and "mark" in (attrs.get("class") or "").split():
                self.counts[self.figure] += 1
                self.keys[self.figure].append(attrs.get("data-x"))

        def handle_endtag(self, tag):
            if tag == "figure":
                self.figure = None

    parser = Marks()
    parser.feed(out.stdout)
    return parser.counts, parser.keys
