#!/usr/bin/env python3
"""The local stack's PostgreSQL, for pg-poller: a throwaway cluster with TLS, the fleet's writes applied hour by
hour, and a poll after each hour.

    pg_source.py replay --fleet DIR (--binaries DIR | --invoke-url URL) [--stack-env .local/stack.env]

`stack.py up --postgres` calls `start` here: a cluster in a temporary folder on a free port (initdb as the
`postgres` user when run as root, since PostgreSQL refuses root), TLS on with a CA made by openssl for it, the
performance_stats table with its `updated_at` column, a login role `poller` that may read it, its credentials as
an RDS-format secret in the stack's Secrets Manager and the CA bundle in the stack's bucket. pg-poller then
connects as in AWS: secret, TLS checked against the bundle, its own IAM identity with `--enforce-iam`.

`replay` applies DIR/postgres.json (written by `fleet.py --stats-from postgres`) one hour of the fleet's day at a
time, each hour in one transaction with `updated_at` set by the database to the time of the write (`now()`), as the
application or a trigger would (pg-poller's cursor follows the database's clock: a write dated in the past would be
behind it), and invokes pg-poller once after each hour through infra/router (`--invoke`), with the schedule's
event. What the polls landed is then routed like anything else landed (delta-writer's queue).
"""
import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATABASE = "fleet"
ADMIN = "fleet_admin"
POLLER = "poller"
# The table as an application keeps it: the writer (or a trigger) sets updated_at on every change.
SCHEMA = """
CREATE TABLE performance_stats (
    transport_unit_id text NOT NULL,
    stat_date date NOT NULL,
    distance_km double precision,
    fuel_used_l double precision,
    engine_hours double precision,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transport_unit_id, stat_date));
CREATE INDEX performance_stats_updated_at ON performance_stats (updated_at);
"""
POLL_TABLES = "public.performance_stats=performance_stats"
CA_KEY = "config/pg-poller/ca.pem"


def bindir():
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit("pg_config not found: PostgreSQL's server is needed (`make postgres` installs it)")
    return Path(out.stdout.strip())


def as_owner():
    """Run as `postgres` when root (PostgreSQL refuses to run as root), else as this user."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{out.stderr[-2000:]}")
    return out.stdout


def make_certificates(folder):
    """A CA and a server certificate signed by it (EC P-256, two days) for the names the function uses: 127.0.0.1
    and localhost on this machine, host.docker.internal from a container (`sam local invoke`)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
         "-subj", "/CN=fleetlake local stack CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"], cwd=folder)
    (folder / "server.ext").write_text(
        "subjectAltName=DNS:localhost,DNS:host.docker.internal,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run(["openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"], cwd=folder)
    run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "2", "-out", "server.crt", "-extfile", "server.ext"], cwd=folder)


def psql(settings, sql, database=DATABASE, transaction=True):
    """Runs SQL as the administrator with psql over TCP (the stack's own connection: no TLS needed on loopback);
    stops at the first error, all of it in one transaction unless `transaction` is false."""
    env = dict(os.environ, PGPASSWORD=settings["admin_password"], PGSSLMODE="disable")
    once = ["--single-transaction"] if transaction else []
    return run([str(bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *once, "-h", "127.0.0.1", "-p",
                str(settings["port"]), "-U", ADMIN, "-d", database, "-f", "-"], input=sql, env=env)


def start(state, port, start_server, host="127.0.0.1"):
    """Starts the cluster listening on `host` (through `start_server(cmd, log, port, **popen)`, which records its
    pid for `stack.py down`) and creates the database, the table and the poller's role: the settings to keep in
    the stack's state. Beyond loopback (0.0.0.0, for containers) only the poller's TLS connections with its password
    are let in."""
    folder = Path(tempfile.mkdtemp(prefix="fleetlake-local-pg-"))
    make_certificates(folder)
    admin_password, poller_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    (folder / "pw").write_text(admin_password)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        for f in folder.iterdir():
            shutil.chown(f, "postgres", "postgres")
    (folder / "server.key").chmod(0o600)
    run([str(bindir() / "initdb"), "-D", str(folder / "data"), "-U", ADMIN, "--auth-local=trust",
         "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", f"--pwfile={folder / 'pw'}"], **as_owner())
    with open(folder / "data" / "postgresql.conf", "a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '{host}'\nunix_socket_directories = '{folder}'\n"
                   f"ssl = on\nssl_cert_file = '{folder}/server.crt'\nssl_key_file = '{folder}/server.key'\n"
                   "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 40\n")
    if host != "127.0.0.1":
        with open(folder / "data" / "pg_hba.conf", "a") as hba:
            hba.write(f"hostssl {DATABASE} {POLLER} 0.0.0.0/0 scram-sha-256\n")
    (state / "postgres.folder").write_text(str(folder))
    start_server([str(bindir() / "postgres"), "-D", str(folder / "data")], "postgres.log", port, **as_owner())
    settings = {"port": port, "folder": str(folder), "admin_password": admin_password,
                "poller_password": poller_password, "ca_file": str(folder / "ca.crt")}
    deadline = time.time() + 60
    while True:
        env = dict(os.environ, PGPASSWORD=admin_password, PGSSLMODE="disable")
        probe = subprocess.run([str(bindir() / "psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", ADMIN, "-d",
                                "postgres", "-c", "SELECT 1"], capture_output=True, text=True, env=env)
        if probe.returncode == 0:
            break
        if time.time() > deadline:
            raise SystemExit(f"PostgreSQL did not start on port {port}: {probe.stderr[-500:]} (see .local/postgres.log)")
        time.sleep(0.2)
    psql(settings, f"CREATE DATABASE {DATABASE};", database="postgres", transaction=False)
    psql(settings, SCHEMA + f"""
CREATE ROLE {POLLER} LOGIN PASSWORD '{poller_password}';
GRANT pg_read_all_stats TO {POLLER};
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {POLLER};
""")
    return settings


def remove(state):
    """Deletes the cluster's folder once its server has stopped (`stack.py down`)."""
    marker = state / "postgres.folder"
    if marker.exists():
        shutil.rmtree(marker.read_text().strip(), ignore_errors=True)
        marker.unlink()
    (state / "postgres.json").unlink(missing_ok=True)


def register(settings, c, bucket, name):
    """The poller's secret (RDS format) and CA bundle in the stack: the settings pg-poller reads, and the template
    parameters its policy is resolved with (infra/policy/identities.py)."""
    secret = {"username": POLLER, "password": settings["poller_password"], "engine": "postgres",
              "host": "127.0.0.1", "port": settings["port"], "dbname": DATABASE}
    arn = c["secretsmanager"].create_secret(Name=name, SecretString=json.dumps(secret))["ARN"]
    c["s3"].put_object(Bucket=bucket, Key=CA_KEY, Body=Path(settings["ca_file"]).read_bytes())
    bundle = f"s3://{bucket}/{CA_KEY}"
    return {"PG_SECRET_ARN": arn, "PG_CA_BUNDLE": bundle, "POLL_TABLES": POLL_TABLES,
            "PARAMETER_PgPollerSecretArn": arn, "PARAMETER_PgPollerCaBundle": bundle,
            "PARAMETER_PgPollerTables": POLL_TABLES}


def literal(v):
    if v is None:
        return "NULL"
    if isinstance(v, (int, float)):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"


def statement(change):
    """The write of one change: insert, update or delete, `updated_at` set to the time of the write."""
    key, row, at = change["key"], change["row"], "now()"
    where = " AND ".join(f"{k} = {literal(v)}" for k, v in sorted(key.items()))
    if change["op"] == "d":
        return f"DELETE FROM performance_stats WHERE {where};"
    if change["op"] in ("c", "r"):
        cols = list(row)
        return (f"INSERT INTO performance_stats ({', '.join(cols)}, updated_at) "
                f"VALUES ({', '.join(literal(row[c]) for c in cols)}, {at});")
    sets = ", ".join(f"{c} = {literal(v)}" for c, v in row.items() if c not in key)
    return f"UPDATE performance_stats SET {sets}, updated_at = {at} WHERE {where};"


def visible(changes):
    """How many versions one poll after these writes can see: the last write of each key (a version that lives and
    dies between two polls is never seen)."""
    return len({json.dumps(c["key"], sort_keys=True) for c in changes})


def hours_of(plan):
    """The changes grouped by the hour of the fleet's day they fall in: [(hour, [change, ...])] for every hour
    from the first to the last (empty hours too: an hourly schedule polls them)."""
    day = dt.datetime.fromisoformat(plan["day"]).replace(tzinfo=dt.timezone.utc)
    by_hour = {}
    for ch in plan["changes"]:
        at = dt.datetime.fromisoformat(ch["at"])
        by_hour.setdefault(int((at - day).total_seconds() // 3600), []).append(ch)
    if not by_hour:
        return []
    return [(h, by_hour.get(h, [])) for h in range(min(by_hour), max(by_hour) + 1)]


def poll(args):
    """pg-poller, once, through the router: its answer (the per-table reports)."""
    invoke = ["--binaries", args.binaries] if args.binaries else ["--invoke-url", args.invoke_url]
    out = subprocess.run([str(Path(args.router)), "--stack-env", args.stack_env, *invoke, "--invoke", "pg-poller",
                          "--event", str(ROOT / "events" / "pg-poller" / "schedule.json")],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"router --invoke pg-poller failed ({out.returncode}):\n{out.stderr[-3000:]}")
    answer = json.loads(out.stdout)
    if "error" in answer:
        raise SystemExit(f"pg-poller failed: {answer['error']}")
    return answer["answer"]


def replay(args):
    state = Path(args.stack_env).resolve().parent
    settings = json.loads((state / "postgres.json").read_text())
    plan = json.loads((Path(args.fleet) / "postgres.json").read_text())
    polls, landed, objects, empty, versions = 0, 0, 0, 0, 0
    for hour, changes in hours_of(plan):
        versions += visible(changes)
        if changes:
            psql(settings, "\n".join(statement(c) for c in changes))
        reports = poll(args)["tables"]
        polls += 1
        n = sum(r["changes_landed"] + r["deletes_landed"] for r in reports)
        landed += n
        objects += sum(len(r["objects"]) for r in reports)
        empty += not n
        if args.verbose:
            print(f"    hour {hour:>2}: {len(changes):>5} writes, poll landed {n}")
    summary = {"polls": polls, "writes": len(plan["changes"]), "versions_visible": versions,
               "changes_landed": landed, "objects": objects, "polls_landing_nothing": empty}
    print(json.dumps(summary))
    if landed != versions:
        raise SystemExit(f"the polls landed {landed} changes, but {versions} versions were visible to them")
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("replay", help="apply the fleet's writes hour by hour, polling after each hour")
    r.add_argument("--fleet", required=True, help="fleet.py's --out folder (postgres.json)")
    r.add_argument("--stack-env", default=str(ROOT / ".local" / "stack.env"))
    r.add_argument("--router", default=str(ROOT / "target" / "debug" / "fleetlake-router"))
    how = r.add_mutually_exclusive_group(required=True)
    how.add_argument("--binaries", help="the debug binaries: the router serves them the runtime API")
    how.add_argument("--invoke-url", help="a runtime emulator's Invoke API (cargo lambda watch)")
    r.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.command == "replay":
        replay(args)


if __name__ == "__main__":
    sys.exit(main())
