import MoepackCore
import MoepackModel
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Routing decisions of one MoE block for one frame, from either datapath. The fixed-point emulation
/// fills `topExperts` in the kernel's top-k slot order and `topWeights` with the kernel's dequantized
/// gate weights (`exp(logit − max) / sum` in fm_t).
public struct MoERouting: Sendable, Equatable {
    /// Block index (0-based, into `BackboneWeights.blocks`).
    public var block: Int
    /// Chosen experts, [tokens, topK] row-major, each row sorted by gate probability descending;
    /// equal probabilities keep the lower expert index first.
    public var topExperts: [Int32]
    /// Softmax gate probabilities of the chosen experts, [tokens, topK], aligned with `topExperts`
    /// (probabilities over all experts, not renormalised over the top-k).
    public var topWeights: [Float]
    /// Per expert (ascending index), the tokens routed to it, in token order (token 0 = cls).
    /// This is the schedule the Edge-MoE kernel builds (`expert_queues`).
    public var queues: [[Int32]]
    /// Per token [tokens], the gate probability of the k-th (last) chosen expert minus that of the best
    /// expert left out (≥ 0): how far the token is from a different top-k set. Filled by the float path;
    /// empty when the datapath does not compute it.
    public var margins: [Float]

    public init(block: Int, topExperts: [Int32], topWeights: [Float], queues: [[Int32]], margins: [Float] = []) {
        self.block = block; self.topExperts = topExperts; self.topWeights = topWeights; self.queues = queues
        self.margins = margins
    }
}

/// Result of one backbone forward pass.
public struct ForwardResult: Sendable {
    /// Backbone output x after the last block, [tokens, D] row-major (no final norm).
    public var output: [Float]
    /// x after each block, [depth][tokens·D]; empty unless `recordBlocks` was requested.
    public var blockOutputs: [[Float]]
    /// Routing of every MoE block, in block order.
    public var routing: [MoERouting]

    public init(output: [Float], blockOutputs: [[Float]], routing: [MoERouting]) {
        self.output = output; self.blockOutputs = blockOutputs; self.routing = routing
    }
}

/// Float32 reference inference of the Edge-MoE M³ViT backbone on kernel-form weights (eval mode).
///
/// Semantics (PyTorch M³ViT forward with the Edge-MoE folds applied, see `BackboneWeights`):
/// - Patch embedding: conv p×p stride p on pixels (values byte/256); patch tokens in row-major
///   patch order; token 0 is cls: x[0] = posEmbed[0], x[1+n] = conv(n) + bias + posEmbed[1+n].
/// - Block: h = LN1(x) (biased variance, eps = `config.layerNormEps`); Q, K, V = h·Wᵀ + b; per head
///   (contiguous slices of D) softmax(Q·Kᵀ·headDim^-0.5)·V; x += proj. Then h = LN2(x) and
///   dense: x += fc2(GELU(fc1(h))), or MoE: p = softmax(h·gateᵀ) over all experts, top-k by strict
///   comparison in expert order (ties keep the lower index), x += Σₖ p[eₖ]·expert_{eₖ}(h) with
///   expert(h) = w2·GELU(w1·h + b1) + b2 (weights not renormalised).
/// - GELU is the exact one, 0.5·x·(1 + erf(x/√2)) (PyTorch `nn.GELU()` default).
/// - MoE tokens are processed as the kernel schedules them: experts in ascending index, each
///   expert's queue of tokens in token order, contributions accumulated in that order.
///
/// All matrix products go through OpenBLAS `cblas_sgemm` (see `BLAS`). The object is immutable and
/// can be shared between threads; each `forward` call allocates its own scratch once and reuses it
/// across blocks.
public final class FloatBackbone: Sendable {
    public let weights: BackboneWeights
    /// Per block: Q, K, V weights stacked [3D, D] and biases [3D] (one sgemm for all three).
    private let qkvWeights: [[Float]]
    private let qkvBiases: [[Float]]
    /// First inconsistency found in `weights` (thrown by `forward`).
    private let validationError: MoepackError?

    public init(weights: BackboneWeights) {
        self.weights = weights
        self.qkvWeights = weights.blocks.map { $0.qWeight + $0.kWeight + $0.vWeight }
        self.qkvBiases = weights.blocks.map { $0.qBias + $0.kBias + $0.vBias }
        self.validationError = FloatBackbone.validate(weights)
    }

    /// Checks every array length against `weights.config`; returns the first problem.
    static func validate(_ w: BackboneWeights) -> MoepackError? {
        let c = w.config
        func bad(_ item: String?, _ msg: String) -> MoepackError { MoepackError(.mismatch, item: item, msg) }
        let dims = [c.embedDim, c.depth, c.heads, c.experts, c.expertHidden, c.mlpHidden, c.tasks, c.topK,
                    c.tokens, c.patchSize, c.inChans, c.imageHeight, c.imageWidth]
        if dims.contains(where: { $0 < 0 }) || [c.embedDim, c.heads, c.tokens, c.patchSize, c.inChans, c.imageHeight, c.imageWidth].contains(where: { $0 <= 0 }) {
            return bad("config", "non-positive dimension in \(c)")
        }
        if c.embedDim % c.heads != 0 { return bad("config", "embedDim \(c.embedDim) not divisible by heads \(c.heads)") }
        if c.imageHeight % c.patchSize != 0 || c.imageWidth % c.patchSize != 0 {
            return bad("config", "image \(c.imageHeight)×\(c.imageWidth) not divisible by patch \(c.patchSize)")
        }
        let (patches, pOverflow) = (c.imageHeight / c.patchSize).multipliedReportingOverflow(by: c.imageWidth / c.patchSize)
        if pOverflow || c.tokens != patches + 1 { return bad("config", "tokens \(c.tokens) != patches (H/p)·(W/p) + 1") }
        // Scratch: the largest buffers are heads·T² attention scores and T·max(hidden) activations.
        let widest = max(3 * c.embedDim, c.mlpHidden, c.expertHidden, c.experts, c.inChans * c.patchSize * c.patchSize)
        guard let scores = prod(c.heads, c.tokens, c.tokens), let acts = prod(c.tokens, widest),
              scores <= 1 << 28, acts <= 1 << 28 else {
            return bad("config", "tokens \(c.tokens) × width \(widest) too large for the float reference")
        }
        if !(c.layerNormEps > 0) || !c.layerNormEps.isFinite { return bad("config", "layerNormEps \(c.layerNormEps) must be positive") }
        func prod(_ xs: Int...) -> Int? {
            var r = 1
            for x in xs { let (p, o) = r.multipliedReportingOverflow(by: x); if o || p > 1 << 40 { return nil }; r = p }
            return r
        }
        func check(_ item: String, _ count: Int, _ dims: Int...) -> MoepackError? {
            var r = 1
            for x in dims {
                let (p, o) = r.multipliedReportingOverflow(by: x)
                if o || p > 1 << 40 { return bad(item, "expected size \(dims) overflows") }
                r = p
            }
            return count == r ? nil : bad(item, "\(count) values, expected \(r) (shape \(shapeString(dims)))")
        }
        let D = c.embedDim
        if w.blocks.count != c.depth { return bad("blocks", "\(w.blocks.count) blocks, config depth \(c.depth)") }
        if let e = check("patchEmbedWeight", w.patchEmbedWeight.count, D, c.inChans, c.patchSize, c.patchSize) { return e }
        if let e = check("patchEmbedBias", w.patchEmbedBias.count, D) { return e }
        if let e = check("posEmbed", w.posEmbed.count, c.tokens, D) { return e }
        for (i, b) in w.blocks.enumerated() {
            let pre = "blocks[\(i)]."
            let pairs: [(String, Int, [Int])] = [
                ("norm1Weight", b.norm1Weight.count, [D]), ("norm1Bias", b.norm1Bias.count, [D]),
                ("norm2Weight", b.norm2Weight.count, [D]), ("norm2Bias", b.norm2Bias.count, [D]),
                ("qWeight", b.qWeight.count, [D, D]), ("kWeight", b.kWeight.count, [D, D]),
                ("vWeight", b.vWeight.count, [D, D]), ("projWeight", b.projWeight.count, [D, D]),
                ("qBias", b.qBias.count, [D]), ("kBias", b.kBias.count, [D]),
                ("vBias", b.vBias.count, [D]), ("projBias", b.projBias.count, [D]),
            ]
            for (n, cnt, s) in pairs {
                if let e = checkShape(pre + n, cnt, s) { return e }
            }
            switch b.mlp {
            case let .dense(fc1Weight, fc1Bias, fc2Weight, fc2Bias):
                if c.moeBlocks.contains(i) { return bad(pre + "mlp", "dense MLP but config lists block \(i) as MoE") }
                if c.mlpHidden <= 0 { return bad("config", "mlpHidden \(c.mlpHidden) must be positive") }
                if let e = check(pre + "fc1Weight", fc1Weight.count, c.mlpHidden, D) { return e }
                if let e = check(pre + "fc1Bias", fc1Bias.count, c.mlpHidden) { return e }
                if let e = check(pre + "fc2Weight", fc2Weight.count, D, c.mlpHidden) { return e }
                if let e = check(pre + "fc2Bias", fc2Bias.count, D) { return e }
            case let .moe(gates, w1, b1, w2, b2):
                if !c.moeBlocks.contains(i) { return bad(pre + "mlp", "MoE MLP but config lists block \(i) as dense") }
                if c.experts <= 0 || c.topK <= 0 || c.topK > c.experts {
                    return bad("config", "topK \(c.topK) must be in 1...experts (\(c.experts))")
                }
                if c.expertHidden <= 0 { return bad("config", "expertHidden \(c.expertHidden) must be positive") }
                if w.task < 0 || w.task >= gates.count {
                    return bad(pre + "gates", "task \(w.task) out of range (\(gates.count) gates)")
                }
                if let e = check(pre + "gates[\(w.task)]", gates[w.task].count, c.experts, D) { return e }
                if let e = check(pre + "w1", w1.count, c.experts, c.expertHidden, D) { return e }
                if let e = check(pre + "b1", b1.count, c.experts, c.expertHidden) { return e }
                if let e = check(pre + "w2", w2.count, c.experts, D, c.expertHidden) { return e }
                if let e = check(pre + "b2", b2.count, c.experts, D) { return e }
            }
        }
        return nil

        func checkShape(_ item: String, _ count: Int, _ s: [Int]) -> MoepackError? {
            let r = s.reduce(1, *)  // D and D·D: D·D·tokens already checked not to overflow
            return count == r ? nil : bad(item, "\(count) values, expected \(r) (shape \(shapeString(s)))")
        }
    }

    /// Runs the backbone on one frame.
    ///
    /// - Parameters:
    ///   - pixels: [inChans, H, W] row-major, values byte/256 (the kernel's `ap_ufixed<8,0>` input).
    ///   - recordBlocks: also return x after every block (`ForwardResult.blockOutputs`).
    /// - Returns: output [tokens, D], optional per-block outputs, routing of every MoE block.
    /// - Throws: `MoepackError` (.mismatch) when the weights are inconsistent with their config or
    ///   `pixels` has the wrong length.
    public func forward(pixels: [Float], recordBlocks: Bool = false) throws -> ForwardResult {
        if let validationError { throw validationError }
        let c = weights.config
        let expected = c.inChans * c.imageHeight * c.imageWidth
        guard pixels.count == expected else {
            throw MoepackError(.mismatch, item: "pixels",
                               "\(pixels.count) values, expected \(expected) ([\(c.inChans),\(c.imageHeight),\(c.imageWidth)])")
        }
        let s = Scratch(config: c)
        pixels.withUnsafeBufferPointer { patchEmbed(pixels: $0.baseAddress!, s: s) }

        var blockOutputs: [[Float]] = []
        var routing: [MoERouting] = []
        let T = c.tokens, D = c.embedDim
        for (i, block) in weights.blocks.enumerated() {
            attention(block: i, weights: block, s: s)
            switch block.mlp {
            case let .dense(fc1Weight, fc1Bias, fc2Weight, fc2Bias):
                denseMLP(fc1Weight, fc1Bias, fc2Weight, fc2Bias, s: s)
            case let .moe(gates, w1, b1, w2, b2):
                routing.append(moe(block: i, gate: gates[weights.task], w1: w1, b1: b1, w2: w2, b2: b2, s: s))
            }
            if recordBlocks { blockOutputs.append(Array(UnsafeBufferPointer(start: s.x, count: T * D))) }
        }
        let output = Array(UnsafeBufferPointer(start: s.x, count: T * D))
        return ForwardResult(output: output, blockOutputs: blockOutputs, routing: routing)
    }

    // MARK: - Stages

    private func patchEmbed(pixels: UnsafePointer<Float>, s: Scratch) {
        let c = weights.config
        let D = c.embedDim, p = c.patchSize, C = c.inChans, H = c.imageHeight, W = c.imageWidth
        let cols = W / p, P = c.patches, K = C * p * p
        // im2col: patches [P, C·p·p], element (c, i, j) of patch n = pixel[c, pr·p + i, pc·p + j].
        for n in 0..<P {
            let pr = n / cols, pc = n % cols
            var dst = s.patches + n * K
            for ch in 0..<C {
                for i in 0..<p {
                    let src = pixels + (ch * H + pr * p + i) * W + pc * p
                    dst.update(from: src, count: p)
                    dst += p
                }
            }
        }
        weights.posEmbed.withUnsafeBufferPointer { pos in
            let pos = pos.baseAddress!
            s.x.update(from: pos, count: c.tokens * D)
            weights.patchEmbedBias.withUnsafeBufferPointer { bias in
                for n in 0..<P {
                    let row = s.x + (1 + n) * D
                    for d in 0..<D { row[d] += bias[d] }
                }
            }
        }
        weights.patchEmbedWeight.withUnsafeBufferPointer { wt in
            BLAS.gemm(transB: true, m: P, n: D, k: K, a: s.patches, lda: K, b: wt.baseAddress!, ldb: K,
                      beta: 1, c: s.x + D, ldc: D)
        }
    }

    private func attention(block i: Int, weights b: BlockWeights, s: Scratch) {
        let c = weights.config
        let T = c.tokens, D = c.embedDim, hd = c.headDim
        layerNorm(s.x, rows: T, dim: D, weight: b.norm1Weight, bias: b.norm1Bias, eps: c.layerNormEps, out: s.h)
        qkvWeights[i].withUnsafeBufferPointer { w in
            qkvBiases[i].withUnsafeBufferPointer { bias in
                BLAS.linear(x: s.h, m: T, inDim: D, weight: w.baseAddress!, bias: bias.baseAddress!,
                            outDim: 3 * D, y: s.qkv)
            }
        }
        let ld = 3 * D
        for head in 0..<c.heads {
            let q = s.qkv + head * hd, k = s.qkv + D + head * hd, v = s.qkv + 2 * D + head * hd
            let scores = s.scores + head * T * T
            BLAS.gemm(transB: true, m: T, n: T, k: hd, alpha: c.attentionScale, a: q, lda: ld, b: k, ldb: ld,
                      beta: 0, c: scores, ldc: T)
            softmaxRows(scores, rows: T, cols: T)
            BLAS.gemm(m: T, n: hd, k: T, a: scores, lda: T, b: v, ldb: ld, beta: 0,
                      c: s.attnOut + head * hd, ldc: D)
        }
        b.projWeight.withUnsafeBufferPointer { w in
            b.projBias.withUnsafeBufferPointer { bias in
                BLAS.linear(x: s.attnOut, m: T, inDim: D, weight: w.baseAddress!, bias: bias.baseAddress!,
                            outDim: D, y: s.x, accumulate: true)
            }
        }
        layerNorm(s.x, rows: T, dim: D, weight: b.norm2Weight, bias: b.norm2Bias, eps: c.layerNormEps, out: s.h)
    }

    private func denseMLP(_ fc1W: [Float], _ fc1B: [Float], _ fc2W: [Float], _ fc2B: [Float], s: Scratch) {
        let c = weights.config
        let T = c.tokens, D = c.embedDim, Hm = c.mlpHidden
        fc1W.withUnsafeBufferPointer { w in
            fc1B.withUnsafeBufferPointer { b in
                BLAS.linear(x: s.h, m: T, inDim: D, weight: w.baseAddress!, bias: b.baseAddress!, outDim: Hm, y: s.hidden)
            }
        }
        geluInPlace(s.hidden, count: T * Hm)
        fc2W.withUnsafeBufferPointer { w in
            fc2B.withUnsafeBufferPointer { b in
                BLAS.linear(x: s.hidden, m: T, inDim: Hm, weight: w.baseAddress!, bias: b.baseAddress!, outDim: D,
                            y: s.x, accumulate: true)
            }
        }
    }

    private func moe(block: Int, gate: [Float], w1: [Float], b1: [Float], w2: [Float], b2: [Float],
                     s: Scratch) -> MoERouting {
        let c = weights.config
        let T = c.tokens, D = c.embedDim, E = c.experts, He = c.expertHidden, K = c.topK
        gate.withUnsafeBufferPointer { g in
            BLAS.linear(x: s.h, m: T, inDim: D, weight: g.baseAddress!, bias: nil, outDim: E, y: s.logits)
        }
        softmaxRows(s.logits, rows: T, cols: E)
        let probs = UnsafeBufferPointer(start: s.logits, count: T * E)
        let (top, topW, queues, margins) = route(probs: probs, tokens: T, experts: E, topK: K)

        s.mlp.update(repeating: 0, count: T * D)
        w1.withUnsafeBufferPointer { w1 in b1.withUnsafeBufferPointer { b1 in
        w2.withUnsafeBufferPointer { w2 in b2.withUnsafeBufferPointer { b2 in
            for e in 0..<E {
                let queue = queues[e]
                let n = queue.count
                if n == 0 { continue }
                for (r, t) in queue.enumerated() {
                    (s.gathered + r * D).update(from: s.h + Int(t) * D, count: D)
                }
                BLAS.linear(x: s.gathered, m: n, inDim: D, weight: w1.baseAddress! + e * He * D,
                            bias: b1.baseAddress! + e * He, outDim: He, y: s.hidden)
                geluInPlace(s.hidden, count: n * He)
                BLAS.linear(x: s.hidden, m: n, inDim: He, weight: w2.baseAddress! + e * D * He,
                            bias: b2.baseAddress! + e * D, outDim: D, y: s.expertOut)
                for (r, t) in queue.enumerated() {
                    let pw = probs[Int(t) * E + e]
                    let dst = s.mlp + Int(t) * D, src = s.expertOut + r * D
                    for d in 0..<D { dst[d] += pw * src[d] }
                }
            }
        }}}}
        for j in 0..<T * D { s.x[j] += s.mlp[j] }
        return MoERouting(block: block, topExperts: top, topWeights: topW, queues: queues, margins: margins)
    }
}

// MARK: - Routing

/// Top-k selection over gate probabilities [tokens, experts] and the kernel's per-expert queues.
///
/// For each token, k passes over experts in ascending index; each pass picks the largest not yet
/// chosen probability by strict `>` comparison, so equal values keep the lower index (Edge-MoE
/// `top_k` and `torch.topk` on CPU agree on this for distinct values). Queues list, per expert,
/// the tokens that chose it, in token order.
func route(probs: UnsafeBufferPointer<Float>, tokens T: Int, experts E: Int, topK K: Int)
    -> (top: [Int32], weights: [Float], queues: [[Int32]], margins: [Float]) {
    var top = [Int32](repeating: 0, count: T * K)
    var margins = [Float](repeating: 0, count: T)
    var topW = [Float](repeating: 0, count: T * K)
    var queues = (0..<E).map { _ in [Int32]().reserving(T) }
    var chosen = [Bool](repeating: false, count: E)
    for t in 0..<T {
        let row = t * E
        for e in 0..<E { chosen[e] = false }
        for k in 0..<K {
            var best = -1
            for e in 0..<E where !chosen[e] {
                if best < 0 || probs[row + e] > probs[row + best] { best = e }
            }
            chosen[best] = true
            top[t * K + k] = Int32(best)
            topW[t * K + k] = probs[row + best]
        }
        for e in 0..<E where chosen[e] { queues[e].append(Int32(t)) }
        var bestLeft: Float = 0
        for e in 0..<E where !chosen[e] { bestLeft = max(bestLeft, probs[row + e]) }
        margins[t] = K > 0 && K < E ? topW[t * K + K - 1] - bestLeft : 0
    }
    return (top, topW, queues, margins)
}

private extension Array {
    func reserving(_ n: Int) -> Array { var a = self; a.reserveCapacity(n); return a }
}

// MARK: - Element-wise kernels

/// LayerNorm over the last axis of x [rows, dim]: (x − mean)/√(var + eps)·weight + bias with the
/// biased variance (PyTorch `nn.LayerNorm`). `out` may not alias `x`.
func layerNorm(_ x: UnsafePointer<Float>, rows: Int, dim: Int, weight: [Float], bias: [Float], eps: Float,
               out: UnsafeMutablePointer<Float>) {
    weight.withUnsafeBufferPointer { w in
        bias.withUnsafeBufferPointer { b in
            let w = w.baseAddress!, b = b.baseAddress!
            let inv = 1 / Float(dim)
            for r in 0..<rows {
                let row = x + r * dim, o = out + r * dim
                let mean = vectorSum(row, dim) * inv
                var acc = SIMD8<Float>(repeating: 0)
                var j = 0
                let m8 = SIMD8<Float>(repeating: mean)
                while j + 8 <= dim {
                    let d = loadSIMD8(row + j) - m8
                    acc += d * d
                    j += 8
                }
                var tail: Float = 0
                while j < dim { let d = row[j] - mean; tail += d * d; j += 1 }
                let variance = (acc.sum() + tail) * inv
                let rstd = 1 / (variance + eps).squareRoot()
                for j in 0..<dim { o[j] = (row[j] - mean) * rstd * w[j] + b[j] }
            }
        }
    }
}

@inline(__always)
func loadSIMD8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

/// Sum of n floats with 8 parallel lanes.
@inline(__always)
func vectorSum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>(repeating: 0)
    var j = 0
    while j + 8 <= n { acc += loadSIMD8(p + j); j += 8 }
    var tail: Float = 0
    while j < n { tail += p[j]; j += 1 }
    return acc.sum() + tail
}

/// Exact GELU in place: 0.5·x·(1 + erf(x/√2)) (PyTorch `nn.GELU(approximate='none')`).
///
/// erf is vectorised (see `erf16`): for |x| ≥ 0.5 the formula of PyTorch's vectorised CPU kernel
/// (`Vectorized<float>::erf`), Abramowitz & Stegun 7.1.26, erf(x) = sign(x)·(1 − t·P(t)·e^(−x²)),
/// t = 1/(1 + 0.3275911·|x|), absolute error ≤ 1.5e-7 (≤ 3e-7 measured in float32 arithmetic);
/// a Maclaurin series below 0.5.
func geluInPlace(_ p: UnsafeMutablePointer<Float>, count: Int) {
    var j = 0
    while j + 16 <= count {
        let x = UnsafeRawPointer(p + j).loadUnaligned(as: SIMD16<Float>.self)
        UnsafeMutableRawPointer(p + j).storeBytes(of: gelu16(x), as: SIMD16<Float>.self)
        j += 16
    }
    if j < count {
        var tail = SIMD16<Float>(repeating: 0)
        for k in 0..<(count - j) { tail[k] = p[j + k] }
        let y = gelu16(tail)
        for k in 0..<(count - j) { p[j + k] = y[k] }
    }
}

@inline(__always)
func gelu16(_ x: SIMD16<Float>) -> SIMD16<Float> {
    0.5 * x * (1 + erf16(x * 0.70710678118654752440))
}

/// erf on 16 lanes: A&S 7.1.26 for |x| ≥ 0.5 (|error| ≤ 1.5e-7); for |x| < 0.5, where 1 − t·P·e^(−x²)
/// cancels in float, the Maclaurin series 2/√π·Σₖ (−1)ᵏ x^(2k+1)/(k!(2k+1)) up to k = 6
/// (truncation < 2e-8).
@inline(__always)
func erf16(_ x: SIMD16<Float>) -> SIMD16<Float> {
    let ax = unsafeBitCast(unsafeBitCast(x, to: SIMD16<UInt32>.self) & 0x7FFF_FFFF, to: SIMD16<Float>.self)
    let t = 1 / (1 + 0.3275911 * ax)
    var poly = SIMD16<Float>(repeating: 1.061405429)
    poly = poly * t + -1.453152027
    poly = poly * t + 1.421413741
    poly = poly * t + -0.284496736
    poly = poly * t + 0.254829592
    let y = 1 - poly * t * exp16(-(ax * ax))
    let large = y.replacing(with: -y, where: x .< 0)
    let x2 = x * x
    var s = SIMD16<Float>(repeating: 0.00012055332981789664)
    s = s * x2 + -0.0008548327023450852
    s = s * x2 + 0.005223977625442188
    s = s * x2 + -0.026866170645131252
    s = s * x2 + 0.11283791670955126
    s = s * x2 + -0.37612638903183754
    s = s * x2 + 1.1283791670955126
    return large.replacing(with: s * x, where: ax .< 0.5)
}

/// e^x on 16 lanes: Cephes `expf` polynomial (degree 5) after range reduction x = n·ln 2 + r with
/// n = round(x/ln 2) (ln 2 split in two parts), scaled by 2ⁿ through the exponent bits; relative
/// error about 2 ulp. x < −87.3 gives 0, x > 88.3 is clamped. Rounding uses the 1.5·2²³ trick so the
/// loop stays in vector registers.
@inline(__always)
func exp16(_ x: SIMD16<Float>) -> SIMD16<Float> {
    var xc = x.replacing(with: -87.3, where: x .< -87.3)
    xc = xc.replacing(with: 88.3, where: xc .> 88.3)
    let magic: Float = 12_582_912  // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits
    let shifted = xc * 1.44269504088896341 + magic
    let fx = shifted - magic
    var r = xc - fx * 0.693359375
    r = r - fx * -2.12194440e-4
    let z = r * r
    var y = SIMD16<Float>(repeating: 1.9875691500e-4)
    y = y * r + 1.3981999507e-3
    y = y * r + 8.3334519073e-3
    y = y * r + 4.1665795894e-2
    y = y * r + 1.6666665459e-1
    y = y * r + 5.0000001201e-1
    y = y * z + r + 1
    let n = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- 0x4B40_0000
    let scale = unsafeBitCast((n &+ 127) &<< 23, to: SIMD16<Float>.self)
    return (y * scale).replacing(with: 0, where: x .< -87.3)
}

/// Row softmax in place over x [rows, cols]: exp(x − max) / Σ exp(x − max) (exp via `exp16`).
func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
    guard cols > 0 else { return }
    for r in 0..<rows {
        let row = x + r * cols
        var m = row[0]
        for j in 1..<cols where row[j] > m { m = row[j] }
        let m16 = SIMD16<Float>(repeating: m)
        var acc = SIMD16<Float>(repeating: 0)
        var j = 0
        while j + 16 <= cols {
            let e = exp16(UnsafeRawPointer(row + j).loadUnaligned(as: SIMD16<Float>.self) - m16)
            UnsafeMutableRawPointer(row + j).storeBytes(of: e, as: SIMD16<Float>.self)
            acc += e
            j += 16
        }
        var sum = acc.sum()
        if j < cols {
            var tail = SIMD16<Float>(repeating: -.infinity)
            for k in 0..<(cols - j) { tail[k] = row[j + k] }
            let e = exp16(tail - m16)
            for k in 0..<(cols - j) { row[j + k] = e[k]; sum += e[k] }
        }
        let inv = 1 / sum
        for j in 0..<cols { row[j] *= inv }
    }
}

// MARK: - Scratch

/// Per-forward scratch buffers, allocated once and reused by every block.
final class Scratch {
    let x, h, qkv, scores, attnOut, hidden, gathered, expertOut, mlp, logits, patches: UnsafeMutablePointer<Float>
    private let all: [UnsafeMutablePointer<Float>]

    init(config c: M3ViTConfig) {
        let T = c.tokens, D = c.embedDim
        func alloc(_ n: Int) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            p.initialize(repeating: 0, count: max(n, 1))
            return p
        }
        x = alloc(T * D); h = alloc(T * D); qkv = alloc(T * 3 * D)
        scores = alloc(c.heads * T * T); attnOut = alloc(T * D)
        hidden = alloc(T * max(c.mlpHidden, c.expertHidden)); gathered = alloc(T * D)
        expertOut = alloc(T * D); mlp = alloc(T * D); logits = alloc(T * max(c.experts, 1))
        patches = alloc(c.patches * c.inChans * c.patchSize * c.patchSize)
        all = [x, h, qkv, scores, attnOut, hidden, gathered, expertOut, mlp, logits, patches]
    }

    deinit { for p in all { p.deallocate() } }
}
