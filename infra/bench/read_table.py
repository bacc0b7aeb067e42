#!/usr/bin/env python3
"""Times a full read of a Delta table with the Python `deltalake` package (the analysts' reader).

usage: read_table.py ENDPOINT TABLE_URI [REPEATS]
Prints {"rows", "files", "seconds": [...], "median_s"}: each repeat opens the table afresh and reads every row.
"""
import json
import os
import statistics
import sys
import time

from deltalake import DeltaTable

endpoint, uri = sys.argv[1], sys.argv[2]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
seconds, rows, files = [], 0, 0
for _ in range(repeats):
    started = time.perf_counter()
    dt = DeltaTable(uri, storage_options=options)
    rows = dt.to_pyarrow_table().num_rows
    seconds.append(time.perf_counter() - started)
    files = len(dt.file_uris())
print(json.dumps({"rows": rows, "files": files, "seconds": seconds, "median_s": statistics.median(seconds)}))
sys.stdout.flush()
os._exit(0)  # as read_delta.py: skip the interpreter's teardown with the Rust thread pools alive
