#!/usr/bin/env python3
"""fleetlake's local stack: moto server + the weather stub on loopback, and the lake's resources created from
the one definition in infra/local/stack.json.

    stack.py up [--moto-port 5000] [--weather-port 8089] [--weather-stub BIN] [--enforce-iam] [--postgres]
                                                                                start, bootstrap, write .local/stack.env
    stack.py bootstrap --endpoint URL                                           create the resources on a running moto
    stack.py down                                                               stop what `up` started
    stack.py serve-api --bin-dir DIR [--port 9100]                              predictions-api's Function URL, until down
    stack.py check-template [--template template.yaml]                          stack.json and template.yaml agree
    stack.py summary                                                            what is in the lake right now
    stack.py s3-events --prefix P --out DIR                                     S3 notification events for the objects under P
"""
import argparse
import gzip
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = ROOT / "infra" / "local" / "stack.json"
STATE = Path(os.environ.get("FLEETLAKE_STATE") or ROOT / ".local")  # a test runs its own stack elsewhere
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
               "AWS_DEFAULT_REGION": "us-east-1"}


def definition():
    return json.loads(DEFINITION.read_text())


def resolve(text, locals_):
    """Substitutes ${Name} the way CloudFormation's Fn::Sub does, with the local stack's values."""
    def sub(m):
        if m.group(1) not in locals_:
            raise SystemExit(f"stack.json: no local value for ${{{m.group(1)}}}")
        return locals_[m.group(1)]
    return re.sub(r"\$\{([^}]+)\}", sub, text)


def clients(endpoint):
    import boto3
    kw = dict(endpoint_url=endpoint, region_name=CREDENTIALS["AWS_REGION"],
              aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    return {name: boto3.client(name, **kw) for name in ("s3", "sqs", "sns", "dynamodb", "glue", "secretsmanager")}


def key_filter(n):
    return {"Key": {"FilterRules": [{"Name": "prefix", "Value": n["prefix"]}, {"Name": "suffix", "Value": n["suffix"]}]}}


def bootstrap(endpoint):
    """Creates bucket, queues (with dead-letter queues and S3 access), notifications, tables and the Glue
    database. Safe to run again: what exists is left as it is."""
    d = definition()
    loc = d["locals"]
    c = clients(endpoint)
    bucket = resolve(d["bucket"]["name"], loc)
    try:
        c["s3"].create_bucket(Bucket=bucket)
    except c["s3"].exceptions.BucketAlreadyOwnedByYou:
        pass
    c["s3"].put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    c["s3"].put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]})

    queue_configs, queue_arns = [], {}
    for q in d["queues"]:
        attributes = {"VisibilityTimeout": str(q["visibility_timeout_s"])}
        if "dead_letter" in q:
            dlq_url = c["sqs"].create_queue(QueueName=resolve(q["dead_letter"]["name"], loc))["QueueUrl"]
            dlq_arn = c["sqs"].get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": dlq_arn,
                                                      "maxReceiveCount": str(q["dead_letter"]["max_receive_count"])})
        url = c["sqs"].create_queue(QueueName=resolve(q["name"], loc))["QueueUrl"]
        c["sqs"].set_queue_attributes(QueueUrl=url, Attributes=attributes)
        arn = c["sqs"].get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue_arns[q["logical_id"]] = arn
        for n in q["notifications"]:
            queue_configs.append({"QueueArn": arn, "Events": ["s3:ObjectCreated:*"], "Filter": key_filter(n)})
    # Locally, S3's direct invocations (s3_trigger) go through a queue of their own that infra/router polls.
    local_queues = {}
    for f in d["functions"]:
        if "s3_trigger" in f:
            name = resolve(f["name"], loc) + "-local-s3"
            url = c["sqs"].create_queue(QueueName=name)["QueueUrl"]
            arn = c["sqs"].get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            queue_configs.append({"QueueArn": arn, "Events": ["s3:ObjectCreated:*"], "Filter": key_filter(f["s3_trigger"])})
            local_queues[f"LOCAL_QUEUE_{f['logical_id']}"] = name
    topic_configs = []
    for t in d.get("topics", []):
        topic_arn = c["sns"].create_topic(Name=resolve(t["name"], loc))["TopicArn"]
        subscribed = {s["Endpoint"] for s in c["sns"].list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]}
        for logical_id in t["subscribers"]:
            if queue_arns[logical_id] not in subscribed:
                c["sns"].subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arns[logical_id],
                                   Attributes={"RawMessageDelivery": "true"})
        for n in t["notifications"]:
            topic_configs.append({"TopicArn": topic_arn, "Events": ["s3:ObjectCreated:*"], "Filter": key_filter(n)})
    c["s3"].put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": queue_configs, "TopicConfigurations": topic_configs})

    for t in d["tables"]:
        name = resolve(t["name"], loc)
        try:
            c["dynamodb"].create_table(
                TableName=name, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": t["hash_key"], "AttributeType": "S"},
                                      {"AttributeName": t["range_key"], "AttributeType": "S"}],
                KeySchema=[{"AttributeName": t["hash_key"], "KeyType": "HASH"},
                           {"AttributeName": t["range_key"], "KeyType": "RANGE"}])
        except c["dynamodb"].exceptions.ResourceInUseException:
            pass
        c["dynamodb"].update_time_to_live(TableName=name, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": t["ttl_attribute"]})

    db = resolve(d["glue_database"]["name"], loc)
    try:
        c["glue"].create_database(DatabaseInput={"Name": db, "Description": "fleetlake bronze tables (Delta Lake on S3)"})
    except c["glue"].exceptions.AlreadyExistsException:
        pass
    tables = [glue_table_input(t, bucket, d["bucket"]["prefixes"]["bronze"]) for t in d.get("glue_tables", [])]
    for table_input in tables + template_views(db):
        try:
            c["glue"].create_table(DatabaseName=db, TableInput=table_input)
        except c["glue"].exceptions.AlreadyExistsException:
            c["glue"].update_table(DatabaseName=db, TableInput=table_input)
    return {"LAKE_BUCKET": bucket, "GLUE_DATABASE": db,
            **{f"QUEUE_{q['logical_id']}": resolve(q["name"], loc) for q in d["queues"]},
            **{f"QUEUE_{q['dead_letter']['logical_id']}": resolve(q["dead_letter"]["name"], loc)
               for q in d["queues"] if "dead_letter" in q},
            **{f"TOPIC_{t['logical_id']}": resolve(t["name"], loc) for t in d.get("topics", [])},
            **{f"TABLE_{t['logical_id']}": resolve(t["name"], loc) for t in d["tables"]},
            **local_queues,
            "PREDICTIONS_TABLE": resolve(d["tables"][0]["name"], loc)}


MANIFEST_FOLDER = "_symlink_format_manifest"
SYMLINK_INPUT = "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
HIVE_TEXT_OUTPUT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"


def glue_table_input(t, bucket, bronze_prefix):
    """A Glue table over a bronze table's symlink manifests, as template.yaml defines it."""
    return {
        "Name": t["name"],
        "Description": f"bronze/{t['bronze_table']} (Delta Lake) through its symlink manifests, kept by partition-sync",
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
        "PartitionKeys": [{"Name": n, "Type": ty} for n, ty in t["partition_keys"]],
        "StorageDescriptor": {
            "Location": f"s3://{bucket}/{bronze_prefix}{t['bronze_table']}/{MANIFEST_FOLDER}/",
            "InputFormat": SYMLINK_INPUT,
            "OutputFormat": HIVE_TEXT_OUTPUT,
            "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE},
            "Columns": [{"Name": n, "Type": ty} for n, ty in t["columns"]],
        },
    }


def template_views(database):
    """The analysts' views as template.yaml defines them (Glue tables of type VIRTUAL_VIEW, generated from
    infra/athena/views), with the template's intrinsics resolved for `database`."""
    import base64

    views = []
    for r in load_template(ROOT / "template.yaml")["Resources"].values():
        table = r.get("Properties", {}).get("TableInput", {})
        if r["Type"] != "AWS::Glue::Table" or table.get("TableType") != "VIRTUAL_VIEW":
            continue
        head, encoded, tail = table["ViewOriginalText"]["Fn::Join"][1]
        text = encoded["Fn::Base64"]["Fn::Sub"].replace("${GlueDatabase}", database)
        views.append(dict(table, ViewOriginalText=head + base64.b64encode(text.encode()).decode() + tail))
    return views


def wait_http(url, what, seconds=60, proc=None, log=None):
    deadline = time.time() + seconds
    while True:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}) while starting; see .local/{log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception as e:  # refused while starting, or an HTTP error status: both mean "not yet"
            if getattr(e, "code", None):
                return
            if time.time() > deadline:
                raise SystemExit(f"{what} did not answer on {url} within {seconds} s")
            time.sleep(0.2)


def port_free(port):
    """Whether nothing listens on the port (connections of a stopped server in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start(cmd, log, port, env=None, **popen):
    """Starts a server in its own session and records its pid at once, so `down` finds it whatever happens next
    (`popen`: more of subprocess.Popen's arguments, such as the user to run as)."""
    if not port_free(port):
        raise SystemExit(f"port {port} is already taken (a local stack still up? `make down`, or choose another port)")
    STATE.mkdir(exist_ok=True)
    out = open(STATE / log, "ab")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, **popen)
    with open(STATE / "pids", "a") as pids:
        pids.write(f"{proc.pid}\n")
    return proc


def enforce_iam(endpoint):
    """With moto's IAM enforcement on (it allows the first 3 requests unsigned): an administrator whose keys the
    stack, the router and the tests use from then on."""
    import boto3
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    iam.create_user(UserName="stack-admin")
    iam.put_user_policy(UserName="stack-admin", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="stack-admin")["AccessKey"]
    CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"] = key["AccessKeyId"], key["SecretAccessKey"]


def function_identities(endpoint, names):
    """An IAM user per function holding exactly its statements of the template (infra/policy/identities.py):
    {FUNCTION_CREDENTIALS_<logical id>: "<key id>:<secret>"} for stack.env, which the router hands to each function."""
    import boto3
    sys.path.insert(0, str(ROOT / "infra" / "policy"))
    import check_template
    import identities
    cfn = check_template.translate(ROOT / "template.yaml")
    statements = identities.function_statements(cfn, definition(), names)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    keys = identities.create_users(iam, statements)
    return {f"FUNCTION_CREDENTIALS_{lid}": f"{k}:{secret}" for lid, (k, secret) in keys.items()}


def up(args):
    down(quiet=True)
    moto_bin = ROOT / ".venv" / "bin" / "moto_server"
    if not moto_bin.exists():
        raise SystemExit(f"{moto_bin} is missing: run `make venv`")
    moto_env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3") if args.enforce_iam else None
    moto = start([str(moto_bin), "-H", args.host, "-p", str(args.moto_port)], "moto.log", args.moto_port, env=moto_env)
    endpoint = f"http://127.0.0.1:{args.moto_port}"
    wait_http(endpoint + "/moto-api/", "moto server", proc=moto, log="moto.log")
    if args.enforce_iam:
        enforce_iam(endpoint)
    weather_url = ""
    if args.weather_stub:
        stub = start([args.weather_stub, "--host", args.host, "--port", str(args.weather_port)], "weather-stub.log",
                     args.weather_port)
        weather_url = f"http://127.0.0.1:{args.weather_port}"
        wait_http(weather_url + "/health", "weather stub", proc=stub, log="weather-stub.log")
    names = bootstrap(endpoint)
    if args.postgres:
        # PostgreSQL for pg-poller (infra/local/pg_source.py): its secret and CA bundle join the settings.
        import pg_source
        settings = pg_source.start(STATE, args.postgres_port, start, host=args.host)
        # Its passwords: readable by this user only, from the moment the file exists.
        fd = os.open(STATE / "postgres.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(settings))
        names.update(pg_source.register(settings, clients(endpoint), names["LAKE_BUCKET"],
                                        resolve("${NamePrefix}-pg-poller", definition()["locals"])))
    if args.enforce_iam:
        names.update(function_identities(endpoint, names))
    # What every function gets (template.yaml Globals): cargo lambda watch reads this file for the demo.
    env = {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS, **names, **definition().get("function_environment", {})}
    # predictions-api signs its pagination tokens with this (in AWS: a generated Secrets Manager secret).
    env["PAGINATION_KEY"] = secrets.token_urlsafe(32)
    if weather_url:
        env["WEATHER_API_URL"] = weather_url
    (STATE / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    # The same for cargo lambda's --env-file (dotenv syntax): values quoted, as GLIBC_TUNABLES holds a second `=`.
    (STATE / "lambda.env").write_text("".join(f'{k}="{v}"\n' for k, v in env.items()))
    print(f"local stack up: moto {endpoint}" + (f", weather stub {weather_url}" if weather_url else "")
          + (f", PostgreSQL on 127.0.0.1:{args.postgres_port}" if args.postgres else ""))
    print(f"  bucket s3://{names['LAKE_BUCKET']}, Glue database {names['GLUE_DATABASE']}; settings in .local/stack.env")


def down(quiet=False):
    import pg_source
    pid_file = STATE / "pids"
    if not pid_file.exists():
        pg_source.remove(STATE)  # a cluster folder left by an `up` that failed early
        return
    pids = [int(p) for p in pid_file.read_text().split()]
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.time() + 10
    for pid in pids:  # wait until each is gone, so its port is free again
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    pid_file.unlink()
    pg_source.remove(STATE)
    if not quiet:
        print("local stack stopped")


# ------------------------------------------------------------------------------------------ template agreement
def load_template(path):
    from cfnlint.decode import decode
    template, matches = decode(str(path))
    if matches:
        raise SystemExit(f"{path}: {matches}")
    return template


def sub_text(value):
    """The text of a !Sub (short or long form), or a plain string."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Sub" in value:
        s = value["Fn::Sub"]
        return s if isinstance(s, str) else s[0]
    return json.dumps(value)


def check_template(args):
    d = definition()
    template = load_template(args.template)
    res = template["Resources"]
    problems = []

    def expect(what, got, want):
        if got != want:
            problems.append(f"{what}: template has {got!r}, stack.json has {want!r}")

    def resource(logical_id, type_):
        r = res.get(logical_id)
        if r is None or r.get("Type") != type_:
            problems.append(f"template has no {type_} {logical_id}")
            return {}
        return r.get("Properties", {})

    bucket = resource(d["bucket"]["logical_id"], "AWS::S3::Bucket")
    expect("bucket name", sub_text(bucket.get("BucketName")), d["bucket"]["name"])
    def target(ref):
        if isinstance(ref, dict) and "Fn::GetAtt" in ref:
            return ref["Fn::GetAtt"][0]
        if isinstance(ref, dict) and "Ref" in ref:
            return ref["Ref"]
        return str(ref)

    def rules_of(kind, field):
        return sorted((target(q[field]),
                       {r["Name"]: r["Value"] for r in q["Filter"]["S3Key"]["Rules"]}.get("prefix"),
                       {r["Name"]: r["Value"] for r in q["Filter"]["S3Key"]["Rules"]}.get("suffix"))
                      for q in bucket.get("NotificationConfiguration", {}).get(kind, []))
    topics = d.get("topics", [])
    want_notifications = sorted((q["logical_id"], n["prefix"], n["suffix"]) for q in d["queues"] for n in q["notifications"])
    want_topic_notifications = sorted((t["logical_id"], n["prefix"], n["suffix"]) for t in topics for n in t["notifications"])
    expect("S3 -> SQS notifications (queue, prefix, suffix)", rules_of("QueueConfigurations", "Queue"), want_notifications)
    expect("S3 -> SNS notifications (topic, prefix, suffix)", rules_of("TopicConfigurations", "Topic"), want_topic_notifications)
    for t in topics:
        p = resource(t["logical_id"], "AWS::SNS::Topic")
        expect(f"{t['logical_id']} name", sub_text(p.get("TopicName")), t["name"])
        subs = sorted(target(r["Properties"].get("Endpoint")) for r in res.values()
                      if r.get("Type") == "AWS::SNS::Subscription" and target(r["Properties"].get("TopicArn")) == t["logical_id"]
                      and r["Properties"].get("Protocol") == "sqs" and r["Properties"].get("RawMessageDelivery") is True)
        expect(f"{t['logical_id']} SQS subscribers (raw delivery)", subs, sorted(t["subscribers"]))
    want_notifications = want_notifications + want_topic_notifications
    prefixes = set(d["bucket"]["prefixes"].values())
    for _, prefix, _ in want_notifications:
        if not any(prefix.startswith(p) for p in prefixes):
            problems.append(f"notification prefix {prefix} is under no lake prefix {sorted(prefixes)}")

    for q in d["queues"]:
        p = resource(q["logical_id"], "AWS::SQS::Queue")
        expect(f"{q['logical_id']} name", sub_text(p.get("QueueName")), q["name"])
        expect(f"{q['logical_id']} visibility timeout", p.get("VisibilityTimeout"), q["visibility_timeout_s"])
        if "dead_letter" in q:
            dl = q["dead_letter"]
            dp = resource(dl["logical_id"], "AWS::SQS::Queue")
            expect(f"{dl['logical_id']} name", sub_text(dp.get("QueueName")), dl["name"])
            redrive = p.get("RedrivePolicy", {})
            expect(f"{q['logical_id']} dead-letter target", redrive.get("deadLetterTargetArn"), {"Fn::GetAtt": [dl["logical_id"], "Arn"]})
            expect(f"{q['logical_id']} maxReceiveCount", redrive.get("maxReceiveCount"), dl["max_receive_count"])

    for tb in d["tables"]:
        p = resource(tb["logical_id"], "AWS::DynamoDB::Table")
        expect(f"{tb['logical_id']} name", sub_text(p.get("TableName")), tb["name"])
        keys = {k["KeyType"]: k["AttributeName"] for k in p.get("KeySchema", [])}
        expect(f"{tb['logical_id']} keys", keys, {"HASH": tb["hash_key"], "RANGE": tb["range_key"]})
        expect(f"{tb['logical_id']} TTL attribute", p.get("TimeToLiveSpecification", {}).get("AttributeName"), tb["ttl_attribute"])

    g = resource(d["glue_database"]["logical_id"], "AWS::Glue::Database")
    expect("Glue database name", sub_text(g.get("DatabaseInput", {}).get("Name")), d["glue_database"]["name"])
    for gt in d.get("glue_tables", []):
        p = resource(gt["logical_id"], "AWS::Glue::Table")
        ti = p.get("TableInput", {})
        want = glue_table_input(gt, d["bucket"]["name"], d["bucket"]["prefixes"]["bronze"])
        expect(f"{gt['logical_id']} name", ti.get("Name"), want["Name"])
        expect(f"{gt['logical_id']} database", p.get("DatabaseName"), {"Ref": d["glue_database"]["logical_id"]})
        expect(f"{gt['logical_id']} partition keys", ti.get("PartitionKeys"), want["PartitionKeys"])
        sd = ti.get("StorageDescriptor", {})
        for k in ("InputFormat", "OutputFormat", "Columns"):
            expect(f"{gt['logical_id']} {k}", sd.get(k), want["StorageDescriptor"][k])
        expect(f"{gt['logical_id']} SerDe", sd.get("SerdeInfo"), want["StorageDescriptor"]["SerdeInfo"])
        expect(f"{gt['logical_id']} location", sub_text(sd.get("Location")), want["StorageDescriptor"]["Location"])

    globals_env = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    expect("Globals function environment", globals_env, d.get("function_environment", {}))
    for f in d["functions"]:
        r = res.get(f["logical_id"], {})
        p = resource(f["logical_id"], "AWS::Serverless::Function")
        expect(f"{f['logical_id']} name", sub_text(p.get("FunctionName")), f["name"])
        expect(f"{f['logical_id']} build binary", r.get("Metadata", {}).get("BuildProperties", {}).get("Binary"), f["binary"])
        env = p.get("Environment", {}).get("Variables", {})
        for k, v in f["environment"].items():
            expect(f"{f['logical_id']} {k}", env.get(k), v)
        if bool(r.get("Condition")) != bool(f.get("enabled_by")):
            problems.append(f"{f['logical_id']}: the template's condition is {r.get('Condition')!r}, stack.json's "
                            f"enabled_by is {f.get('enabled_by')!r} (a conditional function needs both)")
        if f.get("function_url"):
            url = resource(f"{f['logical_id']}Url", "AWS::Lambda::Url")
            expect(f"{f['logical_id']} URL target", url.get("TargetFunctionArn"), {"Fn::GetAtt": [f["logical_id"], "Arn"]})
            expect(f"{f['logical_id']} URL auth type", url.get("AuthType"), {"Ref": f["function_url"]["auth_type_parameter"]})
        if f.get("reads_lake", True) and sub_text(env.get("LAKE_BUCKET")) != d["bucket"]["name"]:
            problems.append(f"{f['logical_id']} LAKE_BUCKET is {env.get('LAKE_BUCKET')!r}, not the bucket name {d['bucket']['name']!r}")
        if "s3_trigger" in f:
            s3_events = [e["Properties"] for e in p.get("Events", {}).values() if e.get("Type") == "S3"]
            got = [({r["Name"]: r["Value"] for r in e.get("Filter", {}).get("S3Key", {}).get("Rules", [])}, e.get("Bucket")) for e in s3_events]
            want = ({"prefix": f["s3_trigger"]["prefix"], "suffix": f["s3_trigger"]["suffix"]}, {"Ref": d["bucket"]["logical_id"]})
            expect(f"{f['logical_id']} S3 trigger", got, [want])
        if f.get("msk_trigger"):
            msk = [e["Properties"] for e in p.get("Events", {}).values() if e.get("Type") == "MSK"]
            if not msk:
                problems.append(f"{f['logical_id']} has msk_trigger but no MSK event in the template")
        if "async_failure_queue" in f:
            dest = r.get("Properties", {}).get("EventInvokeConfig", {}).get("DestinationConfig", {}).get("OnFailure", {})
            expect(f"{f['logical_id']} asynchronous failure destination", dest.get("Destination"),
                   {"Fn::GetAtt": [f["async_failure_queue"], "Arn"]})
        if "sqs_trigger" in f:
            sqs_events = [e["Properties"] for e in p.get("Events", {}).values() if e.get("Type") == "SQS"]
            got = [(e.get("Queue"), "ReportBatchItemFailures" in e.get("FunctionResponseTypes", [])) for e in sqs_events]
            want = ({"Fn::GetAtt": [f["sqs_trigger"]["queue"], "Arn"]}, f["sqs_trigger"]["report_batch_item_failures"])
            expect(f"{f['logical_id']} SQS trigger (queue, batch item failures)", got, [want])
        for k, v in env.items():
            if isinstance(v, str) and k.endswith("_PREFIX") and v not in prefixes:
                problems.append(f"{f['logical_id']} {k}={v} is not a lake prefix of stack.json {sorted(prefixes)}")

    if problems:
        print("template.yaml and infra/local/stack.json disagree:", *problems, sep="\n  - ")
        sys.exit(1)
    print(f"template.yaml agrees with stack.json ({len(d['queues'])} queues, {len(d['tables'])} tables, "
          f"{len(d.get('glue_tables', []))} Glue tables, "
          f"{len(want_notifications)} notifications, {len(d['functions'])} functions)")


# ------------------------------------------------------------------------------------------ summary
def stack_env():
    env = dict(line.split("=", 1) for line in (STATE / "stack.env").read_text().split())
    # The stack's own credentials (an administrator's when IAM is enforced).
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        CREDENTIALS[k] = env.get(k, CREDENTIALS[k])
    return env


def list_keys(c, bucket, prefix=""):
    keys = []
    for page in c["s3"].get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def s3_events(args):
    """One S3 notification event file per object under the prefix, keys form-encoded as S3 sends them."""
    import urllib.parse
    env = stack_env()
    c = clients(env["AWS_ENDPOINT_URL"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.json"):
        old.unlink()
    for i, key in enumerate(list_keys(c, env["LAKE_BUCKET"], args.prefix)):
        event = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": env["AWS_REGION"],
                              "eventName": "ObjectCreated:Put",
                              "s3": {"bucket": {"name": env["LAKE_BUCKET"]},
                                     "object": {"key": urllib.parse.quote_plus(key, safe="/")}}}]}
        (out / f"s3-event-{i:04d}.json").write_text(json.dumps(event))


def summary(_args):
    env = stack_env()
    c = clients(env["AWS_ENDPOINT_URL"])
    bucket = env["LAKE_BUCKET"]
    objects = list_keys(c, bucket)
    landed, quarantined, reasons, weather = Counter(), Counter(), Counter(), Counter()
    for key in objects:
        body = c["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()
        parts = key.split("/")
        if key.endswith(".ndjson.gz"):
            lines = [line for line in gzip.decompress(body).splitlines() if line.strip()]
            landed[f"{parts[0]}/{parts[1]}"] += len(lines)
            if parts[0] == "enriched":
                weather.update(json.loads(line).get("weather_status") for line in lines)
        elif parts[0] == "quarantine":
            for line in body.splitlines():
                q = json.loads(line)
                quarantined[q["stage"]] += 1
                reasons[re.sub(r"got .*|: .*", "…", q["reason"])] += 1
    print(f"\nlake s3://{bucket}: {len(objects)} objects")
    for prefix, n in sorted(landed.items()):
        print(f"  {prefix:<40} {n:>8} records")
    if weather:
        print("      weather_status: " + ", ".join(f"{k} {v}" for k, v in weather.most_common()))
    for stage, n in sorted(quarantined.items()):
        print(f"  quarantine/{stage:<29} {n:>8} records")
    for reason, n in reasons.most_common(5):
        print(f"      {n:>5} × {reason}")


def report(args):
    """What the pipeline did: the lake summary, then tables, catalog, predictions and the router's counts."""
    from deltalake import DeltaTable

    summary(args)
    env = stack_env()
    c = clients(env["AWS_ENDPOINT_URL"])
    bucket = env["LAKE_BUCKET"]
    options = {"AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": env["AWS_REGION"],
               "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"]}
    print("\nbronze Delta tables (read with the Python deltalake package)")
    for table in [t["bronze_table"] for t in definition().get("glue_tables", [])]:
        try:
            dt_ = DeltaTable(f"s3://{bucket}/bronze/{table}", storage_options=options)
        except Exception as e:  # noqa: BLE001 - a table not written yet is reported, not fatal
            print(f"  {table:<26} not created ({type(e).__name__})")
            continue
        rows = dt_.to_pyarrow_dataset().count_rows()
        print(f"  {table:<26} version {dt_.version():>4}, {len(dt_.file_uris()):>4} files, {rows:>8} rows")
    db = env["GLUE_DATABASE"]
    print(f"\nGlue database {db}")
    for t in c["glue"].get_tables(DatabaseName=db)["TableList"]:
        if t.get("TableType") == "VIRTUAL_VIEW":
            print(f"  {t['Name']:<26} view")
            continue
        parts = c["glue"].get_partitions(DatabaseName=db, TableName=t["Name"])["Partitions"]
        values = sorted(p["Values"][0] for p in parts)
        shown = ", ".join(values[:4]) + (" …" if len(values) > 4 else "")
        print(f"  {t['Name']:<26} {len(parts):>3} partitions {shown}")
    table = env["PREDICTIONS_TABLE"]
    items = []
    for page in c["dynamodb"].get_paginator("scan").paginate(TableName=table):
        items += page["Items"]
    units = {i["transport_unit_id"]["S"] for i in items}
    print(f"\npredictions in DynamoDB {table}: {len(items)} items for {len(units)} units")
    for unit in sorted(units)[:3]:
        latest = c["dynamodb"].query(TableName=table, KeyConditionExpression="transport_unit_id = :u",
                                     ExpressionAttributeValues={":u": {"S": unit}}, ScanIndexForward=False, Limit=1)["Items"][0]
        f = {k: round(float(v["N"]), 1) for k, v in latest["features"]["M"].items()}
        print(f"  {unit} at {latest['predicted_at']['S']}: {float(latest['value']['N']):,.0f} {latest['unit']['S']} "
              f"{latest['target']['S']} ({latest['model_version']['S']}, table version {latest['source_version']['N']}); "
              f"distance {f.get('distance_km')} km, {f.get('hours_observed')} h, mean speed {f.get('mean_speed_kmh')} km/h")
    if args.router and Path(args.router).exists():
        r = json.loads(Path(args.router).read_text())
        print(f"\nrouting: idle after {r['seconds']} s; dead-letter queues: "
              + ", ".join(f"{k} {v}" for k, v in r["dead_letter_queues"].items()))
        for name, f in sorted(r["functions"].items()):
            if f["invocations"]:
                print(f"  {name:<18} {f['invocations']:>5} invocations ({f['failed_invocations']} failed, "
                      f"{f['item_failures']} batch item failures), {f['total_ms'] / max(1, f['invocations']):.0f} ms mean")


def serve_api(args):
    """predictions-api's Function URL on this machine (the router's --serve-http on the debug binaries), until
    `down`: prints its base URL."""
    port = args.port
    start([str(Path(args.bin_dir) / "fleetlake-router"), "--stack-env", str(STATE / "stack.env"), "--binaries",
           args.bin_dir, "--serve-http", str(port)], "predictions-api.log", port)
    base = f"http://127.0.0.1:{port}/lambda-url/predictions-api"
    wait_http(base + "/health", "predictions-api", log="predictions-api.log")
    print(base)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up")
    p.add_argument("--moto-port", type=int, default=int(os.environ.get("MOTO_PORT", 5000)))
    p.add_argument("--weather-port", type=int, default=int(os.environ.get("WEATHER_PORT", 8089)))
    p.add_argument("--weather-stub", help="path of the weather-stub binary (omit to run moto only)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address moto and the stub listen on (0.0.0.0 lets containers reach them: sam local invoke)")
    p.add_argument("--enforce-iam", action="store_true",
                   help="moto's IAM enforcement on: each function gets an IAM user holding exactly its template "
                        "policy (FUNCTION_CREDENTIALS_<logical id> in stack.env), everything else an administrator")
    p.add_argument("--postgres", action="store_true",
                   help="a throwaway PostgreSQL with TLS for pg-poller (infra/local/pg_source.py), its secret and CA "
                        "bundle in the stack")
    p.add_argument("--postgres-port", type=int, default=int(os.environ.get("POSTGRES_PORT", 5433)))
    p = sub.add_parser("bootstrap")
    p.add_argument("--endpoint", required=True)
    sub.add_parser("down")
    p = sub.add_parser("check-template")
    p.add_argument("--template", default=str(ROOT / "template.yaml"))
    sub.add_parser("summary")
    p = sub.add_parser("report")
    p.add_argument("--router", help="the router's JSON report")
    p = sub.add_parser("serve-api")
    p.add_argument("--bin-dir", required=True, help="the debug binaries (fleetlake-router, predictions-api)")
    p.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", 9100)))
    p = sub.add_parser("s3-events")
    p.add_argument("--prefix", required=True)
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "up":
        up(a)
    elif a.cmd == "bootstrap":
        print(json.dumps(bootstrap(a.endpoint), indent=2))
    elif a.cmd == "down":
        down()
    elif a.cmd == "serve-api":
        serve_api(a)
    elif a.cmd == "check-template":
        check_template(a)
    elif a.cmd == "s3-events":
        s3_events(a)
    elif a.cmd == "report":
        report(a)
    else:
        summary(a)


if __name__ == "__main__":
    main()
