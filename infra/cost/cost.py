#!/usr/bin/env python3
"""The cost model (`make cost`): what the pipeline costs per day and per million positions at 1,000, 10,000 and
100,000 units, from the figures `make bench-scale` measured, priced with infra/cost/prices.json; beside it, the same
with the Python baselines' measured time and memory for the stages they do (docs/figures/baselines.json).

usage: cost.py [--runs docs/figures/scale-*.json] [--prices infra/cost/prices.json]
               [--baselines docs/figures/baselines.json] [--chart docs/figures/cost.svg] [--doc docs/benchmarks.md]
               [--dashboard-loads-per-day 24] [--vpc-endpoint-azs 0]

Every quantity is a day of a fleet reporting every 15 minutes: each function's invocations, the sum of its
durations, the bytes it logged, the requests it made of each service (counted by a proxy), its metrics (weather API
calls, predictions written, keys read), the bronze tables' bytes. With two measured fleet sizes, a quantity at
another size lies on the straight line through the two; with one, it is proportional to the units. Lambda's
compute is billed at each function's MemorySize in template.yaml (arm64).

What is not measured and how it is counted:
- the platform's log lines (START, END, REPORT): 300 bytes an invocation;
- SQS: a message sent and deleted, a receive per invocation, and the mapping's idle long polls (5 pollers, one
  20-second poll each at a time: 21,600 a day per queue);
- SNS: one publish per bronze commit notification (the messages partition-sync received); KMS: two requests per
  publish (an upper bound: SNS asks KMS for a data key it may reuse);
- DynamoDB: one write unit per prediction written (items under 1 KB), half a read unit per key read (eventually
  consistent, items under 4 KB); stored items: a day's predictions for the TTL (7 days) at 500 bytes each;
- S3 storage: a day's bronze bytes, kept 30 days (landing/ and enriched/ expire sooner and are left out);
- Athena: the dashboard's 8 queries per load, each scanning at most the day's bronze/locations bytes (at least
  10 MB, Athena's minimum);
- fixed: the KMS key, the CloudWatch alarms of template.yaml, one metric per name each function emits; VPC interface
  endpoints only with --vpc-endpoint-azs (pg-poller in a VPC reaching Secrets Manager);
- MSK and the PostgreSQL database are the company's own and not counted.

Writes the table between `<!-- cost:begin -->` and `<!-- cost:end -->` of --doc, and a stacked bar chart (SVG) of
the cost per million positions by service.
"""
import argparse
import glob
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra/local"))

FLEETS = [1_000, 10_000, 100_000]
POSITIONS_PER_UNIT_DAY = 96
LOGICAL = {"msk-lander": "MskLanderFunction", "weather-enricher": "WeatherEnricherFunction",
           "delta-writer": "DeltaWriterFunction", "partition-sync": "PartitionSyncFunction",
           "predictor": "PredictorFunction", "lake-maintainer": "LakeMaintainerFunction",
           "pg-poller": "PgPollerFunction", "predictions-api": "PredictionsApiFunction"}
SQS_FED = ["delta-writer", "partition-sync", "predictor"]
S3_TIER1 = {"PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
            "ListObjects", "CreateBucket"}
S3_FREE = {"DeleteObject", "DeleteObjects", "AbortMultipartUpload"}
SERVICES = ["Lambda compute", "Lambda requests", "S3 requests", "S3 storage", "DynamoDB", "SQS", "SNS",
            "CloudWatch Logs", "CloudWatch metrics and alarms", "KMS", "VPC endpoints", "Weather API", "Athena",
            "Glue"]
COLOURS = ["#4e79a7", "#a0cbe8", "#f28e2b", "#ffbe7d", "#59a14f", "#8cd17d", "#b6992d", "#499894", "#86bcb6",
           "#e15759", "#ff9d9a", "#79706e", "#d37295", "#b07aa1"]


def template_figures():
    """Each function's MemorySize (MB), and how many alarms and KMS keys the template has."""
    import stack
    t = stack.load_template(ROOT / "template.yaml")
    default = t.get("Globals", {}).get("Function", {}).get("MemorySize", 128)
    alarms = sum(1 for r in t["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm")
    keys = sum(1 for r in t["Resources"].values() if r["Type"] == "AWS::KMS::Key")
    return ({f: t["Resources"][lid]["Properties"].get("MemorySize", default) for f, lid in LOGICAL.items()},
            alarms, keys)


class Measured:
    """The measured runs, and any quantity of them at another fleet size."""

    def __init__(self, runs):
        short = [r["units"] for r in runs if r.get("hours", 24) != 24]
        if short:
            raise SystemExit(f"runs of {short} units are not a whole day (--hours 24): the model prices days")
        self.runs = sorted(runs, key=lambda r: r["units"])

    def at(self, units, get):
        points = [(r["units"], get(r)) for r in self.runs]
        if len(points) == 1:
            n, v = points[0]
            return v * units / n
        (n1, v1), (n2, v2) = points[0], points[-1]
        return max(0.0, v1 + (v2 - v1) * (units - n1) / (n2 - n1))


def function(run, name):
    return run["functions"].get(name, {})


def requests(run, name):
    return (run.get("requests") or {}).get(name, {})


def day_cost(m, units, prices, mem, alarms, keys, args, python=None):
    """Cost of a day at `units`, by service; `python` (the baselines) scales the compute of the stages they do."""
    p = {k: v["usd"] / v["per"] for k, v in prices["items"].items()}
    c = dict.fromkeys(SERVICES, 0.0)
    positions = units * POSITIONS_PER_UNIT_DAY
    for name in LOGICAL:
        inv = m.at(units, lambda r: function(r, name).get("invocations", 0))
        seconds = m.at(units, lambda r: function(r, name).get("sum_s", 0.0))
        gb = mem[name] / 1024
        if python and name in python:
            seconds *= python[name]["time_ratio"]
            gb = max(gb, python[name]["memory_mb"] / 1024)
        c["Lambda compute"] += seconds * gb * p["lambda_arm64_gb_second"]
        c["Lambda requests"] += inv * p["lambda_request"]
        logged = m.at(units, lambda r: (function(r, name).get("log_bytes") or 0)) + 300 * inv
        c["CloudWatch Logs"] += logged / 1e9 * (p["cloudwatch_logs_ingested_gb"] + p["cloudwatch_logs_stored_gb_month"])
        for op in {op for r in m.runs for op in requests(r, name) if " " not in op}:  # not "<op> <status>"
            n = m.at(units, lambda r: requests(r, name).get(op, 0))
            service, action = op.split(":", 1)
            if service == "s3":
                if action not in S3_FREE:
                    c["S3 requests"] += n * (p["s3_put_copy_post_list"] if action in S3_TIER1 else p["s3_get_and_other"])
            elif service == "glue":
                c["Glue"] += n * p["glue_catalog_request"]
        metrics = {k for r in m.runs for k in function(r, name).get("metrics", {})}
        c["CloudWatch metrics and alarms"] += len(metrics) * p["cloudwatch_metric_month"] / 30
    for name in SQS_FED:
        messages = m.at(units, lambda r: function(r, name).get("messages", 0))
        inv = m.at(units, lambda r: function(r, name).get("invocations", 0))
        c["SQS"] += (2 * messages + inv + 21_600) * p["sqs_request"]
    publishes = m.at(units, lambda r: function(r, "partition-sync").get("messages", 0))
    c["SNS"] += publishes * p["sns_publish"]
    c["KMS"] += 2 * publishes * p["kms_request"] + keys * p["kms_key_month"] / 30
    written = m.at(units, lambda r: function(r, "predictor").get("metrics", {}).get("predictions_written", 0))
    keys_read = m.at(units, lambda r: function(r, "predictor").get("metrics", {}).get("units", 0))
    c["DynamoDB"] += written * p["dynamodb_write_request_unit"] + 0.5 * keys_read * p["dynamodb_read_request_unit"]
    c["DynamoDB"] += written * 7 * 500 / 1e9 * p["dynamodb_storage_gb_month"] / 30
    bronze = m.at(units, lambda r: sum(t["bytes"] for t in r["tables"].values()))
    c["S3 storage"] += bronze / 1e9 * p["s3_storage_gb_month"]
    calls = m.at(units, lambda r: function(r, "weather-enricher").get("metrics", {}).get("weather_requests", 0))
    c["Weather API"] += calls * p["weather_api_call"]
    locations = m.at(units, lambda r: r["tables"].get("locations", {}).get("bytes", 0))
    c["Athena"] += args.dashboard_loads_per_day * 8 * max(10e6, locations) / 1e12 * p["athena_scanned_tb"]
    c["CloudWatch metrics and alarms"] += alarms * p["cloudwatch_alarm_month"] / 30
    c["VPC endpoints"] += args.vpc_endpoint_azs * 24 * p["vpc_interface_endpoint_az_hour"]
    return c, positions


def svg_chart(bars, path):
    """Stacked bars of cost per million positions by service."""
    width, height, left, top, bottom = 760, 420, 70, 30, 90
    plot_h = height - top - bottom
    top_value = max(sum(b[1].values()) for b in bars) * 1.1
    bar_w = 90
    gap = (width - left - 230 - bar_w * len(bars)) / (len(bars) + 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">Cost per million positions by service (USD, arm64 Lambda, '
           f'list prices)</text>']
    for i in range(6):
        v = top_value * i / 5
        y = top + plot_h - plot_h * i / 5
        out.append(f'<line x1="{left}" x2="{width - 230}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for i, (label, costs) in enumerate(bars):
        x = left + gap + i * (bar_w + gap)
        y = top + plot_h
        for service, colour in zip(SERVICES, COLOURS):
            h = plot_h * costs.get(service, 0) / top_value
            if h > 0:
                y -= h
                out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w}" height="{h:.2f}" fill="{colour}">'
                           f'<title>{service}: {costs[service]:.4f}</title></rect>')
        total = sum(costs.values())
        out.append(f'<text x="{x + bar_w / 2:.1f}" y="{y - 5:.1f}" text-anchor="middle">{total:.2f}</text>')
        for j, line in enumerate(label.split("\n")):
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 18 + 14 * j}" '
                       f'text-anchor="middle">{line}</text>')
    for j, (service, colour) in enumerate(zip(SERVICES, COLOURS)):
        y = top + 8 + j * 19
        out.append(f'<rect x="{width - 215}" y="{y - 10}" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{width - 198}" y="{y}">{service}</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


def money(x):
    if x == 0:
        return "0"
    return f"{x:,.2f}" if x >= 0.01 else (f"{x:.4f}" if x >= 0.0001 else "<0.0001")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=sorted(glob.glob(str(ROOT / "docs/figures/scale-*.json"))))
    ap.add_argument("--prices", default=str(ROOT / "infra/cost/prices.json"))
    ap.add_argument("--baselines", default=str(ROOT / "docs/figures/baselines.json"))
    ap.add_argument("--chart", default=str(ROOT / "docs/figures/cost.svg"))
    ap.add_argument("--doc", default=str(ROOT / "docs/benchmarks.md"))
    ap.add_argument("--dashboard-loads-per-day", type=int, default=24)
    ap.add_argument("--vpc-endpoint-azs", type=int, default=0)
    args = ap.parse_args()
    if not args.runs:
        raise SystemExit("no measured runs: make bench-scale writes docs/figures/scale-<units>.json")
    runs = [json.loads(Path(r).read_text()) for r in args.runs]
    prices = json.loads(Path(args.prices).read_text())
    baselines = json.loads(Path(args.baselines).read_text())
    python = {k: v for k, v in baselines.items() if not k.startswith("_")}
    mem, alarms, keys = template_figures()
    m = Measured(runs)

    rows = []
    for units in FLEETS:
        c, positions = day_cost(m, units, prices, mem, alarms, keys, args)
        py, _ = day_cost(m, units, prices, mem, alarms, keys, args, python)
        rows.append((units, positions, c, py))

    measured = ", ".join(f"{r['units']:,} units ({r['measured']})" for r in m.runs)
    lines = [f"Measured: {measured}. Prices: `infra/cost/prices.json` (list prices of {prices['region']} as known on "
             f"{prices['read_on']}, not checked from this machine). Regenerate with `make cost`.", "",
             "| per day, USD | " + " | ".join(f"{u:,} units" for u, *_ in rows) + " |",
             "|---|" + "---:|" * len(rows)]
    for s in SERVICES:
        lines.append(f"| {s} | " + " | ".join(money(c[s]) for _, _, c, _ in rows) + " |")
    lines.append("| **total** | " + " | ".join(f"**{money(sum(c.values()))}**" for _, _, c, _ in rows) + " |")
    lines.append("| per million positions | " + " | ".join(money(sum(c.values()) / (n / 1e6)) for _, n, c, _ in rows)
                 + " |")
    lines.append("| the same with the Python baselines (per day) | "
                 + " | ".join(money(sum(py.values())) for *_, py in rows) + " |")
    lines.append("| of which Lambda compute: Rust / Python | "
                 + " | ".join(f"{money(c['Lambda compute'])} / {money(py['Lambda compute'])}" for _, _, c, py in rows)
                 + " |")
    lines += ["", "![cost per million positions by service](figures/cost.svg)"]
    table = "\n".join(lines)
    print(table)

    bars = [(f"{u:,} units", {k: v / (n / 1e6) for k, v in c.items()}) for u, n, c, _ in rows]
    u, n, _, py = rows[1]
    bars.append((f"{u:,} units\nPython baselines", {k: v / (n / 1e6) for k, v in py.items()}))
    svg_chart(bars, args.chart)

    doc = Path(args.doc)
    text = doc.read_text()
    new, count = re.subn(r"(<!-- cost:begin -->\n).*?(<!-- cost:end -->)", lambda mt: mt[1] + table + "\n" + mt[2],
                         text, flags=re.S)
    if count != 1:
        raise SystemExit(f"{doc} has no <!-- cost:begin --> ... <!-- cost:end --> section")
    doc.write_text(new)


if __name__ == "__main__":
    main()
