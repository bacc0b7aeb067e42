"""A static dashboard of the local lake: one HTML file, no server, nothing loaded from the network.

The figures come from the shipped queries (infra/athena/queries) run on DuckDB over the files the symlink
manifests list (infra/local/lake_sql.py), for the latest UTC day that has positions, and from the predictions
table (each unit's latest prediction, as predictions-api serves it). The page embeds the rows as JSON and draws
them as SVG when it opens: each chart has one mark (bar, dot, row) per row of its query, and says how many rows it
was given (`data-rows`), which the test compares with the marks Chromium drew.

    .venv/bin/python infra/local/dashboard.py --stack-env .local/stack.env --out .local/dashboard.html
"""

import argparse
import datetime as dt
import html
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lake_sql  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# Each chart: its title, the query (or "predictions"), how it is drawn, and what the axes read.
CHARTS = [
    {"id": "positions", "query": "positions_per_unit_day", "kind": "bars", "title": "Positions per unit",
     "x": "transport_unit_id", "y": "positions", "colour": "transport_type", "unit": "positions"},
    {"id": "speed", "query": "speed_by_type_day", "kind": "bars", "title": "Mean speed per type (tick: p90)",
     "x": "transport_type", "y": "mean_speed_kmh", "tick": "p90_speed_kmh", "colour": "transport_type", "unit": "km/h"},
    {"id": "weather", "query": "weather_by_type_day", "kind": "bars", "title": "Share of positions with precipitation",
     "x": "transport_type", "y": "precipitation_share", "colour": "transport_type", "unit": "share"},
    {"id": "wind", "query": "weather_by_type_day", "kind": "bars", "title": "Mean wind along the routes",
     "x": "transport_type", "y": "mean_wind_kmh", "colour": "transport_type", "unit": "km/h"},
    {"id": "fuel", "query": "fuel_by_type_day", "kind": "bars", "title": "Fuel per 100 km by type and day (tick: p90)",
     "x": "label", "y": "mean_l_per_100km", "tick": "p90_l_per_100km", "colour": "transport_type", "unit": "l/100 km"},
    {"id": "distance", "query": "distance_by_unit_day", "kind": "scatter",
     "title": "Distance per unit: tracked from positions vs reported", "x": "reported_km", "y": "tracked_km",
     "colour": "transport_type", "unit": "km"},
    {"id": "map", "query": "positions_of_day", "kind": "map", "title": "The day's positions",
     "x": "lon", "y": "lat", "colour": "transport_type"},
    {"id": "error", "query": "prediction_error", "kind": "bars",
     "title": "Prediction error: the prediction nearest the day's start vs the day's reported fuel",
     "x": "transport_unit_id", "y": "abs_pct_error", "colour": "transport_type", "unit": "share of the actual"},
    {"id": "predictions", "query": "predictions", "kind": "bars", "title": "Latest prediction per unit: fuel over the next 24 h",
     "x": "transport_unit_id", "y": "value", "colour": "transport_type", "unit": "l"},
    {"id": "latest", "query": "latest_position", "kind": "table", "title": "Latest position of every unit",
     "columns": ["transport_unit_id", "name", "transport_type", "ts", "lat", "lon", "speed_kmh"]},
]


def latest_day(con):
    day = con.execute("SELECT max(event_date) FROM bronze_locations").fetchone()[0]
    if day is None:
        raise SystemExit("the lake has no positions yet: run the pipeline first (make demo)")
    return day


def parameters(query, day):
    """The values of a query's parameters for a dashboard of `day`: the day itself, and the day before for the
    daily figures (a day is reported at its end)."""
    values = {"first_day": (day - dt.timedelta(days=1)).isoformat(), "last_day": day.isoformat(),
              "day": day.isoformat(), "since_day": (day - dt.timedelta(days=7)).isoformat()}
    if query in ("positions_per_unit_day", "speed_by_type_day", "weather_by_type_day", "distance_by_unit_day",
                 "prediction_error"):
        values["first_day"] = day.isoformat()
    return [values[p] for p in lake_sql.queries()[query].parameters]


def latest_predictions(ddb, table, types):
    """Each unit's newest prediction (the sort key is the time it was made from, so the newest is the largest)."""
    latest = {}
    kw = {"TableName": table, "ProjectionExpression": "transport_unit_id, predicted_at, #v, model_version",
          "ExpressionAttributeNames": {"#v": "value"}}
    while True:
        page = ddb.scan(**kw)
        for i in page["Items"]:
            unit, at = i["transport_unit_id"]["S"], i["predicted_at"]["S"]
            if unit not in latest or at > latest[unit]["predicted_at"]:
                latest[unit] = {"transport_unit_id": unit, "predicted_at": at, "value": float(i["value"]["N"]),
                                "model_version": i["model_version"]["S"], "transport_type": types.get(unit)}
        if "LastEvaluatedKey" not in page:
            return [latest[u] for u in sorted(latest)]
        kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def collect(con, day, predictions, types):
    rows = {}
    for chart in CHARTS:
        q = chart["query"]
        if q in rows:
            continue
        rows[q] = predictions if q == "predictions" else lake_sql.run(con, lake_sql.queries()[q], *parameters(q, day))
    for r in rows["fuel_by_type_day"]:
        r["label"] = f"{r['transport_type']} {r['day']:%m-%d}"
    for r in rows["distance_by_unit_day"] + rows["prediction_error"]:
        r["transport_type"] = types.get(r["transport_unit_id"])
    return rows


def render(day, rows):
    data = json.dumps({"day": day.isoformat(), "charts": CHARTS, "rows": rows}, default=str)
    figures = "\n".join(
        f'<figure id="{c["id"]}" class="chart {c["kind"]}" data-query="{c["query"]}" data-rows="{len(rows[c["query"]])}">'
        f'<figcaption>{html.escape(c["title"])} <small>({len(rows[c["query"]])} rows of {c["query"]})</small></figcaption>'
        "</figure>" for c in CHARTS)
    return PAGE.replace("{{DAY}}", day.isoformat()).replace("{{FIGURES}}", figures).replace(
        "{{DATA}}", data.replace("</", "<\\/"))


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>fleetlake — {{DAY}}</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
figure { margin: 0; padding: 12px; background: #fff; border: 1px solid #ddd; border-radius: 6px; overflow: auto; }
figure.map, figure.table, figure#positions, figure#predictions, figure#error { grid-column: 1 / -1; }
figcaption { font-weight: 600; margin-bottom: 8px; } small { color: #777; font-weight: 400; }
svg text { font-size: 11px; fill: #444; } .legend span { margin-right: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
table { border-collapse: collapse; font-size: 12px; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
</style>
</head>
<body>
<h1>fleetlake — UTC day {{DAY}}</h1>
<p>From the local lake: the shipped Athena queries run on DuckDB over the files the symlink manifests list, and
each unit's latest prediction. <span class="legend" id="legend"></span></p>
<main>
{{FIGURES}}
</main>
<script type="application/json" id="data">{{DATA}}</script>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
const COLOURS = {aerial: "#1f77b4", maritime: "#17becf", terrestrial: "#d62728"};
const colour = v => COLOURS[v] || "#7f7f7f";
const data = JSON.parse(document.getElementById("data").textContent);
function el(name, attrs, parent, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(v) { return typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2)) : String(v); }
function axisY(svg, max, left, top, h, unit) {
  for (let i = 0; i <= 4; i++) {
    const y = top + h - h * i / 4;
    el("line", {x1: left, x2: left - 4, y1: y, y2: y, stroke: "#999"}, svg);
    el("text", {x: left - 6, y: y + 4, "text-anchor": "end"}, svg, fmt(max * i / 4));
  }
  el("text", {x: 4, y: top - 6}, svg, unit || "");
}
function bars(fig, chart, rows) {
  const W = Math.max(520, rows.length * 22 + 80), H = 300, left = 56, top = 20, bottom = 100, h = H - top - bottom;
  const svg = el("svg", {width: W, height: H}, fig);
  const max = Math.max(1e-9, ...rows.map(r => Math.max(r[chart.y] || 0, chart.tick ? (r[chart.tick] || 0) : 0))) * 1.05;
  axisY(svg, max, left, top, h, chart.unit);
  const step = (W - left - 10) / Math.max(1, rows.length), bw = Math.max(4, step * 0.7);
  rows.forEach((r, i) => {
    const x = left + i * step + (step - bw) / 2, v = r[chart.y] || 0, bh = h * v / max;
    const g = el("g", {class: "mark", "data-x": String(r[chart.x])}, svg);
    el("rect", {x, y: top + h - bh, width: bw, height: bh, fill: colour(r[chart.colour])}, g);
    el("title", {}, g, `${r[chart.x]}: ${fmt(v)}${chart.tick ? " (p90 " + fmt(r[chart.tick]) + ")" : ""}`);
    if (chart.tick && r[chart.tick] != null) {
      const ty = top + h - h * r[chart.tick] / max;
      el("line", {x1: x - 2, x2: x + bw + 2, y1: ty, y2: ty, stroke: "#222", "stroke-width": 2}, g);
    }
    el("text", {x: x + bw / 2, y: top + h + 8, transform: `rotate(60 ${x + bw / 2} ${top + h + 8})`}, svg, String(r[chart.x]));
  });
}
function scatter(fig, chart, rows, map) {
  const W = map ? 1100 : 520, H = map ? 560 : 320, left = 56, top = 20, right = 10, bottom = 40;
  const svg = el("svg", {width: W, height: H}, fig);
  const xs = rows.map(r => r[chart.x]).filter(v => v != null), ys = rows.map(r => r[chart.y]).filter(v => v != null);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (!map) { x0 = y0 = Math.min(0, x0, y0); x1 = y1 = Math.max(x1, y1); }
  const pad = (a, b) => (b - a) * 0.05 || 1; x0 -= pad(x0, x1); x1 += pad(x0, x1); y0 -= pad(y0, y1); y1 += pad(y0, y1);
  if (!map) { x0 = y0 = Math.max(x0, 0); }
  const X = v => left + (W - left - right) * (v - x0) / (x1 - x0), Y = v => H - bottom - (H - top - bottom) * (v - y0) / (y1 - y0);
  el("rect", {x: left, y: top, width: W - left - right, height: H - top - bottom, fill: map ? "#eef4f8" : "none", stroke: "#ccc"}, svg);
  for (let i = 0; i <= 4; i++) {
    const gx = x0 + (x1 - x0) * i / 4, gy = y0 + (y1 - y0) * i / 4;
    el("line", {x1: X(gx), x2: X(gx), y1: top, y2: H - bottom, stroke: "#e3e3e3"}, svg);
    el("line", {x1: left, x2: W - right, y1: Y(gy), y2: Y(gy), stroke: "#e3e3e3"}, svg);
    el("text", {x: X(gx), y: H - bottom + 14, "text-anchor": "middle"}, svg, fmt(gx) + (map ? "°" : ""));
    el("text", {x: left - 6, y: Y(gy) + 4, "text-anchor": "end"}, svg, fmt(gy) + (map ? "°" : ""));
  }
  if (!map) {
    el("line", {x1: X(x0), y1: Y(x0), x2: X(x1), y2: Y(x1), stroke: "#aaa", "stroke-dasharray": "4 3"}, svg);
    el("text", {x: W / 2, y: H - 4, "text-anchor": "middle"}, svg, `${chart.x} (${chart.unit})`);
    el("text", {x: 4, y: top - 6}, svg, `${chart.y} (${chart.unit})`);
  }
  rows.forEach(r => {
    const g = el("g", {class: "mark", "data-x": String(r.transport_unit_id)}, svg);
    const cx = r[chart.x] == null ? X(x0) : X(r[chart.x]), cy = r[chart.y] == null ? Y(y0) : Y(r[chart.y]);
    el("circle", {cx, cy, r: map ? 2 : 4, fill: colour(r[chart.colour]), "fill-opacity": map ? 0.6 : 0.85}, g);
    el("title", {}, g, map ? `${r.transport_unit_id} ${r.ts}` : `${r.transport_unit_id} ${r.day}: tracked ${fmt(r[chart.y])}, reported ${r[chart.x] == null ? "not yet" : fmt(r[chart.x])}`);
  });
}
function table(fig, chart, rows) {
  const t = document.createElement("table"), head = t.insertRow();
  chart.columns.forEach(c => { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); });
  rows.forEach(r => {
    const tr = t.insertRow(); tr.className = "mark"; tr.dataset.x = String(r[chart.columns[0]]);
    chart.columns.forEach(c => { tr.insertCell().textContent = r[c] == null ? "" : fmt(r[c]); });
  });
  fig.appendChild(t);
}
for (const chart of data.charts) {
  const fig = document.getElementById(chart.id), rows = data.rows[chart.query];
  if (chart.kind === "bars") bars(fig, chart, rows);
  else if (chart.kind === "scatter") scatter(fig, chart, rows, false);
  else if (chart.kind === "map") scatter(fig, chart, rows, true);
  else table(fig, chart, rows);
}
const legend = document.getElementById("legend");
for (const [k, v] of Object.entries(COLOURS)) {
  const s = document.createElement("span"), i = document.createElement("i");
  i.style.background = v; s.appendChild(i); s.appendChild(document.createTextNode(k)); legend.appendChild(s);
}
document.body.setAttribute("data-drawn", "true");
</script>
</body>
</html>
"""


def build(stack_env, out, folder=None):
    """Writes the dashboard of the latest day; returns (day, rows per query)."""
    import boto3
    env, s3, glue = lake_sql.stack_clients(stack_env)
    with tempfile.TemporaryDirectory(prefix="fleetlake-dashboard-") as tmp:
        lake = lake_sql.LocalLake(s3, glue, env["GLUE_DATABASE"], folder or tmp).fetch()
        con = lake.connect()
        day = latest_day(con)
        types = dict(con.execute("SELECT transport_unit_id, transport_type FROM transport_units_current").fetchall())
        ddb = boto3.client("dynamodb", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env.get("AWS_REGION", "us-east-1"),
                           aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        rows = collect(con, day, latest_predictions(ddb, env["PREDICTIONS_TABLE"], types), types)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(render(day, rows))
    return day, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack-env", default=str(ROOT / ".local/stack.env"))
    parser.add_argument("--out", default=str(ROOT / ".local/dashboard.html"))
    args = parser.parse_args()
    day, rows = build(args.stack_env, args.out)
    print(f"dashboard of {day}: {Path(args.out).resolve()} "
          f"({', '.join(f'{q} {len(r)}' for q, r in rows.items())} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
