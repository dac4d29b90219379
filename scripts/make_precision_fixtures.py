#!/usr/bin/env python3
"""Fixtures for the fixed-point emulation with non-published element types (issue 14).

For each case below: the seeded tiny M³ViT (Tests/Fixtures/tiny/plain.pth, made by make_fixtures.py)
is folded and quantized (AP_RND_CONV, AP_SAT, as `moepack pack` does by default) to the tiny-test
profile's types with the case's overrides, then run through scripts/kernel_datapath_ref.py — a model
of ViT_compute written from the kernel's C++ — on the tiny frame. Writes Tests/Fixtures/precision/:

  cases.json          per case: type overrides, SHA-256 of every weight buffer's DDR bytes (each
                      element in a 1/2/4/8-byte little-endian container for W <= 8/16/32/64, C order),
                      and the output files
  <case>_out.i32      backbone output x [tokens, D], raw fm_t (ap_fixed<32,10>) codes
  <case>_topk.i32     [moe block, token, k] expert indices

First checks that the published types reproduce Tests/Fixtures/emulation/tiny_fixed_out.i32 (made by
the older loop-literal model), so the two references agree where they overlap. Deterministic (the
model and frame are seeded fixtures; nothing random here).
Run: /work/venv/bin/python scripts/make_precision_fixtures.py
"""
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kernel_datapath_ref as kdp  # noqa: E402
import reference_m3vit as ref  # noqa: E402

ROOT = os.path.dirname(HERE)
TINY = os.path.join(ROOT, "Tests", "Fixtures", "tiny")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "precision")
PROFILE = os.path.join(ROOT, "Sources", "MoepackPacking", "Profiles", "tiny-test.json")

# Case name -> element-type overrides of the tiny-test profile.
CASES = {
    # 8-bit linear weights (values embed in ap_fixed<16,2>: the emulator's 16-bit fast form).
    "linear8": {"wt_linear_t": "ap_fixed<8,1>"},
    # 12-bit linear weights.
    "linear12": {"wt_linear_t": "ap_fixed<12,2>"},
    # 12-bit weights with 4 integer bits (general path) and narrower biases (8 and 10 bits):
    # wt_wbias_t = ap_fixed<10,5> in linear.hpp.
    "linear12i4_bias8": {"wt_linear_t": "ap_fixed<12,4>", "wt_bias_t": "ap_fixed<8,3>",
                         "wt_attn_bias_t": "ap_fixed<10,5>"},
    # Wider than the published types: 20-bit weights in 4-byte containers, a 24-fraction-bit
    # attention bias (floored when assigned to fm_t), 12-bit LayerNorm weights, 10-bit patch weights.
    "wide_mixed": {"wt_linear_t": "ap_fixed<20,3>", "wt_attn_bias_t": "ap_fixed<32,8>",
                   "wt_bias_t": "ap_fixed<24,6>", "wt_norm_t": "ap_fixed<12,4>",
                   "wt_patch_embed_t": "ap_fixed<10,0>"},
}


def parse(spelled):
    """'ap_fixed<W,I[,...]>' -> (W, I); only signed ap_fixed is used for weights."""
    assert spelled.startswith("ap_fixed<") and spelled.endswith(">"), spelled
    args = spelled[len("ap_fixed<"):-1].split(",")
    return int(args[0]), int(args[1])


def container(raw, width):
    dt = "<i1" if width <= 8 else "<i2" if width <= 16 else "<i4" if width <= 32 else "<i8"
    return np.asarray(raw, dtype=np.int64).astype(dt).tobytes()


def main():
    profile = json.load(open(PROFILE))
    arg_type = {b["name"]: b["type"] for b in profile["buffers"]}
    plain = torch.load(os.path.join(TINY, "plain.pth"), map_location="cpu", weights_only=True)
    cfg = ref.TINY
    folded = ref.fold(plain, cfg)
    floats = ref.kernel_arrays(folded, cfg, 0)
    frame = list(open(os.path.join(TINY, "frame.u8"), "rb").read())
    c = cfg.as_json()
    c["layer_norm_eps"] = struct.unpack("<f", struct.pack("<f", ref.LN_EPS))[0]
    c["attention_scale"] = 1.0 / math.sqrt(cfg.embed_dim // cfg.heads)

    def run_case(overrides):
        types = {k: parse(v) if k not in ("pixel_t",) else None for k, v in profile["types"].items()}
        types.update({k: parse(v) for k, v in overrides.items()})
        arrays, digests = {}, {}
        for name, (arr, _) in floats.items():
            wi = types[arg_type[name]]
            raw = ref.quantize(arr, wi, "rnd_conv_sat").reshape(-1)
            arrays[name] = [int(v) for v in raw]
            digests[name] = hashlib.sha256(container(raw, wi[0])).hexdigest()
        x, routing = kdp.run(c, arrays, types, frame)
        return x, routing, digests

    # The published types agree with the older loop-literal model's fixture.
    x, routing, _ = run_case({})
    published = np.fromfile(os.path.join(ROOT, "Tests", "Fixtures", "emulation", "tiny_fixed_out.i32"), "<i4")
    assert published.tolist() == [v for row in x for v in row], "published types disagree with make_emulation_ref.py"

    os.makedirs(OUT, exist_ok=True)
    meta = {"description": "Fixed-point emulation references for non-published element types: the tiny "
                           "M3ViT (Tests/Fixtures/tiny/plain.pth, task 0) quantized with AP_RND_CONV/AP_SAT "
                           "to the tiny-test profile's types with these overrides, run on tiny/frame.u8 by "
                           "scripts/kernel_datapath_ref.py. Made by scripts/make_precision_fixtures.py.",
            "cases": {}}
    for case, overrides in CASES.items():
        x, routing, digests = run_case(overrides)
        out = np.array(x, dtype=np.int64).astype("<i4")
        top = np.array(routing, dtype=np.int64).astype("<i4")
        out.tofile(os.path.join(OUT, f"{case}_out.i32"))
        top.tofile(os.path.join(OUT, f"{case}_topk.i32"))
        meta["cases"][case] = {"types": overrides, "buffer_sha256": digests,
                               "output": f"{case}_out.i32", "output_shape": list(out.shape),
                               "topk": f"{case}_topk.i32", "topk_shape": list(top.shape)}
        diff = int((out != published.reshape(out.shape)).sum())
        print(f"{case}: {diff} of {out.size} raw outputs differ from the published types'")
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
