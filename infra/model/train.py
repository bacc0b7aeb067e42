#!/usr/bin/env python3
"""Trains the fuel-24h model on a synthetic fleet and exports it to ONNX for the predictor (make model).

The feature contract (names, order, units) is models/fuel-24h/contract.json, shared with the Rust predictor. The
model is a small MLP (scikit-learn) fitted on log(fuel), whose input standardisation and output scaling are folded
into its first and last layers, followed by one Exp node: the ONNX graph uses only standard operators (MatMul, Add,
Relu, Exp) that tract, the predictor's pure-Rust runtime, runs, and never predicts negative fuel. Also writes models/fuel-24h/expected.json: feature rows and onnxruntime's answers for them, the
fixture that the Rust tests compare against.

usage: train.py [--seed 7] [--samples 20000] [--out models/fuel-24h]
"""
import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.neural_network import MLPRegressor

ROOT = Path(__file__).resolve().parents[2]
ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--samples", type=int, default=20000)
ap.add_argument("--out", default=str(ROOT / "models/fuel-24h"))
a = ap.parse_args()
out = Path(a.out)
contract = json.loads((out / "contract.json").read_text())
names = [f["name"] for f in contract["features"]]
rng = np.random.default_rng(a.seed)

# Per transport type: cruise speed range (km/h), fuel per km (l), share of the day moving.
TYPES = {"aerial": ((650, 880), 3.2, (0.3, 0.6)), "maritime": ((18, 40), 11.0, (0.6, 1.0)), "terrestrial": ((55, 90), 0.32, (0.3, 0.6))}


def fleet(n):
    """n synthetic unit-windows: the contract's features and the fuel the unit burns in the next 24 h."""
    rows, y = [], []
    for _ in range(n):
        kind = rng.choice(list(TYPES))
        (lo, hi), per_km, (act_lo, act_hi) = TYPES[kind]
        speed = rng.uniform(lo, hi)
        hours = rng.uniform(1.0, 24.0)
        moving = rng.uniform(act_lo, act_hi)
        distance = speed * hours * moving
        wind = rng.uniform(0, 80)
        rain = rng.exponential(2.0)
        last_distance = speed * 24 * rng.uniform(act_lo, act_hi)
        last_fuel = last_distance * per_km * rng.uniform(0.9, 1.1)
        last_hours = 24 * rng.uniform(act_lo, act_hi)
        feat = {"distance_km": distance, "mean_speed_kmh": speed, "hours_observed": hours,
                "is_aerial": float(kind == "aerial"), "is_maritime": float(kind == "maritime"),
                "is_terrestrial": float(kind == "terrestrial"), "mean_wind_kmh": wind, "precipitation_mm": rain,
                "last_distance_km": last_distance, "last_fuel_l": last_fuel, "last_engine_hours": last_hours}
        # Tomorrow: about today's pace (observed distance per hour over 24 h) blended with yesterday's figures,
        # more fuel against the wind and in rain.
        pace_km = 0.5 * distance / hours * 24 + 0.5 * last_distance
        fuel = pace_km * per_km * (1 + 0.004 * wind + 0.01 * min(rain, 10)) * rng.normal(1.0, 0.03)
        rows.append([feat[n] for n in names])
        y.append(fuel)
    return np.array(rows, dtype=np.float64), np.array(y, dtype=np.float64)


X, y = fleet(a.samples)
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

X_test, y_test = fleet(2000)
pred = np.exp(mlp.predict(X_test))
mape = float(np.mean(np.abs(pred - y_test) / y_test))

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
print(json.dumps({"samples": a.samples, "test_mape": round(mape, 4), "onnx_ops": ops,
                  "model_bytes": (out / "model.onnx").stat().st_size}))
