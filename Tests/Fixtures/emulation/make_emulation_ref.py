#!/usr/bin/env python3
"""Independent, loop-literal Python model of the Edge-MoE ViT_compute fixed-point datapath.

Reads the tiny fixture (../tiny: kernel_*.i16/.i32 raw arrays, frame.u8, meta.json) and writes
tiny_fixed_out.i32 ([tokens, D] raw fm_t output) and tiny_fixed_top2.i32 ([moe block, token, k])
next to this script. Used by FixedEmulationTinyTests to check the Swift emulation bit for bit.

Written from the kernel's loop structure (sharc-lab/Edge-MoE src/*.cpp) with plain Python integers,
deliberately unlike the Swift code: every ap_fixed assignment goes through `fm()` (floor already
applied by the caller, then AP_WRAP), and attention walks the kernel's 4-query blocks with the same
k_patch loop and reset rule instead of a derived key order. exp/sqrt/recip follow the same
documented emulation as the Swift code (floor of the exact value; exp via math.exp).
No randomness; run: /work/venv/bin/python Tests/Fixtures/emulation/make_emulation_ref.py
"""
import json
import math
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "tiny")
F = 22
ONE = 1 << F
P = 4  # ATTN_MATMUL_PARALLEL


def fm(v):
    """AP_WRAP to 32 bits (value already floored to 22 fraction bits)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def fm_mul(a, b):
    return fm((a * b) >> F)


def fm_exp(x):
    e = math.exp(x / ONE) * ONE
    if e >= 2 ** 31:
        return 2 ** 31 - 1
    return math.floor(e)


def fm_sqrt(v):
    return math.isqrt(v << F) if v >= 0 else 0


def fm_div(n, d):
    if d <= 0:
        return 2 ** 31 - 1
    return fm((n << F) // d)


def load(name, shape, fmt):
    data = open(os.path.join(TINY, name), "rb").read()
    n = len(data) // struct.calcsize(fmt)
    vals = list(struct.unpack("<%d%s" % (n, fmt), data))
    assert n == math.prod(shape), (name, n, shape)
    return vals


def main():
    meta = json.load(open(os.path.join(TINY, "meta.json")))
    c = meta["config"]
    D, L, H, E = c["embed_dim"], c["depth"], c["heads"], c["experts"]
    He, Hm, T, p = c["expert_hidden"], c["mlp_hidden"], c["tokens"], c["patch"]
    C, IH, IW, K = c["in_chans"], c["height"], c["width"], c["top_k"]
    moe_blocks = c["moe_blocks"]
    dense_blocks = [i for i in range(L) if i not in moe_blocks]
    hd = D // H
    files = meta["files"]

    def arr(name):
        fname = "kernel_%s.%s" % (name, "i32" if name == "pos_embed" else "i16")
        return load(fname, files[fname]["shape"], "i" if name == "pos_embed" else "h")

    pe_w, pe_b, pos = arr("patch_embed_weights"), arr("patch_embed_bias"), arr("pos_embed")
    aw, ab = arr("attn_weights"), arr("attn_bias")
    gw, m1, mb1, m2, mb2 = (arr(n) for n in ("moe_w_gate", "moe_weights_l1", "moe_bias_l1",
                                             "moe_weights_l2", "moe_bias_l2"))
    v1, vb1, v2, vb2 = (arr(n) for n in ("vit_weights_l1", "vit_bias_l1", "vit_weights_l2", "vit_bias_l2"))
    nw, nb = arr("norm_weights"), arr("norm_bias")
    frame = list(open(os.path.join(TINY, "frame.u8"), "rb").read())
    scale = math.floor((1.0 / math.sqrt(hd)) * ONE)
    inv_d = math.floor(ONE / D)
    eps = math.floor(float(struct.unpack("<f", struct.pack("<f", c["layer_norm_eps"]))[0]) * ONE)

    # ---- patch embedding (conv.cpp)
    x = [[0] * D for _ in range(T)]
    gwid = IW // p
    for py in range(IH // p):
        for px in range(gwid):
            tok = 1 + py * gwid + px
            for d in range(D):
                acc = pe_b[d] << 11
                for ch in range(C):
                    for yy in range(p):
                        addend = 0
                        for xx in range(p):
                            pix = frame[(ch * IH + py * p + yy) * IW + px * p + xx]
                            w = pe_w[((d * C + ch) * p + yy) * p + xx]
                            addend = fm(addend + ((pix * w) >> 2))
                        acc = fm(acc + addend)
                x[tok][d] = fm(acc + pos[tok * D + d])
    x[0] = pos[0:D]

    def layernorm(xs, w, b):
        out = []
        for row in xs:
            mean = 0
            msq = 0
            for blk in range(0, D, 8):
                pm = 0
                pms = 0
                for i in range(blk, blk + 8):
                    term = fm_mul(row[i], inv_d)
                    pm = fm(pm + term)
                    pms = fm(pms + ((row[i] * term) >> F))
                mean = fm(mean + pm)
                msq = fm(msq + pms)
            var = fm(msq - fm_mul(mean, mean) + eps)
            rstd = fm_div(ONE, fm_sqrt(var))
            o = []
            for i in range(D):
                t = fm(row[i] - mean)
                t = fm_mul(t, rstd)
                t = fm((t * w[i]) >> 11)
                t = fm(t + (b[i] << 11))
                o.append(t)
            out.append(o)
        return out

    def linear(xs, w, bias, bias_shift, n_out, n_in, use_gelu=False):
        out = []
        for row in xs:
            o = []
            for j in range(n_out):
                acc = bias[j] << bias_shift
                for i in range(n_in):
                    addend = fm((row[i] * w[j * n_in + i]) >> 14)
                    acc = fm(acc + addend)
                o.append(gelu(acc) if use_gelu else acc)
            out.append(o)
        return out

    table = [round(ONE * (z - z * 0.5 * (1 + math.erf(z / math.sqrt(2))))) for z in (i / 32 for i in range(177))]

    def gelu(v):
        relu = 0 if v < 0 else v
        a = fm(-v) if v < 0 else v
        if a >= 176 * (ONE >> 5):
            return relu
        idx_exact = a * 32                    # 22 fraction bits
        idx = idx_exact >> F
        t = idx_exact - (idx << F)
        lo, hi = table[idx], table[idx + 1]
        delta = lo + ((t * (hi - lo)) >> F)
        return fm(relu - delta)

    def softmax_update(state, s):
        ssum, bias = state
        d = bias - s
        new = d < 0
        arg = fm(d if new else -d)
        e = fm_exp(arg)
        if new:
            ssum = fm(fm_mul(ssum, e) + ONE)
            bias = s
        else:
            ssum = fm(ssum + e)
        return ssum, bias

    routing = []
    for layer in range(L):
        n1w, n2w = nw[(layer * 2) * D:(layer * 2 + 1) * D], nw[(layer * 2 + 1) * D:(layer * 2 + 2) * D]
        n1b, n2b = nb[(layer * 2) * D:(layer * 2 + 1) * D], nb[(layer * 2 + 1) * D:(layer * 2 + 2) * D]

        def aw_(j):
            return aw[(layer * 4 + j) * D * D:(layer * 4 + j + 1) * D * D], ab[(layer * 4 + j) * D:(layer * 4 + j + 1) * D]

        h = layernorm(x, n1w, n1b)
        q = linear(h, *aw_(0), 13, D, D)
        k = linear(h, *aw_(1), 13, D, D)
        v = linear(h, *aw_(2), 13, D, D)

        # ---- attention: literal 4-query-block walk of compute_q_matmul_k / finalize_attn / matmul_v
        scores = [[[0] * H for _ in range(T)] for _ in range(T)]   # [q][k][head]
        for qi in range(T):
            for ki in range(T):
                for head in range(H):
                    acc = 0
                    for blk in range(head * hd, head * hd + hd, 8):
                        addend = 0
                        for dd in range(blk, blk + 8):
                            addend = fm(addend + ((q[qi][dd] * k[ki][dd]) >> F))
                        addend = fm_mul(addend, scale)
                        acc = fm(acc + addend)
                    scores[qi][ki][head] = acc
        info = {}
        state = [[(0, -(1 << 31))] * H for _ in range(P)]
        n_blocks = (T + P - 1 + P - 1) // P
        overflow_iters = (T + P - 1) % P
        order = {}
        for blk in range(n_blocks):
            base = blk * P
            for kp in range(T):
                if overflow_iters > 0 and base >= T and kp >= overflow_iters:
                    break
                for off in range(P):
                    qi = base + off if kp >= off else base + off - P   # query held in slot `off`
                    if kp == off:
                        state[off] = [(0, -(1 << 31))] * H
                    if not (0 <= qi < T):
                        continue
                    order.setdefault(qi, []).append(kp)
                    state[off] = [softmax_update(state[off][hh], scores[qi][kp][hh]) for hh in range(H)]
                    if kp == (T - 1 if off == 0 else off - 1):
                        info[qi] = [(fm_div(ONE, s), b) for s, b in state[off]]
        attn_out = []
        for qi in range(T):
            row = [0] * D
            for step, kp in enumerate(order[qi]):
                for head in range(H):
                    recip, bias = info[qi][head]
                    a = fm_mul(fm_exp(fm(scores[qi][kp][head] - bias)), recip)
                    for dd in range(head * hd, head * hd + hd):
                        prod = fm_mul(v[kp][dd], a)
                        row[dd] = prod if step == 0 else fm(prod + row[dd])
            attn_out.append(row)
        y = linear(attn_out, *aw_(3), 13, D, D)
        x = [[fm(a + b) for a, b in zip(r1, r2)] for r1, r2 in zip(x, y)]
        h = layernorm(x, n2w, n2b)

        if layer in moe_blocks:
            mi = moe_blocks.index(layer)
            g = gw[mi * E * D:(mi + 1) * E * D]
            queues = [[] for _ in range(E)]
            scores_q = [[] for _ in range(E)]
            top_all = []
            for t in range(T):
                logits = [0] * E
                for blk in range(0, D, 8):
                    addend = [0] * E
                    for e in range(E):
                        for dd in range(blk, blk + 8):
                            addend[e] = fm(addend[e] + ((h[t][dd] * g[e * D + dd]) >> 14))
                    logits = [fm(a + b) for a, b in zip(logits, addend)]
                st = (0, -(1 << 31))
                for e in range(E):
                    st = softmax_update(st, logits[e])
                idx = [0] * K
                val = [-(1 << 31)] * K
                for e in range(E):
                    new_idx, new_val = list(idx), list(val)
                    shift = False
                    for j in range(K):
                        if shift:
                            new_val[j], new_idx[j] = val[j - 1], idx[j - 1]
                        elif logits[e] > val[j]:
                            new_val[j], new_idx[j] = logits[e], e
                            shift = True
                    idx, val = new_idx, new_val
                top_all.append(idx)
                for j in range(K):
                    wgt = fm_div(fm_exp(fm(val[j] - st[1])), st[0])
                    queues[idx[j]].append(t)
                    scores_q[idx[j]].append(wgt)
            routing.append(top_all)
            out = [[0] * D for _ in range(T)]
            for e in range(E):
                if not queues[e]:
                    continue
                o1 = ((mi * E + e) * He * D, (mi * E + e + 1) * He * D)
                o2 = ((mi * E + e) * D * He, (mi * E + e + 1) * D * He)
                rows = [h[t] for t in queues[e]]
                hid = linear(rows, m1[o1[0]:o1[1]], mb1[(mi * E + e) * He:(mi * E + e + 1) * He], 11, He, D, True)
                ye = linear(hid, m2[o2[0]:o2[1]], mb2[(mi * E + e) * D:(mi * E + e + 1) * D], 11, D, He)
                for j, t in enumerate(queues[e]):
                    out[t] = [fm(fm_mul(a, scores_q[e][j]) + b) for a, b in zip(ye[j], out[t])]
            y = out
        else:
            di = dense_blocks.index(layer)
            hid = linear(h, v1[di * Hm * D:(di + 1) * Hm * D], vb1[di * Hm:(di + 1) * Hm], 11, Hm, D, True)
            y = linear(hid, v2[di * D * Hm:(di + 1) * D * Hm], vb2[di * D:(di + 1) * D], 11, D, Hm)
        x = [[fm(a + b) for a, b in zip(r1, r2)] for r1, r2 in zip(x, y)]

    with open(os.path.join(HERE, "tiny_fixed_out.i32"), "wb") as f:
        f.write(struct.pack("<%di" % (T * D), *[val for row in x for val in row]))
    with open(os.path.join(HERE, "tiny_fixed_top2.i32"), "wb") as f:
        f.write(struct.pack("<%di" % (len(routing) * T * K), *[i for blk in routing for row in blk for i in row]))
    print("wrote", T * D, "raw outputs;", "first row:", x[0][:4])


if __name__ == "__main__":
    main()
