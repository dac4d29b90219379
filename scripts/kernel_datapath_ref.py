"""Independent model of the Edge-MoE `ViT_compute` fixed-point datapath for ANY weight types.

Used only to generate test fixtures (scripts/make_precision_fixtures.py); moepack never calls Python.

Written from the kernel's C++ (sharc-lab/Edge-MoE src/*.cpp, include/*.hpp), statement by statement,
with plain Python integers (raw two's-complement codes) — not from moepack's Swift code:

* Every assignment to an ap_fixed goes through `assign(value_raw, from_frac, to_type)`: the exact
  value (raw · 2^-from_frac) is quantized with the target's mode (the kernel only ever assigns to
  fm_t and wt_wbias_t, both Vitis defaults AP_TRN = floor, AP_WRAP = keep the low W bits).
* fm_t = ap_fixed<32,10> (datatypes.hpp). A product `a * b` of ap_fixed values is exact at full width
  (fraction bits add up); `acc += p` is the exact sum, then assigned.
* linear.cpp: wt_wbias_t = ap_fixed<max(F_attn_bias, F_bias) + max(I_attn_bias, I_bias),
  max(I_attn_bias, I_bias)> (linear.hpp); load_linear_bias assigns the bias to it, and
  compute_linear_on_stream assigns it to fm_t (`out_block = bias_block`), then per input
  `addend = in * w` (assign to fm_t) and `out_block += addend`.
* moe.cpp gating: per block of 8 inputs `addend += in * w` then `scores += addend`.
* layernorm.cpp: `x_dim *= weights[dim]` (fm_t × wt_norm_t assigned to fm_t), `x_dim += bias[dim]`.
* conv.cpp: `bias_block = patch_embed_bias` (assign to fm_t); `addend_dim += pixel * weight`
  (pixel ap_ufixed<8,0>); `patches += addend`; `out = patches + pos_embed`.
* attention.cpp / gelu.cpp / moe.cpp softmax and top-k: fm_t only (loop-literal, 4-query blocks,
  ATTN_MATMUL_PARALLEL = 4, the kernel's k_patch order and softmax reset rule).
exp/sqrt/recip are the floor of the exact real result (exp via math.exp), as documented for the
emulation (Vitis hls_math may differ in the last bit; both sides use this convention).
"""
from __future__ import annotations

import math

FM = (32, 10)          # fm_t (W, I)
FM_F = FM[0] - FM[1]   # 22
ONE = 1 << FM_F
PIXEL_F = 8            # pixel_t = ap_ufixed<8,0>
P = 4                  # ATTN_MATMUL_PARALLEL


def wrap(v, width):
    """AP_WRAP: keep the low `width` bits, two's complement."""
    v &= (1 << width) - 1
    return v - (1 << width) if v >= 1 << (width - 1) else v


def assign(raw, from_frac, to):
    """Assign the exact value raw·2^-from_frac to ap_fixed<W,I> (AP_TRN, AP_WRAP): its raw code."""
    W, I = to
    shift = (W - I) - from_frac
    v = raw << shift if shift >= 0 else raw >> -shift      # >> on Python ints is floor
    return wrap(v, W)


def add_exact(a, fa, b, fb):
    """Exact sum of a·2^-fa and b·2^-fb (ap_fixed `+` is formed at full width): (raw, fraction bits)."""
    fc = max(fa, fb)
    return (a << (fc - fa)) + (b << (fc - fb)), fc


def fm(raw, from_frac=FM_F):
    return assign(raw, from_frac, FM)


def fm_mul(a, b):
    return fm(a * b, 2 * FM_F)


def fm_exp(x):
    e = math.exp(x / ONE) * ONE
    if e >= 2 ** 31:
        return 2 ** 31 - 1
    return math.floor(e)


def fm_sqrt(v):
    return math.isqrt(v << FM_F) if v >= 0 else 0


def fm_div(n, d):
    if d <= 0:
        return 2 ** 31 - 1
    return fm((n << FM_F) // d)


def frac(t):
    return t[0] - t[1]


GELU_TABLE = [round(ONE * (z - z * 0.5 * (1 + math.erf(z / math.sqrt(2))))) for z in (i / 32 for i in range(177))]


def gelu(v):
    relu = 0 if v < 0 else v
    a = fm(-v) if v < 0 else v
    if a >= 176 * (ONE >> 5):
        return relu
    idx_exact = a * 32
    idx = idx_exact >> FM_F
    t = idx_exact - (idx << FM_F)
    lo, hi = GELU_TABLE[idx], GELU_TABLE[idx + 1]
    delta = lo + ((t * (hi - lo)) >> FM_F)
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


def run(cfg, arrays, types, frame):
    """One image through ViT_compute.

    cfg: dict with embed_dim, depth, heads, moe_blocks, experts, expert_hidden, mlp_hidden, tokens,
    patch, in_chans, height, width, top_k, layer_norm_eps, attention_scale.
    arrays: {kernel argument: flat list of raw codes (C order)} for one task's gates.
    types: {kernel type name: (W, I)} for wt_linear_t, wt_attn_bias_t, wt_bias_t, wt_norm_t,
    wt_patch_embed_t (all signed ap_fixed).
    Returns (x raw [tokens][D] as nested lists, routing [moe block][token][k]).
    """
    D, L, H, E = cfg["embed_dim"], cfg["depth"], cfg["heads"], cfg["experts"]
    He, Hm, T, p = cfg["expert_hidden"], cfg["mlp_hidden"], cfg["tokens"], cfg["patch"]
    C, IH, IW, K = cfg["in_chans"], cfg["height"], cfg["width"], cfg["top_k"]
    moe_blocks = list(cfg["moe_blocks"])
    dense_blocks = [i for i in range(L) if i not in moe_blocks]
    hd = D // H
    f_lin, f_norm, f_pe = frac(types["wt_linear_t"]), frac(types["wt_norm_t"]), frac(types["wt_patch_embed_t"])
    t_ab, t_b = types["wt_attn_bias_t"], types["wt_bias_t"]
    wbias_i = max(t_ab[1], t_b[1])
    wbias = (max(frac(t_ab), frac(t_b)) + wbias_i, wbias_i)     # linear.hpp wt_wbias_t

    a = arrays
    pe_w, pe_b, pos = a["patch_embed_weights"], a["patch_embed_bias"], a["pos_embed"]
    aw, ab = a["attn_weights"], a["attn_bias"]
    gw, m1, mb1, m2, mb2 = (a[n] for n in ("moe_w_gate", "moe_weights_l1", "moe_bias_l1", "moe_weights_l2", "moe_bias_l2"))
    v1, vb1, v2, vb2 = (a[n] for n in ("vit_weights_l1", "vit_bias_l1", "vit_weights_l2", "vit_bias_l2"))
    nw, nb = a["norm_weights"], a["norm_bias"]
    scale = math.floor(cfg["attention_scale"] * ONE)          # attn_scale = fm_t(scale)
    inv_d = math.floor(ONE / D)                                # fm_t(1.0 / FEATURE_DIM)
    eps = math.floor(cfg["layer_norm_eps"] * ONE)              # norm_eps = fm_t(eps)

    # ---- conv.cpp compute_patch_embed
    x = [[0] * D for _ in range(T)]
    gwid = IW // p
    for py in range(IH // p):
        for px in range(gwid):
            tok = 1 + py * gwid + px
            for d in range(D):
                acc = fm(pe_b[d], frac(t_b))                   # bias_block[dim] = patch_embed_bias[dim]
                for ch in range(C):
                    for yy in range(p):
                        addend = 0
                        for xx in range(p):
                            pix = frame[(ch * IH + py * p + yy) * IW + px * p + xx]
                            w = pe_w[((d * C + ch) * p + yy) * p + xx]
                            # addend_dim += image_block[x] * weight: exact sum, then assigned to fm_t
                            addend = fm(*add_exact(addend, FM_F, pix * w, PIXEL_F + f_pe))
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
                    pms = fm(pms + ((row[i] * term) >> FM_F))
                mean = fm(mean + pm)
                msq = fm(msq + pms)
            var = fm(msq - fm_mul(mean, mean) + eps)
            rstd = fm_div(ONE, fm_sqrt(var))
            o = []
            for i in range(D):
                t = fm(row[i] - mean)
                t = fm_mul(t, rstd)
                t = fm(t * w[i], FM_F + f_norm)                        # x_dim *= weights[dim]
                t = fm(*add_exact(t, FM_F, b[i], frac(t_b)))            # x_dim += bias[dim]
                o.append(t)
            out.append(o)
        return out

    def linear(xs, w, bias, bias_type, n_out, n_in, use_gelu=False):
        # load_linear_bias: bias (wt_attn_bias_t / wt_bias_t) assigned to wt_wbias_t
        wb = [assign(b, frac(bias_type), wbias) for b in bias]
        out = []
        for row in xs:
            o = []
            for j in range(n_out):
                acc = fm(wb[j], frac(wbias))                        # out_block = bias_block
                for i in range(n_in):
                    addend = fm(row[i] * w[j * n_in + i], FM_F + f_lin)   # addend = in * w
                    acc = fm(acc + addend)                          # out_block += addend
                o.append(gelu(acc) if use_gelu else acc)
            out.append(o)
        return out

    routing = []
    for layer in range(L):
        n1w, n2w = nw[(layer * 2) * D:(layer * 2 + 1) * D], nw[(layer * 2 + 1) * D:(layer * 2 + 2) * D]
        n1b, n2b = nb[(layer * 2) * D:(layer * 2 + 1) * D], nb[(layer * 2 + 1) * D:(layer * 2 + 2) * D]

        def aw_(j):
            return aw[(layer * 4 + j) * D * D:(layer * 4 + j + 1) * D * D], ab[(layer * 4 + j) * D:(layer * 4 + j + 1) * D], t_ab

        h = layernorm(x, n1w, n1b)
        q = linear(h, *aw_(0), D, D)
        k = linear(h, *aw_(1), D, D)
        v = linear(h, *aw_(2), D, D)

        # ---- attention.cpp: literal 4-query-block walk
        scores = [[[0] * H for _ in range(T)] for _ in range(T)]   # [q][k][head]
        for qi in range(T):
            for ki in range(T):
                for head in range(H):
                    acc = 0
                    for blk in range(head * hd, head * hd + hd, 8):
                        addend = 0
                        for dd in range(blk, blk + 8):
                            addend = fm(addend + ((q[qi][dd] * k[ki][dd]) >> FM_F))
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
                    qi = base + off if kp >= off else base + off - P
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
                    a_ = fm_mul(fm_exp(fm(scores[qi][kp][head] - bias)), recip)
                    for dd in range(head * hd, head * hd + hd):
                        prod = fm_mul(v[kp][dd], a_)
                        row[dd] = prod if step == 0 else fm(prod + row[dd])
            attn_out.append(row)
        y = linear(attn_out, *aw_(3), D, D)
        x = [[fm(a1 + b1) for a1, b1 in zip(r1, r2)] for r1, r2 in zip(x, y)]
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
                            # addend[out_dim] += gate_inp * w_gate: exact sum, then assigned
                            addend[e] = fm(*add_exact(addend[e], FM_F, h[t][dd] * g[e * D + dd], FM_F + f_lin))
                    logits = [fm(a1 + b1) for a1, b1 in zip(logits, addend)]
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
                hid = linear(rows, m1[o1[0]:o1[1]], mb1[(mi * E + e) * He:(mi * E + e + 1) * He], t_b, He, D, True)
                ye = linear(hid, m2[o2[0]:o2[1]], mb2[(mi * E + e) * D:(mi * E + e + 1) * D], t_b, D, He)
                for j, t in enumerate(queues[e]):
                    out[t] = [fm(fm_mul(a1, scores_q[e][j]) + b1) for a1, b1 in zip(ye[j], out[t])]
            y = out
        else:
            di = dense_blocks.index(layer)
            hid = linear(h, v1[di * Hm * D:(di + 1) * Hm * D], vb1[di * Hm:(di + 1) * Hm], t_b, Hm, D, True)
            y = linear(hid, v2[di * D * Hm:(di + 1) * D * Hm], vb2[di * D:(di + 1) * D], t_b, D, Hm)
        x = [[fm(a1 + b1) for a1, b1 in zip(r1, r2)] for r1, r2 in zip(x, y)]
    return x, routing
