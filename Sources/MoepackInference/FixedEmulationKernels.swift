import MoepackFixedPoint
import CMoepackKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Integer building blocks of the Edge-MoE `ViT_compute` fixed-point datapath, on raw two's-complement
// values. Every function here mirrors one statement pattern of the published HLS kernel
// (sharc-lab/Edge-MoE, src/*.cpp); the doc comment of each names it.
//
// Number formats (Vitis HLS ap_fixed, UG1399; default modes AP_TRN = floor, AP_WRAP = modulo 2^W):
// fm_t = ap_fixed<32,10> (raw Int32, 22 fraction bits) for activations and accumulators; the weight
// types come from the image (see FixedEmulation for where each enters the arithmetic). The fast
// paths below are written for the published weight types (16-bit linear weights with 14 fraction
// bits, patch weights with 16) and are chosen only for types that embed in them exactly.
//
// Two ap_fixed rules carry all the arithmetic:
//  * `a * b` is formed at full width (fraction bits add up); assigning it to fm_t floors to 22
//    fraction bits (arithmetic right shift) and wraps to 32 bits.
//  * `acc += p` with acc of type fm_t computes acc + p exactly and then assigns; since acc is on the
//    fm_t grid, floor(acc + p) = acc + floor(p), so the result is wrap(acc + (p >> shift)).
// Wrapping is modular, so a sum of wrapped terms equals the wrapped exact sum: the fast paths below
// accumulate without per-step wrapping and only fall back to a step-by-step replay (to count wraps)
// when a bound says a partial sum could have left fm_t's range.

/// The instruction set of moepack's C integer kernels (CMoepackKernels) for this process: the best
/// the CPU runs, or `MOEPACK_SIMD` = portable / avx2 / avx512; every form gives the same bits.
let simdKernels: moepack_isa = moepack_kernels_isa()

/// Width and fraction bits of fm_t (the one place they are written; ``FixedEmulation/featureMap``).
let fmWidth = 32
let fmFrac = 22
/// 1.0 in fm_t raw units, and as a Double (raw / fmScale = value).
let fmOne: Int64 = 1 << fmFrac
let fmScale = Double(fmOne)
let fmMin = Int64(Int32.min)
let fmMax = Int64(Int32.max)

/// True when an exact raw value lies outside fm_t's range (an assignment of it wraps).
@inline(__always) func outsideFm(_ v: Int64) -> Bool { v < fmMin || v > fmMax }

/// AP_WRAP to 32 bits.
@inline(__always) func wrapFm(_ v: Int64) -> Int32 { Int32(truncatingIfNeeded: v) }

/// `fm_t c = a * b` for two fm_t values: full product (44 fraction bits), floored to 22, wrapped.
@inline(__always) func mulFm(_ a: Int32, _ b: Int32, _ wraps: inout Int) -> Int32 {
    let p = (Int64(a) * Int64(b)) >> fmFrac
    if outsideFm(p) { wraps += 1 }
    return wrapFm(p)
}

/// `fm_t c = a + b` (also `a - b` with `b` negated by the caller in Int64): exact, then wrapped.
@inline(__always) func addFm(_ a: Int64, _ b: Int64, _ wraps: inout Int) -> Int32 {
    let s = a + b
    if outsideFm(s) { wraps += 1 }
    return wrapFm(s)
}

/// Converts a non-negative Double (already the exact/correctly rounded real value) to fm_t with
/// AP_TRN; values at or beyond 2^9 saturate to fm_t's maximum and count as a wrap (the behaviour of
/// Vitis `hls::exp` on overflow is not documented; it never occurs for the non-positive arguments
/// the kernel normally passes).
@inline(__always) func doubleToFm(_ v: Double, _ wraps: inout Int) -> Int32 {
    let s = (v * fmScale).rounded(.down)
    if !(s < 2_147_483_648.0) { wraps += 1; return Int32.max }
    if s < -2_147_483_648.0 { wraps += 1; return Int32.min }
    return Int32(s)
}

/// `hls::exp(fm_t x)` → fm_t, emulated as floor(e^x · 2^22) using the C library's double exp
/// (correctly rounded in practice), saturating like ``doubleToFm``. Vitis' fixed-point `hls::exp`
/// may differ in the last bit. Computed by CMoepackKernels `moepack_exp_fm`: a polynomial whose
/// proven error bound decides the floor, the C library only near an integer boundary (same bits).
@inline(__always) func expFm(_ x: Int32, _ wraps: inout Int) -> Int32 {
    var w: Int64 = 0
    let e = moepack_exp_fm(x, &w)
    wraps += Int(w)
    return e
}

/// `fm_t(1) / fm_t(d)` and `hls::recip(fm_t d)` for d > 0: the ap_fixed quotient keeps the
/// dividend's 22 fraction bits and truncates toward zero, i.e. floor(2^44 / d) for positive d, then
/// wraps to fm_t. d ≤ 0 (never produced by the kernel's softmax sums; for LayerNorm only if the
/// variance underflows) saturates to fm_t's maximum and counts as a wrap.
@inline(__always) func recipFm(_ d: Int32, _ wraps: inout Int) -> Int32 {
    if d <= 0 { wraps += 1; return Int32.max }
    let q = (Int64(1) << (2 * fmFrac)) / Int64(d)
    if outsideFm(q) { wraps += 1 }
    return wrapFm(q)
}

/// `fm_t(n) / fm_t(d)` for n ≥ 0, d > 0: floor(n · 2^22 / d) (ap_fixed division, dividend's fraction
/// bits, truncation toward zero), wrapped to fm_t.
@inline(__always) func divFm(_ n: Int32, _ d: Int32, _ wraps: inout Int) -> Int32 {
    if d <= 0 { wraps += 1; return Int32.max }
    let q = (Int64(n) << fmFrac) / Int64(d)
    if outsideFm(q) { wraps += 1 }
    return wrapFm(q)
}

/// `hls::sqrt(fm_t v)` → fm_t, emulated exactly as floor(sqrt(v · 2^22)) in raw units (the
/// truncated square root); negative input returns 0 and counts as a wrap. Vitis' `hls::sqrt` may
/// differ in the last bit.
@inline(__always) func sqrtFm(_ v: Int32, _ wraps: inout Int) -> Int32 {
    if v < 0 { wraps += 1; return 0 }
    let n = UInt64(v) << fmFrac
    var r = UInt64(Double(n).squareRoot())
    while r * r > n { r -= 1 }
    while (r + 1) * (r + 1) <= n { r += 1 }
    return Int32(r)
}

// MARK: - GELU (gelu.cpp)

/// The kernel's GELU correction table: entry i is relu(x) − GELU(x) at x = i/32, i = 0…176, as
/// ap_ufixed<22,0> raw values. The kernel stores literal constants; they equal
/// round-to-nearest(2^22 · (x − x·Φ(x))) with Φ(x) = ½(1 + erf(x/√2)) in double precision, which is
/// how they are recomputed here (all 177 entries checked against the kernel source).
let geluDeltaTable: [Int32] = (0..<177).map { i in
    let x = Double(i) / 32
    let delta = x - x * 0.5 * (1 + erf(x / 2.0.squareRoot()))
    return Int32((delta * fmScale).rounded(.toNearestOrEven))
}
/// ``geluDeltaTable`` at a fixed address for the C kernels (`moepack_bias_gelu`); never freed,
/// never written after initialisation (hence safe to share).
nonisolated(unsafe) let geluDeltaTablePointer: UnsafePointer<Int32> = {
    let p = UnsafeMutablePointer<Int32>.allocate(capacity: geluDeltaTable.count)
    p.initialize(from: geluDeltaTable, count: geluDeltaTable.count)
    return UnsafePointer(p)
}()
/// GELU_DELTA_TABLE_MAX = 0.03125 · 176 = 5.5 in fm_t raw units.
let geluTableMaxRaw: Int32 = 176 << 17

/// `gelu(fm_t x)` of gelu.cpp: relu(x) − delta, with delta linearly interpolated in the table on |x|
/// in steps of 1/32 (index = integer part of 32|x|, t = its fraction as ap_ufixed<22,0>,
/// delta = a + t·(b − a) floored to 22 fraction bits); |x| ≥ 5.5 returns relu(x) exactly.
/// x = −512 (where `fm_t(-x)` wraps) returns 0 and counts a wrap.
@inline(__always) func geluFm(_ x: Int32, _ wraps: inout Int) -> Int32 {
    if x == Int32.min { wraps += 1; return 0 }
    let relu: Int32 = x < 0 ? 0 : x
    let ax: Int32 = x < 0 ? -x : x
    if ax >= geluTableMaxRaw { return relu }
    let index = Int(ax >> 17)
    let t = Int64(ax & 0x1FFFF) << 5                     // fraction of 32|x| with 22 bits
    let a = Int64(geluDeltaTable[index]), b = Int64(geluDeltaTable[index + 1])
    let delta = a + ((t * (b - a)) >> fmFrac)
    return Int32(Int64(relu) - delta)                    // |relu − delta| < 2^31: no wrap possible
}

// MARK: - Running softmax (attention.cpp finalize_attn, moe.cpp update_softmax_info)

/// State of the kernel's single-pass softmax: `sum` and `bias` (running maximum), both fm_t raw.
struct RunningSoftmax {
    var sum: Int32 = 0
    var bias: Int32 = Int32.min          // ap_fixed_min<fm_t>() = −512

    /// One update with score s (fm_t raw): d = bias − s (exact); if d < 0 (new maximum):
    /// sum = trunc(sum · exp(fm_t(d))) + 1, bias = s; else sum += exp(fm_t(−d)).
    /// The argument conversion `fm_t(d)` wraps when |d| ≥ 512; that happens on the first step
    /// against the initial bias −512 where sum = 0 makes it harmless, so a wrap is only counted
    /// while sum ≠ 0.
    @inline(__always) mutating func update(_ s: Int32, _ wraps: inout Int) {
        let d = Int64(bias) - Int64(s)
        let isNew = d < 0
        let argExact = isNew ? d : -d
        if outsideFm(argExact) && sum != 0 { wraps += 1 }
        let arg = wrapFm(argExact)
        var expWraps = 0
        let e = expFm(arg, &expWraps)
        if sum != 0 { wraps += expWraps }
        if isNew {
            let scaled = mulFm(sum, e, &wraps)
            sum = addFm(Int64(scaled), fmOne, &wraps)
            bias = s
        } else {
            sum = addFm(Int64(sum), Int64(e), &wraps)
        }
    }
}

// MARK: - top-k (moe.cpp top_k)

/// The kernel's top-k insertion over `scores` in expert order: a score enters slot j when it is
/// strictly greater than the slot's current score (so ties keep the lower expert index), shifting
/// lower slots down. Slots start at score −512 and expert 0. (The kernel leaves a slot unassigned
/// when neither branch fires; the evident intent, keeping the previous entry, is emulated.)
func topKFixed(_ scores: UnsafeBufferPointer<Int32>, k: Int, indices: inout [Int], values: inout [Int32]) {
    for j in 0..<k { indices[j] = 0; values[j] = Int32.min }
    for i in 0..<scores.count {
        let s = scores[i]
        var j = 0
        while j < k && !(s > values[j]) { j += 1 }
        if j == k { continue }
        var m = k - 1
        while m > j { indices[m] = indices[m - 1]; values[m] = values[m - 1]; m -= 1 }
        indices[j] = i
        values[j] = s
    }
}

// MARK: - Linear layer (linear.cpp compute_linear_on_stream)

/// Fraction bits of the fast linear kernels' Int16 weights (those of
/// ``FixedEmulation/fastLinearWeight``), and 2^that as a Double for their wrap bounds.
let fastWeightFrac = 14
let fastWeightScale = Double(1 << fastWeightFrac)

/// One linear layer's weights, bias already in fm_t raw units (wt_attn_bias_t / wt_bias_t →
/// wt_wbias_t → fm_t, see ``FixedEmulation/biasToFm(_:frac:)``), and the L2 norm of each weight row
/// (raw units) for the wrap bound.
///
/// Two forms: the fast form holds `w` as Int16 with ``fastWeightFrac`` fraction bits (the 16-bit
/// SIMD kernels); the general form holds `wideW`, the raw codes of any type
/// ``FixedEmulation/check(_:argument:)`` accepts, with `weightFrac` fraction bits.
struct FixedLinear: Sendable {
    let outDim: Int
    let inDim: Int
    /// Fast form: [out][in] Int16 with ``fastWeightFrac`` fraction bits (empty in the general form).
    let w: [Int16]
    /// General form: [out][in] raw weight codes (empty in the fast form).
    let wideW: [Int32]
    /// Fraction bits of the weights in the form held (``fastWeightFrac`` in the fast form).
    let weightFrac: Int
    let isFast: Bool
    let bias: [Int32]
    let rowNorm: [Double]
    /// max_o ‖w_o‖ and max_o |bias_o| (raw), for a per-row bound covering every output.
    let maxRowNorm: Double
    let maxAbsBias: Int64
    /// How many `pmulhw` results of this weight matrix can be summed in one Int16 lane exactly
    /// (`high_chunks` of `moepack_linear_dots`).
    let highChunks: Int32

    /// The fast form from weights already in Int16 with ``fastWeightFrac`` fraction bits.
    init(outDim: Int, inDim: Int, w: [Int16], bias: [Int32]) {
        self.init(outDim: outDim, inDim: inDim, w: w, wideW: [], weightFrac: fastWeightFrac, fast: true, bias: bias)
    }

    /// The layer for raw weight codes of `type`: the fast form when the type embeds in
    /// ``FixedEmulation/fastLinearWeight`` (codes scaled by 2^(14 − F), exact) and `general` is
    /// false, else the general form.
    init(outDim: Int, inDim: Int, raw: ArraySlice<Int32>, type: FixedType, bias: [Int32], general: Bool = false) {
        if !general && FixedEmulation.linearFast(type) {
            let up = fastWeightFrac - type.fractionBits
            self.init(outDim: outDim, inDim: inDim, w: raw.map { Int16(truncatingIfNeeded: $0 << up) }, bias: bias)
        } else {
            self.init(outDim: outDim, inDim: inDim, w: [], wideW: Array(raw), weightFrac: type.fractionBits,
                      fast: false, bias: bias)
        }
    }

    private init(outDim: Int, inDim: Int, w: [Int16], wideW: [Int32], weightFrac: Int, fast: Bool, bias: [Int32]) {
        self.outDim = outDim; self.inDim = inDim; self.w = w; self.wideW = wideW
        self.weightFrac = weightFrac; self.bias = bias
        isFast = fast
        func value(_ i: Int) -> Int64 { wideW.isEmpty ? Int64(w[i]) : Int64(wideW[i]) }
        var norms = [Double](repeating: 0, count: outDim)
        for o in 0..<outDim {
            var s = 0.0
            for i in 0..<inDim { let v = Double(value(o * inDim + i)); s += v * v }
            norms[o] = s.squareRoot()
        }
        rowNorm = norms
        maxRowNorm = norms.max() ?? 0
        maxAbsBias = bias.reduce(Int64(0)) { max($0, abs(Int64($1))) }
        let maxAbsW = (0..<(outDim * inDim)).reduce(Int64(0)) { max($0, abs(value($1))) }
        // |floor(b4·w / 2^16)| ≤ |w|/2 + 1 for b4 ∈ [−2^15, 2^15): k of them fit Int16 when
        // k·(max|w|/2 + 1) ≤ 32767 (k capped where the saving stops mattering).
        highChunks = Int32(min(64, 32_767 / (maxAbsW / 2 + 1)))
    }
}

/// How a dot product's partial sums are assigned to fm_t (only matters for counting wraps; values
/// are identical because wrapping is modular).
enum DotForm {
    /// linear.cpp: `addend = in * w` assigned to fm_t per product, then `out += addend`.
    case perProduct
    /// moe.cpp gating: per block of 8 inputs `addend += in * w` (exact product added), then
    /// `scores += addend`.
    case blockSum8
}

/// Exact step-by-step replay of one dot product with wrap counting (slow path): weights with `shift`
/// fraction bits, products floored by `shift` bits.
func dotReplay<Weight: FixedWidthInteger>(x: UnsafePointer<Int32>, w: UnsafePointer<Weight>, n: Int, start: Int32,
                                          shift: Int64, form: DotForm, wraps: inout Int) -> Int32 {
    var acc = start
    switch form {
    case .perProduct:
        for i in 0..<n {
            let p = (Int64(x[i]) * Int64(w[i])) >> shift
            if outsideFm(p) { wraps += 1 }
            acc = addFm(Int64(acc), Int64(wrapFm(p)), &wraps)
        }
    case .blockSum8:
        var i = 0
        while i < n {
            var addend: Int32 = 0
            for j in i..<min(i + 8, n) {
                addend = addFm(Int64(addend), (Int64(x[j]) * Int64(w[j])) >> shift, &wraps)
            }
            acc = addFm(Int64(acc), Int64(addend), &wraps)
            i += 8
        }
    }
    return acc
}

/// Wrapped dot product Σ floor(x_i · w_i / 2^14) mod 2^32 for wt_linear_t weights, written so the
/// vectoriser can use 16-bit multiplies (SSE2 `pmaddwd`/`pmulhw`): x = c·2^29 + d·2^14 + b with
/// c ∈ [−4, 4), d ∈ [0, 2^15), b ∈ [0, 2^14), so
/// floor(x·w/2^14) = 2^15·c·w + d·w + floor(b·w/2^14), where only the last term needs a per-product
/// floor (b·w fits 29 bits) and the others are only needed mod 2^32.
@inline(__always) func dotWrapped14(xc: UnsafePointer<Int16>, xd: UnsafePointer<Int16>, xb: UnsafePointer<Int16>,
                                    w: UnsafePointer<Int16>, n: Int) -> Int32 {
    var accC: Int32 = 0, accD: Int32 = 0, accB: Int32 = 0
    for i in 0..<n {
        let wi = Int32(w[i])
        accC = accC &+ Int32(xc[i]) &* wi
        accD = accD &+ Int32(xd[i]) &* wi
        accB = accB &+ ((Int32(xb[i]) &* wi) &>> 14)
    }
    return (accC &<< 15) &+ accD &+ accB
}

/// The common case of ``dotWrapped14`` when every |x_i| < 2^29 raw (|value| < 128): x = a·2^14 + b
/// with a = x >> 14 fitting Int16, so floor(x·w/2^14) = a·w + floor(b·w/2^14); both products are
/// 16×16-bit, done eight lanes at a time.
@inline(__always) func dotWrapped14Small(xa: UnsafePointer<Int16>, xb: UnsafePointer<Int16>,
                                         w: UnsafePointer<Int16>, n: Int) -> Int32 {
    var accA = SIMD8<Int32>(repeating: 0), accB = SIMD8<Int32>(repeating: 0)
    let ra = UnsafeRawPointer(xa), rb = UnsafeRawPointer(xb), rw = UnsafeRawPointer(w)
    var i = 0
    while i + 8 <= n {
        let wv = SIMD8<Int32>(truncatingIfNeeded: rw.loadUnaligned(fromByteOffset: i &* 2, as: SIMD8<Int16>.self))
        let av = SIMD8<Int32>(truncatingIfNeeded: ra.loadUnaligned(fromByteOffset: i &* 2, as: SIMD8<Int16>.self))
        let bv = SIMD8<Int32>(truncatingIfNeeded: rb.loadUnaligned(fromByteOffset: i &* 2, as: SIMD8<Int16>.self))
        accA &+= av &* wv
        accB &+= (bv &* wv) &>> 14
        i &+= 8
    }
    var acc = accA.wrappedSum() &+ accB.wrappedSum()
    while i < n {
        let wi = Int32(w[i])
        acc = acc &+ Int32(xa[i]) &* wi &+ ((Int32(xb[i]) &* wi) &>> 14)
        i &+= 1
    }
    return acc
}

/// Splits one input row into the 16-bit parts for ``dotWrapped14`` / ``dotWrapped14Small`` and
/// returns its L2 norm (raw) and whether every |x_i| < 2^29 (then `xd` holds a = x >> 14).
@inline(__always) func splitRow(_ x: UnsafePointer<Int32>, n: Int, xc: UnsafeMutablePointer<Int16>,
                                xd: UnsafeMutablePointer<Int16>, xb: UnsafeMutablePointer<Int16>) -> (Double, Bool) {
    var s = 0.0
    var small = true
    for i in 0..<n {
        let v = x[i]
        let d = Double(v)
        s += d * d
        small = small && v >= -(1 << 29) && v < (1 << 29)
    }
    if small {
        for i in 0..<n {
            let v = x[i]
            xd[i] = Int16(truncatingIfNeeded: v &>> 14)
            xb[i] = Int16(truncatingIfNeeded: v & 0x3FFF)
        }
    } else {
        for i in 0..<n {
            let v = x[i]
            xc[i] = Int16(truncatingIfNeeded: v &>> 29)
            xd[i] = Int16(truncatingIfNeeded: (v &>> 14) & 0x7FFF)
            xb[i] = Int16(truncatingIfNeeded: v & 0x3FFF)
        }
    }
    return (s.squareRoot(), small)
}

/// The 16-bit form used by the blocked linear kernel (CMoepackKernels `moepack_linear_dots`): for
/// −2^29 ≤ x < 2^29 − 2^13 write x = a·2^14 + b (a = x >> 14, b ∈ [0, 2^14)) and set
/// a′ = a + [b ≥ 2^13] (fits Int16 on that range) and b4 = the low 16 bits of 4b read as Int16,
/// i.e. 4b − 2^16·[b ≥ 2^13]. Then for every Int16 w
///   floor(x·w / 2^14) = a·w + floor(b·w / 2^14) = a′·w + floor(b4·w / 2^16),
/// because floor(b4·w / 2^16) = floor(b·w / 2^14) − w·[b ≥ 2^13]. Both terms are 16-bit SIMD
/// operations: a′·w summed in pairs (`pmaddwd`) and floor(b4·w / 2^16) the signed high half
/// (`pmulhw`), summed in pairs against ones. All sums are only needed mod 2^32 (AP_WRAP).
@inline(__always) func inPairRange(_ v: Int32) -> Bool { v >= -(1 << 29) && v < (1 << 29) - (1 << 13) }

/// L2 norm (raw units) of one input row, and whether every value is in ``inPairRange``.
///
/// The squares are summed in four interleaved partial sums (independent chains, so the loop is not
/// bound by the latency of one floating-point add). The norm only feeds the no-wrap bounds of
/// ``linearForward``, whose slack (+ n + 1 raw units) dwarfs any difference in rounding order
/// (relative error ≤ n·2^−52 of a value below 2^31·2^14).
@inline(__always) func rowNormAndRange(_ x: UnsafePointer<Int32>, n: Int) -> (Double, Bool) {
    var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    var lo = Int32.max, hi = Int32.min
    var i = 0
    while i &+ 4 <= n {
        let v0 = x[i], v1 = x[i &+ 1], v2 = x[i &+ 2], v3 = x[i &+ 3]
        lo = min(lo, min(min(v0, v1), min(v2, v3)))
        hi = max(hi, max(max(v0, v1), max(v2, v3)))
        let d0 = Double(v0), d1 = Double(v1), d2 = Double(v2), d3 = Double(v3)
        s0 += d0 * d0; s1 += d1 * d1; s2 += d2 * d2; s3 += d3 * d3
        i &+= 4
    }
    while i < n {
        let v = x[i]
        lo = min(lo, v); hi = max(hi, v)
        s0 += Double(v) * Double(v)
        i &+= 1
    }
    let inRange = n == 0 || (inPairRange(lo) && inPairRange(hi))
    return (((s0 + s1) + (s2 + s3)).squareRoot(), inRange)
}

/// Fills the a′ / b4 parts of ``inPairRange`` for one row (every value must be in range).
@inline(__always) func splitPairRow(_ x: UnsafePointer<Int32>, n: Int, a: UnsafeMutablePointer<Int16>,
                                    b4: UnsafeMutablePointer<Int16>) {
    for i in 0..<n {
        let v = x[i]
        let b = v & 0x3FFF
        a[i] = Int16(truncatingIfNeeded: (v &>> 14) &+ (b &>> 13))
        b4[i] = Int16(truncatingIfNeeded: b &<< 2)
    }
}

/// An input block of `rows` × `n` fm_t values split once for the fast linear kernels, so layers that
/// read the same input (Q, K and V) share it: per row its L2 norm (raw units, for the no-wrap bound
/// of ``linearForward``), whether every value is in ``inPairRange``, and for such rows the a′ / b4
/// parts (row r at a + r·n, b4 + r·n; ``splitPairRow``). Views memory a ``PairRowsBuffer`` owns.
struct PairRows {
    let input: UnsafePointer<Int32>
    let rows: Int
    let n: Int
    let norms: UnsafeMutablePointer<Double>
    let inRange: UnsafeMutablePointer<Bool>
    let a: UnsafeMutablePointer<Int16>
    let b4: UnsafeMutablePointer<Int16>
}

/// Memory for ``PairRows`` of up to `rows` × `n` values, reused across the layers of a forward pass.
final class PairRowsBuffer {
    let capacity: Int
    let rowCapacity: Int
    private let norms: UnsafeMutablePointer<Double>
    private let inRange: UnsafeMutablePointer<Bool>
    private let a: UnsafeMutablePointer<Int16>
    private let b4: UnsafeMutablePointer<Int16>

    init(rows: Int, n: Int) {
        rowCapacity = max(rows, 1)
        capacity = max(rows * n, 1)
        norms = .allocate(capacity: rowCapacity)
        inRange = .allocate(capacity: rowCapacity)
        a = .allocate(capacity: capacity)
        b4 = .allocate(capacity: capacity)
    }
    deinit { norms.deallocate(); inRange.deallocate(); a.deallocate(); b4.deallocate() }

    /// Splits `rows` × `n` fm_t values at `input` (rows·n ≤ the capacity, rows ≤ the row capacity);
    /// the result is valid until the next call.
    func split(_ input: UnsafePointer<Int32>, rows: Int, n: Int) -> PairRows {
        precondition(rows <= rowCapacity && rows * n <= capacity, "PairRowsBuffer too small")
        for r in 0..<rows {
            // One row per call: a row outside ``inPairRange`` leaves only itself unsplit.
            inRange[r] = moepack_linear_split_rows(simdKernels, input + r * n, n, 1, norms + r,
                                                   a + r * n, b4 + r * n) != 0
        }
        return PairRows(input: input, rows: rows, n: n, norms: norms, inRange: inRange, a: a, b4: b4)
    }
}

/// `compute_linear` on `rows` contiguous input rows of `layer.inDim` fm_t values, writing
/// `rows × layer.outDim` fm_t values: out = bias, then per input in order `addend = in*w` (floored,
/// wrapped), `out += addend`; optionally GELU on the result (use_gelu). `scratch` holds
/// ≥ 3·inDim values. Adds the wraps it observes to `wraps` (and GELU wraps to `geluWraps`).
/// `split`, when given, is `input` already split (``PairRowsBuffer/split(_:rows:n:)``).
///
/// Value and wrap count of every output are decided per (row, output) exactly as by a step-by-step
/// replay: when the bound max|bias| + ‖x‖·max_o‖w_o‖/2^14 + n + 1 on every partial sum stays below
/// 2^31 no assignment can wrap and the wrapped sums are computed with 16-bit SIMD (CMoepackKernels,
/// bias and GELU in C); rows where it fails are replayed exactly (``linearReplayRows``).
func linearForward(_ layer: FixedLinear, input: UnsafePointer<Int32>, rows: Int,
                   output: UnsafeMutablePointer<Int32>, gelu: Bool,
                   scratch: UnsafeMutablePointer<Int16>,
                   wraps: inout Int, geluWraps: inout Int, form: DotForm = .perProduct, split: PairRows? = nil) {
    let n = layer.inDim, m = layer.outDim
    guard rows > 0, m > 0 else { return }
    guard layer.isFast else {
        // Rows whose partial sums may wrap are replayed exactly, many at a time; the rest (every
        // output provably wrap-free) take the general kernels.
        let replay = rowsNeedingReplay(layer, input: input, rows: rows)
        linearReplayRows(layer, input: input, rowIndices: replay, output: output, gelu: gelu,
                         wraps: &wraps, geluWraps: &geluWraps, form: form)
        forEachRun(outside: replay, rows: rows) { from, count in
            linearForwardGeneral(layer, input: input + from * n, rows: count, output: output + from * m, gelu: gelu,
                                 wraps: &wraps, geluWraps: &geluWraps, form: form)
        }
        return
    }
    if let split {
        precondition(split.input == input && split.rows == rows && split.n == n, "split of another input")
        linearForwardFast(layer, split: split, output: output, gelu: gelu, scratch: scratch,
                          wraps: &wraps, geluWraps: &geluWraps, form: form)
    } else {
        let buffer = PairRowsBuffer(rows: rows, n: n)
        linearForwardFast(layer, split: buffer.split(input, rows: rows, n: n), output: output, gelu: gelu,
                          scratch: scratch, wraps: &wraps, geluWraps: &geluWraps, form: form)
    }
}

/// ``linearForward`` for the fast (Int16) weight form on an already split input.
private func linearForwardFast(_ layer: FixedLinear, split: PairRows, output: UnsafeMutablePointer<Int32>,
                               gelu: Bool, scratch: UnsafeMutablePointer<Int16>,
                               wraps: inout Int, geluWraps: inout Int, form: DotForm) {
    let n = layer.inDim, m = layer.outDim, rows = split.rows
    let input = split.input
    // The bound with max |bias| and max ‖w_o‖ from each row's one norm: where it holds, every
    // output's own bound holds too (rounding is monotonic), so no partial sum of the row can wrap.
    var replay: [Int] = []
    var safe = [Bool](repeating: true, count: rows)
    for r in 0..<rows where !(Double(layer.maxAbsBias) + split.norms[r] * layer.maxRowNorm / fastWeightScale
                              + Double(n) + 1 < 2_147_483_647.0) {
        replay.append(r)
        safe[r] = false
    }
    linearReplayRows(layer, input: input, rowIndices: replay, output: output, gelu: gelu,
                     wraps: &wraps, geluWraps: &geluWraps, form: form)
    layer.w.withUnsafeBufferPointer { wb in
        layer.bias.withUnsafeBufferPointer { bb in
            layer.rowNorm.withUnsafeBufferPointer { nb in
                let wp = wb.baseAddress!
                let xc = scratch, xd = scratch + n, xb = scratch + 2 * n
                var r = 0
                while r < rows {
                    guard safe[r] else { r += 1; continue }
                    if split.inRange[r] {
                        // A run of safe, split rows: dot products straight into the output rows,
                        // then bias (+ GELU) in place.
                        var end = r + 1
                        while end < rows && safe[end] && split.inRange[end] { end += 1 }
                        let block = output + r * m
                        moepack_linear_dots(simdKernels, split.a + r * n, split.b4 + r * n, n, end - r, wp, m,
                                            layer.highChunks, block, m)
                        geluWraps += Int(moepack_bias_gelu(simdKernels, block, end - r, m, m, bb.baseAddress!,
                                                           gelu ? geluDeltaTablePointer : nil, geluTableMaxRaw))
                        r = end
                        continue
                    }
                    // A value outside ``inPairRange``: the wider split, its own norm per output.
                    let x = input + r * n
                    let (xNorm, small) = splitRow(x, n: n, xc: xc, xd: xd, xb: xb)
                    let out = output + r * m
                    for o in 0..<m {
                        let wRow = wp + o * n
                        let b = bb[o]
                        let bound = Double(abs(Int64(b))) + xNorm * nb[o] / fastWeightScale + Double(n) + 1
                        var v: Int32
                        if bound < 2_147_483_647.0 {
                            v = b &+ (small ? dotWrapped14Small(xa: xd, xb: xb, w: wRow, n: n)
                                           : dotWrapped14(xc: xc, xd: xd, xb: xb, w: wRow, n: n))
                        } else {
                            v = dotReplay(x: x, w: wRow, n: n, start: b, shift: Int64(fastWeightFrac), form: form, wraps: &wraps)
                        }
                        if gelu { v = geluFm(v, &geluWraps) }
                        out[o] = v
                    }
                    r += 1
                }
            }
        }
    }
}
