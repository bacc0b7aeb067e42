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

import audit  # noqa: E402
import check_template  # noqa: E402
import identities  # noqa: E402
import stack  # noqa: E402
import pg_source  # noqa: E402


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


class SchemaGenerator(unittest.TestCase):
    def test_a_new_tables_ddl_stub_is_filled_and_a_second_run_changes_nothing(self):
        sys.path.insert(0, str(ROOT / "infra/schema"))
        import generate

        schema = json.loads((ROOT / "infra/schema/bronze.json").read_text())
        stack_def = json.loads((ROOT / "infra/local/stack.json").read_text())
        shipped = (ROOT / "infra/athena/bronze_tables.sql").read_text()
        head = "CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake.bronze_predictions (\n"
        start = shipped.index(head) + len(head)
        end = shipped.index("\nROW FORMAT", start)
        stub = shipped[:start] + "  transport_unit_id string\n)" + shipped[end:]
        once = generate.bronze_tables_sql(stub, stack_def, schema)
        self.assertEqual(once, shipped)
        self.assertEqual(generate.bronze_tables_sql(once, stack_def, schema), once)


class AthenaViews(unittest.TestCase):
    """The template's Glue views are the SQL files of infra/athena/views, in the form Athena stores a view."""

    def test_each_view_file_is_a_presto_view_in_the_template(self):
        import lake_sql

        template = stack.load_template(ROOT / "template.yaml")
        views = {r["Properties"]["TableInput"]["Name"]: r["Properties"] for r in template["Resources"].values()
                 if r["Type"] == "AWS::Glue::Table"
                 and r["Properties"]["TableInput"].get("TableType") == "VIRTUAL_VIEW"}
        files = {v.name: v for v in lake_sql.views()}
        self.assertEqual(set(views), set(files))
        for name, props in views.items():
            with self.subTest(name):
                self.assertEqual(props["DatabaseName"], {"Ref": "GlueDatabase"})
                table = props["TableInput"]
                head, encoded, tail = table["ViewOriginalText"]["Fn::Join"][1]
                self.assertEqual((head, tail), ("/* Presto View: ", " */"))
                text = encoded["Fn::Base64"]["Fn::Sub"].replace("${GlueDatabase}", "fleetlake")
                doc = json.loads(text)
                self.assertEqual(doc["originalSql"], files[name].text)
                self.assertEqual((doc["catalog"], doc["schema"]), ("awsdatacatalog", "fleetlake"))
                files[name].trino()
                columns = table["StorageDescriptor"]["Columns"]
                self.assertEqual([c["name"] for c in doc["columns"]], [c["Name"] for c in columns])
                hive = {"varchar": "string", "integer": "int", "timestamp(3)": "timestamp"}
                self.assertEqual([hive.get(c["type"], c["type"]) for c in doc["columns"]], [c["Type"] for c in columns])
                self.assertEqual(table["ViewExpandedText"], "/* Presto View */")
                self.assertEqual(table["Parameters"]["presto_view"], "true")


class ChangeLogViewRules(unittest.TestCase):
    """The views of infra/athena/views on DuckDB over change rows written directly: the ordering and duplicate rules
    that a pipeline run cannot produce on demand (delta-writer drops a re-emitted change before any view sees it)."""

    def setUp(self):
        import duckdb
        import lake_sql

        schema = json.loads((ROOT / "infra/schema/bronze.json").read_text())
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        for t in schema["tables"]:
            cols = ", ".join(f'"{n}" {lake_sql.DUCK_TYPES[k]}' for n, k in t["columns"] + t["partition_keys"])
            self.con.execute(f'CREATE TABLE "bronze_{t["bronze_table"]}" ({cols})')
        for view in lake_sql.views():
            self.con.execute(f'CREATE VIEW "{view.name}" AS {view.duckdb()}')

    def units(self, *changes):
        """(op, hour, lsn, offset, name) rows of transport_units, all on partition 0."""
        for key, op, hour, lsn, offset, name in changes:
            self.con.execute(
                "INSERT INTO bronze_transport_units (op, ts_ms, lsn, transport_unit_id, name, _source_partition, "
                "_source_offset) VALUES (?, TIMESTAMP '2026-11-24 00:00:00' + to_hours(?), ?, ?, ?, 0, ?)",
                [op, hour, lsn, key, name, offset])

    def rows(self, sql):
        cur = self.con.execute(sql)
        return [dict(zip([d[0] for d in cur.description], r)) for r in cur.fetchall()]

    def test_lsn_orders_changes_of_one_time_whatever_their_kafka_position(self):
        # Two changes in one transaction (one ts_ms) for each key: A's arrived in lsn order, E's the other way round.
        self.units(("A", "c", 1, 10, 0, "A0"), ("A", "u", 2, 20, 1, "A1"), ("A", "u", 2, 21, 2, "A2"),
                   ("E", "c", 1, 11, 3, "E0"), ("E", "u", 2, 23, 4, "E2"), ("E", "u", 2, 22, 5, "E1"))
        current = self.rows("SELECT * FROM transport_units_current ORDER BY transport_unit_id")
        self.assertEqual([r["name"] for r in current], ["A2", "E2"])
        history = self.rows("SELECT name, is_current FROM transport_units_history ORDER BY name")
        self.assertEqual([(r["name"], r["is_current"]) for r in history],
                         [("A0", False), ("A1", False), ("A2", True), ("E0", False), ("E1", False), ("E2", True)])

    def test_a_change_delivered_twice_is_one_version(self):
        self.units(("B", "c", 1, 10, 0, "B0"), ("B", "u", 2, 20, 1, "B1"), ("B", "u", 2, 20, 5, "B1"),
                   ("B", "u", 3, 30, 6, "B2"))
        history = self.rows("SELECT name, valid_from, valid_to FROM transport_units_history ORDER BY valid_from")
        self.assertEqual([r["name"] for r in history], ["B0", "B1", "B2"])
        self.assertEqual([r["valid_to"].hour if r["valid_to"] else None for r in history], [2, 3, None])
        self.assertEqual([r["name"] for r in self.rows("SELECT * FROM transport_units_current")], ["B2"])

    def test_a_delete_ends_the_key_and_a_reinsert_starts_it_again(self):
        self.units(("C", "c", 1, 10, 0, "C0"), ("C", "d", 2, 20, 1, "C0"), ("C", "c", 4, 40, 2, "C1"),
                   ("D", "c", 1, 11, 3, "D0"), ("D", "d", 3, 31, 4, "D0"))
        self.assertEqual([r["name"] for r in self.rows("SELECT * FROM transport_units_current")], ["C1"])
        history = self.rows("SELECT transport_unit_id AS k, name, valid_from, valid_to, is_current "
                            "FROM transport_units_history ORDER BY k, valid_from")
        hours = [(r["k"], r["name"], r["valid_from"].hour, r["valid_to"] and r["valid_to"].hour, r["is_current"])
                 for r in history]
        self.assertEqual(hours, [("C", "C0", 1, 2, False), ("C", "C1", 4, None, True), ("D", "D0", 1, 3, False)])


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
            {"Effect": "Deny", "Action": "s3:*", "Resource": "*"})
        self.assertEqual(check_template.iam_findings(ok), [])
        self.assertTrue(check_template.iam_findings(self.role(managed=["arn:aws:iam::aws:policy/AdministratorAccess"])))

    def test_aws_managed_policies_are_refused_and_the_templates_own_are_checked(self):
        """SAM's generated roles bring AWSLambdaSQSQueueExecutionRole and friends: SQS, Kafka and Logs on "*"."""
        for name in ("service-role/AWSLambdaBasicExecutionRole", "service-role/AWSLambdaSQSQueueExecutionRole",
                     "service-role/AWSLambdaMSKExecutionRole"):
            self.assertTrue(check_template.iam_findings(self.role(managed=[f"arn:aws:iam::aws:policy/{name}"])), name)
        own = self.role(managed=[{"Ref": "Tracing"}])
        own["Resources"]["Tracing"] = {"Type": "AWS::IAM::ManagedPolicy", "Properties": {"PolicyDocument": {"Statement": [
            {"Effect": "Allow", "Action": ["xray:PutTraceSegments"], "Resource": "*"}]}}}
        self.assertEqual(check_template.iam_findings(own), [])
        own["Resources"]["Tracing"]["Properties"]["PolicyDocument"]["Statement"].append(
            {"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Resource": "*"})
        self.assertTrue(check_template.iam_findings(own), "a data action on * inside the template's own policy")

    def test_a_role_that_reads_objects_must_tell_missing_from_forbidden(self):
        get = {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": {"Fn::Sub": "arn:${AWS::Partition}:s3:::lake/bronze/*"}}
        listed = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": {"Fn::Sub": "arn:${AWS::Partition}:s3:::lake"}}
        conditioned = dict(listed, Condition={"StringLike": {"s3:prefix": ["bronze/*"]}})
        other_bucket = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::elsewhere"}
        for statements in ([get], [get, conditioned], [get, other_bucket]):
            findings = check_template.missing_means_404_findings(self.role(*statements))
            self.assertEqual(len(findings), 1, statements)
            self.assertIn("403, not 404", findings[0])
        self.assertEqual(check_template.missing_means_404_findings(self.role(get, listed)), [])
        model = dict(get, Sid="ReadModel")
        self.assertEqual(check_template.missing_means_404_findings(self.role(model)), [], "objects that must exist")
        put_only = {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::lake/landing/*"}
        self.assertEqual(check_template.missing_means_404_findings(self.role(put_only)), [], "create-only writers")

    def test_the_translated_template_is_least_privilege(self):
        self.assertEqual(check_template.iam_findings(check_template.translate(ROOT / "template.yaml")), [])


class TemplateRules(unittest.TestCase):
    """The template's own promises beyond IAM statements, on mutated copies of the translated template."""

    @classmethod
    def setUpClass(cls):
        cls.cfn = check_template.translate(ROOT / "template.yaml")

    def mutated(self, change):
        cfn = copy.deepcopy(self.cfn)
        change(cfn["Resources"])
        return cfn

    def statements(self, resources, role):
        return resources[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]

    def test_the_template_passes(self):
        self.assertEqual(check_template.topic_key_findings(self.cfn), [])
        self.assertEqual(check_template.event_source_findings(self.cfn), [])
        self.assertEqual(check_template.service_publishers(self.cfn),
                         {"BronzeCommitsTopic": {"s3.amazonaws.com"}, "AlarmsTopic": {"cloudwatch.amazonaws.com"}})

    def test_a_topic_that_aws_services_publish_to_needs_a_key_open_to_them(self):
        def aws_managed(r):
            r["BronzeCommitsTopic"]["Properties"]["KmsMasterKeyId"] = "alias/aws/sns"

        def unencrypted(r):
            del r["AlarmsTopic"]["Properties"]["KmsMasterKeyId"]

        def closed_to_cloudwatch(r):
            policy = r["NotificationTopicsKey"]["Properties"]["KeyPolicy"]
            policy["Statement"] = [s for s in policy["Statement"] if s.get("Sid") != "AlarmsPublish"]

        def unscoped(r):
            for s in r["NotificationTopicsKey"]["Properties"]["KeyPolicy"]["Statement"]:
                if s.get("Sid") == "LakeBucketPublishesCommits":
                    s["Condition"] = {"StringEquals": {"aws:SourceAccount": "123456789012"}}

        for change, expected in ((aws_managed, "aws/sns key cannot be opened to s3.amazonaws.com"),
                                 (unencrypted, "AlarmsTopic: not encrypted"),
                                 (closed_to_cloudwatch, "does not let cloudwatch.amazonaws.com"),
                                 (unscoped, "without an aws:SourceArn condition")):
            findings = check_template.topic_key_findings(self.mutated(change))
            self.assertEqual(len(findings), 1, (change.__name__, findings))
            self.assertIn(expected, findings[0])

    def test_event_source_mappings_need_their_own_source_and_only_it(self):
        def no_poll(r):
            r["PredictorFunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"] = [
                s for s in self.statements(r, "PredictorFunctionRole") if s.get("Sid") != "PollOwnQueue"]

        def other_queue(r):
            for s in self.statements(r, "DeltaWriterFunctionRole"):
                if s.get("Sid") == "PollOwnQueue":
                    s["Resource"] = {"Fn::GetAtt": ["PredictorQueue", "Arn"]}

        def every_group(r):
            for s in self.statements(r, "MskLanderFunctionRole"):
                if s.get("Sid") == "CommitConsumerGroupOffsets":
                    s["Resource"].append({"Fn::Sub": ["arn:${AWS::Partition}:kafka:${AWS::Region}:${AWS::AccountId}:group/${P}/*", {}]})

        def unnamed_group(r):
            del r["MskLanderFunctionLocations"]["Properties"]["AmazonManagedKafkaEventSourceConfig"]

        for change, expected in ((no_poll, "PredictorFunctionRole lacks sqs:ReceiveMessage on its queue PredictorQueue"),
                                 (other_queue, "DeltaWriterFunctionRole lacks sqs:DeleteMessage on its queue DeltaWriterQueue"),
                                 (every_group, "may kafka-cluster:AlterGroup every group"),
                                 (unnamed_group, "MSK mapping without a ConsumerGroupId")):
            findings = check_template.event_source_findings(self.mutated(change))
            self.assertTrue(any(expected in f for f in findings), (change.__name__, findings))


class Auditors(unittest.TestCase):
    """checkov and cfn-guard findings are either suppressed in the template with a reason, or fail make test;
    and the project's own guard rules catch what they promise (the real cfn-guard, built by make audit-tools)."""

    def test_a_finding_is_explained_only_by_a_suppression_with_a_reason_on_its_resource(self):
        findings = [("guard", "lambda_inside_vpc_check", "PredictorFunction", "CT.LAMBDA.PR.3"),
                    ("guard", "lambda_function_public_access_prohibited_check", "PredictorFunctionFullRefreshPermission", "CT.LAMBDA.PR.2"),
                    ("checkov", "CKV_AWS_117", "DeltaWriterFunction", "VPC")]
        suppressed = {("guard", "lambda_inside_vpc_check", "PredictorFunction"): "no private resource to reach",
                      ("guard", "lambda_function_public_access_prohibited_check", "PredictorFunction"): "scoped by SourceArn",
                      ("checkov", "CKV_AWS_117", "PredictorFunction"): "not this one",
                      ("checkov", "CKV_AWS_21", "LakeBucket"): " "}
        sources = {"PredictorFunction", "DeltaWriterFunction", "LakeBucket"}
        explained, unexplained = audit.audit(findings, [], suppressed, sources)
        self.assertEqual(len(explained), 2, "its own resource, and what SAM generated from the suppressing resource")
        self.assertEqual(sorted(unexplained), sorted([
            "checkov CKV_AWS_117 on DeltaWriterFunction: VPC",
            "checkov CKV_AWS_117 on PredictorFunction: suppressed, but nothing matches it any more (remove it)",
            "checkov CKV_AWS_21 on LakeBucket: suppressed without a reason"]))

    def test_every_suppression_in_the_template_names_resources_and_gives_a_reason(self):
        cfn = check_template.translate(ROOT / "template.yaml")
        entries = cfn["Metadata"]["Audit"]["Suppressions"]
        self.assertTrue(entries)
        for e in entries:
            self.assertIn(e["tool"], ("checkov", "guard"))
            self.assertTrue(set(e["resources"]) <= set(cfn["Resources"]) | {audit.TEMPLATE}, e["id"])
            self.assertGreater(len(e["comment"]), 40, e["id"])

    def guard(self, cfn):
        import os
        tool = os.environ.get("CFN_GUARD")
        if not tool:
            self.fail("CFN_GUARD names the cfn-guard binary (make test-infra sets it, after make audit-tools)")
        path = Path(tempfile.mkdtemp(prefix="fleetlake-guard-")) / "t.json"
        path.write_text(json.dumps(cfn))
        return {rule for rule, _, _ in audit.guard_findings(tool, [audit.OWN_RULES], path)}

    def test_a_guard_failure_that_names_no_resource_is_the_templates(self):
        rules = Path(tempfile.mkdtemp(prefix="fleetlake-guard-")) / "nameless.guard"
        rules.write_text("rule nameless_check { Parameters.NoSuchParameter exists }\n")
        path = rules.parent / "t.json"
        path.write_text(json.dumps({"Resources": {"Q": {"Type": "AWS::SQS::Queue", "Properties": {}}}}))
        import os
        found = audit.guard_findings(os.environ["CFN_GUARD"], [rules], path)
        self.assertEqual([(rule, lid) for rule, lid, _ in found], [("nameless_check", audit.TEMPLATE)])

    def test_the_projects_guard_rules_refuse_what_they_promise_against(self):
        cfn = check_template.translate(ROOT / "template.yaml")
        self.assertEqual(self.guard(cfn), set())
        bad = copy.deepcopy(cfn)
        r = bad["Resources"]
        r["BronzeCommitsTopic"]["Properties"]["KmsMasterKeyId"] = "alias/aws/sns"
        del r["DeltaWriterQueue"]["Properties"]["SqsManagedSseEnabled"]
        r["PredictorFunctionRole"]["Properties"]["ManagedPolicyArns"].append(
            "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole")
        r["LakeBucket"]["Properties"]["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] = False
        del r["PartitionSyncFunctionDeltaCommits"]["Properties"]["FunctionResponseTypes"]
        del r["PredictorLogGroup"]["Properties"]["RetentionInDays"]
        self.assertEqual(self.guard(bad), {"fleetlake_topics_customer_key", "fleetlake_queues_encrypted",
                                           "fleetlake_no_aws_managed_policies", "fleetlake_bucket_private",
                                           "fleetlake_partial_batches", "fleetlake_log_retention"})


class EventShapes(unittest.TestCase):
    """Every sample in events/ has the shape AWS documents for its kind (infra/events/shapes.json), down to the
    notifications inside SQS bodies and SNS envelopes."""

    shapes = json.loads((ROOT / "infra/events/shapes.json").read_text())

    def schema(self, kind):
        from jsonschema import Draft202012Validator
        return Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": self.shapes["$defs"]})

    def kind(self, doc):
        if "Records" in doc:
            first = doc["Records"][0]
            return "sqs_event" if first.get("eventSource") == "aws:sqs" else "s3_notification"
        if doc.get("eventSource") == "aws:kafka":
            return "msk_event"
        if doc.get("Type") == "Notification":
            return "sns_envelope"
        if doc.get("Event") == "s3:TestEvent":
            return "s3_test_event"
        if doc.get("version") == "2.0" and "rawPath" in doc:
            return "http_v2"
        if doc and set(doc) <= {"task", "table", "tables", "partition", "idle_minutes", "dry_run"}:
            return "maintenance_request"
        return {"Object Created": "eventbridge_s3", "Scheduled Event": "eventbridge_schedule"}.get(doc.get("detail-type"))

    def check(self, where, doc, seen):
        kind = self.kind(doc)
        self.assertIsNotNone(kind, f"{where}: not an event kind AWS sends")
        seen.add(kind)
        errors = sorted(self.schema(kind).iter_errors(doc), key=str)
        self.assertEqual([f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors], [], f"{where} ({kind})")
        inner = []
        if kind == "sqs_event":
            inner = [(f"{where} record {i} body", r["body"]) for i, r in enumerate(doc["Records"])]
        elif kind == "sns_envelope":
            inner = [(f"{where} Message", doc["Message"])]
        for w, text in inner:
            self.check(w, json.loads(text), seen)

    def test_every_sample_has_the_shape_aws_documents(self):
        seen = set()
        samples = sorted((ROOT / "events").glob("*/*.json"))
        self.assertGreaterEqual(len(samples), 11)
        for path in samples:
            self.check(str(path.relative_to(ROOT)), json.loads(path.read_text()), seen)
        self.assertEqual(seen, set(self.shapes["$defs"]) - {"s3_record", "sqs_record"}, "every kind has a sample")

    def test_a_sample_missing_a_documented_field_is_refused(self):
        doc = json.loads((ROOT / "events/weather-enricher/s3-direct.json").read_text())
        del doc["Records"][0]["s3"]["object"]["sequencer"]
        with self.assertRaises(AssertionError):
            self.check("edited", doc, set())


class DeployDocs(unittest.TestCase):
    def test_the_memory_sizes_in_the_docs_are_the_templates(self):
        template = stack.load_template(ROOT / "template.yaml")
        default = template["Globals"]["Function"].get("MemorySize")
        want = {}
        for res in template["Resources"].values():
            if res.get("Type") == "AWS::Serverless::Function":
                want[res["Metadata"]["BuildProperties"]["Binary"]] = res["Properties"].get("MemorySize", default)
        text = (ROOT / "docs/deploy.md").read_text()
        got = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| ([a-z-]+) \| (\d+) MB \|", text, re.M)}
        self.assertEqual(got, want)


class EnforcedIdentities(unittest.TestCase):
    """The policies the end-to-end tests enforce through moto, and what moto cannot check of them."""

    NAMES = {"LAKE_BUCKET": "fleetlake-lake-123456789012-us-east-1", "GLUE_DATABASE": "fleetlake",
             "TABLE_PredictionsTable": "fleetlake-predictions", "TOPIC_BronzeCommitsTopic": "fleetlake-bronze-commits",
             **{f"QUEUE_{q['logical_id']}": stack.resolve(q["name"], stack.definition()["locals"])
                for q in stack.definition()["queues"]},
             **{f"QUEUE_{q['dead_letter']['logical_id']}": stack.resolve(q["dead_letter"]["name"], stack.definition()["locals"])
                for q in stack.definition()["queues"] if "dead_letter" in q},
             # `stack.py up --postgres` sets pg-poller's parameters (infra/local/pg_source.py).
             "PARAMETER_PgPollerSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:fleetlake-pg-poller-Ab12Cd",
             "PARAMETER_PgPollerCaBundle": "s3://fleetlake-config-123456789012/pg-poller/ca.pem"}

    @classmethod
    def setUpClass(cls):
        cls.cfn = check_template.translate(ROOT / "template.yaml")
        cls.statements = identities.function_statements(cls.cfn, stack.definition(), cls.NAMES)

    def test_a_function_the_template_leaves_out_gets_no_identity(self):
        """Without pg-poller's parameters its condition is false: the stack has no pg-poller to run."""
        names = {k: v for k, v in self.NAMES.items() if not k.startswith("PARAMETER_")}
        statements = identities.function_statements(self.cfn, stack.definition(), names)
        self.assertEqual(set(self.statements) - set(statements), {"PgPollerFunction"})

    def test_with_iam_authentication_the_poller_may_connect_as_its_user_and_read_no_secret(self):
        names = dict(self.NAMES, PARAMETER_PgPollerAuth="iam", PARAMETER_PgPollerDbUser="fleetlake_poller",
                     PARAMETER_PgPollerDbiResourceId="db-ABCDEFGHIJKLMNOPQRSTUVWXY1", PARAMETER_PgPollerHost="db.local")
        sts = identities.function_statements(self.cfn, stack.definition(), names)["PgPollerFunction"]
        grants = {(a, r) for st in sts for a in check_template.as_list(st["Action"])
                  for r in check_template.as_list(st["Resource"]) if a.split(":")[0] in ("rds-db", "secretsmanager")}
        self.assertEqual(grants, {("rds-db:connect", "arn:aws:rds-db:us-east-1:123456789012:dbuser:"
                                                     "db-ABCDEFGHIJKLMNOPQRSTUVWXY1/fleetlake_poller")})
        del names["PARAMETER_PgPollerSecretArn"]
        self.assertIn("PgPollerFunction", identities.function_statements(self.cfn, stack.definition(), names),
                      "IAM authentication enables pg-poller without a secret")

    def test_the_poller_reads_only_its_secret_and_its_ca_bundle(self):
        sts = self.statements["PgPollerFunction"]
        reads = {(a, r) for st in sts for a in check_template.as_list(st["Action"])
                 for r in check_template.as_list(st["Resource"]) if a in ("secretsmanager:GetSecretValue", "s3:GetObject")}
        self.assertEqual(reads, {
            ("secretsmanager:GetSecretValue", self.NAMES["PARAMETER_PgPollerSecretArn"]),
            ("s3:GetObject", "arn:aws:s3:::fleetlake-config-123456789012/pg-poller/ca.pem"),
            ("s3:GetObject", "arn:aws:s3:::fleetlake-lake-123456789012-us-east-1/state/pg-poller/*")})

    def test_every_function_gets_its_own_resolved_statements(self):
        self.assertEqual(set(self.statements), {f["logical_id"] for f in stack.definition()["functions"]})
        for lid, sts in self.statements.items():
            self.assertTrue(sts, lid)
            self.assertNotIn("${", json.dumps(sts), f"{lid}: an unresolved substitution")
            self.assertNotIn("Fn::", json.dumps(sts), f"{lid}: an unresolved intrinsic function")

    def test_what_moto_cannot_scope_is_scoped_to_the_stacks_own_resources(self):
        """moto evaluates non-S3, non-SQS requests against Resource "*": their grants are widened for moto, so
        their resources are checked here, in the policy text."""
        region_account = "us-east-1:123456789012"
        own = {
            "dynamodb": {f"arn:aws:dynamodb:{region_account}:table/fleetlake-predictions"},
            "glue": {f"arn:aws:glue:{region_account}:catalog", f"arn:aws:glue:{region_account}:database/fleetlake",
                     f"arn:aws:glue:{region_account}:table/fleetlake/*"},
            "kafka-cluster": None,  # MSK is not part of the local stack: checked by the least-privilege rules only
            "kafka": None,
            "ec2": None,  # the MSK mapping's network interfaces: unscopable, control plane
            "xray": None,  # PutTraceSegments takes no resource
            "secretsmanager": {self.NAMES["PARAMETER_PgPollerSecretArn"]},
            "logs": {f"arn:aws:logs:{region_account}:log-group:/aws/lambda/fleetlake-{name}:*" for name in
                     ("msk-lander", "weather-enricher", "delta-writer", "partition-sync", "predictor", "predictions-api",
                      "lake-maintainer", "pg-poller")},
            "ssm": None,  # only with WeatherApiKeyParameter set (a parameter ARN)
        }
        seen = set()
        for lid, sts in self.statements.items():
            for st in sts:
                for action in check_template.as_list(st["Action"]):
                    service = action.split(":", 1)[0]
                    if service in identities.MOTO_RESOURCE_AWARE:
                        continue
                    self.assertIn(service, own, f"{lid}: {action} is of a service this test does not know")
                    if own[service] is not None:
                        seen.add(service)
                        self.assertTrue(set(check_template.as_list(st["Resource"])) <= own[service], (lid, st))
        self.assertEqual(seen, {"dynamodb", "glue", "logs", "secretsmanager"})

    def test_the_moto_copy_widens_only_what_moto_cannot_scope(self):
        policy = identities.for_moto([
            {"Effect": "Allow", "Action": ["s3:GetObject", "glue:GetTable"], "Resource": ["arn:aws:s3:::b/x/*", "arn:aws:glue:r:a:catalog"]},
            {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:r:a:q"},
        ])["Statement"]
        self.assertEqual(policy[0]["Action"], ["s3:GetObject"])
        self.assertEqual(policy[0]["Resource"], ["arn:aws:s3:::b/x/*", "arn:aws:glue:r:a:catalog"])
        self.assertEqual((policy[1]["Action"], policy[1]["Resource"]), (["glue:GetTable"], "*"))
        self.assertEqual(policy[2]["Resource"], "arn:aws:sqs:r:a:q")


class EnforcedStack(unittest.TestCase):
    """`stack.py up --enforce-iam` really enforces: each function identity may do what its policy grants, and
    nothing else."""

    def test_each_function_identity_holds_exactly_its_grants(self):
        import boto3
        import os
        state = Path(tempfile.mkdtemp(prefix="fleetlake-iam-")) / "state"
        env = dict(os.environ, FLEETLAKE_STATE=str(state))
        subprocess.run([sys.executable, ROOT / "infra/local/stack.py", "up", "--enforce-iam", "--moto-port", str(free_port())],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        try:
            names = dict(line.split("=", 1) for line in (state / "stack.env").read_text().split())
            endpoint, bucket = names["AWS_ENDPOINT_URL"], names["LAKE_BUCKET"]

            def client(service, lid=None):
                key, secret = (names[f"FUNCTION_CREDENTIALS_{lid}"].split(":", 1) if lid else
                               (names["AWS_ACCESS_KEY_ID"], names["AWS_SECRET_ACCESS_KEY"]))
                return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                                    aws_access_key_id=key, aws_secret_access_key=secret)

            def denied(call):
                try:
                    call()
                except client("s3").exceptions.ClientError as e:
                    return e.response["Error"]["Code"] in ("AccessDenied", "AccessDeniedException", "403")
                return False

            lander = client("s3", "MskLanderFunction")
            lander.put_object(Bucket=bucket, Key="landing/locations/dt=2026-11-30/x.ndjson.gz", Body=b"x")
            self.assertTrue(denied(lambda: lander.get_object(Bucket=bucket, Key="landing/locations/dt=2026-11-30/x.ndjson.gz")))
            self.assertTrue(denied(lambda: lander.put_object(Bucket=bucket, Key="bronze/locations/x", Body=b"x")))
            sync = client("s3", "PartitionSyncFunction")
            # moto answers 404 for a missing key whatever the grant (AWS answers 403 without s3:ListBucket):
            # IamRules.test_a_role_that_reads_objects_must_tell_missing_from_forbidden holds the AWS rule.
            with self.assertRaises(sync.exceptions.NoSuchKey, msg="a missing manifest is 404 for partition-sync"):
                sync.get_object(Bucket=bucket, Key="bronze/locations/_symlink_format_manifest/event_date=2026-11-30/manifest")
            api = client("dynamodb", "PredictionsApiFunction")
            table = names["PREDICTIONS_TABLE"]
            api.query(TableName=table, KeyConditionExpression="transport_unit_id = :u",
                      ExpressionAttributeValues={":u": {"S": "TU-1"}})
            self.assertTrue(denied(lambda: api.put_item(TableName=table, Item={"transport_unit_id": {"S": "TU-1"},
                                                                                 "predicted_at": {"S": "x"}})))
            stranger = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                    aws_access_key_id="testing", aws_secret_access_key="testing")
            with self.assertRaises(stranger.exceptions.ClientError):
                stranger.list_objects_v2(Bucket=bucket)
        finally:
            subprocess.run([sys.executable, ROOT / "infra/local/stack.py", "down"], env=env, check=False,
                           stdout=subprocess.DEVNULL)


class PgSource(unittest.TestCase):
    """infra/local/pg_source.py: what the demo writes to PostgreSQL and how many versions its polls can see."""

    PLAN = {"day": "2026-11-24", "changes": [
        {"at": "2026-11-24T00:05:00.000+00:00", "op": "c", "key": {"transport_unit_id": "TU-1", "stat_date": "2026-11-23"},
         "row": {"transport_unit_id": "TU-1", "stat_date": "2026-11-23", "fuel_used_l": 10.5}},
        {"at": "2026-11-24T00:40:00.000+00:00", "op": "u", "key": {"transport_unit_id": "TU-1", "stat_date": "2026-11-23"},
         "row": {"transport_unit_id": "TU-1", "stat_date": "2026-11-23", "fuel_used_l": 11.0}},
        {"at": "2026-11-24T03:00:00.000+00:00", "op": "c", "key": {"transport_unit_id": "TU-'2", "stat_date": "2026-11-24"},
         "row": {"transport_unit_id": "TU-'2", "stat_date": "2026-11-24", "fuel_used_l": None}},
    ]}

    def test_every_hour_is_polled_and_a_version_replaced_within_the_hour_is_never_seen(self):
        hours = pg_source.hours_of(self.PLAN)
        self.assertEqual([(h, len(c)) for h, c in hours], [(0, 2), (1, 0), (2, 0), (3, 1)])
        self.assertEqual([pg_source.visible(c) for _, c in hours], [1, 0, 0, 1])

    def test_writes_set_updated_at_and_quote_what_they_carry(self):
        insert, update, other = (pg_source.statement(c) for c in self.PLAN["changes"])
        self.assertTrue(insert.endswith("VALUES ('TU-1', '2026-11-23', 10.5, now());"), insert)
        self.assertTrue(update.startswith("UPDATE performance_stats SET fuel_used_l = 11.0, updated_at = now() WHERE"))
        self.assertIn("WHERE stat_date = '2026-11-23' AND transport_unit_id = 'TU-1'", update)
        self.assertIn("'TU-''2'", other)
        self.assertIn("NULL", other)
        self.assertEqual(pg_source.hours_of({"day": "2026-11-24", "changes": []}), [])


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
        # The analysts' views, as the deployment creates them: each one's SQL is its file's.
        import base64
        import lake_sql
        views = {t["Name"]: t for t in c["glue"].get_tables(DatabaseName="fleetlake")["TableList"]
                 if t.get("TableType") == "VIRTUAL_VIEW"}
        self.assertEqual(set(views), {v.name for v in lake_sql.views()})
        for v in lake_sql.views():
            text = views[v.name]["ViewOriginalText"]
            doc = json.loads(base64.b64decode(text.removeprefix("/* Presto View: ").removesuffix(" */")))
            self.assertEqual((doc["originalSql"], doc["schema"]), (v.text, "fleetlake"))
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
