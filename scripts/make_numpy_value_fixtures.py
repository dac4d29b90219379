#!/usr/bin/env python3
"""Training checkpoints that carry NumPy values next to the state_dict (seeded, no network).

Writes Tests/Fixtures/checkpoint/numpy-values/:
  numpy2.pth  torch zip, pickled with NumPy 2 module paths (numpy._core.multiarray._reconstruct / .scalar)
  numpy1.pth  the same object pickled with NumPy 1 module paths (numpy.core.multiarray._reconstruct / .scalar),
              as a checkpoint saved under NumPy 1 has them
Both hold {'epoch': 12, 'state_dict': the tiny plain backbone (Tests/Fixtures/tiny/plain.pth, 'module.backbone.'
prefixed), 'best_result': {'semseg': {'mIoU': np.float64, 'pixel_acc': np.float32},
'depth': {'rmse': np.float64, 'abs_rel': np.float32}}, 'confusion_matrix': int64 [7, 7], 'class_iou': float32 [7],
'lr_history': [np.float32 x 3], 'args': argparse.Namespace(...)}: what training scripts save and torch.load
(weights_only=False) returns as NumPy objects.

Run: /work/venv/bin/python scripts/make_numpy_value_fixtures.py (after make_fixtures.py)
"""
from __future__ import annotations

import argparse
import collections
import os
import pickle
import pickletools
import sys
import types
import zipfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_fixtures import _patch_zip_serialization_id  # noqa: E402

ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "Tests", "Fixtures", "checkpoint", "numpy-values")
SEED = 4242


class NumPy1Pickler(pickle._Pickler):
    """Writes NumPy's private module paths as NumPy 1 did (numpy.core.*), the rest unchanged."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if module.startswith("numpy._core"):
            qual = name or obj.__qualname__
            self.write(pickle.GLOBAL + module.replace("numpy._core", "numpy.core").encode() + b"\n" + qual.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


numpy1_pickle = types.ModuleType("numpy1_pickle")
numpy1_pickle.Pickler = NumPy1Pickler
numpy1_pickle.Unpickler = pickle.Unpickler
numpy1_pickle.load = pickle.load
numpy1_pickle.dump = pickle.dump


def checkpoint():
    rng = np.random.default_rng(SEED)
    plain = torch.load(os.path.join(ROOT, "Tests", "Fixtures", "tiny", "plain.pth"), map_location="cpu", weights_only=True)
    sd = collections.OrderedDict(("module.backbone." + k, v) for k, v in plain.items())
    cm = rng.integers(0, 500, (7, 7)).astype(np.int64)
    return {
        "epoch": 12,
        "state_dict": sd,
        "best_result": {"semseg": {"mIoU": np.float64(0.4137), "pixel_acc": np.float32(0.8812)},
                        "depth": {"rmse": np.float64(6.917), "abs_rel": np.float32(0.2231)}},
        "confusion_matrix": cm,
        "class_iou": (np.diag(cm) / cm.sum(0)).astype(np.float32),
        "lr_history": [np.float32(1e-3), np.float32(5e-4), np.float32(2.5e-4)],
        "args": argparse.Namespace(lr=1e-3, tasks=["semseg", "depth"]),
    }


def save(obj, path, pickle_module):
    torch.save(obj, path, pickle_module=pickle_module)
    _patch_zip_serialization_id(path, b"0" * 40)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        pkl = z.read([n for n in z.namelist() if n.endswith("data.pkl")][0])
    return {str(arg) for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}


def main():
    os.makedirs(OUT, exist_ok=True)
    obj = checkpoint()
    g2 = save(obj, os.path.join(OUT, "numpy2.pth"), pickle)
    g1 = save(obj, os.path.join(OUT, "numpy1.pth"), numpy1_pickle)
    assert any("numpy._core.multiarray" in g for g in g2), g2
    assert any("numpy.core.multiarray" in g for g in g1) and not any("numpy._core" in g for g in g1), g1
    for name in ("numpy1.pth", "numpy2.pth"):
        back = torch.load(os.path.join(OUT, name), map_location="cpu", weights_only=False)
        assert np.array_equal(back["confusion_matrix"], obj["confusion_matrix"])
        assert all(torch.equal(back["state_dict"][k], v) for k, v in obj["state_dict"].items())
    print("numpy2 globals:", sorted(g2))
    print("numpy1 globals:", sorted(g1))


if __name__ == "__main__":
    main()
