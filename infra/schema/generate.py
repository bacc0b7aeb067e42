"""The Glue columns of the bronze tables, written from one input.

`infra/schema/bronze.json` is generated from the table specs in `shared/core/src/bronze.rs` (`make schema`; a Rust
test fails when it is stale). This script writes the columns and partition keys from it into every place that
declares them:
- `infra/local/stack.json` (the local stack's Glue tables),
- `template.yaml` (the `AWS::Glue::Table` resources),
- `infra/athena/bronze_tables.sql` (the DDL for creating the tables by hand).

`--check` writes nothing and exits 1, naming the files, when any of them differs from what it would write.
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "infra/schema/bronze.json"
STACK = ROOT / "infra/local/stack.json"
TEMPLATE = ROOT / "template.yaml"
DDL = ROOT / "infra/athena/bronze_tables.sql"
DDL_WIDTH = 116


def stack_json(text, schema):
    stack = json.loads(text)
    by_name = {t["bronze_table"]: t for t in schema["tables"]}
    for glue in stack["glue_tables"]:
        t = by_name[glue["bronze_table"]]
        glue["columns"] = t["columns"]
        glue["partition_keys"] = t["partition_keys"]
    return json.dumps(stack, indent=2) + "\n"


def template_yaml(text, stack, schema):
    """Replaces the Columns and PartitionKeys lists of each Glue table resource, leaving the rest as written."""
    by_name = {t["bronze_table"]: t for t in schema["tables"]}
    for glue in stack["glue_tables"]:
        t = by_name[glue["bronze_table"]]
        start = text.find(f"\n  {glue['logical_id']}:\n")
        if start < 0:
            raise SystemExit(f"template.yaml has no resource {glue['logical_id']}")
        end = re.compile(r"\n  [A-Za-z]").search(text, start + 1)
        end = end.start() if end else len(text)
        block = text[start:end]
        columns = "".join(f"            - {{Name: {n}, Type: {k}}}\n" for n, k in t["columns"])
        block, found = re.subn(r"(\n          Columns:\n)(?:            - \{[^\n]*\}\n)+",
                               lambda m: m.group(1) + columns, block + "\n", count=1)
        if not found:
            raise SystemExit(f"template.yaml: {glue['logical_id']} has no Columns list")
        block = block[:-1]
        keys = "".join(f"          - {{Name: {n}, Type: {k}}}\n" for n, k in t["partition_keys"])
        if t["partition_keys"]:
            block, found = re.subn(r"(\n        PartitionKeys:\n)(?:          - \{[^\n]*\}\n)+",
                                   lambda m: m.group(1) + keys, block, count=1)
            if not found:
                raise SystemExit(f"template.yaml: {glue['logical_id']} has no PartitionKeys list")
        elif re.search(r"\n        PartitionKeys:\n", block):
            raise SystemExit(f"template.yaml: {glue['logical_id']} has PartitionKeys, the table has none")
        text = text[:start] + block + text[end:]
    return text


def ddl_columns(columns):
    """`name type` pairs, names starting with `_` quoted as Athena needs, wrapped like the rest of the file:
    the record's own columns, then `_extra` and the lineage columns on lines of their own."""
    def item(n, k):
        return f"`{n}` {k}" if n.startswith("_") else f"{n} {k}"

    lines, line = [], ""
    for i, (n, k) in enumerate(columns):
        text = item(n, k) + ("," if i + 1 < len(columns) else "")
        starts_lineage = n == "_extra"
        if line and (starts_lineage or len("  " + line + " " + text) > DDL_WIDTH):
            lines.append("  " + line)
            line = ""
        line = f"{line} {text}" if line else text
    lines.append("  " + line)
    return "\n".join(lines)


def bronze_tables_sql(text, stack, schema):
    by_name = {t["bronze_table"]: t for t in schema["tables"]}
    for glue in stack["glue_tables"]:
        t = by_name[glue["bronze_table"]]
        head = f"CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake.{glue['name']} (\n"
        start = text.find(head)
        if start < 0:
            raise SystemExit(f"bronze_tables.sql has no CREATE EXTERNAL TABLE for {glue['name']}")
        body_start = start + len(head)
        body_end = text.index("\n)", body_start)
        text = text[:body_start] + ddl_columns(t["columns"]) + text[body_end:]
        after = body_end + 2
        partitioned = re.compile(r"\nPARTITIONED BY \([^)]*\)").match(text, after)
        if t["partition_keys"]:
            clause = "\nPARTITIONED BY (" + ", ".join(f"{n} {k}" for n, k in t["partition_keys"]) + ")"
            if partitioned:
                text = text[:after] + clause + text[partitioned.end():]
            else:
                text = text[:after] + clause + text[after:]
        elif partitioned:
            text = text[:after] + text[partitioned.end():]
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; fail if any file is out of date")
    args = parser.parse_args()
    schema = json.loads(SCHEMA.read_text())
    stack_text = stack_json(STACK.read_text(), schema)
    stack = json.loads(stack_text)
    outputs = {
        STACK: stack_text,
        TEMPLATE: template_yaml(TEMPLATE.read_text(), stack, schema),
        DDL: bronze_tables_sql(DDL.read_text(), stack, schema),
    }
    stale = [path for path, text in outputs.items() if path.read_text() != text]
    if args.check:
        if stale:
            names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
            print(f"out of date with infra/schema/bronze.json: {names} (run `make schema`)", file=sys.stderr)
            return 1
        print("Glue columns in stack.json, template.yaml and bronze_tables.sql match infra/schema/bronze.json")
        return 0
    for path in stale:
        path.write_text(outputs[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
