#!/usr/bin/env python3
"""Runs an ONNX model with onnxruntime (an independent runtime) on feature rows.

usage: onnx_predict.py MODEL.onnx < rows.json
rows.json is a list of feature rows (lists of numbers, the contract's order); prints the list of predictions.
"""
import json
import sys

import numpy as np
import onnxruntime as ort

session = ort.InferenceSession(sys.argv[1])
rows = np.asarray(json.load(sys.stdin), dtype=np.float32)
name = session.get_inputs()[0].name
out = session.run(None, {name: rows})[0]
print(json.dumps([float(v) for v in np.asarray(out).reshape(-1)]))
