#!/usr/bin/env python3
"""Trains the fuel-24h model on the synthetic fleet the local stack generates (infra/local/fleet.py: the same
units, paths, duty cycles and fuel rates) and exports it to ONNX for the predictor (make model).

Each sample is a unit at a random 15-minute tick of a simulated day: the features the predictor computes from the
24 h of positions before it and the unit's previous daily performance row, and as the target the litres it burns in
the next 24 h. The feature contract (names, order, units) is models/fuel-24h/contract.json, shared with the Rust
predictor. The model is a small MLP (scikit-learn) fitted on log(fuel), whose input standardisation and output
scaling are folded into its first and last layers, followed by one Exp node: the ONNX graph uses only standard
operators (MatMul, Add, Relu, Exp) that tract, the predictor's pure-Rust runtime, runs, and never predicts negative
fuel. Also writes models/fuel-24h/expected.json: feature rows and onnxruntime's answers for them, the fixture that
the Rust tests compare against.

usage: train.py [--seed 7] [--units 6000] [--out models/fuel-24h]
"""
import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.neural_network import MLPRegressor

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra" / "local"))
import fleet  # noqa: E402  (the local stack's generator)

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--units", type=int, default=6000)
ap.add_argument("--out", default=str(ROOT / "models/fuel-24h"))
a = ap.parse_args()
out = Path(a.out)
contract = json.loads((out / "contract.json").read_text())
names = [f["name"] for f in contract["features"]]
WINDOW = contract["window_hours"] * 4  # ticks


def samples(n_units, seed, per_unit=3):
    """Feature rows as the predictor computes them, and the next 24 h's litres."""
    rnd = random.Random(seed)
    rows, y = [], []
    for i in range(n_units):
        u = fleet.new_unit(i, rnd)
        days = [fleet.simulate_day(u, rnd) for _ in range(3)]
        before = fleet.daily_row(u, "d0", days[0])
        ticks = days[0] + days[1] + days[2]
        for _ in range(per_unit):
            t = 96 + rnd.randrange(0, 96)  # a tick of the middle day
            window = ticks[t - WINDOW + 1: t + 1]
            speeds = [w[2] for w in window]
            feat = {"distance_km": sum(w[5] for w in window[1:]), "mean_speed_kmh": sum(speeds) / len(speeds),
                    "hours_observed": (len(window) - 1) * fleet.TICK_H,
                    "is_aerial": float(u["type"] == "aerial"), "is_maritime": float(u["type"] == "maritime"),
                    "is_terrestrial": float(u["type"] == "terrestrial"),
                    "mean_wind_kmh": sum(w[7] for w in window) / len(window), "precipitation_mm": sum(w[8] for w in window),
                    "last_distance_km": before["distance_km"], "last_fuel_l": before["fuel_used_l"],
                    "last_engine_hours": before["engine_hours"]}
            rows.append([feat[n] for n in names])
            # At least a litre: a unit parked for the next day still idles.
            y.append(max(1.0, sum(w[6] for w in ticks[t + 1: t + 1 + 96])))
    return np.array(rows, dtype=np.float64), np.array(y, dtype=np.float64)


X, y = samples(a.units, a.seed)
mu, sigma = X.mean(axis=0), X.std(axis=0)
sigma[sigma == 0] = 1.0
log_y = np.log(y)
y_mu, y_sigma = log_y.mean(), log_y.std()
mlp = MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=1000, random_state=a.seed, early_stopping=True)
mlp.fit((X - mu) / sigma, (log_y - y_mu) / y_sigma)

# Fold the standardisation into the weights: x' = (x - mu) / sigma, log y = y' * y_sigma + y_mu.
mlp.coefs_[0] = mlp.coefs_[0] / sigma[:, None]
mlp.intercepts_[0] = mlp.intercepts_[0] - (mu / sigma) @ (mlp.coefs_[0] * sigma[:, None])
mlp.coefs_[-1] = mlp.coefs_[-1] * y_sigma
mlp.intercepts_[-1] = mlp.intercepts_[-1] * y_sigma + y_mu

X_test, y_test = samples(700, a.seed + 1)
pred = np.exp(mlp.predict(X_test))
# Weighted absolute percentage error: a parked day ahead (a ship in port) has a tiny target and an unbounded
# percentage error, so the plain mean of percentages says little.
wape = float(np.sum(np.abs(pred - y_test)) / np.sum(y_test))

onx = to_onnx(mlp, X[:1].astype(np.float32), target_opset=17,
              options={id(mlp): {}}, final_types=None)
onx.graph.input[0].name = contract["input"]
for node in onx.graph.node:
    node.input[:] = [contract["input"] if i == "X" else i for i in node.input]
# fuel = exp(log fuel)
onx.graph.node.append(onnx.helper.make_node("Exp", ["variable"], [contract["output"]], name="fuel_from_log"))
onx.graph.output[0].name = contract["output"]
onx.doc_string = f"{contract['name']}: {contract['target']} ({contract['target_unit']}) from {len(names)} features; seed {a.seed}"
(out / "model.onnx").write_bytes(onx.SerializeToString())
ops = sorted({n.op_type for n in onx.graph.node})

# The fixture: feature rows and what onnxruntime answers for them.
session = ort.InferenceSession(str(out / "model.onnx"))
sample = X_test[:16].astype(np.float32)
answers = session.run(None, {contract["input"]: sample})[0].reshape(-1)
(out / "expected.json").write_text(json.dumps({
    "model": "model.onnx", "onnxruntime": ort.__version__, "features": sample.tolist(),
    "predictions": answers.tolist()}, indent=1) + "\n")
print(json.dumps({"samples": len(y), "test_samples": len(y_test), "test_wape": round(wape, 4),
                  "test_median_ape": round(float(np.median(np.abs(pred - y_test) / y_test)), 4), "onnx_ops": ops,
                  "model_bytes": (out / "model.onnx").stat().st_size}))
