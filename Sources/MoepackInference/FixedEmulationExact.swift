import CMoepackKernels

// The exact path of the emulation: where no bound proves that a dot product's partial sums stay in
// fm_t, its statements are replayed step by step (values and the count of every wrapping
// assignment) by the C lanes kernel `moepack_replay_lanes` (CMoepackKernels exact.c), which runs
// many independent dot products side by side. ``dotReplay`` stays the one-product reference the
// tests compare it with.

/// Rows per call of the lanes kernel in ``linearReplayRows`` (its input block, transposed, is
/// rows × inDim Int32: 96 KiB at inDim = 1536, within L2).
let replayRowBlock = 16

extension DotForm {
    /// The C kernel's name for this form.
    var replayForm: moepack_replay_form {
        switch self {
        case .perProduct: return MOEPACK_REPLAY_PER_PRODUCT
        case .blockSum8: return MOEPACK_REPLAY_BLOCK8
        }
    }
}

/// The rows of `input` (`rows` × `layer.inDim` fm_t) for which the bound
/// max|bias| + ‖x‖·max_o‖w_o‖·2^−F + n + 1 < 2^31 fails, i.e. some output's partial sums may wrap;
/// every other row has every output provably wrap-free. Only decides which path computes a row
/// (both give the same bits), never a value.
func rowsNeedingReplay(_ layer: FixedLinear, input: UnsafePointer<Int32>, rows: Int) -> [Int] {
    let n = layer.inDim
    let lsb = Double(sign: .plus, exponent: -layer.weightFrac, significand: 1)
    var result: [Int] = []
    for r in 0..<rows {
        let (norm, _) = rowNormAndRange(input + r * n, n: n)
        if !(Double(layer.maxAbsBias) + norm * layer.maxRowNorm * lsb + Double(n) + 1 < 2_147_483_647.0) {
            result.append(r)
        }
    }
    return result
}

/// `compute_linear` replayed exactly for the rows `rowIndices` of `input` (each `layer.inDim` fm_t):
/// output row r (`layer.outDim` fm_t at output + r·outDim) = bias, then per input in order the
/// assignments of `form`, optionally GELU; the wraps of every assignment go to `wraps`, GELU's to
/// `geluWraps`. Bit for bit what ``dotReplay`` and ``geluFm`` give per (row, output), for either
/// weight form of ``FixedLinear``.
func linearReplayRows(_ layer: FixedLinear, input: UnsafePointer<Int32>, rowIndices: [Int],
                      output: UnsafeMutablePointer<Int32>, gelu: Bool,
                      wraps: inout Int, geluWraps: inout Int, form: DotForm) {
    let n = layer.inDim, m = layer.outDim
    guard !rowIndices.isEmpty, m > 0 else { return }
    let xt = UnsafeMutablePointer<Int32>.allocate(capacity: max(n, 1) * replayRowBlock)
    let acc = UnsafeMutablePointer<Int32>.allocate(capacity: m * replayRowBlock)
    defer { xt.deallocate(); acc.deallocate() }
    let shift = Int32(layer.weightFrac)
    layer.w.withUnsafeBufferPointer { w16 in
    layer.wideW.withUnsafeBufferPointer { w32 in
        // Always whole blocks of `width` lanes (the kernels' vector forms): a last, shorter block is
        // padded with rows of zeros, whose products are 0 and whose sums never wrap, so they add
        // no count and their outputs are dropped.
        let width = replayRowBlock
        var start = 0
        while start < rowIndices.count {
            let lanes = min(width, rowIndices.count - start)
            // Lane l = row rowIndices[start + l]; input i of every lane is one contiguous run.
            for l in 0..<lanes {
                let x = input + rowIndices[start + l] * n
                for i in 0..<n { xt[i * width + l] = x[i] }
            }
            if lanes < width { for i in 0..<n { for l in lanes..<width { xt[i * width + l] = 0 } } }
            for o in 0..<m {
                let b = layer.bias[o]
                for l in 0..<width { acc[o * width + l] = b }
            }
            wraps += Int(moepack_replay_lanes(simdKernels, xt, width, width,
                                              layer.isFast ? w16.baseAddress : nil,
                                              layer.isFast ? nil : w32.baseAddress,
                                              n, m, n, shift, form.replayForm, 0, 0, acc, width))
            for l in 0..<lanes {
                let out = output + rowIndices[start + l] * m
                for o in 0..<m {
                    let v = acc[o * width + l]
                    out[o] = gelu ? geluFm(v, &geluWraps) : v
                }
            }
            start += lanes
        }
    }
    }
}

/// Calls `body(from, count)` for each maximal run of rows in 0..<rows not listed in `excluded`
/// (ascending row indices).
func forEachRun(outside excluded: [Int], rows: Int, _ body: (Int, Int) -> Void) {
    var from = 0
    for r in excluded + [rows] {
        if r > from { body(from, r - from) }
        from = r + 1
    }
}
