#!/usr/bin/env python3
"""Template checks beyond `sam validate`: translate the SAM template to plain CloudFormation (the form in which
SAM's policy templates and event sources become real IAM statements), lint that with cfn-lint, and refuse IAM
statements that are broader than least privilege.

    check_template.py [--template template.yaml] [--out .local/template.cfn.json]

IAM rules, on every identity policy of the translated template (inline role policies, AWS::IAM::Policy and
AWS::IAM::ManagedPolicy):
  - no Allow of `*` or `service:*` actions;
  - no Allow of a data action (reading or writing objects, items, messages, partitions, secrets …) on
    `Resource: "*"`; control-plane actions that AWS cannot scope (ec2:DescribeNetworkInterfaces …) may use `*`;
  - no AWS-managed policy on a role (the allow-list below is empty); the template's own managed policies are
    checked statement by statement;
  - an event source mapping's role holds what the mapping does on that source and no more: receive, delete and
    read the attributes of its own queue; alter and describe its own named consumer group, no wildcard of groups;
  - missing means 404: a role that may read objects (s3:GetObject, which HEAD needs too) of a bucket must also hold
    an unconditioned s3:ListBucket on that bucket. Without it S3 answers a GET/HEAD of a missing key with 403, and
    an s3:prefix condition never matches a GET/HEAD, so a probe of an optional object (deltalake's
    _last_checkpoint, a manifest not written yet) would fail as forbidden. Grants of objects that must exist
    are exempt by Sid (MUST_EXIST below).
Topics: an SNS topic that AWS services publish to (S3 notifications, CloudWatch alarm actions, Service principals
of its policy) is encrypted with a customer-managed key of the template that lets exactly those services generate
data keys and decrypt, each under an aws:SourceArn condition; `aws/sns` cannot be opened to them.
Exit status 1 with one line per finding.
"""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Actions that read or write data, by service; a statement granting any of them must name its resources.
DATA_ACTIONS = {
    "s3": r"(Get|Put|Delete|Restore)Object.*|ListBucket.*|AbortMultipartUpload|ListMultipartUploadParts",
    "dynamodb": r".*Item|Query|Scan|PartiQL.*|.*Stream.*|GetRecords|GetShardIterator",
    "sqs": r"SendMessage.*|ReceiveMessage|DeleteMessage.*|ChangeMessageVisibility.*|PurgeQueue",
    "glue": r".*Partition.*|.*Table.*|GetDatabase.*",
    "kafka-cluster": r"ReadData|WriteData.*|AlterGroup|DescribeGroup|DescribeTopic.*|Connect",
    "ssm": r"GetParameter.*|PutParameter",
    "secretsmanager": r"GetSecretValue|PutSecretValue",
    "kms": r"Decrypt|Encrypt|GenerateDataKey.*|ReEncrypt.*",
    "athena": r"StartQueryExecution|GetQueryResults",
    "lambda": r"InvokeFunction",
}

# AWS-managed policies a role may carry: none. SAM's generated roles would bring AWSLambdaBasicExecutionRole,
# AWSLambdaSQSQueueExecutionRole and AWSLambdaMSKExecutionRole, whose Logs, SQS and Kafka grants are on Resource "*";
# the template gives every function its own role instead. Policies defined in the template itself (a Ref) are
# checked statement by statement like inline ones.
ALLOWED_MANAGED_POLICIES = set()


# Object grants whose objects must exist (a missing one is a configuration error whether S3 says 403 or 404).
MUST_EXIST = {
    "ReadModel": "the predictor's model and contract: init stops if either cannot be read",
    "ReadCaBundle": "pg-poller's CA bundle: init stops if it cannot be read",
}


def translate(template_path):
    import os

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # the translator resolves ARNs for a region; no call is made
    from cfnlint.decode import decode
    from samtranslator.translator.transform import transform

    template, matches = decode(str(template_path))
    if matches:
        raise SystemExit("\n".join(str(m) for m in matches))

    # As `sam package` would: local code folders become S3 objects (the translator accepts nothing else).
    for lid, res in template.get("Resources", {}).items():
        props = res.get("Properties", {})
        if res.get("Type") == "AWS::Serverless::Function" and not str(props.get("CodeUri", "")).startswith("s3://"):
            props["CodeUri"] = f"s3://packaged-artifacts/{lid}.zip"

    class NoManagedPolicyLookups:  # every managed policy is referenced by ARN: nothing to look up in IAM
        def load(self):
            return {}

    return transform(template, {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012"}, NoManagedPolicyLookups())


def as_list(x):
    return x if isinstance(x, list) else [x]


def branches(statement):
    """A statement, or both branches of a conditional (`Fn::If`) one: each is checked."""
    if isinstance(statement, dict) and "Fn::If" in statement:
        for branch in statement["Fn::If"][1:]:
            if branch != {"Ref": "AWS::NoValue"}:
                yield from branches(branch)
    else:
        yield statement


def statements_of(cfn):
    """(where, statement) for every identity-policy statement in a CloudFormation template."""
    for lid, res in cfn.get("Resources", {}).items():
        props = res.get("Properties", {})
        kind = res.get("Type")
        if kind == "AWS::IAM::Role":
            for item in props.get("Policies", []):
                # A conditional inline policy: both branches are checked.
                chosen = item["Fn::If"][1:] if isinstance(item, dict) and "Fn::If" in item else [item]
                for pol in (p for p in chosen if isinstance(p, dict) and "PolicyDocument" in p):
                    for st in as_list(pol["PolicyDocument"].get("Statement", [])):
                        for b in branches(st):
                            yield f"{lid}/{pol.get('PolicyName')}", b
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for st in as_list(props["PolicyDocument"].get("Statement", [])):
                for b in branches(st):
                    yield lid, b


def role_policy_documents(cfn, role, condition=None):
    """Every policy document a role holds from the template: its inline policies, the template's managed policies
    it lists, and AWS::IAM::Policy resources attached to it. An inline policy under `Fn::If` counts with both
    branches, or with the one `condition(name)` chooses when it is given."""
    resources = cfn.get("Resources", {})
    props = resources.get(role, {}).get("Properties", {})
    documents = []
    for pol in props.get("Policies", []):
        if isinstance(pol, dict) and "Fn::If" in pol:
            name, yes, no = pol["Fn::If"]
            chosen = [yes, no] if condition is None else [yes if condition(name) else no]
            documents += [c["PolicyDocument"] for c in chosen if isinstance(c, dict) and "PolicyDocument" in c]
        else:
            documents.append(pol["PolicyDocument"])
    documents += [resources[_ref_id(arn)]["Properties"]["PolicyDocument"] for arn in props.get("ManagedPolicyArns", [])
                  if _ref_id(arn) in resources]
    documents += [res["Properties"]["PolicyDocument"] for res in resources.values()
                  if res.get("Type") == "AWS::IAM::Policy"
                  and role in (_ref_id(r) for r in res.get("Properties", {}).get("Roles", []))]
    return documents


def role_statements(cfn, role):
    """Every statement of [`role_policy_documents`], both branches of a conditional one."""
    return [b for doc in role_policy_documents(cfn, role) for st in as_list(doc.get("Statement", [])) for b in branches(st)]


def managed_policies_of(cfn):
    for lid, res in cfn.get("Resources", {}).items():
        if res.get("Type") == "AWS::IAM::Role":
            for arn in res.get("Properties", {}).get("ManagedPolicyArns", []):
                yield lid, arn


def is_data_action(action):
    service, _, name = action.partition(":")
    pattern = DATA_ACTIONS.get(service.lower())
    return bool(pattern and (name == "*" or re.fullmatch(pattern, name) or "*" in name))


def resource_text(r):
    """An ARN as written: a string, or the text of a Fn::Sub (either form)."""
    if isinstance(r, dict) and "Fn::Sub" in r:
        sub = r["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    return r if isinstance(r, str) else json.dumps(r, sort_keys=True)


def bucket_of(arn_text):
    """The bucket part of an S3 bucket or object ARN, or None."""
    if ":s3:::" not in arn_text:
        return None
    return arn_text.split(":s3:::", 1)[1].split("/", 1)[0]


def reads_objects(action):
    return action in ("s3:GetObject", "s3:GetObject*", "s3:Get*", "s3:*", "*")


def missing_means_404_findings(cfn):
    by_role = {}
    for where, st in statements_of(cfn):
        if st.get("Effect") == "Allow":
            by_role.setdefault(where.split("/")[0], []).append(st)
    findings = []
    for role, sts in by_role.items():
        listable = {bucket_of(resource_text(r)) for st in sts if "s3:ListBucket" in as_list(st.get("Action", []))
                    and "Condition" not in st for r in as_list(st.get("Resource", []))}
        for st in sts:
            if st.get("Sid") in MUST_EXIST or not any(reads_objects(a) for a in as_list(st.get("Action", []))):
                continue
            for r in as_list(st.get("Resource", [])):
                bucket = bucket_of(resource_text(r))
                message = (f"{role}: {st.get('Sid') or 'a statement'} reads objects of {bucket} without an "
                           f"unconditioned s3:ListBucket on it: a missing key would answer 403, not 404")
                if bucket and bucket not in listable and message not in findings:
                    findings.append(message)
    return findings


def _ref_id(value):
    """The logical id of a Ref or Fn::GetAtt, or None."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            att = value["Fn::GetAtt"]
            return att[0] if isinstance(att, list) else att.split(".", 1)[0]
    return None


def service_publishers(cfn):
    """{topic logical id: {service principal, ...}}: the AWS services that publish to each topic of the template
    (S3 notifications, CloudWatch alarm actions, Service principals of topic policies)."""
    out = {}
    resources = cfn.get("Resources", {})
    for lid, res in resources.items():
        props = res.get("Properties", {})
        kind = res.get("Type")
        if kind == "AWS::S3::Bucket":
            for c in props.get("NotificationConfiguration", {}).get("TopicConfigurations", []):
                out.setdefault(_ref_id(c.get("Topic")), set()).add("s3.amazonaws.com")
        elif kind == "AWS::CloudWatch::Alarm":
            for key in ("AlarmActions", "OKActions", "InsufficientDataActions"):
                for action in as_list(props.get(key, [])):
                    out.setdefault(_ref_id(action), set()).add("cloudwatch.amazonaws.com")
        elif kind == "AWS::SNS::TopicPolicy":
            for st in as_list(props.get("PolicyDocument", {}).get("Statement", [])):
                services = as_list(st.get("Principal", {}).get("Service", [])) if isinstance(st.get("Principal"), dict) else []
                for topic in as_list(props.get("Topics", [])):
                    out.setdefault(_ref_id(topic), set()).update(services)
    return {k: v for k, v in out.items() if k in resources and resources[k].get("Type") == "AWS::SNS::Topic" and v}


def source_matches(service, arn_text, cfn):
    """Whether an aws:SourceArn value names this template's own publisher of that service: the ARN of one of its
    buckets (by name), or its alarms (`alarm:<prefix>`)."""
    resources = cfn.get("Resources", {}).values()
    if service == "s3.amazonaws.com":
        names = [resource_text(r.get("Properties", {}).get("BucketName")) for r in resources
                 if r.get("Type") == "AWS::S3::Bucket" and r.get("Properties", {}).get("BucketName")]
        return any(arn_text.endswith(":s3:::" + name) for name in names)
    if service == "cloudwatch.amazonaws.com":
        prefixes = {resource_text(r.get("Properties", {}).get("AlarmName", "")).split("}", 1)[0] for r in resources
                    if r.get("Type") == "AWS::CloudWatch::Alarm"}
        return ":alarm:" in arn_text and any(arn_text.split(":alarm:", 1)[1].startswith(p) for p in prefixes if p)
    return False


def topic_key_findings(cfn):
    """A topic that AWS services publish to is encrypted with a customer-managed key of this template whose policy
    lets exactly those services generate data keys and decrypt, each scoped by aws:SourceArn. The AWS-managed
    aws/sns key cannot be opened to another service (its policy is AWS's): a service's publish would fail."""
    findings = []
    resources = cfn.get("Resources", {})
    for topic, services in sorted(service_publishers(cfn).items()):
        key = resources[topic].get("Properties", {}).get("KmsMasterKeyId")
        who = ", ".join(sorted(services))
        if key is None:
            findings.append(f"{topic}: not encrypted (SSE); {who} publish to it")
            continue
        if isinstance(key, str):
            why = "the AWS-managed aws/sns key cannot be opened to" if "aws/sns" in key else "a key outside this template, not provably open to"
            findings.append(f"{topic}: encrypted with {key!r}: {why} {who}")
            continue
        kid = _ref_id(key)
        if kid not in resources or resources[kid].get("Type") != "AWS::KMS::Key":
            findings.append(f"{topic}: KmsMasterKeyId is not a customer-managed key of this template")
            continue
        statements = as_list(resources[kid].get("Properties", {}).get("KeyPolicy", {}).get("Statement", []))
        for st in statements:
            principal = st.get("Principal")
            if st.get("Effect") == "Allow" and (principal == "*" or (isinstance(principal, dict) and "*" in as_list(principal.get("AWS", [])))):
                findings.append(f"{topic}: key {kid} allows any principal ({st.get('Sid') or 'a statement'})")
        for service in sorted(services):
            grants = [st for st in statements if st.get("Effect") == "Allow" and isinstance(st.get("Principal"), dict)
                      and service in as_list(st["Principal"].get("Service", []))]
            actions = {a for st in grants for a in as_list(st.get("Action", []))}
            sources = [resource_text(cond["aws:SourceArn"]) for st in grants for cond in st.get("Condition", {}).values()
                       if isinstance(cond, dict) and "aws:SourceArn" in cond]
            scoped = len(sources) == len(grants) and all(source_matches(service, s, cfn) for s in sources)
            if not grants or not ({"kms:GenerateDataKey", "kms:GenerateDataKey*"} & actions) or "kms:Decrypt" not in actions:
                findings.append(f"{topic}: key {kid} does not let {service} generate data keys and decrypt: its publishes would fail")
            elif not scoped:
                findings.append(f"{topic}: key {kid} lets {service} use it without an aws:SourceArn condition naming "
                                f"this template's publishers (its bucket, its alarms)")
    return findings


def event_source_findings(cfn):
    """What an event source mapping does with the function's role, granted on that source only: an SQS mapping
    receives, deletes and reads attributes of its own queue; an MSK mapping has a named consumer group, and the
    role may alter and describe that group, not every group of the cluster."""
    findings = []
    resources = cfn.get("Resources", {})
    for lid, res in resources.items():
        if res.get("Type") != "AWS::Lambda::EventSourceMapping":
            continue
        props = res.get("Properties", {})
        fn = resources.get(_ref_id(props.get("FunctionName")), {})
        role = _ref_id(fn.get("Properties", {}).get("Role"))
        allowed = [st for st in role_statements(cfn, role) if st.get("Effect") == "Allow"]
        source = props.get("EventSourceArn")
        if resources.get(_ref_id(source), {}).get("Type") == "AWS::SQS::Queue":
            for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
                if not any(action in as_list(st.get("Action", [])) and source in as_list(st.get("Resource", [])) for st in allowed):
                    findings.append(f"{lid}: {role} lacks {action} on its queue {_ref_id(source)}")
        group = props.get("AmazonManagedKafkaEventSourceConfig", {}).get("ConsumerGroupId")
        if "Topics" in props:
            if group is None:
                findings.append(f"{lid}: MSK mapping without a ConsumerGroupId: its group cannot be named in the grant")
                continue
            wanted = "/" + resource_text(group)
            for action in ("kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"):
                resources_of = [resource_text(r) for st in allowed if action in as_list(st.get("Action", []))
                                for r in as_list(st.get("Resource", []))]
                if not any(r.endswith(wanted) for r in resources_of):
                    findings.append(f"{lid}: {role} lacks {action} on its consumer group {resource_text(group)}")
                wide = [r for r in resources_of if ":group/" in r and r.endswith("*")]
                if wide:
                    findings.append(f"{lid}: {role} may {action} every group matching {wide[0]}")
    return sorted(set(findings))


def iam_findings(cfn):
    findings = missing_means_404_findings(cfn) + topic_key_findings(cfn) + event_source_findings(cfn)
    for where, st in statements_of(cfn):
        if st.get("Effect") != "Allow":
            continue
        actions = as_list(st.get("Action", []))
        if "NotAction" in st or "NotResource" in st:
            findings.append(f"{where}: NotAction/NotResource grants are refused")
        for a in actions:
            if a == "*" or (isinstance(a, str) and a.endswith(":*")):
                findings.append(f"{where}: action {a!r} grants a whole service")
        resources = as_list(st.get("Resource", []))
        if "*" in resources:
            data = [a for a in actions if isinstance(a, str) and is_data_action(a)]
            if data:
                findings.append(f"{where}: data actions {data} on Resource '*'")
    for lid, arn in managed_policies_of(cfn):
        if isinstance(arn, dict) and arn.get("Ref") in cfn.get("Resources", {}):
            continue
        text = json.dumps(arn)
        if not any(text.endswith(f':policy/{name}"') or f"policy/{name}" in text for name in ALLOWED_MANAGED_POLICIES):
            findings.append(f"{lid}: managed policy {text} is not on the allow-list")
    return findings


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--template", default=str(ROOT / "template.yaml"))
    ap.add_argument("--out", default=str(ROOT / ".local" / "template.cfn.json"))
    a = ap.parse_args()

    cfn = translate(a.template)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cfn, indent=2))
    lint = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(out)], capture_output=True, text=True)
    failed = False
    if lint.returncode != 0:
        print(f"cfn-lint on the translated template ({out}):\n{lint.stdout}{lint.stderr}")
        failed = True
    findings = iam_findings(cfn)
    if findings:
        print("IAM least-privilege findings:", *findings, sep="\n  - ")
        failed = True
    roles = sum(1 for r in cfn["Resources"].values() if r.get("Type") == "AWS::IAM::Role")
    n = sum(1 for _ in statements_of(cfn))
    if failed:
        sys.exit(1)
    print(f"translated template lints clean; {n} IAM statements in {roles} roles are least-privilege")


if __name__ == "__main__":
    main()
