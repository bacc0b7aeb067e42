#!/usr/bin/env python3
"""An operator's redrive, once the cause of a failure is fixed. Both commands are idempotent (a second run lands
nothing twice) and take --dry-run, which reports what would move and changes nothing.

    redrive.py queue --queue NAME [--dry-run] [--max N]
        Moves the messages of queue NAME's dead-letter queue (its RedrivePolicy names it) back to NAME, with their
        bodies and message attributes. Each message is sent and then deleted from the dead-letter queue; a message
        whose send succeeded but whose delete did not comes back once more, which the functions absorb (their
        writes are idempotent). A second run finds the dead-letter queue empty.

    redrive.py quarantine --stage STAGE [--dt YYYY-MM-DD] [--reason TEXT] [--dry-run]
            [--function-name NAME | --router BIN --stack-env FILE]
        Re-submits the quarantined records of STAGE (those with a raw value; whole objects quarantined by
        reference are listed for a redelivery of the object instead) to the stage that refused them:
          msk-lander        an MSK event of the records, with their topic, partition, offset and timestamp, to the
                            function (Lambda Invoke with --function-name, or the local router's --invoke). The lander
                            names its objects after topic, partition and offsets and writes them create-only, so
                            a second run lands nothing new; downstream, the records keep their Kafka identity.
          weather-enricher  the lines, as one object per quarantine object under landing/locations/dt=…/
          delta-writer      the lines, as one object per quarantine object under the input folder they came from
                            (enriched/locations/ or landing/<change log>/), …/dt=…/
        Objects are named redrive-<stage>-<hash of the quarantine object's key and ETag>.ndjson.gz and written
        create-only (If-None-Match: *): a second run writes nothing, and the same bytes give the same identity
        downstream, so nothing lands twice. Such objects are not lander batches: their lines get the object's own
        lineage, and their event times are judged against the time they are read.
        --reason keeps only records whose reason contains TEXT.

AWS credentials, region and endpoint come from the environment (AWS_ENDPOINT_URL for the local stack); the lake
bucket from LAKE_BUCKET, prefixes from QUARANTINE_PREFIX (quarantine/), LANDING_PREFIX (landing/) and
ENRICHED_PREFIX (enriched/).
"""
import argparse
import base64
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

import boto3
from botocore.exceptions import ClientError

# The datasets a Kafka topic can land in: the last dot-separated part of its name (fleet.locations,
# pg.public.performance_stats, pg.public.transport_units), as msk-lander's default topic mapping does.
DATASETS = ("locations", "performance_stats", "transport_units")


def client(name):
    return boto3.client(name, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
                        region_name=os.environ.get("AWS_REGION", "us-east-1"))


def redrive_queue(args):
    sqs = client("sqs")
    url = sqs.get_queue_url(QueueName=args.queue)["QueueUrl"]
    policy = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"].get("RedrivePolicy")
    if not policy:
        raise SystemExit(f"{args.queue} has no dead-letter queue (RedrivePolicy)")
    dlq_name = json.loads(policy)["deadLetterTargetArn"].rsplit(":", 1)[1]
    dlq = sqs.get_queue_url(QueueName=dlq_name)["QueueUrl"]
    seen, moved, looked = set(), 0, []
    while moved < args.max:
        # Long enough to send and delete each message before it becomes visible again.
        batch = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60,
                                    MessageAttributeNames=["All"]).get("Messages", [])
        if not batch:
            break
        for m in batch:
            if m["MessageId"] in seen:
                continue
            seen.add(m["MessageId"])
            print(json.dumps({"move": m["MessageId"], "from": dlq_name, "to": args.queue, "body": m["Body"][:200]}))
            if args.dry_run:
                looked.append(m["ReceiptHandle"])
                continue
            send = {"QueueUrl": url, "MessageBody": m["Body"]}
            if m.get("MessageAttributes"):
                send["MessageAttributes"] = m["MessageAttributes"]
            sqs.send_message(**send)
            sqs.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])
            moved += 1
    # A dry run leaves every message where it was, visible again at once.
    for handle in looked:
        sqs.change_message_visibility(QueueUrl=dlq, ReceiptHandle=handle, VisibilityTimeout=0)
    print(json.dumps({"queue": args.queue, "dead_letter_queue": dlq_name, "moved": moved, "seen": len(seen),
                      "dry_run": args.dry_run}))


def quarantine_objects(s3, bucket, prefix):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            yield o["Key"], o["ETag"].strip('"')


def put_create_only(s3, bucket, key, body):
    """True if written, False if an object of that name exists already (a previous run)."""
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        return True
    except ClientError as e:
        if e.response["Error"]["Code"] in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise


def dataset_of_topic(topic):
    last = topic.rsplit(".", 1)[-1]
    return last if last in DATASETS else None


def redrive_quarantine(args):
    s3 = client("s3")
    bucket = os.environ["LAKE_BUCKET"]
    quarantine = os.environ.get("QUARANTINE_PREFIX", "quarantine/")
    landing = os.environ.get("LANDING_PREFIX", "landing/")
    enriched = os.environ.get("ENRICHED_PREFIX", "enriched/")
    prefix = f"{quarantine}{args.stage}/" + (f"dt={args.dt}/" if args.dt else "")
    report = {"stage": args.stage, "records": 0, "by_reference": [], "written": [], "already": [], "dry_run": args.dry_run}
    kafka = defaultdict(list)  # (topic, partition) -> MSK records, for msk-lander
    for key, etag in quarantine_objects(s3, bucket, prefix):
        dt = next((p[3:] for p in key.split("/") if p.startswith("dt=")), None)
        lines = [json.loads(line) for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines() if line.strip()]
        lines = [q for q in lines if not args.reason or args.reason in q.get("reason", "")]
        for q in lines:
            if q.get("raw") is None:
                report["by_reference"].append({"quarantine": key, "source": q.get("source"), "reason": q.get("reason")})
        lines = [q for q in lines if q.get("raw") is not None]
        if not lines:
            continue
        report["records"] += len(lines)
        if args.stage == "msk-lander":
            for q in lines:
                src = q["source"]
                raw = q["raw"]
                value = raw if q["reason"].endswith("(raw kept as base64)") else base64.b64encode(raw.encode()).decode()
                kafka[(src["topic"], src["partition"])].append({
                    "topic": src["topic"], "partition": src["partition"], "offset": src["offset"],
                    "timestamp": src.get("timestamp", -1), "timestampType": "CREATE_TIME", "value": value, "headers": []})
            continue
        if args.stage == "weather-enricher":
            folder = f"{landing}locations/"
        elif args.stage == "delta-writer":
            source_key = lines[0]["source"].get("key", "")
            folder = next((f"{p}{d}/" for p in (enriched, landing) for d in DATASETS if source_key.startswith(f"{p}{d}/")), None)
            if folder is None:
                report["by_reference"].append({"quarantine": key, "reason": f"no input folder for {source_key!r}"})
                continue
        else:
            raise SystemExit(f"no redrive for stage {args.stage}")
        digest = hashlib.sha256(f"{key}\0{etag}".encode()).hexdigest()[:16]
        target = f"{folder}dt={dt}/redrive-{args.stage}-{digest}.ndjson.gz"
        body = gzip.compress("".join(q["raw"].rstrip("\n") + "\n" for q in lines).encode(), mtime=0)
        if args.dry_run:
            report["written"].append({"key": target, "records": len(lines), "would": True})
        elif put_create_only(s3, bucket, target, body):
            report["written"].append({"key": target, "records": len(lines)})
        else:
            report["already"].append(target)
    if kafka:
        records = {f"{t}-{p}": sorted(recs, key=lambda r: r["offset"]) for (t, p), recs in sorted(kafka.items())}
        event = {"eventSource": "aws:kafka", "eventSourceArn": "arn:aws:kafka:redrive", "bootstrapServers": "redrive",
                 "records": records}
        report["msk_event_records"] = sum(len(v) for v in records.values())
        if not args.dry_run:
            report["answer"] = invoke(args, event)
    print(json.dumps(report, indent=1))


def invoke(args, event):
    if args.function_name:
        out = client("lambda").invoke(FunctionName=args.function_name, Payload=json.dumps(event).encode())
        answer = json.loads(out["Payload"].read() or b"null")
        if out.get("FunctionError"):
            raise SystemExit(f"{args.function_name} failed: {answer}")
        return answer
    if not (args.router and args.stack_env):
        raise SystemExit("msk-lander records are re-submitted to the function: give --function-name, or --router and --stack-env")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(event, f)
    out = subprocess.run([args.router, "--stack-env", args.stack_env, "--binaries", os.path.dirname(args.router),
                          "--invoke", "msk-lander", "--event", f.name], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"router --invoke msk-lander failed: {out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    if "error" in report:
        raise SystemExit(f"msk-lander failed: {report['error']}")
    return report["answer"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queue")
    q.add_argument("--queue", required=True, help="the source queue (its dead-letter queue is drained into it)")
    q.add_argument("--max", type=int, default=100_000)
    q.add_argument("--dry-run", action="store_true")
    r = sub.add_parser("quarantine")
    r.add_argument("--stage", required=True, choices=["msk-lander", "weather-enricher", "delta-writer"])
    r.add_argument("--dt", help="only this date folder (YYYY-MM-DD)")
    r.add_argument("--reason", help="only records whose reason contains this text")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--function-name", help="msk-lander: the deployed function (Lambda Invoke)")
    r.add_argument("--router", help="msk-lander, locally: the fleetlake-router binary (beside the function binaries)")
    r.add_argument("--stack-env", help="msk-lander, locally: the stack's settings (.local/stack.env)")
    a = ap.parse_args()
    (redrive_queue if a.cmd == "queue" else redrive_quarantine)(a)


if __name__ == "__main__":
    sys.exit(main())
