import CMoepackKernels

/// Working memory of ``FixedBackbone/attention(q:k:v:out:layer:ledger:)`` for one head at a time
/// (T tokens, hd dims per head), allocated once per call.
final class AttentionScratch {
    let tokens: Int
    let headDim: Int
    /// Q·K scores, then the softmax weights, [T query][T key] fm_t raw.
    let scores: UnsafeMutablePointer<Int32>
    let weights: UnsafeMutablePointer<Int32>
    /// Σ_key |weight| per query (the attn × V bound).
    let weightAbsSum: UnsafeMutablePointer<Int64>
    /// Query indices handed to a batch kernel.
    let rows: UnsafeMutablePointer<Int32>
    /// max |x| per token row of the head's Q, K or V (`moepack_attn_row_max_abs`).
    let rowMaxAbs: UnsafeMutablePointer<UInt32>
    /// K and V of the head packed for the batch kernels (moepack_attention.h), and their scratch.
    let keyPanels: UnsafeMutablePointer<Double>
    let valuePanels: UnsafeMutablePointer<Double>
    let batchScratch: UnsafeMutablePointer<Double>
    let softmaxScratch: UnsafeMutablePointer<Int32>
    /// Operands of the per-query fallbacks, filled by the first query of a head that needs them:
    /// K offset by 2^31 and transposed with its block sums (`moepack_qk_scores`), K transposed
    /// (`moepack_replay_lanes`), and the current query's offset form.
    let kT: UnsafeMutablePointer<UInt32>
    let kBlock9T: UnsafeMutablePointer<UInt32>
    let kS: UnsafeMutablePointer<Int32>
    let qU: UnsafeMutablePointer<UInt32>
    let qBlock9: UnsafeMutablePointer<UInt32>
    let blockScratch: UnsafeMutablePointer<UInt32>

    init(tokens T: Int, headDim hd: Int) {
        tokens = T
        headDim = hd
        let panelKeys = (T + Int(MOEPACK_ATTN_PANEL) - 1) / Int(MOEPACK_ATTN_PANEL) * Int(MOEPACK_ATTN_PANEL)
        scores = .allocate(capacity: T * T)
        weights = .allocate(capacity: T * T)
        weightAbsSum = .allocate(capacity: T)
        rows = .allocate(capacity: T)
        rowMaxAbs = .allocate(capacity: T)
        keyPanels = .allocate(capacity: panelKeys * hd)
        valuePanels = .allocate(capacity: T * hd)
        batchScratch = .allocate(capacity: Int(MOEPACK_ATTN_GROUP) * max(hd, T))
        softmaxScratch = .allocate(capacity: 3 * T)
        kT = .allocate(capacity: hd * T)
        kBlock9T = .allocate(capacity: hd / 8 * T)
        kS = .allocate(capacity: hd * T)
        qU = .allocate(capacity: hd)
        qBlock9 = .allocate(capacity: hd / 8)
        blockScratch = .allocate(capacity: T)
    }

    deinit {
        for p in [scores, weights, kS] as [UnsafeMutablePointer<Int32>] { p.deallocate() }
        for p in [rows] as [UnsafeMutablePointer<Int32>] { p.deallocate() }
        for p in [kT, kBlock9T, qU, qBlock9, blockScratch, rowMaxAbs] as [UnsafeMutablePointer<UInt32>] { p.deallocate() }
        keyPanels.deallocate(); valuePanels.deallocate(); batchScratch.deallocate()
        softmaxScratch.deallocate(); weightAbsSum.deallocate()
    }
}

extension FixedBackbone {
    /// attention.cpp `compute_q_matmul_k` + `compute_attn_matmul_v` for all heads: per head the
    /// scores of every query, the softmax of each, then attn × V.
    func attention(q: UnsafePointer<Int32>, k: UnsafePointer<Int32>, v: UnsafePointer<Int32>,
                   out: UnsafeMutablePointer<Int32>, layer: Int, ledger: inout WrapLedger) {
        let T = config.tokens, hd = config.headDim
        var wQK = 0, wSoft = 0, wAV = 0
        let s = AttentionScratch(tokens: T, headDim: hd)
        for head in 0..<config.heads {
            let off = head * hd
            wQK += attentionScores(q: q + off, k: k + off, s)
            // Running softmax in the kernel's key order (from query % 4) and the weights.
            for qi in 0..<T {
                var absSum: Int64 = 0
                var nonNegative: Int32 = 0
                wSoft += Int(moepack_attn_softmax(simdKernels, s.scores + qi * T, T, qi % 4, s.weights + qi * T,
                                                  s.softmaxScratch, &absSum, &nonNegative))
                s.weightAbsSum[qi] = absSum
            }
            wAV += attentionTimesV(v: v + off, out: out + off, s)
        }
        ledger.add(layer, "attn.qk", wQK)
        ledger.add(layer, "attn.softmax", wSoft)
        ledger.add(layer, "attn.av", wAV)
    }

    /// Q·K of one head (q, k at the head's first dim, rows of embedDim) for every query into
    /// s.scores; returns the wraps. Per query the path its bound allows: the batch kernel when no
    /// assignment can wrap, the block-safe kernel when only the block sums are known to fit, else
    /// the step-by-step replay.
    func attentionScores(q: UnsafePointer<Int32>, k: UnsafePointer<Int32>, _ s: AttentionScratch) -> Int {
        let D = config.embedDim, T = config.tokens, hd = config.headDim, blocks = Int64(hd / 8)
        let absScale = Int64(scaleRaw).magnitude
        moepack_attn_row_max_abs(simdKernels, k, D, T, hd, s.rowMaxAbs)
        var maxAbsK: Int64 = 0
        for t in 0..<T { maxAbsK = max(maxAbsK, Int64(s.rowMaxAbs[t])) }
        moepack_attn_row_max_abs(simdKernels, q, D, T, hd, s.rowMaxAbs)
        var wraps = 0, batch = 0
        var offsetFormsFilled = false, kSFilled = false
        for qi in 0..<T {
            let qRow = q + qi * D
            let maxAbsQ = Int64(s.rowMaxAbs[qi])
            // Every floored product has |t| ≤ (max|q|·max|k| >> fmFrac) + 1, so no partial block sum
            // exceeds blockBound; when that fits fm_t no block sum wraps.
            let blockBound = 8 * (((maxAbsQ * maxAbsK) >> fmFrac) + 1)
            let blockSafe = blockBound <= fmMax
            // Then each scaled block sum has |floor(S·scale / 2^22)| ≤ (blockBound·|scale| >> 22) + 1,
            // and when `blocks` of those fit fm_t no scaled sum and no partial score wraps either.
            if blockSafe
                && blocks * (((blockBound * Int64(absScale)) >> fmFrac) + 1) <= fmMax {
                s.rows[batch] = Int32(qi)
                batch += 1
            } else if blockSafe {
                if !offsetFormsFilled { fillOffsetKeys(k, s); offsetFormsFilled = true }
                wraps += blockSafeScores(qRow, s, into: s.scores + qi * T)
            } else {
                // Q·K replayed for all keys side by side: per block of 8 dims addend += q*k (exact
                // product, floored), addend *= scale, score += addend, every assignment counted.
                if !kSFilled {
                    for t in 0..<T { for j in 0..<hd { s.kS[j * T + t] = k[t * D + j] } }
                    kSFilled = true
                }
                let sb = s.scores + qi * T
                for key in 0..<T { sb[key] = 0 }
                wraps += Int(moepack_replay_lanes(simdKernels, s.kS, T, T, nil, qRow, hd, 1, hd, Int32(fmFrac),
                                                  MOEPACK_REPLAY_BLOCK8_SCALED, scaleRaw, Int32(fmFrac), sb, T))
            }
        }
        if batch > 0 {
            moepack_attn_key_panels(k, D, T, hd, s.keyPanels)
            moepack_attn_qk_batch(simdKernels, q, D, s.rows, batch, s.keyPanels, T, hd, scaleRaw, s.scores, T,
                                  s.batchScratch)
        }
        return wraps
    }

    /// K of the head in the unsigned-offset form of `moepack_qk_scores`: kT[j·T + key] = k + 2^31,
    /// and per block of 8 dims 2^9·Σ ku mod 2^32 (kBlock9T[b·T + key]).
    private func fillOffsetKeys(_ k: UnsafePointer<Int32>, _ s: AttentionScratch) {
        let D = config.embedDim, T = config.tokens, hd = config.headDim
        for t in 0..<T {
            for b in 0..<(hd / 8) {
                var bs: UInt32 = 0
                for j in 0..<8 {
                    let u = UInt32(bitPattern: k[t * D + b * 8 + j]) ^ 0x8000_0000
                    s.kT[(b * 8 + j) * T + t] = u
                    bs &+= u
                }
                s.kBlock9T[b * T + t] = bs &<< 9
            }
        }
    }

    /// One query's scores whose block sums fit fm_t (`moepack_qk_scores`): with qu = q + 2^31,
    /// ku = k + 2^31, floor(q·k / 2^22) = floor(qu·ku / 2^22) − 2^9·(qu + ku) + 2^40, qu·ku an
    /// unsigned 32×32-bit product and the floor a logical shift. Returns the wraps.
    private func blockSafeScores(_ qRow: UnsafePointer<Int32>, _ s: AttentionScratch,
                                 into scores: UnsafeMutablePointer<Int32>) -> Int {
        let T = config.tokens, hd = config.headDim
        for blk in 0..<(hd / 8) {
            var bs: UInt32 = 0
            for j in 0..<8 {
                let u = UInt32(bitPattern: qRow[blk * 8 + j]) ^ 0x8000_0000
                s.qU[blk * 8 + j] = u
                bs &+= u
            }
            s.qBlock9[blk] = bs &<< 9
        }
        return Int(moepack_qk_scores(simdKernels, s.qU, s.qBlock9, s.kT, T, s.kBlock9T, T, hd, scaleRaw,
                                     s.blockScratch, scores))
    }

    /// attn × V of one head (v, out at the head's first dim, rows of embedDim) for every query from
    /// s.weights; returns the wraps. acc = v*a (floored), acc += previous, keys in the kernel's order
    /// from query % 4: when no partial sum can leave fm_t the order does not matter and the batch
    /// kernel gives the exact sum; otherwise the step-by-step replay.
    func attentionTimesV(v: UnsafePointer<Int32>, out: UnsafeMutablePointer<Int32>, _ s: AttentionScratch) -> Int {
        let D = config.embedDim, T = config.tokens, hd = config.headDim
        moepack_attn_row_max_abs(simdKernels, v, D, T, hd, s.rowMaxAbs)
        var maxAbsV: Int64 = 0
        for t in 0..<T { maxAbsV = max(maxAbsV, Int64(s.rowMaxAbs[t])) }
        var wraps = 0, batch = 0
        for qi in 0..<T {
            // |Σ floor(v·a / 2^22)| ≤ max|v|·Σ|a| / 2^22 + T for every partial sum.
            let bound = Double(maxAbsV) * Double(s.weightAbsSum[qi]) / fmScale + Double(T) + 1
            if bound < 2_147_483_647.0 {
                s.rows[batch] = Int32(qi)
                batch += 1
                continue
            }
            // acc = v*a (floored, wrapped), then acc += v*a per key in the kernel's order (keys
            // o..<T, then 0..<o), all head dims side by side; the first assignment adds to 0 and
            // cannot wrap.
            let o = qi % 4, a = s.weights + qi * T, outRow = out + qi * D
            for d in 0..<hd { outRow[d] = 0 }
            wraps += Int(moepack_replay_lanes(simdKernels, v + o * D, D, hd, nil, a + o, T - o, 1, T - o,
                                              Int32(fmFrac), MOEPACK_REPLAY_PER_PRODUCT, 0, 0, outRow, hd))
            wraps += Int(moepack_replay_lanes(simdKernels, v, D, hd, nil, a, o, 1, o, Int32(fmFrac),
                                              MOEPACK_REPLAY_PER_PRODUCT, 0, 0, outRow, hd))
        }
        if batch > 0 {
            moepack_attn_value_panels(v, D, T, hd, s.valuePanels)
            moepack_attn_av_batch(simdKernels, s.weights, T, s.rows, batch, s.valuePanels, T, hd, out, D,
                                  s.batchScratch)
        }
        return wraps
    }
}
