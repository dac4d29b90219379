// The general (any accepted type) forms of the units whose arithmetic depends on a weight type:
// the same kernel statements as the fast paths, with the fraction bits taken from the image's types
// (see FixedEmulation for where each type enters). Exact for every type FixedEmulation.check
// accepts: products of an fm_t (< 2^31 in magnitude) and a weight of at most 32 bits stay within
// Int64, and every floor is an arithmetic shift of the exact product.

/// `compute_linear` for a ``FixedLinear`` in the general form (any weight type): per (row, output)
/// out = bias, then per input `addend = in * w` floored by the weights' F fraction bits and wrapped,
/// `out += addend` (or moe.cpp's per-8 block sums for `.blockSum8`); GELU optionally.
///
/// When the bound |bias| + ‖x‖·‖w_o‖/2^F + n + 1 on every partial sum stays below 2^31 no
/// assignment can wrap, and the sum of floored products is taken mod 2^32 (wrapping is modular);
/// otherwise ``dotReplay`` replays the statements and counts the wraps.
func linearForwardGeneral(_ layer: FixedLinear, input: UnsafePointer<Int32>, rows: Int,
                          output: UnsafeMutablePointer<Int32>, gelu: Bool,
                          wraps: inout Int, geluWraps: inout Int, form: DotForm) {
    let n = layer.inDim, m = layer.outDim
    let shift = Int64(layer.weightFrac)
    let lsb = Double(sign: .plus, exponent: -layer.weightFrac, significand: 1)
    layer.wideW.withUnsafeBufferPointer { wb in
        for r in 0..<rows {
            let x = input + r * n
            let (xNorm, _) = rowNormAndRange(x, n: n)
            for o in 0..<m {
                let wRow = wb.baseAddress! + o * n
                let b = layer.bias[o]
                var v: Int32
                if Double(abs(Int64(b))) + xNorm * layer.rowNorm[o] * lsb + Double(n) + 1 < 2_147_483_647.0 {
                    var s: Int64 = 0
                    for i in 0..<n { s &+= (Int64(x[i]) &* Int64(wRow[i])) >> shift }
                    v = Int32(truncatingIfNeeded: Int64(b) &+ s)
                } else {
                    v = dotReplay(x: x, w: wRow, n: n, start: b, shift: shift, form: form, wraps: &wraps)
                }
                if gelu { v = geluFm(v, &geluWraps) }
                output[r * m + o] = v
            }
        }
    }
}

/// conv.cpp's per-row patch sum for any wt_patch_embed_t: `addend_dim += pixel * weight` over one
/// patch row, the exact product (8 + F fraction bits) floored to fm_t's 22 and each assignment
/// wrapped (counted in `wraps`).
@inline(__always) func patchRowSumGeneral(pixels: UnsafePointer<Int32>, weights: UnsafePointer<Int32>, count: Int,
                                          frac: Int, wraps: inout Int) -> Int32 {
    let down = FixedEmulation.pixel.fractionBits + frac - fmFrac   // > 0: floor; ≤ 0: exact
    var addend: Int32 = 0
    for j in 0..<count {
        let prod = Int64(pixels[j]) * Int64(weights[j])
        let p = down >= 0 ? prod >> Int64(down) : prod << Int64(-down)
        addend = addFm(Int64(addend), p, &wraps)
    }
    return addend
}
