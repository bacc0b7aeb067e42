"""Each function's IAM policy as the template grants it, resolved for the local stack: the statements of the
function's role in the translated template (SAM's policy templates and event sources expanded), with every
intrinsic function resolved to the local stack's names (stack.json). The end-to-end tests run each function under
an IAM user of moto that holds exactly these statements, with moto's IAM enforcement on (`stack.py up
--enforce-iam`), so a call the template does not grant fails the test.

Where moto evaluates a construct differently from AWS, the moto copy is adapted, and the construct is covered by a
unit test of the policy text instead (infra/tests/test_infra.py, `EnforcedIdentities`):

- moto checks the resource of a request only for S3 and SQS. For every other service (DynamoDB, Glue, SSM, …) it
  evaluates each statement against the resource `*`, which no resource-scoped grant matches: it would deny every
  call AWS allows. The moto copy of such a statement has `Resource: "*"` (its actions are still enforced); the unit
  test checks that the template scopes it to the stack's own table, database and parameter ARNs.
- The role's statements from the template's own managed policies (X-Ray) are given too; AWS-managed policies are
  refused by check_template.py, so there are none. The functions make no Logs, X-Ray, Kafka or EC2 calls locally,
  and the router that plays the event source mappings runs with the stack's own credentials: the mappings' rights
  are checked statically (check_template.event_source_findings).
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra" / "policy"))
sys.path.insert(0, str(ROOT / "infra" / "local"))
import check_template  # noqa: E402

# The services whose request resources moto evaluates; for the others it evaluates against "*".
MOTO_RESOURCE_AWARE = {"s3", "sqs"}
# MSK is not part of the local stack: any well-formed ARN serves for the parameter that has no default.
LOCAL_PARAMETERS = {"MskClusterArn": "arn:aws:kafka:us-east-1:123456789012:cluster/local/00000000-0000-0000-0000-000000000000-1"}


class Resolver:
    """Resolves the intrinsic functions of the translated template with the local stack's values."""

    def __init__(self, cfn, definition, names):
        self.cfn = cfn
        loc = definition["locals"]
        self.params = {k: v.get("Default") for k, v in cfn.get("Parameters", {}).items()}
        self.params.update(LOCAL_PARAMETERS)
        self.params.update({k: v for k, v in loc.items()})
        # Parameters the local stack sets itself (`stack.py up --postgres`: pg-poller's secret and CA bundle).
        self.params.update({k[len("PARAMETER_"):]: v for k, v in names.items() if k.startswith("PARAMETER_")})
        region, account = loc["AWS::Region"], loc["AWS::AccountId"]
        self.refs = {}   # logical id -> what Ref gives
        self.arns = {}   # logical id -> its Arn
        bucket = names["LAKE_BUCKET"]
        self.refs[definition["bucket"]["logical_id"]] = bucket
        self.arns[definition["bucket"]["logical_id"]] = f"arn:aws:s3:::{bucket}"
        for key, value in names.items():
            for prefix in ("QUEUE_", "TOPIC_", "TABLE_"):
                if key.startswith(prefix):
                    lid = key[len(prefix):]
                    if prefix == "QUEUE_":
                        self.refs[lid] = f"https://sqs.{region}.amazonaws.com/{account}/{value}"
                        self.arns[lid] = f"arn:aws:sqs:{region}:{account}:{value}"
                    elif prefix == "TOPIC_":
                        self.refs[lid] = self.arns[lid] = f"arn:aws:sns:{region}:{account}:{value}"
                    else:
                        self.refs[lid] = value
                        self.arns[lid] = f"arn:aws:dynamodb:{region}:{account}:table/{value}"
        self.refs["GlueDatabase"] = names.get("GLUE_DATABASE")
        self.conditions = cfn.get("Conditions", {})
        for lid, res in cfn.get("Resources", {}).items():
            if res.get("Type") == "AWS::Logs::LogGroup":
                name = self.value(res["Properties"]["LogGroupName"])
                self.refs[lid] = name
                self.arns[lid] = f"arn:aws:logs:{region}:{account}:log-group:{name}:*"

    def condition(self, name):
        return bool(self.value(self.conditions[name]))

    def sub(self, text, extra=None):
        import re

        def one(m):
            key = m.group(1)
            if extra and key in extra:
                return str(extra[key])
            if "." in key:
                lid, attr = key.split(".", 1)
                return str(self.value({"Fn::GetAtt": [lid, attr]}))
            if key in self.params:
                return str(self.params[key])
            if key in self.refs:
                return str(self.refs[key])
            raise KeyError(f"no local value for ${{{key}}}")
        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def value(self, v):
        if isinstance(v, list):
            return [x for x in (self.value(i) for i in v) if x is not NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (fn, arg), = v.items()
            if fn == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                if arg in self.params:
                    return self.params[arg]
                return self.refs[arg]
            if fn == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg)
                text, extra = arg
                return self.sub(text, {k: self.value(x) for k, x in extra.items()})
            if fn == "Fn::GetAtt":
                lid, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                if attr == "Arn":
                    return self.arns[lid]
                if attr == "QueueName":
                    return self.arns[lid].rsplit(":", 1)[1]
                raise KeyError(f"Fn::GetAtt {lid}.{attr}")
            if fn == "Fn::If":
                name, yes, no = arg
                return self.value(yes if self.condition(name) else no)
            if fn == "Fn::Equals":
                a, b = (self.value(x) for x in arg)
                return str(a) == str(b)
            if fn == "Fn::Not":
                return not self.value(arg[0])
            if fn == "Fn::And":
                return all(self.value(x) for x in arg)
            if fn == "Fn::Or":
                return any(self.value(x) for x in arg)
            if fn == "Condition":
                return self.condition(arg)
            if fn == "Fn::Join":
                sep, parts = arg
                return sep.join(str(p) for p in self.value(parts))
            if fn == "Fn::Select":
                i, items = arg
                return self.value(items)[int(self.value(i))]
            if fn == "Fn::Split":
                sep, text = arg
                return str(self.value(text)).split(sep)
        out = {k: self.value(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x is not NO_VALUE}


class _NoValue:
    def __repr__(self):
        return "AWS::NoValue"


NO_VALUE = _NoValue()


def function_statements(cfn, definition, names):
    """{function logical id: [statement, ...]} as the template grants them, resolved for the local stack; a
    function whose template condition is false with the local stack's parameters (pg-poller without `stack.py up
    --postgres`) has none: it does not exist there."""
    r = Resolver(cfn, definition, names)
    out = {}
    for f in definition["functions"]:
        fn = cfn["Resources"][f["logical_id"]]
        if "Condition" in fn and not r.condition(fn["Condition"]):
            continue
        role_id = fn["Properties"]["Role"]["Fn::GetAtt"][0]
        # AWS-managed policies are refused by check_template.py: the template's documents are all there is.
        statements = []
        for document in check_template.role_policy_documents(cfn, role_id, r.condition):
            for st in check_template.as_list(document.get("Statement", [])):
                resolved = r.value(st)
                if resolved is not NO_VALUE:
                    statements.append(resolved)
        out[f["logical_id"]] = statements
    return out


def for_moto(statements):
    """The moto copy of a policy: statements of services whose resources moto does not evaluate get `*`."""
    out = []
    for st in statements:
        services = {a.split(":", 1)[0] for a in check_template.as_list(st.get("Action", []))}
        if services - MOTO_RESOURCE_AWARE:
            aware = [a for a in check_template.as_list(st["Action"]) if a.split(":", 1)[0] in MOTO_RESOURCE_AWARE]
            blind = [a for a in check_template.as_list(st["Action"]) if a.split(":", 1)[0] not in MOTO_RESOURCE_AWARE]
            if aware:
                out.append(dict(st, Action=aware))
            out.append(dict(st, Action=blind, Resource="*"))
        else:
            out.append(st)
    return {"Version": "2012-10-17", "Statement": out}


def create_users(iam, statements_by_function):
    """One IAM user per function holding its policy (moto copy); {logical id: (access key id, secret)}."""
    keys = {}
    for lid, statements in statements_by_function.items():
        user = f"fn-{lid}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="template", PolicyDocument=json.dumps(for_moto(statements)))
        k = iam.create_access_key(UserName=user)["AccessKey"]
        keys[lid] = (k["AccessKeyId"], k["SecretAccessKey"])
    return keys
