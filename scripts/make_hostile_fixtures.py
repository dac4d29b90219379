#!/usr/bin/env python3
"""Makes the hostile and broken checkpoint fixtures for the "never execute, never crash, never leave a
half-written image" tests (seeded; run with /work/venv/bin/python from anywhere).

Writes Tests/Fixtures/hostile/ (< 300 KB in total) and the libFuzzer seed corpora fuzz/corpus/<target>/.
Nothing here is ever unpickled by moepack's tests in Python; the malicious pickles' payloads only touch
/tmp/moepack-hostile-pwned, which the tests check stays absent.

Tiny-model derivatives (NaN, overflow, wrong expert count/tokens/expert hidden size, missing tensor,
missing expert-parallel rank, bad CRC) start from Tests/Fixtures/tiny/model.pth (D=32, profile tiny-test),
keep its names and shapes, round its values to multiples of 1/4 and make every tensor a view into one flat storage (so the single
deflated record stays tiny; a separate stored record is kept where a byte is flipped).
The rounded model ("tiny_lean.pth") packs cleanly with --profile tiny-test.
"""
import argparse, io, json, os, pickle, re, shutil, struct, subprocess, zipfile, zlib
from collections import OrderedDict

import h5py
import numpy as np
import torch

from torch_pickle_scan import load_storage_refs  # non-executing data.pkl scan (scripts/)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
ROOT = os.path.join(REPO, "Tests", "Fixtures", "hostile")
TINY = os.path.join(REPO, "Tests", "Fixtures", "tiny")
CORPUS = os.path.join(REPO, "fuzz", "corpus")
PWNED = "/tmp/moepack-hostile-pwned"
DATE = (2024, 1, 1, 0, 0, 0)


def out(*p):
    path = os.path.join(ROOT, *p)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def torch_bytes(obj, legacy=False):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def rezip(data, deflate=True, stored=()):
    """Rewrites a torch zip (bytes) with fixed timestamps, deflating every record except those whose name
    ends with one of `stored`. Returns bytes."""
    zi = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zo:
        for info in zi.infolist():
            method = zipfile.ZIP_DEFLATED if deflate and not any(info.filename.endswith(s) for s in stored) else zipfile.ZIP_STORED
            zinfo = zipfile.ZipInfo(info.filename, DATE)
            zinfo.compress_type = method
            zo.writestr(zinfo, zi.read(info.filename), compress_type=method, compresslevel=9)
    return buf.getvalue()


def replace_record(data, name, new_bytes):
    """Returns the torch zip `data` with record `name` replaced (stored, fixed timestamps)."""
    zi = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zo:
        for info in zi.infolist():
            zinfo = zipfile.ZipInfo(info.filename, DATE)
            zo.writestr(zinfo, new_bytes if info.filename == name else zi.read(info.filename))
    return buf.getvalue()


def central_entries(data):
    """(offset of the central-directory entry, name, local header offset) for every record."""
    eocd = data.rfind(b"PK\x05\x06")
    count, cd_size, cd_off = struct.unpack("<HII", data[eocd + 10:eocd + 20])
    res, p = [], cd_off
    for _ in range(count):
        assert data[p:p + 4] == b"PK\x01\x02"
        nlen, xlen, clen = struct.unpack("<HHH", data[p + 28:p + 34])
        loc = struct.unpack("<I", data[p + 42:p + 46])[0]
        res.append((p, data[p + 46:p + 46 + nlen].decode(), loc))
        p += 46 + nlen + xlen + clen
    return res


def record_data_offset(data, local):
    nlen, xlen = struct.unpack("<HH", data[local + 26:local + 30])
    return local + 30 + nlen + xlen


def storage_keys(data):
    """Tensor name → storage key of a torch zip, through a non-executing scan of data.pkl."""
    zi = zipfile.ZipFile(io.BytesIO(data))
    pkl = [n for n in zi.namelist() if n.endswith("data.pkl")][0]
    obj = load_storage_refs(zi.read(pkl))
    return pkl.rsplit("/", 1)[0], obj.get("state_dict", obj)


# --- payloads (never executed by moepack) ---
class EvilSystem:
    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


class EvilEval:
    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {PWNED}')",))


class EvilPopen:
    def __reduce__(self):
        return (subprocess.Popen, (["touch", PWNED],))


class Config:  # a user class: pickled as __main__.Config, must stay refused
    def __init__(self):
        self.lr = 0.1


def stable_legacy_keys(data):
    """Legacy torch.save names storages by id(); rename them '0', '1', … (BINUNICODE strings with their
    length fields rewritten) so the fixture bytes do not change between runs."""
    keys = {}

    def sub(m):
        k = keys.setdefault(m.group(1), str(len(keys)).encode())
        return b"X" + struct.pack("<I", len(k)) + k

    return re.sub(rb"X[\x06-\x14]\x00\x00\x00(\d{6,20})", sub, data)


def small_state_dict():
    big = torch.arange(12, dtype=torch.float32).reshape(3, 4) + 100
    return OrderedDict([
        ("weight", torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5),
        ("bias", torch.tensor([0.5, -0.5, 1.5])),
        ("view", big[1:]),  # storage offset 4 into a 12-element storage
    ])


def tiny_lean_state_dict():
    ck = torch.load(os.path.join(TINY, "model.pth"), weights_only=True)
    sd = OrderedDict()
    for k, v in ck["state_dict"].items():
        sd[k] = (torch.round(v.float() * 4) / 4).contiguous()
    return sd


def tiny_ep_rank(r):
    ck = torch.load(os.path.join(TINY, "ep", f"{r}.pth"), weights_only=True)
    sd = ck.get("state_dict", ck) if isinstance(ck, dict) else ck
    return OrderedDict((k, (torch.round(v.float() * 4) / 4).contiguous()) for k, v in sd.items())


def shared_storage(sd, separate=()):
    """The same state_dict with every tensor (except `separate`) a contiguous view into one flat float32
    storage, so torch.save writes one record that deflates well (views with storage offsets)."""
    keep = [k for k in sd if k not in separate]
    flat = torch.cat([sd[k].reshape(-1) for k in keep]) if keep else torch.zeros(0)
    res, off = OrderedDict(), 0
    for k, v in sd.items():
        if k in separate:
            res[k] = v.clone()
        else:
            res[k] = flat[off:off + v.numel()].view(v.shape)
            off += v.numel()
    return res


def save_tiny(sd, name, stored=(), separate=()):
    data = rezip(torch_bytes({"state_dict": shared_storage(sd, separate)}), stored=stored)
    write(out(name), data)
    return data


def main():
    # Everything but regressions/ (fuzzer findings, committed by hand) is regenerated.
    os.makedirs(ROOT, exist_ok=True)
    for n in os.listdir(ROOT):
        if n != "regressions":
            p = os.path.join(ROOT, n)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    torch.manual_seed(20240917)
    np.random.seed(20240917)
    expect = {}

    # --- small torch.save base and its broken variants ---
    small = rezip(torch_bytes(small_state_dict()), deflate=False)
    write(out("small.pth"), small)
    for tag, cut in (("10", 10), ("half", len(small) // 2), ("cd", central_entries(small)[1][0] + 7),
                     ("tail", len(small) - 5)):
        write(out(f"truncated_{tag}.pth"), small[:cut])
    write(out("empty.pth"), b"")
    write(out("text.pth"), b"this is a text file, not a checkpoint\n")
    prefix, keys = storage_keys(small)

    # Bad CRC: flip one byte of the 'bias' storage record (stored).
    b = bytearray(small)
    rec = f"{prefix}/data/{keys['bias']}"
    local = [e for e in central_entries(small) if e[1] == rec][0][2]
    b[record_data_offset(small, local) + 1] ^= 0x40
    write(out("bad_crc.pth"), bytes(b))
    expect["bad_crc"] = {"record": rec, "tensor": "bias"}

    # Local header disagrees with the central directory: one byte of the local name.
    b = bytearray(small)
    rec_w = f"{prefix}/data/{keys['weight']}"
    local = [e for e in central_entries(small) if e[1] == rec_w][0][2]
    b[local + 30 + len(rec_w) - 1] ^= 0x01
    write(out("zip_local_mismatch.pth"), bytes(b))
    expect["zip_local_mismatch"] = {"record": rec_w}

    # Overlapping records: the 'bias' record's directory entry points at the 'weight' local header.
    b = bytearray(small)
    cd_bias = [e for e in central_entries(small) if e[1] == rec][0][0]
    struct.pack_into("<I", b, cd_bias + 42, [e for e in central_entries(small) if e[1] == rec_w][0][2])
    write(out("zip_overlap.pth"), bytes(b))

    # Deflated record whose inflated size differs from the declared size (both directions).
    deflated = rezip(torch_bytes(small_state_dict()), deflate=True)
    for tag, delta in (("short", -8), ("long", 8)):
        b = bytearray(deflated)
        cd, _, local = [e for e in central_entries(deflated) if e[1] == rec_w][0]
        usize = struct.unpack_from("<I", b, cd + 24)[0]
        struct.pack_into("<I", b, cd + 24, usize + delta)
        struct.pack_into("<I", b, local + 22, usize + delta)
        write(out(f"inflate_size_{tag}.pth"), bytes(b))

    # Zip bombs: a zip64 record declaring 2^40 bytes (over the 16 GiB cap) and one declaring 8 GiB
    # (under the cap, but more than 1 KB of deflate data can ever inflate to).
    old = zipfile.ZIP64_LIMIT
    zipfile.ZIP64_LIMIT = 16
    try:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zo:
            zi = zipfile.ZipFile(io.BytesIO(small))
            for info in zi.infolist():
                zinfo = zipfile.ZipInfo(info.filename, DATE)
                zinfo.compress_type = zipfile.ZIP_DEFLATED
                zo.writestr(zinfo, zi.read(info.filename))
        z64 = buf.getvalue()
    finally:
        zipfile.ZIP64_LIMIT = old
    for tag, size in (("1t", 1 << 40), ("8g", 8 << 30)):
        b = bytearray(z64)
        cd, _, local = [e for e in central_entries(z64) if e[1] == rec_w][0]
        nlen, xlen = struct.unpack_from("<HH", b, cd + 28)
        x = cd + 46 + nlen
        assert struct.unpack_from("<HH", b, x)[0] == 1
        struct.pack_into("<Q", b, x + 4, size)
        local = zipfile.ZipFile(io.BytesIO(z64)).getinfo(rec_w).header_offset
        lnlen, lxlen = struct.unpack_from("<HH", b, local + 26)
        lx = local + 30 + lnlen
        if lxlen >= 12 and struct.unpack_from("<H", b, lx)[0] == 1:
            struct.pack_into("<Q", b, lx + 4, size)
        write(out(f"zip_bomb_{tag}.pth"), bytes(b))

    # Storage view out of bounds: data.pkl patched so 'view' starts at element 5 (5 + 7 = 12 ≥ 12).
    zi = zipfile.ZipFile(io.BytesIO(small))
    pkl_name = f"{prefix}/data.pkl"
    pkl = zi.read(pkl_name)
    needle = b"K\x04K\x02K\x04\x86"  # storage offset 4, size (2, 4)
    assert pkl.count(needle) == 1, pkl
    write(out("view_oob.pth"), replace_record(small, pkl_name, pkl.replace(needle, b"K\x05K\x02K\x04\x86")))

    # A record shorter than numel × itemsize.
    rec_bytes = zi.read(rec_w)
    write(out("short_record.pth"), replace_record(small, rec_w, rec_bytes[:-4]))

    # --- malicious pickles, as real torch.save files ---
    t = torch.ones(2)
    write(out("evil_system.pth"), rezip(torch_bytes({"w": t, "x": EvilSystem()}), deflate=False))
    write(out("evil_eval.pth"), rezip(torch_bytes({"w": t, "x": EvilEval()}), deflate=False))
    buf = io.BytesIO()
    torch.save({"w": t, "x": EvilPopen()}, buf, pickle_protocol=4)  # protocol 4 keeps the name subprocess.Popen
    write(out("evil_popen.pth"), rezip(buf.getvalue(), deflate=False))
    write(out("evil_nested.pth"), rezip(torch_bytes({"state_dict": OrderedDict([("w", t), ("bn.extra", {"deep": [EvilSystem()]})])}), deflate=False))
    write(out("evil_legacy.pth"), stable_legacy_keys(torch_bytes({"w": t, "x": EvilSystem()}, legacy=True)))
    write(out("evil_user_class.pth"), rezip(torch_bytes({"state_dict": {"w": t}, "cfg": Config()}), deflate=False))

    # --- real training checkpoint with numpy scalars, a numpy dtype and argparse.Namespace ---
    train = {"state_dict": OrderedDict([("w", torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4)]),
             "best_acc": np.float64(0.9), "acc_dtype": np.dtype("float32"), "epoch": 7,
             "args": argparse.Namespace(lr=0.1, arch="m3vit")}
    tr = rezip(torch_bytes(train), deflate=False)
    write(out("training_numpy.pth"), tr)
    tp = [n for n in zipfile.ZipFile(io.BytesIO(tr)).namelist() if n.endswith("data.pkl")][0].rsplit("/", 1)[0]
    tpkl = zipfile.ZipFile(io.BytesIO(tr)).read(f"{tp}/data.pkl")
    assert b"numpy._core.multiarray\nscalar" in tpkl or b"numpy.core.multiarray\nscalar" in tpkl, tpkl
    # NumPy 1.x spelling of the same checkpoint (GLOBAL names are newline-terminated text).
    write(out("training_numpy1.pth"), replace_record(tr, f"{tp}/data.pkl", tpkl.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")))

    # --- safetensors ---
    def st(header, data):
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        return struct.pack("<Q", len(h)) + h + data

    f32 = np.arange(4, dtype="<f4").tobytes()
    write(out("st_oob.safetensors"), st({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, f32[:8]))
    write(out("st_overlap.safetensors"), st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                             "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
                                            np.arange(6, dtype="<f4").tobytes()))
    write(out("st_huge_header.safetensors"), struct.pack("<Q", 1 << 62) + b'{"w":{}}')
    write(out("st_count.safetensors"), st({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, f32))

    # --- .npy: object arrays are refused; big-endian and Fortran order are read correctly ---
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = EvilSystem(), 1
    np.save(out("object.npy"), obj, allow_pickle=True)
    np.save(out("big_endian.npy"), (np.arange(12).reshape(3, 4) * 0.25 - 1).astype(">f4"))
    np.save(out("fortran.npy"), np.asfortranarray((np.arange(12).reshape(3, 4) * 0.5 - 2).astype("<f8")))
    np.save(out("big_fortran.npy"), np.asfortranarray(np.arange(24).reshape(2, 3, 4).astype(">i2") - 5))

    # --- HDF5 with integer weights ---
    with h5py.File(out("int_weights.h5"), "w", track_order=True) as h:
        h.create_dataset("dense/weight", data=np.arange(12, dtype="<i4").reshape(4, 3))
        h.create_dataset("dense/bias", data=np.arange(4, dtype="<f4"))
    # A float dataset declaring 128 MiB that stores nothing (fill value): refused before allocation.
    with h5py.File(out("fill_only.h5"), "w") as h:
        h.create_dataset("w", shape=(4096, 8192), dtype="<f4")

    # --- tiny M3ViT derivatives (profile tiny-test) ---
    lean = tiny_lean_state_dict()
    P = "module.backbone."
    save_tiny(lean, "tiny_lean.pth")

    sd = OrderedDict((k, v.clone()) for k, v in lean.items())
    sd[P + "blocks.2.attn.proj.weight"][3, 5] = float("nan")
    save_tiny(sd, "nan_weight.pth")

    sd = OrderedDict((k, v.clone()) for k, v in lean.items())
    sd[P + "blocks.2.attn.proj.weight"][0, 1] = float("-inf")
    save_tiny(sd, "inf_weight.pth")

    # wt_linear_t = ap_fixed<16,2>: range [-2, 2 - 2^-14]. Two tensors overflow.
    sd = OrderedDict((k, v.clone()) for k, v in lean.items())
    sd[P + "blocks.0.attn.proj.weight"][0, 0] = 5.0
    sd[P + "blocks.2.mlp.fc1.weight"][1, 1] = -7.5
    sd[P + "blocks.2.mlp.fc1.weight"][2, 2] = 3.0
    save_tiny(sd, "overflow.pth")

    sd = OrderedDict()
    for k, v in lean.items():
        if ".mlp.experts." in k:
            v = v[:3].clone()
        elif ".mlp.gate." in k:
            v = v[:, :3].clone()
        sd[k] = v
    save_tiny(sd, "wrong_experts.pth")

    sd = OrderedDict((k, v) for k, v in lean.items())
    sd[P + "pos_embed"] = torch.zeros(1, 17, 32)
    save_tiny(sd, "wrong_tokens.pth")

    sd = OrderedDict()
    for k, v in lean.items():
        if k.endswith("htoh4.weight"):
            v = torch.zeros(4, 24, 32)
        elif k.endswith("htoh4.bias"):
            v = torch.zeros(4, 24)
        elif k.endswith("h4toh.weight"):
            v = torch.zeros(4, 32, 24)
        sd[k] = v
    save_tiny(sd, "wrong_expert_hidden.pth")

    sd = OrderedDict((k, v) for k, v in lean.items() if k != P + "blocks.2.attn.proj.weight")
    save_tiny(sd, "missing_tensor.pth")

    # Bad CRC inside the tiny model: flip a byte of the stored blocks.0.norm1.bias record.
    sep = shared_storage(lean, separate=(P + "blocks.0.norm1.bias",))
    tp, tkeys = storage_keys(rezip(torch_bytes({"state_dict": sep})))
    key = tkeys[P + "blocks.0.norm1.bias"]
    data = rezip(torch_bytes({"state_dict": sep}), stored=(f"/data/{key}",))
    rec = f"{tp}/data/{key}"
    local = [e for e in central_entries(data) if e[1] == rec][0][2]
    b = bytearray(data)
    b[record_data_offset(data, local) + 2] ^= 0x01
    write(out("tiny_bad_crc.pth"), bytes(b))
    expect["tiny_bad_crc"] = {"record": rec, "tensor": P + "blocks.0.norm1.bias"}

    # Expert-parallel folder with rank 1 missing (0.pth, 2.pth).
    os.makedirs(out("ep_missing_rank", "x")[:-2], exist_ok=True)
    write(out("ep_missing_rank", "0.pth"), rezip(torch_bytes({"state_dict": shared_storage(tiny_ep_rank(0))})))
    write(out("ep_missing_rank", "2.pth"), rezip(torch_bytes({"state_dict": shared_storage(tiny_ep_rank(1))})))

    with open(out("expected.json"), "w") as f:
        json.dump(expect, f, indent=1, sort_keys=True)

    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(ROOT) for n in ns
                if "regressions" not in d)
    print(f"hostile fixtures: {total} bytes")
    assert total < 300_000, total

    # --- libFuzzer seed corpora (small files only) ---
    seeds = {
        "zip": ["small.pth", "bad_crc.pth", "zip_local_mismatch.pth", "zip_overlap.pth", "inflate_size_short.pth",
                "zip_bomb_8g.pth", "view_oob.pth", "short_record.pth", "training_numpy.pth", "evil_nested.pth"],
        "pickle": [],
        "legacy": ["evil_legacy.pth"],
        "safetensors": ["st_oob.safetensors", "st_overlap.safetensors", "st_count.safetensors"],
        "npy": ["object.npy", "big_endian.npy", "fortran.npy", "big_fortran.npy"],
        "hdf5": ["int_weights.h5"],
    }
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    for target, names in seeds.items():
        d = os.path.join(CORPUS, target)
        os.makedirs(d)
        for n in names:
            shutil.copy(out(n), os.path.join(d, n))
    # pickle seeds: the data.pkl records themselves
    for n in ("small.pth", "training_numpy.pth", "evil_nested.pth", "view_oob.pth"):
        zi = zipfile.ZipFile(out(n))
        p = [x for x in zi.namelist() if x.endswith("data.pkl")][0]
        write(os.path.join(CORPUS, "pickle", n.replace(".pth", ".pkl")), zi.read(p))
    write(os.path.join(CORPUS, "pickle", "proto0.pkl"), pickle.dumps({"a": [1, 2.5, "s", b"b", (None, True)]}, protocol=0))
    write(os.path.join(CORPUS, "legacy", "small_legacy.pth"), stable_legacy_keys(torch_bytes(shared_storage(small_state_dict()), legacy=True)))
    write(os.path.join(CORPUS, "safetensors", "good.safetensors"),
          st({"__metadata__": {"k": "v"}, "a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
              "b": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [4, 8]}}, bytes(range(8))))
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.arange(6, dtype="<f4").reshape(2, 3), b=np.asfortranarray(np.ones((2, 2), ">f8")))
    write(os.path.join(CORPUS, "npy", "small.npz"), buf.getvalue())


if __name__ == "__main__":
    main()
