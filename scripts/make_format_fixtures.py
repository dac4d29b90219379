#!/usr/bin/env python3
"""Generates Tests/Fixtures/formats/: small safetensors, .npy and HDF5 files plus hostile variants,
with expected values as raw little-endian float32 files (expected/<tensor>.f32).

Deterministic: seeded numpy generator; run with /work/venv/bin/python (numpy, torch, h5py, safetensors).
Re-running rewrites every file with identical bytes (HDF5 files apart, whose object headers may differ
between library versions; tests only read them).
"""
import json
import os
import shutil
import struct

import h5py
import numpy as np
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file as torch_save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "formats")
rng = np.random.default_rng(20240517)


def f32bits(*bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def bf16_canonical_nan(t):
    """t.to(bfloat16), with NaN written as 0x7FC0 (sign kept) as c10's scalar round_to_nearest_even
    does; torch's vectorized conversion writes 0xFFFF for NaN instead, so its output depends on the
    element's position. All non-NaN values come from torch unchanged."""
    b = t.to(torch.bfloat16)
    bits = b.view(torch.int16)
    nan = torch.isnan(t)
    sign = torch.signbit(t)
    bits[nan & ~sign] = 0x7FC0
    bits[nan & sign] = 0xFFC0 - 0x10000  # 0xFFC0 as int16
    return b


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(os.path.join(ROOT, "expected"))
    os.makedirs(os.path.join(ROOT, "npy"))

    # ---- the reference tensors ------------------------------------------------------------------
    special = np.concatenate([
        np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, 3.4028235e38, 1.0, -2.5], dtype=np.float32),
        np.array([np.nan], dtype=np.float32),
        # ties: bf16 halfway cases (to even), f16 halfway cases, f16 overflow/underflow
        f32bits(0x3F808000, 0x3F818000),
        np.array([1 + 2**-11, 1 + 3 * 2**-11, 65520.0, 65519.0, 1e-8], dtype=np.float32),
    ])
    qkv = rng.standard_normal((6, 4)).astype(np.float32)
    bias16 = np.array([2**-24, -0.0, 0.333, -65504.0], dtype=np.float16)
    htoh4 = torch.from_numpy(rng.standard_normal((2, 3, 4)).astype(np.float32)).to(torch.bfloat16)
    head64 = np.array([[0.1, -1e-300], [1e300, 2.0 / 3.0], [-7.25, 123456789.123]], dtype=np.float64)
    pos = rng.standard_normal((1, 3, 4)).astype(np.float32)

    tensors = {
        "special": torch.from_numpy(special.copy()),
        "blocks.0.attn.qkv.weight": torch.from_numpy(qkv.copy()),
        "blocks.0.norm1.bias": torch.from_numpy(bias16.copy()),
        "blocks.0.mlp.experts.htoh4.weight": htoh4,
        "head.weight": torch.from_numpy(head64.copy()),
        "pos_embed": torch.from_numpy(pos.copy()),
        "num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros((0, 3), dtype=torch.float32),
    }
    torch_save_file(tensors, os.path.join(ROOT, "model.safetensors"), metadata={"format": "pt"})
    with np.errstate(over="ignore"):
        for name, t in tensors.items():
            v = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
            v.astype("<f4").tofile(os.path.join(ROOT, "expected", name + ".f32"))

    # ---- writer references ----------------------------------------------------------------------
    # Stream conversions: what torch writes for the same conversions moepack performs.
    conv = {
        "q16": tensors["blocks.0.attn.qkv.weight"].to(torch.float16),
        "qbf16": tensors["blocks.0.attn.qkv.weight"].to(torch.bfloat16),
        "s16": tensors["special"].to(torch.float16),
        "sbf16": bf16_canonical_nan(tensors["special"]),
        "h32": tensors["head.weight"].to(torch.float32),
        "n32": tensors["blocks.0.norm1.bias"].to(torch.float32),
        "e64": tensors["blocks.0.mlp.experts.htoh4.weight"].to(torch.float64),
        "keep": tensors["num_batches_tracked"],
    }
    torch_save_file(conv, os.path.join(ROOT, "converted.safetensors"), metadata={"stage": "moepack-test"})
    # In-memory writer: deterministic values the Swift test rebuilds.
    mem = {
        "w": (np.arange(6, dtype=np.float32) * 0.25 - 1.0).reshape(2, 3),
        "b": np.array([0.5, -1.5, 2.0], dtype=np.float16),
        "i": np.array([-128, -1, 0, 127], dtype=np.int8),
        "u": np.array([0, 65535], dtype=np.uint16),
        "m": np.array([True, False, True]),
        "s": np.array(42, dtype=np.int64),
        "é/\"x\"": np.array([1.0], dtype=np.float64),
    }
    np_save_file(mem, os.path.join(ROOT, "writer_np.safetensors"), metadata={"format": "np"})

    # ---- .npy ------------------------------------------------------------------------------------
    npy = os.path.join(ROOT, "npy")
    np.save(os.path.join(npy, "v1_f4.npy"), qkv)
    with open(os.path.join(npy, "v2_f8.npy"), "wb") as f:
        np.lib.format.write_array(f, head64, version=(2, 0))
    with open(os.path.join(npy, "v3_f2.npy"), "wb") as f:
        np.lib.format.write_array(f, bias16, version=(3, 0))
    np.save(os.path.join(npy, "be_f4.npy"), qkv.astype(">f4"))
    np.save(os.path.join(npy, "fortran_f4.npy"), np.asfortranarray(htoh4.float().numpy()))
    np.save(os.path.join(npy, "be_fortran_f8.npy"), np.asfortranarray(head64.astype(">f8")))
    np.save(os.path.join(npy, "scalar_f4.npy"), np.array(3.5, dtype=np.float32))
    np.save(os.path.join(npy, "b1.npy"), np.array([True, False, True]))
    np.save(os.path.join(npy, "be_i2.npy"), np.array([[1, -2], [300, -32768]], dtype=">i2"))
    np.save(os.path.join(npy, "object.npy"), np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(os.path.join(npy, "structured.npy"), np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]))
    np.save(os.path.join(npy, "complex.npy"), np.zeros(2, dtype=np.complex64))
    with open(os.path.join(npy, "v1_f4.npy"), "rb") as f:
        whole = f.read()
    with open(os.path.join(npy, "truncated.npy"), "wb") as f:
        f.write(whole[:-5])
    # NpyWriter references (numpy.save output for the same arrays).
    np.save(os.path.join(npy, "w_f4.npy"), mem["w"])
    np.save(os.path.join(npy, "w_i1.npy"), mem["i"])
    np.save(os.path.join(npy, "w_u2.npy"), mem["u"])
    np.save(os.path.join(npy, "w_i4.npy"), np.array([[1, -2], [3, -4]], dtype=np.int32))
    np.save(os.path.join(npy, "w_i8.npy"), np.array([-(2**40), 5], dtype=np.int64))
    np.save(os.path.join(npy, "w_u1.npy"), np.array([[0, 255, 7]], dtype=np.uint8))
    np.save(os.path.join(npy, "w_scalar.npy"), np.array(3.5, dtype=np.float32))

    # ---- HDF5 ------------------------------------------------------------------------------------
    with h5py.File(os.path.join(ROOT, "model.h5"), "w", track_order=False) as f:
        f.create_dataset("blocks/0/attn/qkv/weight", data=qkv, track_times=False)
        f.create_dataset("blocks/0/norm1/bias", data=bias16, track_times=False)
        f.create_dataset("blocks/0/mlp/experts/htoh4/weight", data=htoh4.float().numpy(), track_times=False)
        f.create_dataset("head/weight", data=head64, track_times=False)
        f.create_dataset("special", data=special, chunks=(4,), compression="gzip", compression_opts=4, shuffle=True, track_times=False)
        f.create_dataset("pos_embed", data=pos, chunks=(1, 2, 2), compression="gzip", track_times=False)
        f.create_dataset("be/weight", data=qkv.astype(">f4"), track_times=False)
        f.create_dataset("num_batches_tracked", data=np.int64(7), track_times=False)
        f.create_dataset("meta/name", data="m3vit-small", track_times=False)
        f.create_dataset("empty", data=np.zeros((0, 3), dtype=np.float32), track_times=False)
        f["alias"] = h5py.SoftLink("/head/weight")
        # bfloat16 as a custom HDF5 float type (sign bit 15, exponent 7..14 with bias 127, mantissa 0..6).
        bf = h5py.h5t.IEEE_F32LE.copy()
        bf.set_fields(15, 7, 8, 0, 7)
        bf.set_ebias(127)
        bf.set_size(2)
        grp = f.create_group("bf16")
        space = h5py.h5s.create_simple((2, 3, 4))
        ds = h5py.h5d.create(grp.id, b"weight", bf, space)
        ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(htoh4.float().numpy()))

    # ---- hostile safetensors ---------------------------------------------------------------------
    def st(name, header_bytes, data=b"", length=None):
        n = len(header_bytes) if length is None else length
        with open(os.path.join(ROOT, name), "wb") as f:
            f.write(struct.pack("<Q", n) + header_bytes + data)

    def hdr(obj):
        b = json.dumps(obj, separators=(",", ":")).encode()
        return b + b" " * ((8 - len(b) % 8) % 8)

    st("bad_huge_header.safetensors", b"{}", length=2**62)
    st("bad_oob.safetensors", hdr({"a": {"dtype": "F32", "shape": [250], "data_offsets": [0, 1000]}}), b"\0" * 16)
    st("bad_overlap.safetensors", hdr({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                       "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}), b"\0" * 24)
    st("bad_count.safetensors", hdr({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}), b"\0" * 12)
    st("bad_notjson.safetensors", b"{this is not json}      ", b"")
    st("bad_array.safetensors", b"[1,2,3] ", b"")
    st("bad_dtype.safetensors", hdr({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}), b"\0" * 2)
    st("bad_shape.safetensors", hdr({"a": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}), b"\0" * 8)
    st("bad_duplicate.safetensors",
       b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
       b"\0")
    st("bad_metadata.safetensors", hdr({"__metadata__": {"k": 1}}), b"")
    st("gap.safetensors", hdr({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                               "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}),
       struct.pack("<ffff", 1.5, 0.0, -2.0, 0.0))
    with open(os.path.join(ROOT, "model.safetensors"), "rb") as f:
        model = f.read()
    with open(os.path.join(ROOT, "bad_truncated.safetensors"), "wb") as f:
        f.write(model[:-10])
    with open(os.path.join(ROOT, "bad_header_truncated.safetensors"), "wb") as f:
        f.write(model[:100])
    open(os.path.join(ROOT, "empty.bin"), "wb").close()
    with open(os.path.join(ROOT, "text.txt"), "w") as f:
        f.write("hello, this is not a checkpoint\n")


if __name__ == "__main__":
    main()
