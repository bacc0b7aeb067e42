"""`sam local invoke` of every function with its sample event, on the Docker engine, against the local stack.

Two local stacks start side by side. On one, each function of the template answers its sample event through
`sam local invoke` (the offline image of `image.sh`, the x86_64 debug binaries `make test` built, placed by
`prepare.py`); on the other, the same binary answers the same event through the Lambda runtime protocol of the test
harness (`fleetlake-router --invoke`, what `cargo lambda invoke` does). The samples chain (msk-lander's batch lands
the object the enricher's event names, and so on), each event naming the ETags its objects really have in that
stack. Both answers must be the same, and say that the work was done.

Needs Docker, the venv (SAM CLI) and FLEETLAKE_BIN_DIR (default target/debug).
"""
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import unittest
import urllib.parse
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("FLEETLAKE_BIN_DIR") or ROOT / "target" / "debug")
PY = sys.executable
SAM = ROOT / ".venv" / "bin" / "sam"
sys.path.insert(0, str(ROOT / "infra" / "e2e"))
sys.path.insert(0, str(ROOT / "infra" / "local"))
import pg_source  # noqa: E402
from test_pipeline import stack_up  # noqa: E402

# In pipeline order: (binary, logical id, sample event).
STEPS = [
    ("msk-lander", "MskLanderFunction", "events/msk-lander/batch.json"),
    ("weather-enricher", "WeatherEnricherFunction", "events/weather-enricher/s3-direct.json"),
    ("delta-writer", "DeltaWriterFunction", "events/delta-writer/sqs.json"),
    ("partition-sync", "PartitionSyncFunction", "events/partition-sync/sqs.json"),
    ("predictor", "PredictorFunction", "events/predictor/schedule.json"),
    ("lake-maintainer", "LakeMaintainerFunction", "events/lake-maintainer/schedule.json"),
    ("pg-poller", "PgPollerFunction", "events/pg-poller/schedule.json"),
    ("predictions-api", "PredictionsApiFunction", "events/predictions-api/function-url.json"),
    ("predictions-api", "PredictionsApiFunction", "events/predictions-api/http-api.json"),
]
# What differs between two runs of the same work: timings, and pg-poller's cursor (the time of its snapshot).
TIMINGS = {"duration_ms", "cursor_lag_s", "cursor"}
# The rows both stacks' PostgreSQL hold when pg-poller polls (updated_at a day ago: inside the event-time window).
POLLED_AT = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).replace(microsecond=0).isoformat()
POLLED_ROWS = "".join(
    f"INSERT INTO performance_stats VALUES ('TU-{i:06d}', '{POLLED_AT[:10]}', {100 + i}, {40 + i}, 8, '{POLLED_AT}');\n"
    for i in range(3))


class Stack:
    def __init__(self, name, host):
        self.dir, self.env, self.stack_env, self.names = stack_up(f"fleetlake-sam-{name}-", host=host, postgres=True)
        settings = json.loads((self.dir / "state" / "postgres.json").read_text())
        pg_source.psql(settings, POLLED_ROWS)
        self.s3 = boto3.client("s3", endpoint_url=self.names["AWS_ENDPOINT_URL"], region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")

    def down(self):
        subprocess.run([PY, ROOT / "infra/local/stack.py", "down"], env=self.env, check=False)

    def etag(self, key):
        try:
            return self.s3.head_object(Bucket=self.names["LAKE_BUCKET"], Key=key)["ETag"].strip('"')
        except self.s3.exceptions.ClientError:
            return None

    def event(self, path):
        """The sample, each S3 record naming the ETag its object has here (the sample's is the deployment's)."""
        def fix(node):
            if isinstance(node, dict):
                obj = node.get("s3", {}).get("object") if isinstance(node.get("s3"), dict) else None
                if obj and "key" in obj:
                    tag = self.etag(urllib.parse.unquote_plus(obj["key"]))
                    if tag:
                        obj["eTag"] = tag
                for k, v in node.items():
                    if k in ("body", "Message") and isinstance(v, str) and v.startswith("{"):
                        node[k] = json.dumps(fix(json.loads(v)))
                    else:
                        fix(v)
            elif isinstance(node, list):
                for v in node:
                    fix(v)
            return node
        event = fix(json.loads((ROOT / path).read_text()))
        out = self.dir / Path(path).name
        out.write_text(json.dumps(event))
        return out


def comparable(answer):
    """An answer without its timings, and pg-poller's object names without their run id (each run draws its own)."""
    if isinstance(answer, dict):
        return {k: comparable(v) for k, v in answer.items() if k not in TIMINGS}
    if isinstance(answer, list):
        return [comparable(v) for v in answer]
    if isinstance(answer, str) and answer.endswith(".ndjson.gz"):
        return re.sub(r"-r[0-9a-f]{8,32}-(\d+)\.ndjson\.gz$", r"-r<run>-\1.ndjson.gz", answer)
    return answer


@unittest.skipUnless(shutil.which("docker"), "no Docker engine")
class SamLocalInvoke(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        subprocess.run([ROOT / "infra/sam-local/image.sh"], check=True, cwd=ROOT)
        cls.sam_stack = Stack("sam", "0.0.0.0")
        cls.harness_stack = Stack("harness", "127.0.0.1")
        cls.out = cls.sam_stack.dir / "sam"
        subprocess.run([PY, ROOT / "infra/sam-local/prepare.py", "--bin-dir", BIN, "--stack-env",
                        cls.sam_stack.stack_env, "--out", cls.out], check=True, stdout=subprocess.DEVNULL)
        cls.answers = {}
        for binary, logical_id, sample in STEPS:
            cls.answers[sample] = (cls.sam_invoke(logical_id, cls.sam_stack.event(sample)),
                                   cls.harness_invoke(binary, cls.harness_stack.event(sample)))

    @classmethod
    def tearDownClass(cls):
        for stack in (cls.sam_stack, cls.harness_stack):
            stack.down()

    @classmethod
    def sam_invoke(cls, logical_id, event):
        env = dict(os.environ, SAM_CLI_TELEMETRY="0", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
        out = subprocess.run([SAM, "local", "invoke", logical_id, "-t", cls.out / "template.json", "-e", event,
                              "--env-vars", cls.out / "env.json", "--skip-pull-image",
                              "--add-host", "host.docker.internal:host-gateway"],
                             env=env, capture_output=True, text=True, timeout=300)
        if out.returncode != 0 or not out.stdout.strip():
            raise AssertionError(f"sam local invoke {logical_id} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    @classmethod
    def harness_invoke(cls, binary, event):
        out = subprocess.run([BIN / "fleetlake-router", "--stack-env", cls.harness_stack.stack_env, "--binaries", BIN,
                              "--invoke", binary, "--event", event],
                             cwd=ROOT, env=cls.harness_stack.env, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise AssertionError(f"router --invoke {binary} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        report = json.loads(out.stdout)
        if "error" in report:
            raise AssertionError(f"{binary} failed through the harness: {report['error']}")
        return report["answer"]

    def test_every_function_answers_through_sam_as_through_the_runtime_api(self):
        for sample, (sam, harness) in self.answers.items():
            self.assertEqual(comparable(sam), comparable(harness), sample)

    def test_the_samples_did_the_work_they_name(self):
        a = {binary: self.answers[sample][0] for binary, _, sample in STEPS[:5]}
        self.assertEqual(len(a["msk-lander"].get("objects", [])), 4, a["msk-lander"])
        self.assertEqual(a["weather-enricher"].get("objects_enriched"), 1, a["weather-enricher"])
        self.assertEqual(a["delta-writer"], {"batchItemFailures": []})
        # The samples' positions are of 2026-11-24: their predictions expire (TTL) a week later, and the API then
        # answers 404. Either way an HTTP answer with a JSON body.
        for sample in ("events/predictions-api/function-url.json", "events/predictions-api/http-api.json"):
            answer = self.answers[sample][0]
            self.assertIn(answer.get("statusCode"), (200, 404), answer)
            json.loads(answer["body"])
        self.assertEqual(a["partition-sync"], {"batchItemFailures": []})
        self.assertGreater(a["predictor"].get("predictions", 0), 0, a["predictor"])
        # pg-poller reached the host's PostgreSQL from the container, over TLS checked against the stack's CA.
        polled = self.answers["events/pg-poller/schedule.json"][0]["tables"]
        self.assertEqual([(t["changes_landed"], len(t["objects"])) for t in polled], [(3, 1)], polled)


if __name__ == "__main__":
    unittest.main()
