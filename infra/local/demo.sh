#!/usr/bin/env bash
# The demo after `stack.py up`: run msk-lander under the Lambda runtime emulator (cargo lambda watch), feed it
# the sample MSK batches (one of them twice, as a Lambda retry would), and print what landed.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${LAMBDA_PORT:-9000}
log=.local/cargo-lambda-watch.log

cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$port" --env-file .local/stack.env --ignore-changes \
  -p msk-lander >"$log" 2>&1 &
watch_pid=$!
trap 'kill $watch_pid 2>/dev/null || true' EXIT

invoke() {
  echo "==> cargo lambda invoke msk-lander --data-file $1"
  for attempt in $(seq 1 60); do
    if out=$(cargo lambda invoke msk-lander --invoke-address 127.0.0.1 --invoke-port "$port" --data-file "$1" 2>&1); then
      echo "$out" | .venv/bin/python -c 'import json,sys; s=json.load(sys.stdin); print("    records %(records)s, landed %(landed)s, quarantined %(quarantined)s, tombstones %(tombstones)s; %(already_landed)s of %(n)s landing objects were already there" % dict(s, n=len(s["objects"])))'
      return 0
    fi
    kill -0 $watch_pid 2>/dev/null || { echo "cargo lambda watch stopped; see $log"; tail -20 "$log"; return 1; }
    sleep 2   # first call: cargo lambda watch is still compiling the function
  done
  echo "$out"; return 1
}

invoke events/msk-lander/batch.json
invoke events/msk-lander/locations.json
echo "==> the same batch again (a Lambda retry): objects stay byte for byte the same"
invoke events/msk-lander/batch.json

.venv/bin/python infra/local/stack.py summary
cat <<TXT

The local stack is still up (settings in .local/stack.env); stop it with: make down
Look at the landing zone:
  set -a; . .local/stack.env; set +a
  .venv/bin/python -c "import boto3; [print(o['Key']) for o in boto3.client('s3').list_objects_v2(Bucket='\$LAKE_BUCKET')['Contents']]"
TXT
