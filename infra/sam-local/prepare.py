"""Writes what `sam local invoke` needs to run the functions against the local stack, from the files `make test`
already builds: no second build of any function.

  prepare.py --bin-dir DIR --stack-env .local/stack.env --out .local/sam

- `<out>/template.json`: template.yaml with every function on x86_64 (deployments stay arm64), its code at
  `<bin-dir>/../sam-local/<LogicalId>/bootstrap` (a hard link to the debug binary, or a copy across file systems),
  its events dropped (they are the deployment's wiring), and every variable of the local stack declared (SAM only
  overrides declared variables).
- `<out>/env.json`: the `--env-vars` file, per function: the stack's settings with the AWS endpoint, the weather
  stub and PostgreSQL (`stack.py up --postgres`: `PG_HOST` overrides the secret's 127.0.0.1) addressed as
  `host.docker.internal` (the container reaches the host through `--add-host host.docker.internal:host-gateway`;
  the services must listen beyond 127.0.0.1: `stack.py up --host 0.0.0.0`).
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra" / "local"))
import stack  # noqa: E402  (the template loader and stack.json)

# Variables of the stack every function may read; the rest of stack.env (queue and topic names) is the router's.
SHARED = ("AWS_ENDPOINT_URL", "AWS_REGION", "LAKE_BUCKET", "GLUE_DATABASE", "PREDICTIONS_TABLE", "WEATHER_API_URL",
          "PAGINATION_KEY", "PG_SECRET_ARN", "PG_CA_BUNDLE", "POLL_TABLES")
CONTAINER_HOST = "host.docker.internal"


def in_container(url):
    """A URL of a service on this machine as a container sees it."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "0.0.0.0"):
        return url
    return urlunsplit(parts._replace(netloc=f"{CONTAINER_HOST}:{parts.port}"))


def place_binary(binary, code_dir):
    code_dir.mkdir(parents=True, exist_ok=True)
    target = code_dir / "bootstrap"
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(binary, target)
    except OSError:
        shutil.copy2(binary, target)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True, help="the x86_64 debug binaries (target/debug)")
    ap.add_argument("--stack-env", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--template", default=str(ROOT / "template.yaml"))
    args = ap.parse_args()

    bin_dir = Path(args.bin_dir).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(line.split("=", 1) for line in Path(args.stack_env).read_text().split())
    definition = stack.definition()
    template = json.loads(json.dumps(stack.load_template(args.template)))

    shared = {k: env[k] for k in SHARED if k in env}
    for k in ("AWS_ENDPOINT_URL", "WEATHER_API_URL"):
        if k in shared:
            shared[k] = in_container(shared[k])
    if "PG_SECRET_ARN" in shared:
        shared["PG_HOST"] = CONTAINER_HOST  # the certificate names it too (infra/local/pg_source.py)
    shared.update(definition.get("function_environment", {}))
    own = {f["logical_id"]: f["environment"] for f in definition["functions"]}

    template.setdefault("Globals", {}).setdefault("Function", {})["Architectures"] = ["x86_64"]
    env_vars = {}
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        binary = resource.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
        if not binary or not (bin_dir / binary).exists():
            raise SystemExit(f"{logical_id}: no binary {bin_dir / binary} (make test builds the functions)")
        code_dir = bin_dir.parent / "sam-local" / logical_id
        place_binary(bin_dir / binary, code_dir)
        props = resource["Properties"]
        props["CodeUri"] = str(code_dir)
        props["Architectures"] = ["x86_64"]
        props.pop("Events", None)
        resource.pop("Metadata", None)
        variables = {**shared, **own.get(logical_id, {})}
        declared = props.setdefault("Environment", {}).setdefault("Variables", {})
        for k in variables:
            declared.setdefault(k, "")
        env_vars[logical_id] = {k: str(v) for k, v in variables.items()}

    (out / "template.json").write_text(json.dumps(template, indent=1))
    (out / "env.json").write_text(json.dumps(env_vars, indent=1))
    print(f"{out / 'template.json'}: {len(env_vars)} functions on x86_64; {out / 'env.json'}")


if __name__ == "__main__":
    main()
