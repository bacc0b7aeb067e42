"""Checks of the infrastructure definitions: template agreement, IAM rules, and the local stack on moto."""
import copy
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "infra" / "local"), str(ROOT / "infra" / "policy")]

import check_template  # noqa: E402
import stack  # noqa: E402


class TemplateAgreement(unittest.TestCase):
    def run_check(self, template):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(template, f)
        return subprocess.run([sys.executable, str(ROOT / "infra/local/stack.py"), "check-template", "--template", f.name],
                              capture_output=True, text=True)

    def test_the_template_agrees_with_the_stack_definition(self):
        r = self.run_check(stack.load_template(ROOT / "template.yaml"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_a_renamed_queue_or_moved_prefix_is_caught(self):
        base = stack.load_template(ROOT / "template.yaml")
        renamed = copy.deepcopy(base)
        renamed["Resources"]["DeltaWriterQueue"]["Properties"]["QueueName"] = {"Fn::Sub": "${NamePrefix}-writer"}
        r = self.run_check(renamed)
        self.assertEqual(r.returncode, 1)
        self.assertIn("DeltaWriterQueue name", r.stdout)

        moved = copy.deepcopy(base)
        moved["Resources"]["MskLanderFunction"]["Properties"]["Environment"]["Variables"]["LANDING_PREFIX"] = "raw/"
        r = self.run_check(moved)
        self.assertEqual(r.returncode, 1)
        self.assertIn("LANDING_PREFIX", r.stdout)


class AthenaDdl(unittest.TestCase):
    def test_the_shipped_ddl_has_the_glue_tables_columns(self):
        ddl = (ROOT / "infra/athena/bronze_tables.sql").read_text()
        tables = json.loads((ROOT / "infra/local/stack.json").read_text())["glue_tables"]
        for t in tables:
            m = re.search(r"CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake\." + t["name"] + r" \((.*?)\)\n(PARTITIONED BY \((.*?)\)\n)?", ddl, re.S)
            self.assertIsNotNone(m, t["name"])
            cols = [c.strip().replace("`", "").split() for c in m.group(1).split(",")]
            self.assertEqual(cols, t["columns"], t["name"])
            keys = [c.strip().split() for c in m.group(3).split(",")] if m.group(3) else []
            self.assertEqual(keys, t["partition_keys"], t["name"])


class IamRules(unittest.TestCase):
    def role(self, *statements, managed=()):
        return {"Resources": {"R": {"Type": "AWS::IAM::Role", "Properties": {
            "ManagedPolicyArns": list(managed),
            "Policies": [{"PolicyName": "p", "PolicyDocument": {"Statement": list(statements)}}]}}}}

    def test_broad_grants_are_refused(self):
        cases = [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"},
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"},
            {"Effect": "Allow", "Action": "dynamodb:BatchWriteItem", "Resource": ["*"]},
            {"Effect": "Allow", "Action": "*", "Resource": "arn:aws:s3:::b"},
            {"Fn::If": ["C", {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": "*"}, {"Ref": "AWS::NoValue"}]},
        ]
        for st in cases:
            self.assertTrue(check_template.iam_findings(self.role(st)), st)

    def test_scoped_data_and_unscopable_control_actions_pass(self):
        ok = self.role(
            {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/landing/*"},
            {"Effect": "Allow", "Action": "ec2:DescribeNetworkInterfaces", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:*", "Resource": "*"},
            managed=["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"])
        self.assertEqual(check_template.iam_findings(ok), [])
        self.assertTrue(check_template.iam_findings(self.role(managed=["arn:aws:iam::aws:policy/AdministratorAccess"])))

    def test_the_translated_template_is_least_privilege(self):
        self.assertEqual(check_template.iam_findings(check_template.translate(ROOT / "template.yaml")), [])


class Ports(unittest.TestCase):
    def test_a_listening_port_is_reported_taken_and_a_closed_one_free(self):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            self.assertFalse(stack.port_free(port))
        self.assertTrue(stack.port_free(port))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStackOnMoto(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        port = free_port()
        cls.moto = subprocess.Popen([str(ROOT / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cls.endpoint = f"http://127.0.0.1:{port}"
        stack.wait_http(cls.endpoint + "/moto-api/", "moto server")

    @classmethod
    def tearDownClass(cls):
        cls.moto.terminate()
        cls.moto.wait()

    def test_bootstrap_creates_everything_twice_over_and_routes_notifications(self):
        names = stack.bootstrap(self.endpoint)
        self.assertEqual(stack.bootstrap(self.endpoint), names, "bootstrap is idempotent")
        c = stack.clients(self.endpoint)
        bucket = names["LAKE_BUCKET"]
        self.assertEqual(bucket, "fleetlake-lake-123456789012-us-east-1")
        self.assertEqual(c["dynamodb"].describe_table(TableName="fleetlake-predictions")["Table"]["KeySchema"][0]["AttributeName"],
                         "transport_unit_id")
        self.assertEqual(c["glue"].get_database(Name="fleetlake")["Database"]["Name"], "fleetlake")
        loc = c["glue"].get_table(DatabaseName="fleetlake", Name="bronze_locations")["Table"]
        self.assertEqual([k["Name"] for k in loc["PartitionKeys"]], ["event_date"])
        self.assertEqual(loc["StorageDescriptor"]["Location"], f"s3://{bucket}/bronze/locations/_symlink_format_manifest/")
        queue = c["sqs"].get_queue_url(QueueName="fleetlake-delta-writer")["QueueUrl"]
        redrive = json.loads(c["sqs"].get_queue_attributes(QueueUrl=queue, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"])
        self.assertTrue(redrive["deadLetterTargetArn"].endswith(":fleetlake-delta-writer-dlq"))

        # An enriched object notifies the delta-writer queue; a landing/locations object does not.
        c["s3"].put_object(Bucket=bucket, Key="landing/locations/dt=2026-11-24/x.ndjson.gz", Body=b"")
        c["s3"].put_object(Bucket=bucket, Key="enriched/locations/dt=2026-11-24/a b.ndjson.gz", Body=b"")
        keys = []
        deadline = time.time() + 10
        while time.time() < deadline and not keys:
            for m in c["sqs"].receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
                for rec in json.loads(m["Body"]).get("Records", []):
                    keys.append(rec["s3"]["object"]["key"])
        self.assertEqual(len(keys), 1, keys)
        # Keys arrive form-encoded (moto encodes even the slashes): '+' is a space, then percent-decoding.
        self.assertEqual(urllib.parse.unquote_plus(keys[0]), "enriched/locations/dt=2026-11-24/a b.ndjson.gz")

        # A Delta commit reaches both partition-sync and the predictor through the topic, the S3 notification as
        # the message body (raw delivery).
        commit = "bronze/locations/_delta_log/00000000000000000003.json"
        c["s3"].put_object(Bucket=bucket, Key=commit, Body=b"{}")
        for name in ("fleetlake-partition-sync", "fleetlake-predictor"):
            url = c["sqs"].get_queue_url(QueueName=name)["QueueUrl"]
            got = []
            deadline = time.time() + 10
            while time.time() < deadline and not got:
                for m in c["sqs"].receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
                    body = json.loads(m["Body"])  # S3 also sends an s3:TestEvent when the rule is set
                    got += [urllib.parse.unquote_plus(r["s3"]["object"]["key"]) for r in body.get("Records", [])]
            self.assertEqual(got, [commit], name)


if __name__ == "__main__":
    unittest.main()
