"""The SQL we ship (infra/athena/views, infra/athena/queries), run on a real SQL engine on this machine.

Athena and Redshift Spectrum read the symlink tables: Glue partitions, each partition's manifest, the Parquet files
the manifest lists. This module reads the same way from the local stack: it lists the Glue tables' partitions,
reads their manifests from S3 and copies the files they list into a folder, then serves them to DuckDB as tables
with the Glue table's columns and types (plus its partition column, as Hive tables do). The views and queries
are written in Athena's dialect (Trino); sqlglot translates them for DuckDB and refuses any construct it cannot
translate faithfully. There are no hand-edited copies for the local engine.

    .venv/bin/python infra/local/lake_sql.py --stack-env .local/stack.env speed_by_type_day 2026-11-29 2026-11-30
    .venv/bin/python infra/local/lake_sql.py --stack-env .local/stack.env --list

DuckDB's session time zone is UTC, so casting a timestamp to a date gives its UTC day, as Athena does.
"""

import argparse
import concurrent.futures
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import sqlglot
from sqlglot import ErrorLevel

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ROOT / "infra/athena/views"
QUERIES = ROOT / "infra/athena/queries"

# Glue (Hive) column types and DuckDB's.
DUCK_TYPES = {"string": "VARCHAR", "double": "DOUBLE", "int": "INTEGER", "bigint": "BIGINT",
              "timestamp": "TIMESTAMP", "date": "DATE", "boolean": "BOOLEAN"}


@dataclass
class Sql:
    """One shipped SQL file: its name (the file's stem), its text in Athena's dialect, its parameter names."""
    name: str
    path: Path
    text: str
    parameters: list

    def trino(self):
        """The statement parsed in sqlglot's Trino dialect; any syntax error raises."""
        return sqlglot.parse_one(self.text, read="trino", error_level=ErrorLevel.RAISE)

    def duckdb(self):
        """The statement in DuckDB's dialect; a construct sqlglot cannot carry over raises."""
        return self.trino().sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE)


def read_sql(path):
    text = Path(path).read_text()
    match = re.search(r"^-- parameters: (.*)$", text, re.M)
    names = []
    if match:
        # "first_day, last_day (a note)" -> ["first_day", "last_day"]
        names = [n.strip().split(" ")[0] for n in re.sub(r"\(.*?\)", "", match.group(1)).split(",") if n.strip()]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--")).strip()
    if body.count("?") != len(names):
        raise ValueError(f"{path}: {body.count('?')} placeholders, {len(names)} parameters named")
    if ";" in body:
        raise ValueError(f"{path}: one statement per file, without a semicolon")
    return Sql(Path(path).stem, Path(path), body, names)


def views():
    """The views in the order they can be created (a view may read an earlier one: names sort so)."""
    return [read_sql(p) for p in sorted(VIEWS.glob("*.sql"))]


def queries():
    return {p.stem: read_sql(p) for p in sorted(QUERIES.glob("*.sql"))}


class LocalLake:
    """The symlink tables of a Glue database, copied from S3 into `folder` the way Athena would read them."""

    def __init__(self, s3, glue, database, folder):
        self.s3, self.glue, self.database, self.folder = s3, glue, database, Path(folder)
        self.tables = {}  # name -> (columns [(name, glue type)], partition keys, [(partition values, local file)])

    def fetch(self):
        jobs = []
        paginator = self.glue.get_paginator("get_tables")
        for page in paginator.paginate(DatabaseName=self.database):
            for t in page["TableList"]:
                sd = t.get("StorageDescriptor", {})
                if t.get("TableType") != "EXTERNAL_TABLE" or "Symlink" not in sd.get("InputFormat", ""):
                    continue
                # A copy from an earlier run may hold files the manifests no longer list.
                shutil.rmtree(self.folder / t["Name"], ignore_errors=True)
                columns = [(c["Name"], c["Type"]) for c in sd["Columns"]]
                keys = [(k["Name"], k["Type"]) for k in t.get("PartitionKeys", [])]
                files = []
                if keys:
                    parts = []
                    for p in self.glue.get_paginator("get_partitions").paginate(DatabaseName=self.database,
                                                                                 TableName=t["Name"]):
                        parts += p["Partitions"]
                    locations = [(tuple(p["Values"]), p["StorageDescriptor"]["Location"]) for p in parts]
                else:
                    locations = [((), sd["Location"])]
                for values, location in locations:
                    for n, uri in enumerate(self._manifest(location)):
                        local = self.folder / t["Name"] / "-".join(values or ("all",)) / f"{n:06d}.parquet"
                        files.append((values, local))
                        jobs.append((uri, local))
                self.tables[t["Name"]] = (columns, keys, files)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda job: self._download(*job), jobs))
        return self

    def _manifest(self, location):
        bucket, key = split_s3(location.rstrip("/") + "/manifest")
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except self.s3.exceptions.NoSuchKey:
            return []
        return body.split()

    def _download(self, uri, local):
        bucket, key = split_s3(uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        self.s3.download_file(bucket, key, str(local))

    def connect(self):
        """A DuckDB connection holding the tables (as the Glue columns and partition keys declare them) and the
        shipped views, created from their translated SQL."""
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        for name, (columns, keys, files) in self.tables.items():
            selects = []
            for values, local in files:
                cols = [f'CAST("{c}" AS {DUCK_TYPES[k]}) AS "{c}"' for c, k in columns]
                cols += [f"CAST('{v}' AS {DUCK_TYPES[k]}) AS \"{c}\"" for (c, k), v in zip(keys, values)]
                selects.append(f"SELECT {', '.join(cols)} FROM read_parquet('{local}')")
            if not selects:
                cols = [f'CAST(NULL AS {DUCK_TYPES[k]}) AS "{c}"' for c, k in columns + keys]
                selects.append(f"SELECT {', '.join(cols)} WHERE false")
            con.execute(f'CREATE TABLE "{name}" AS ' + " UNION ALL ".join(selects))
        for view in views():
            con.execute(f'CREATE VIEW "{view.name}" AS {view.duckdb()}')
        return con


def run(con, query, *values):
    """Rows of a shipped query as dicts, with its parameters in the order its header names them."""
    if len(values) != len(query.parameters):
        raise ValueError(f"{query.name} takes {', '.join(query.parameters)}")
    cur = con.execute(query.duckdb(), list(values))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def split_s3(uri):
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def stack_clients(stack_env):
    import boto3
    env = dict(line.split("=", 1) for line in Path(stack_env).read_text().split())
    kw = dict(endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env.get("AWS_REGION", "us-east-1"),
              aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    return env, boto3.client("s3", **kw), boto3.client("glue", **kw)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack-env", default=str(ROOT / ".local/stack.env"))
    parser.add_argument("--folder", default=str(ROOT / ".local/lake-sql"), help="where the Parquet files are copied")
    parser.add_argument("--list", action="store_true", help="list the queries and their parameters")
    parser.add_argument("query", nargs="?")
    parser.add_argument("values", nargs="*")
    args = parser.parse_args()
    shipped = queries()
    if args.list or not args.query:
        for q in shipped.values():
            print(f"{q.name} {' '.join(q.parameters)}")
        return 0
    if args.query not in shipped:
        parser.error(f"no query {args.query} in {QUERIES.relative_to(ROOT)}")
    env, s3, glue = stack_clients(args.stack_env)
    lake = LocalLake(s3, glue, env["GLUE_DATABASE"], args.folder).fetch()
    for row in run(lake.connect(), shipped[args.query], *args.values):
        print(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
