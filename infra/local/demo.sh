#!/usr/bin/env bash
# The demo after `stack.py up`: a day of a synthetic fleet goes through the whole pipeline on this machine.
# infra/router plays the MSK mapping, the SQS mappings and S3's direct invocations from stack.json, and invokes
# each function through the Lambda runtime emulator `cargo lambda watch` (DEMO_RUNTIME=watch, the default) or
# through a runtime API it serves to the built binaries itself (DEMO_RUNTIME=binaries). Then it reports.
#   FLEET_UNITS (30), FLEET_HOURS (24), FLEET_SEED (7): the fleet's size and seed.
#   DEMO_STATS=postgres: the performance statistics are written to the stack's PostgreSQL (`stack.py up --postgres`)
#   hour by hour and polled by pg-poller after each hour, instead of arriving as Debezium events on MSK.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${LAMBDA_PORT:-9000}
runtime=${DEMO_RUNTIME:-watch}
stats=${DEMO_STATS:-msk}
case "$stats" in msk|postgres) ;; *) echo "DEMO_STATS=$stats: msk or postgres" >&2; exit 1 ;; esac
functions=(msk-lander weather-enricher delta-writer partition-sync predictor)
[ "$stats" = postgres ] && functions+=(pg-poller)
bin=${TARGET_DIR:-target}/debug
started=$(date +%s)

echo "==> generating the fleet: ${FLEET_UNITS:-30} units, ${FLEET_HOURS:-24} h (seed ${FLEET_SEED:-7})"
day=$(date -u -d yesterday +%Y-%m-%d)
.venv/bin/python infra/local/fleet.py --out .local/fleet --units "${FLEET_UNITS:-30}" --hours "${FLEET_HOURS:-24}" \
  --seed "${FLEET_SEED:-7}" --day "$day" --stats-from "$stats"

if [ "$runtime" = watch ]; then
  if ! .venv/bin/python -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null; then
    echo "port $port is in use (another cargo lambda watch?): stop it or run make demo LAMBDA_PORT=<free port>" >&2
    exit 1
  fi
  log=.local/cargo-lambda-watch.log
  echo "==> cargo lambda watch on 127.0.0.1:$port (log: $log)"
  cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$port" --env-file .local/lambda.env --ignore-changes \
    >"$log" 2>&1 &
  watch_pid=$!
  trap 'kill $watch_pid 2>/dev/null || true' EXIT
  # cargo lambda watch compiles a function on its first invocation and holds the request meanwhile: warm each
  # one up with an empty S3 notification (no objects), which every function answers without doing anything
  # (pg-poller, which takes any event as its schedule, polls the still empty table).
  for attempt in $(seq 1 60); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    kill -0 $watch_pid 2>/dev/null || { echo "cargo lambda watch stopped; see $log"; tail -20 "$log"; exit 1; }
    sleep 1
  done
  for f in "${functions[@]}"; do
    echo "    compiling and starting $f (first time: a few minutes)"
    code=$(curl -s -o /dev/null -m 900 -w '%{http_code}' -X POST -H 'content-type: application/json' \
      "http://127.0.0.1:$port/2015-03-31/functions/$f/invocations" -d '{"Records": []}' || true)
    kill -0 $watch_pid 2>/dev/null || { echo "cargo lambda watch stopped; see $log"; tail -20 "$log"; exit 1; }
    [ "$code" != 000 ] || { echo "no answer from $f; see $log"; tail -20 "$log"; exit 1; }
  done
  invoke=(--invoke-url "http://127.0.0.1:$port")
else
  invoke=(--binaries "$bin")
fi

if [ "$stats" = postgres ]; then
  echo "==> performance_stats through PostgreSQL: each hour's writes, then a pg-poller poll"
  .venv/bin/python infra/local/pg_source.py replay --fleet .local/fleet --stack-env .local/stack.env \
    --router "$bin/fleetlake-router" "${invoke[@]}" | tee .local/polls.json
fi

echo "==> routing until the pipeline is idle (progress every 5 s)"
rm -f .local/events.jsonl
"$bin/fleetlake-router" --stack-env .local/stack.env "${invoke[@]}" --msk-dir .local/fleet/msk \
  --settle-after 1 --record .local/events.jsonl > .local/router.json

.venv/bin/python infra/local/stack.py report --router .local/router.json
echo
echo "==> predictions-api: its Function URL on this machine (the router on the debug binaries; stopped by make down)"
api=$(.venv/bin/python infra/local/stack.py serve-api --bin-dir "$bin" --port "${API_PORT:-9100}")
unit=$(.venv/bin/python - <<'PY'
import boto3, os
env = dict(line.split("=", 1) for line in open(".local/stack.env").read().split())
ddb = boto3.client("dynamodb", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
items = ddb.scan(TableName=env["PREDICTIONS_TABLE"], ProjectionExpression="transport_unit_id")["Items"]
print(min(i["transport_unit_id"]["S"] for i in items))
PY
)
echo "try: curl -s $api/units/$unit/prediction"
curl -s "$api/units/$unit/prediction"
echo
echo "     curl -s '$api/units/$unit/predictions?limit=2'   (then &next=<the answer's next>)"

echo
echo "==> the dashboard: the shipped Athena queries on DuckDB over the manifests' files, and the latest predictions"
.venv/bin/python infra/local/dashboard.py --stack-env .local/stack.env --out .local/dashboard.html

echo
echo "done in $(( $(date +%s) - started )) s. The local stack is still up (settings in .local/stack.env); stop it with: make down"
cat <<'TXT'
Query the tables (docs/local-stack.md, "Reading the lake locally"; docs/analysts.md):
  set -a; . .local/stack.env; set +a; .venv/bin/python infra/local/query.py
  .venv/bin/python infra/local/lake_sql.py --list      (the shipped Athena queries, run on DuckDB)
TXT
