#!/usr/bin/env python3
"""One-off check that `moepack export` files load unchanged in the safetensors package and PyTorch.

Not part of `swift test` (moepack never calls Python). Run after `swift build`:
    /work/venv/bin/python scripts/check_export_python.py
Exports the tiny fixture model (Tests/Fixtures/tiny, scripts/make_fixtures.py) from every container with
.build/debug/moepack and checks, against the fixtures as PyTorch/NumPy read them:
  - every container gives the same tensor header and data section (metadata aside) and, with
    --no-metadata, the same bytes the Python safetensors writer produces for those tensors;
  - values equal model.safetensors (torch.equal), load_state_dict(strict=True) accepts them;
  - --dtype f16 == tensor.half(), --dtype bf16 == tensor.bfloat16(), model_f16.pth keep == stored halves,
    --all == the training checkpoint's state_dict, the Edge-MoE folder export == its raw .bin files.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".build", "debug", "moepack")
F = os.path.join(ROOT, "Tests", "Fixtures", "tiny")


def export(src, out, *args):
    subprocess.run([BIN, "export", os.path.join(F, src), "-o", out, "--quiet", *args], check=True)
    return out


def split(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    m = h.pop("__metadata__", None)
    return m, h, b[8 + n:]


def main():
    d = tempfile.mkdtemp(prefix="moepack-export-check-")
    ref = load_file(os.path.join(F, "model.safetensors"))
    names = [k for k in ref if not k.startswith("norm.")]
    base = export("model.pth", os.path.join(d, "model.pth.st"))
    _, h0, d0 = split(base)
    for c in ["plain.pth", "legacy.pth", "ep", "model.safetensors", "model.h5", "model.npz", "model_deflated.npz"]:
        m, h, data = split(export(c, os.path.join(d, c + ".st")))
        assert h == h0 and data == d0, c
        assert m["source"] == c, m
    t = load_file(base)
    assert sorted(t) == sorted(names)
    assert all(torch.equal(t[k], ref[k]) for k in names)
    with safe_open(base, "pt") as s:
        print("metadata:", s.metadata())

    nometa = export("model.h5", os.path.join(d, "nometa.st"), "--no-metadata")
    save_file({k: t[k] for k in names}, os.path.join(d, "py.st"))
    assert open(os.path.join(d, "py.st"), "rb").read() == open(nometa, "rb").read(), "differs from the Python writer"

    class M(torch.nn.Module):
        def __init__(self, sd):
            super().__init__()
            for k, v in sd.items():
                self.register_parameter(k.replace(".", "__"), torch.nn.Parameter(torch.empty_like(v)))
    M(t).load_state_dict({k.replace(".", "__"): v for k, v in t.items()}, strict=True)

    f16 = load_file(export("model.pth", os.path.join(d, "f16.st"), "--dtype", "f16"))
    assert all(f16[k].dtype == torch.float16 and torch.equal(f16[k], ref[k].half()) for k in names)
    bf = load_file(export("model.pth", os.path.join(d, "bf16.st"), "--dtype", "bf16"))
    assert all(bf[k].dtype == torch.bfloat16 and torch.equal(bf[k], ref[k].bfloat16()) for k in names)
    sd16 = torch.load(os.path.join(F, "model_f16.pth"))
    kept = load_file(export("model_f16.pth", os.path.join(d, "keep16.st")))
    assert all(torch.equal(kept[k], sd16[k]) for k in names)
    wide = load_file(export("model_f16.pth", os.path.join(d, "wide.st"), "--dtype", "f32"))
    assert all(torch.equal(wide[k], sd16[k].float()) for k in names)
    full = load_file(export("model.pth", os.path.join(d, "all.st"), "--all"))
    ck = torch.load(os.path.join(F, "model.pth"))["state_dict"]
    assert sorted(full) == sorted(ck.keys()) and all(torch.equal(full[k], ck[k]) for k in ck)
    em = load_file(export("edge-moe", os.path.join(d, "em.st")))
    for k, v in em.items():
        raw = np.fromfile(os.path.join(F, "edge-moe", k + ".float32.bin"), "<f4")
        assert np.array_equal(raw, v.numpy().reshape(-1)), k
    print("ok:", len(names), "backbone tensors; all checks passed in", d)


if __name__ == "__main__":
    sys.exit(main())
