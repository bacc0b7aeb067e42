#!/usr/bin/env python3
"""What an auditor runs on the template: checkov and cfn-guard (the AWS Control Tower proactive controls plus this
project's own rules, infra/policy/fleetlake.guard) on the translated template (SAM's resources expanded into the
ones CloudFormation creates). Zero unexplained findings: every finding is fixed in the template or suppressed there
with a reason, in the template's Metadata, naming its resources one by one (a failure that names no resource is
filed under `Template`):

    Metadata:
      Audit:
        Suppressions:
          - tool: guard            # or checkov
            id: lambda_inside_vpc_check
            resources: [DeltaWriterFunction, ...]
            comment: why the rule does not apply, or what stands in for it

checkov's own `checkov.skip` in a resource's Metadata counts too.

A suppression on a SAM resource also covers what SAM generates from it (WeatherEnricherFunction covers
WeatherEnricherFunctionLandedPositionsPermission). A suppression without a comment, or one that no longer matches
any finding, is itself a finding: suppressions stay true.

    audit.py --checkov .venv-audit/bin/checkov --cfn-guard <cfn-guard> --rules .venv-audit [--template template.yaml]

Exit status 1 with one line per unexplained finding.
"""
import argparse
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_template  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OWN_RULES = ROOT / "infra/policy/fleetlake.guard"
CONTROL_TOWER = "rules/control-tower/cfn-guard/"
# Where a finding that names no resource is filed (and suppressed: `resources: [Template]`).
TEMPLATE = "Template"


def control_tower_rules(audit_venv, into):
    """Extracts the Control Tower guard rules from the PyPI package (a jsii tarball inside it) into `into`."""
    tarballs = sorted(Path(audit_venv).glob("lib/python3*/site-packages/cdklabs/cdk_validator_cfnguard/_jsii/*.jsii.tgz"))
    if not tarballs:
        sys.exit(f"no cdk-validator-cfnguard package under {audit_venv}: run `make audit-tools`")
    into = Path(into)
    with tarfile.open(tarballs[-1]) as tgz:
        members = [m for m in tgz.getmembers() if m.isfile() and m.name.startswith("package/" + CONTROL_TOWER)
                   and m.name.endswith(".guard")]
        for m in members:
            target = into / m.name[len("package/" + CONTROL_TOWER):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tgz.extractfile(m).read())
    if not members:
        sys.exit(f"no Control Tower rules in {tarballs[-1]}")
    return into, len(members)


def checkov_findings(checkov, template):
    """[(check id, logical id, title)] failed, and [(check id, logical id)] that checkov skipped by Metadata."""
    run = subprocess.run([checkov, "-f", str(template), "--framework", "cloudformation", "-o", "json",
                          "--skip-download", "--compact"], capture_output=True, text=True)
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        sys.exit(f"checkov gave no report (exit {run.returncode}):\n{run.stderr[-2000:]}")
    results = report.get("results", {})
    summary = report.get("summary", {})
    if not summary.get("passed", 0) + summary.get("failed", 0) + summary.get("skipped", 0):
        sys.exit(f"checkov checked nothing in {template} (exit {run.returncode}):\n{run.stderr[-2000:]}")
    logical = lambda r: r["resource"].split(".", 1)[1]  # "AWS::S3::Bucket.LakeBucket"
    failed = [(r["check_id"], logical(r), r["check_name"]) for r in results.get("failed_checks", [])]
    skipped = [(r["check_id"], logical(r)) for r in results.get("skipped_checks", [])]
    return failed, skipped


def guard_findings(cfn_guard, rules, template):
    """[(rule name, logical id, message)] of every rule a resource does not comply with."""
    run = subprocess.run([cfn_guard, "validate", "--data", str(template), "--rules", *map(str, rules),
                          "--output-format", "json", "--structured", "--show-summary", "none"],
                         capture_output=True, text=True)
    if run.returncode not in (0, 19):  # 19: some rule failed
        sys.exit(f"cfn-guard failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
    out = []
    for report in json.loads(run.stdout):
        for failure in report.get("not_compliant", []):
            rule = failure["Rule"]["name"]
            text = json.dumps(failure)
            message = re.search(r"\[((?:CT|FLEETLAKE)\.[A-Z0-9.]+)\]: ([^\\\[\"]*)", text)
            title = f"{message.group(1)}: {message.group(2).strip()}" if message else rule
            resources = sorted(set(re.findall(r'"/Resources/([A-Za-z0-9]+)', text)))
            # A failure that names no resource is the template's: it needs a suppression of its own.
            for lid in resources or [TEMPLATE]:
                out.append((rule, lid, title))
    return out


def suppressions(cfn):
    """{(tool, id, logical id): comment} from the template's Metadata (Audit.Suppressions, each naming its
    resources) and from checkov's own `checkov.skip` in a resource's Metadata, which checkov applies itself."""
    out = {}
    for entry in cfn.get("Metadata", {}).get("Audit", {}).get("Suppressions", []):
        for lid in entry.get("resources", []):
            out[(entry.get("tool"), entry.get("id"), lid)] = entry.get("comment", "")
    for lid, res in cfn.get("Resources", {}).items():
        meta = res.get("Metadata", {})
        for entry in meta.get("checkov", {}).get("skip", []):
            out[("checkov", entry.get("id"), lid)] = entry.get("comment", "")
    return out


def owner(lid, source_ids):
    """The source template resource a translated resource comes from: itself, or the SAM resource whose logical id
    prefixes it (SAM names what it generates after its resource)."""
    if lid in source_ids:
        return lid
    prefixes = [s for s in source_ids if lid.startswith(s)]
    return max(prefixes, key=len) if prefixes else lid


def audit(findings, skipped, suppressed, source_ids):
    """(explained, unexplained lines): matches each finding to a suppression on its resource or its owner."""
    used, explained, unexplained = set(), [], []
    for tool, rule, lid, title in findings:
        for candidate in (lid, owner(lid, source_ids)):
            key = (tool, rule, candidate)
            if key in suppressed:
                used.add(key)
                explained.append((tool, rule, lid, suppressed[key]))
                break
        else:
            unexplained.append(f"{tool} {rule} on {lid}: {title}")
    for tool, rule, lid in skipped:
        used.update({(tool, rule, lid), (tool, rule, owner(lid, source_ids))})
    for (tool, rule, lid), comment in sorted(suppressed.items(), key=str):
        if not (comment or "").strip():
            unexplained.append(f"{tool} {rule} on {lid}: suppressed without a reason")
        elif (tool, rule, lid) not in used:
            unexplained.append(f"{tool} {rule} on {lid}: suppressed, but nothing matches it any more (remove it)")
    return explained, unexplained


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--template", default=str(ROOT / "template.yaml"))
    ap.add_argument("--checkov", default=str(ROOT / ".venv-audit/bin/checkov"))
    ap.add_argument("--cfn-guard", required=True)
    ap.add_argument("--rules", default=str(ROOT / ".venv-audit"), help="the venv holding cdk-validator-cfnguard")
    ap.add_argument("--work", default=str(ROOT / ".local/audit"))
    a = ap.parse_args()

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cfn = check_template.translate(a.template)
    translated = work / "template.cfn.json"
    translated.write_text(json.dumps(cfn, indent=1))
    ct_dir, ct_count = control_tower_rules(a.rules, work / "control-tower")

    from samtranslator.yaml_helper import yaml_parse
    source_ids = set(yaml_parse(Path(a.template).read_text())["Resources"])

    failed, skipped = checkov_findings(a.checkov, translated)
    findings = [("checkov", cid, lid, title) for cid, lid, title in failed]
    findings += [("guard", rule, lid, title) for rule, lid, title in guard_findings(a.cfn_guard, [ct_dir, OWN_RULES], translated)]
    skipped = [("checkov", cid, lid) for cid, lid in skipped]
    explained, unexplained = audit(findings, skipped, suppressions(cfn), source_ids)

    by_tool = {}
    for tool, *_ in explained:
        by_tool[tool] = by_tool.get(tool, 0) + 1
    print(f"checkov and cfn-guard ({ct_count} Control Tower rules + {OWN_RULES.name}) on the translated template: "
          f"{len(explained) + len(skipped)} findings suppressed with a reason "
          f"(checkov {by_tool.get('checkov', 0) + len(skipped)}, guard {by_tool.get('guard', 0)}), "
          f"{len(unexplained)} unexplained")
    if unexplained:
        print("Unexplained findings (fix the template, or suppress in the resource's Metadata with a reason):",
              *unexplained, sep="\n  - ")
        sys.exit(1)


if __name__ == "__main__":
    main()
