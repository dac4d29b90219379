#!/usr/bin/env python3
"""Reference table for moepack's ap_fixed conversion (Tests/Fixtures/fixedpoint/reference.bin).

An independent implementation of Vitis HLS ap_fixed<W,I,Q,O> / ap_ufixed<W,I,Q,O> assignment from a
double, written from the mode definitions in UG1399 ("Arbitrary Precision Fixed-Point Data Types")
with exact rational arithmetic (fractions.Fraction), not from the Swift code:

  y = x / 2^(I-W)                                    (exact)
  q = Q(y)     quantization to an integer:
      AP_TRN         floor(y)
      AP_TRN_ZERO    toward zero
      AP_RND         nearest, ties toward +inf
      AP_RND_ZERO    nearest, ties toward zero
      AP_RND_MIN_INF nearest, ties toward -inf
      AP_RND_INF     nearest, ties away from zero
      AP_RND_CONV    nearest, ties to even
  then overflow on the integer q with [lo, hi] = [-2^(W-1), 2^(W-1)-1] (signed) or [0, 2^W-1]:
      AP_WRAP        q mod 2^W, read as two's complement for signed
      AP_SAT         clamp to [lo, hi]
      AP_SAT_ZERO    0 if q outside [lo, hi]
      AP_SAT_SYM     signed: clamp to [-hi, hi] (so lo itself becomes -hi); unsigned: as AP_SAT
  overflowed = q outside the clamp interval of the mode ([-hi, hi] for signed AP_SAT_SYM, else [lo, hi]).

Seeded (random.Random(20240607)); run with /work/venv/bin/python scripts/make_fixedpoint_reference.py.

File format (all little-endian):
  magic  b"FXREF001"
  u32    number of types T
  per type:
    i32 W, i32 I, u8 signed (1/0), u8 container bytes C, u16 reserved 0, u32 number of inputs N
    N x f64 inputs x
    N x 28 results, input-major, modes ordered quantization-major
      (Q in [AP_TRN, AP_TRN_ZERO, AP_RND, AP_RND_ZERO, AP_RND_MIN_INF, AP_RND_INF, AP_RND_CONV],
       O in [AP_WRAP, AP_SAT, AP_SAT_ZERO, AP_SAT_SYM]): each the code in C bytes
       (sign-extended for signed, zero-extended for unsigned)
    N x u32 overflow flags, bit (q_index*4 + o_index) set when that conversion overflowed
"""
import math
import os
import random
import struct
import sys
from fractions import Fraction

QMODES = ["AP_TRN", "AP_TRN_ZERO", "AP_RND", "AP_RND_ZERO", "AP_RND_MIN_INF", "AP_RND_INF", "AP_RND_CONV"]
OMODES = ["AP_WRAP", "AP_SAT", "AP_SAT_ZERO", "AP_SAT_SYM"]

# (W, I, signed, number of inputs)
TYPES = [
    (8, 3, True, 260),
    (4, 2, True, 200),
    (8, 0, False, 200),
    (16, 2, True, 260),
    (32, 10, True, 200),
    (8, -2, True, 180),
    (4, 8, True, 180),
    (12, 4, False, 180),
    (64, 20, True, 170),
    (64, 64, False, 170),
]


def quantize(y: Fraction, mode: str) -> int:
    fl = math.floor(y)
    frac = y - fl
    if mode == "AP_TRN":
        return fl
    if mode == "AP_TRN_ZERO":
        return fl if y >= 0 else math.ceil(y)
    # Rounding modes: nearest integer; only the tie (frac == 1/2) is mode-specific.
    half = Fraction(1, 2)
    if frac < half:
        return fl
    if frac > half:
        return fl + 1
    lower, upper = fl, fl + 1  # y is exactly halfway between
    if mode == "AP_RND":
        return upper
    if mode == "AP_RND_ZERO":
        return lower if y > 0 else upper
    if mode == "AP_RND_MIN_INF":
        return lower
    if mode == "AP_RND_INF":
        return upper if y > 0 else lower
    if mode == "AP_RND_CONV":
        return lower if lower % 2 == 0 else upper
    raise ValueError(mode)


def overflow(q: int, w: int, signed: bool, mode: str):
    lo = -(1 << (w - 1)) if signed else 0
    hi = (1 << (w - 1)) - 1 if signed else (1 << w) - 1
    clamp_lo = -hi if (signed and mode == "AP_SAT_SYM" and w > 1) else lo
    if clamp_lo <= q <= hi:
        return q, False
    if mode == "AP_WRAP":
        r = q % (1 << w)
        if signed and r >= (1 << (w - 1)):
            r -= 1 << w
        return r, True
    if mode == "AP_SAT_ZERO":
        return 0, True
    # AP_SAT, AP_SAT_SYM
    return (clamp_lo if q < clamp_lo else hi), True


def convert(x: float, w: int, i: int, signed: bool, qmode: str, omode: str):
    y = Fraction(x) / (Fraction(2) ** (i - w))
    return overflow(quantize(y, qmode), w, signed, omode)


def inputs_for(rng: random.Random, w: int, i: int, signed: bool, n: int):
    lsb = Fraction(2) ** (i - w)
    lo = -(1 << (w - 1)) if signed else 0
    hi = (1 << (w - 1)) - 1 if signed else (1 << w) - 1

    def exact(k_halves):  # k/2 LSB as a double, only if exactly representable
        v = Fraction(k_halves, 2) * lsb
        d = float(v)
        return d if Fraction(d) == v else None

    xs = []
    # Range edges: min, max, and +-1/2, +-1/4 LSB around them, 0, -0.
    for k2 in [2 * lo, 2 * lo - 1, 2 * lo + 1, 2 * hi, 2 * hi + 1, 2 * hi - 1, 2 * hi + 2, 2 * lo - 2, 0, 1, -1, 3, -3, 5, -5]:
        d = exact(k2)
        if d is not None:
            xs.append(d)
    xs.append(-0.0)
    span = hi - lo + 1
    while len(xs) < n:
        kind = rng.randrange(6)
        if kind == 0:  # exact ties (odd multiples of half an LSB) in and around the range
            where = rng.randrange(4)
            if where == 0:
                k = rng.randint(lo - span // 2 - 2, hi + span // 2 + 2)
            elif where == 1:
                k = rng.randint(-40, 40)
            elif where == 2:
                k = lo + rng.randint(-40, 40)
            else:
                k = hi + rng.randint(-40, 40)
            k2 = 2 * k + 1
            d = exact(k2)
            if d is None:
                continue
            xs.append(d)
        elif kind == 1:  # exact multiples of 1/4 LSB (off-tie neighbours)
            k4 = 4 * rng.randint(lo - 2, hi + 2) + rng.choice([1, 3])
            v = Fraction(k4, 4) * lsb
            d = float(v)
            if Fraction(d) != v:
                continue
            xs.append(d)
        elif kind == 2:  # uniform over twice the range
            a = float(lo * lsb) * 2 - 1e-300
            b = float(hi * lsb) * 2 + 1e-300
            xs.append(rng.uniform(a, b))
        elif kind == 3:  # float32-representable values near the range
            v = rng.uniform(float(lo * lsb) * 1.5, float(hi * lsb) * 1.5 + float(lsb))
            xs.append(struct.unpack("<f", struct.pack("<f", v))[0])
        elif kind == 4:  # any magnitude: random exponent over the whole double range
            e = rng.randint(-1074, 1023)
            m = rng.random() + 1.0
            try:
                d = math.ldexp(m, e)
            except OverflowError:
                continue
            if math.isinf(d):
                continue
            xs.append(d if rng.random() < 0.5 else -d)
        else:  # random 53-bit pattern at a random scale near the LSB (long sticky tails)
            e = rng.randint(i - w - 60, i + 10)
            d = math.ldexp(rng.getrandbits(53) | 1, e - 53)
            xs.append(d if rng.random() < 0.5 else -d)
    return xs[:n]


def main():
    rng = random.Random(20240607)
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = os.path.join(here, "..", "Tests", "Fixtures", "fixedpoint")
    os.makedirs(out_dir, exist_ok=True)
    out = bytearray(b"FXREF001")
    out += struct.pack("<I", len(TYPES))
    for (w, i, signed, n) in TYPES:
        c = 1 if w <= 8 else 2 if w <= 16 else 4 if w <= 32 else 8
        xs = inputs_for(rng, w, i, signed, n)
        out += struct.pack("<iiBBHI", w, i, 1 if signed else 0, c, 0, len(xs))
        for x in xs:
            out += struct.pack("<d", x)
        flags = []
        for x in xs:
            f = 0
            for qi, qm in enumerate(QMODES):
                for oi, om in enumerate(OMODES):
                    r, ovf = convert(x, w, i, signed, qm, om)
                    out += (r % (1 << (8 * c))).to_bytes(c, "little")
                    if ovf:
                        f |= 1 << (qi * 4 + oi)
            flags.append(f)
        for f in flags:
            out += struct.pack("<I", f)
    path = os.path.join(out_dir, "reference.bin")
    with open(path, "wb") as fh:
        fh.write(out)
    print(f"wrote {path}: {len(out)} bytes, {sum(t[3] for t in TYPES)} inputs x 28 modes", file=sys.stderr)


if __name__ == "__main__":
    main()
