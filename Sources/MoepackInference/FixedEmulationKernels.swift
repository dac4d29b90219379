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
//   fm_t              ap_fixed<32,10>  raw Int32, 22 fraction bits (activations, accumulators)
//   wt_linear_t       ap_fixed<16,2>   raw Int16, 14 fraction bits
//   wt_attn_bias_t    ap_fixed<16,7>   9 fraction bits
//   wt_bias_t         ap_fixed<16,5>   11 fraction bits
//   wt_norm_t         ap_fixed<16,5>   11 fraction bits
//   wt_patch_embed_t  ap_fixed<16,0>   16 fraction bits
//   pixel_t           ap_ufixed<8,0>   8 fraction bits (raw byte)
//
// Two ap_fixed rules carry all the arithmetic:
//  * `a * b` is formed at full width (fraction bits add up); assigning it to fm_t floors to 22
//    fraction bits (arithmetic right shift) and wraps to 32 bits.
//  * `acc += p` with acc of type fm_t computes acc + p exactly and then assigns; since acc is on the
//    fm_t grid, floor(acc + p) = acc + floor(p), so the result is wrap(acc + (p >> shift)).
// Wrapping is modular, so a sum of wrapped terms equals the wrapped exact sum: the fast paths below
// accumulate without per-step wrapping and only fall back to a step-by-step replay (to count wraps)
// when a bound says a partial sum could have left fm_t's range.

/// Fraction bits of fm_t.
let fmFrac = 22
/// 1.0 in fm_t raw units.
let fmOne: Int64 = 1 << 22
let fmMin = Int64(Int32.min)
let fmMax = Int64(Int32.max)

/// True when an exact raw value lies outside fm_t's range (an assignment of it wraps).
@inline(__always) func outsideFm(_ v: Int64) -> Bool { v < fmMin || v > fmMax }

/// AP_WRAP to 32 bits.
@inline(__always) func wrapFm(_ v: Int64) -> Int32 { Int32(truncatingIfNeeded: v) }

/// `fm_t c = a * b` for two fm_t values: full product (44 fraction bits), floored to 22, wrapped.
@inline(__always) func mulFm(_ a: Int32, _ b: Int32, _ wraps: inout Int) -> Int32 {
    let p = (Int64(a) * Int64(b)) >> 22
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
    let s = (v * 4_194_304.0).rounded(.down)
    if !(s < 2_147_483_648.0) { wraps += 1; return Int32.max }
    if s < -2_147_483_648.0 { wraps += 1; return Int32.min }
    return Int32(s)
}

/// `hls::exp(fm_t x)` → fm_t, emulated as floor(e^x · 2^22) using the C library's double exp
/// (correctly rounded in practice). Vitis' fixed-point `hls::exp` may differ in the last bit.
@inline(__always) func expFm(_ x: Int32, _ wraps: inout Int) -> Int32 {
    doubleToFm(exp(Double(x) / 4_194_304.0), &wraps)
}

/// `fm_t(1) / fm_t(d)` and `hls::recip(fm_t d)` for d > 0: the ap_fixed quotient keeps the
/// dividend's 22 fraction bits and truncates toward zero, i.e. floor(2^44 / d) for positive d, then
/// wraps to fm_t. d ≤ 0 (never produced by the kernel's softmax sums; for LayerNorm only if the
/// variance underflows) saturates to fm_t's maximum and counts as a wrap.
@inline(__always) func recipFm(_ d: Int32, _ wraps: inout Int) -> Int32 {
    if d <= 0 { wraps += 1; return Int32.max }
    let q = (Int64(1) << 44) / Int64(d)
    if outsideFm(q) { wraps += 1 }
    return wrapFm(q)
}

/// `fm_t(n) / fm_t(d)` for n ≥ 0, d > 0: floor(n · 2^22 / d) (ap_fixed division, dividend's fraction
/// bits, truncation toward zero), wrapped to fm_t.
@inline(__always) func divFm(_ n: Int32, _ d: Int32, _ wraps: inout Int) -> Int32 {
    if d <= 0 { wraps += 1; return Int32.max }
    let q = (Int64(n) << 22) / Int64(d)
    if outsideFm(q) { wraps += 1 }
    return wrapFm(q)
}

/// `hls::sqrt(fm_t v)` → fm_t, emulated exactly as floor(sqrt(v · 2^22)) in raw units (the
/// truncated square root); negative input returns 0 and counts as a wrap. Vitis' `hls::sqrt` may
/// differ in the last bit.
@inline(__always) func sqrtFm(_ v: Int32, _ wraps: inout Int) -> Int32 {
    if v < 0 { wraps += 1; return 0 }
    let n = UInt64(v) << 22
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
    return Int32((delta * 4_194_304.0).rounded(.toNearestOrEven))
}
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
    let delta = a + ((t * (b - a)) >> 22)
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

/// One linear layer's weights: `w` [out][in] wt_linear_t raw, bias already in fm_t raw units
/// (wt_attn_bias_t / wt_bias_t → wt_wbias_t → fm_t are exact widenings), and the L2 norm of each
/// weight row (raw units) for the wrap bound.
struct FixedLinear: Sendable {
    let outDim: Int
    let inDim: Int
    let w: [Int16]
    let bias: [Int32]
    let rowNorm: [Double]

    init(outDim: Int, inDim: Int, w: [Int16], bias: [Int32]) {
        self.outDim = outDim; self.inDim = inDim; self.w = w; self.bias = bias
        var norms = [Double](repeating: 0, count: outDim)
        for o in 0..<outDim {
            var s = 0.0
            for i in 0..<inDim { let v = Double(w[o * inDim + i]); s += v * v }
            norms[o] = s.squareRoot()
        }
        rowNorm = norms
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

/// Exact step-by-step replay of one dot product with wrap counting (slow path).
func dotReplay(x: UnsafePointer<Int32>, w: UnsafePointer<Int16>, n: Int, start: Int32, shift: Int64,
               form: DotForm, wraps: inout Int) -> Int32 {
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

/// Wrapped dot product Σ floor(x_i · w_i / 2^14) mod 2^32 for wt_linear_t weights, vectorisable:
/// x = xh·2^14 + xl with 0 ≤ xl < 2^14, so floor(x·w/2^14) = xh·w + floor(xl·w/2^14) where the
/// second product fits Int32 exactly and the first only needs its value mod 2^32.
@inline(__always) func dotWrapped14(xh: UnsafePointer<Int32>, xl: UnsafePointer<Int32>,
                                    w: UnsafePointer<Int16>, n: Int) -> Int32 {
    var acc: Int32 = 0
    for i in 0..<n {
        let wi = Int32(w[i])
        acc = acc &+ (xh[i] &* wi) &+ ((xl[i] &* wi) &>> 14)
    }
    return acc
}

/// Splits one input row into high and low parts for ``dotWrapped14`` and returns its L2 norm (raw).
@inline(__always) func splitRow(_ x: UnsafePointer<Int32>, n: Int, xh: UnsafeMutablePointer<Int32>,
                                xl: UnsafeMutablePointer<Int32>) -> Double {
    var s = 0.0
    for i in 0..<n {
        let v = x[i]
        xh[i] = v &>> 14
        xl[i] = v & 0x3FFF
        let d = Double(v)
        s += d * d
    }
    return s.squareRoot()
}

/// `compute_linear` on `rows` contiguous input rows of `layer.inDim` fm_t values, writing
/// `rows × layer.outDim` fm_t values: out = bias, then per input in order `addend = in*w` (floored,
/// wrapped), `out += addend`; optionally GELU on the result (use_gelu). `xh`/`xl` are scratch of
/// ≥ inDim. Adds the wraps it observes to `wraps` (and GELU wraps to `geluWraps`).
func linearForward(_ layer: FixedLinear, input: UnsafePointer<Int32>, rows: Int,
                   output: UnsafeMutablePointer<Int32>, gelu: Bool,
                   xh: UnsafeMutablePointer<Int32>, xl: UnsafeMutablePointer<Int32>,
                   wraps: inout Int, geluWraps: inout Int, form: DotForm = .perProduct) {
    let n = layer.inDim, m = layer.outDim
    layer.w.withUnsafeBufferPointer { wb in
        layer.bias.withUnsafeBufferPointer { bb in
            layer.rowNorm.withUnsafeBufferPointer { nb in
                let wp = wb.baseAddress!
                for r in 0..<rows {
                    let x = input + r * n
                    let xNorm = splitRow(x, n: n, xh: xh, xl: xl)
                    let out = output + r * m
                    for o in 0..<m {
                        let wRow = wp + o * n
                        let b = bb[o]
                        // |every partial sum| ≤ |b| + Σ|x_i w_i|/2^14 + n ≤ |b| + ‖x‖‖w_o‖/2^14 + n.
                        let bound = Double(abs(Int64(b))) + xNorm * nb[o] / 16384.0 + Double(n) + 1
                        var v: Int32
                        if bound < 2_147_483_647.0 {
                            v = b &+ dotWrapped14(xh: xh, xl: xl, w: wRow, n: n)
                        } else {
                            v = dotReplay(x: x, w: wRow, n: n, start: b, shift: 14, form: form, wraps: &wraps)
                        }
                        if gelu { v = geluFm(v, &geluWraps) }
                        out[o] = v
                    }
                }
            }
        }
    }
}
