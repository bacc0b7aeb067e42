#!/usr/bin/env python3
"""Reads the local lake the way a data scientist would: the bronze Delta tables with the Python `deltalake`
package (pandas for the arithmetic), and the latest prediction of a unit from DynamoDB.

usage: set -a; . .local/stack.env; set +a; .venv/bin/python infra/local/query.py [UNIT]
"""
import os
import sys

import boto3
from deltalake import DeltaTable

env = os.environ
options = {k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
options["AWS_ALLOW_HTTP"] = "true"
lake = f"s3://{env['LAKE_BUCKET']}/bronze"

positions = DeltaTable(f"{lake}/locations", storage_options=options).to_pandas(
    columns=["transport_unit_id", "transport_type", "ts", "event_date", "speed_kmh", "wind_speed_kmh", "weather_status"])
print("positions per day and type, mean speed and wind:")
print(positions.groupby(["event_date", "transport_type"]).agg(
    positions=("ts", "count"), units=("transport_unit_id", "nunique"),
    mean_speed_kmh=("speed_kmh", "mean"), mean_wind_kmh=("wind_speed_kmh", "mean")).round(1).to_string())

stats = DeltaTable(f"{lake}/performance_stats", storage_options=options).to_pandas()
# The change log's latest state per key: the last change by (ts_ms, lsn) wins, deletes drop the row.
latest = stats.sort_values(["ts_ms", "lsn"]).groupby(["transport_unit_id", "stat_date"]).tail(1)
latest = latest[latest["op"] != "d"]
print("\nfuel per day (latest state of performance_stats):")
print(latest.groupby("stat_date")[["distance_km", "fuel_used_l"]].sum().round(0).to_string())

unit = sys.argv[1] if len(sys.argv) > 1 else positions["transport_unit_id"].min()
ddb = boto3.client("dynamodb", endpoint_url=env["AWS_ENDPOINT_URL"])
item = ddb.query(TableName=env["PREDICTIONS_TABLE"], KeyConditionExpression="transport_unit_id = :u",
                 ExpressionAttributeValues={":u": {"S": unit}}, ScanIndexForward=False, Limit=1)["Items"]
if item:
    i = item[0]
    print(f"\nlatest prediction of {unit}: {float(i['value']['N']):,.0f} {i['unit']['S']} {i['target']['S']} "
          f"at {i['predicted_at']['S']} ({i['model_version']['S']})")
