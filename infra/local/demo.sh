#!/usr/bin/env bash
# The demo after `stack.py up`: run the functions under the Lambda runtime emulator (cargo lambda watch), feed
# msk-lander the sample MSK batches (one of them twice, as a Lambda retry would), hand weather-enricher the S3
# notifications of the landed positions (as the bucket's notification would), and print what is in the lake.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${LAMBDA_PORT:-9000}
log=.local/cargo-lambda-watch.log
if ! .venv/bin/python -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null; then
  echo "port $port is in use (another cargo lambda watch?): stop it or run make demo LAMBDA_PORT=<free port>" >&2
  exit 1
fi

cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$port" --env-file .local/stack.env --ignore-changes \
  >"$log" 2>&1 &
watch_pid=$!
trap 'kill $watch_pid 2>/dev/null || true' EXIT

# invoke FUNCTION EVENT_FILE: prints the function's answer on one line (the first call waits for the build)
invoke() {
  echo "==> cargo lambda invoke $1 --data-file $2"
  for attempt in $(seq 1 90); do
    if out=$(cargo lambda invoke "$1" --invoke-address 127.0.0.1 --invoke-port "$port" --data-file "$2" 2>&1); then
      echo "    $out"
      return 0
    fi
    kill -0 $watch_pid 2>/dev/null || { echo "cargo lambda watch stopped; see $log"; tail -20 "$log"; return 1; }
    sleep 2   # first call: cargo lambda watch is still compiling the function
  done
  echo "$out"; return 1
}

invoke msk-lander events/msk-lander/batch.json
invoke msk-lander events/msk-lander/locations.json
echo "==> the same batch again (a Lambda retry): objects stay byte for byte the same"
invoke msk-lander events/msk-lander/batch.json

# What the bucket notification on landing/locations/ sends to weather-enricher, one event per object.
.venv/bin/python infra/local/stack.py s3-events --prefix landing/locations/ --out .local/events
for event in .local/events/*.json; do
  invoke weather-enricher "$event"
done
echo "==> the first notification again (S3 delivers at least once): nothing is redone"
invoke weather-enricher "$(ls .local/events/*.json | head -n 1)"

.venv/bin/python infra/local/stack.py summary
cat <<TXT

The local stack is still up (settings in .local/stack.env); stop it with: make down
Look at the landing zone:
  set -a; . .local/stack.env; set +a
  .venv/bin/python -c "import boto3; [print(o['Key']) for o in boto3.client('s3').list_objects_v2(Bucket='\$LAKE_BUCKET')['Contents']]"
TXT
