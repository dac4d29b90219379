import CMoepackKernels
import Foundation
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
/// - GELU is the exact one, 0.5·x·(1 + erf(x/√2)) (PyTorch `nn.GELU()` default), erf with |error|
///   ≤ 1.5e-7 (`moepack_erf_f32`, the formula of PyTorch's vectorised CPU erf).
/// - MoE tokens are processed as the kernel schedules them: experts in ascending index, each
///   expert's queue of tokens in token order, contributions accumulated in that order.
///
/// Linear layers (patch embedding, QKV, projection, MLP, gate, experts) run on weights packed once
/// when the backbone is built (`PackedLinear`, moepack's own float32 GEMM with the bias, GELU and the
/// experts' weighted scatter in its epilogue); attention runs per frame and head in one C call
/// (`moepack_attention_f32`: K and V packed like weights, Q·Kᵀ and A·V on the same tiles, the
/// softmax between them in cache). Frames can run in batches (`forward(batch:)`, each weight read
/// once per batch); a frame's result does not depend on which frames run before, after or beside
/// it, in a batch or on other threads. The object can be shared between threads; each `forward`
/// call holds its own scratch (kept for later calls) and reuses it across blocks.
public final class FloatBackbone: Sendable {
    public let weights: BackboneWeights
    /// Packed linear layers (empty when `validationError` is set: nothing is read from bad weights).
    private let packed: PackedBackbone?
    /// First inconsistency found in `weights` (thrown by `forward`).
    private let validationError: MoepackError?
    /// Scratch kept between `forward` calls (a fresh one per batch cost a tenth of the time in page
    /// faults and zeroing).
    private let scratchPool = ScratchPool()
    /// Form of the C kernels (GEMM, attention).
    private let isa: moepack_isa

    /// Checks `weights` (a problem is thrown by `forward`) and packs the linear layers.
    public convenience init(weights: BackboneWeights) {
        self.init(weights: weights, isa: moepack_kernels_isa())
    }

    /// The same with the GEMM form chosen by the caller (tests compare every form with PyTorch).
    init(weights: BackboneWeights, isa: moepack_isa) {
        self.weights = weights
        self.isa = isa
        self.validationError = FloatBackbone.validate(weights)
        self.packed = validationError == nil ? PackedBackbone(weights, isa: isa) : nil
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
        try forward(batch: [pixels], recordBlocks: recordBlocks)[0]
    }

    /// Runs the backbone on several frames together: the same results, bit for bit, as one
    /// `forward(pixels:)` per frame (every step works on token rows independently, attention per
    /// frame), but each weight matrix is read once per batch instead of once per frame — the MoE
    /// experts (16 × 2 matrices per block, ~16 token rows each per frame) are otherwise limited by
    /// memory bandwidth.
    ///
    /// - Parameters:
    ///   - batch: frames, each [inChans, H, W] row-major, values byte/256.
    ///   - recordBlocks: also return x after every block.
    /// - Returns: one `ForwardResult` per frame, in order.
    /// - Throws: `MoepackError` (.mismatch) when the weights are inconsistent with their config or
    ///   a frame has the wrong length (item `pixels`, or `pixels[i]` in a batch of several).
    public func forward(batch: [[Float]], recordBlocks: Bool = false) throws -> [ForwardResult] {
        if let validationError { throw validationError }
        let c = weights.config
        let expected = c.inChans * c.imageHeight * c.imageWidth
        for (i, pixels) in batch.enumerated() where pixels.count != expected {
            throw MoepackError(.mismatch, item: batch.count == 1 ? "pixels" : "pixels[\(i)]",
                               "\(pixels.count) values, expected \(expected) ([\(c.inChans),\(c.imageHeight),\(c.imageWidth)])")
        }
        if batch.isEmpty { return [] }
        let p = packed!  // set whenever validationError is nil
        let B = batch.count, T = c.tokens, D = c.embedDim
        let s = scratchPool.take(config: c, frames: B)
        defer { scratchPool.give(s) }
        for (f, pixels) in batch.enumerated() {
            pixels.withUnsafeBufferPointer { patchEmbed(pixels: $0.baseAddress!, frame: f, layer: p.patchEmbed, s: s) }
        }

        var blockOutputs = [[[Float]]](repeating: [], count: B)
        var routing = [[MoERouting]](repeating: [], count: B)
        for (i, block) in weights.blocks.enumerated() {
            let layers = p.blocks[i]
            attention(weights: block, layers: layers, s: s)
            switch layers.mlp {
            case let .dense(fc1, fc2):
                denseMLP(fc1: fc1, fc2: fc2, s: s)
            case let .moe(gate, w1, w2):
                for (f, r) in moe(block: i, gate: gate, w1: w1, w2: w2, s: s).enumerated() { routing[f].append(r) }
            }
            if recordBlocks {
                for f in 0..<B { blockOutputs[f].append(Array(UnsafeBufferPointer(start: s.x + f * T * D, count: T * D))) }
            }
        }
        return (0..<B).map { f in
            ForwardResult(output: Array(UnsafeBufferPointer(start: s.x + f * T * D, count: T * D)),
                          blockOutputs: blockOutputs[f], routing: routing[f])
        }
    }

    // MARK: - Stages

    /// Writes frame `frame`'s tokens, x[frame·T ..< (frame+1)·T].
    private func patchEmbed(pixels: UnsafePointer<Float>, frame: Int, layer: PackedLinear, s: Scratch) {
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
        let x = s.x + frame * c.tokens * D
        weights.posEmbed.withUnsafeBufferPointer { x.update(from: $0.baseAddress!, count: c.tokens * D) }
        // x[1+n] = posEmbed[1+n] + (conv(n) + bias)
        layer.apply(rows: P, x: s.patches, .accumulate, y: x + D)
    }

    private func attention(weights b: BlockWeights, layers: PackedBlock, s: Scratch) {
        let c = weights.config
        let T = c.tokens, D = c.embedDim, hd = c.headDim, rows = s.frames * T
        layerNorm(s.x, rows: rows, dim: D, weight: b.norm1Weight, bias: b.norm1Bias, eps: c.layerNormEps, out: s.h)
        layers.qkv.apply(rows: rows, x: s.h, .store, y: s.qkv)
        let ld = 3 * D
        for f in 0..<s.frames {
            let qkv = s.qkv + f * T * ld, attnOut = s.attnOut + f * T * D
            for head in 0..<c.heads {
                let q = qkv + head * hd, k = qkv + D + head * hd, v = qkv + 2 * D + head * hd
                moepack_attention_f32(isa, T, hd, c.attentionScale, q, k, v, ld, attnOut + head * hd, D, s.attention)
            }
        }
        layers.proj.apply(rows: rows, x: s.attnOut, .accumulate, y: s.x)
        layerNorm(s.x, rows: rows, dim: D, weight: b.norm2Weight, bias: b.norm2Bias, eps: c.layerNormEps, out: s.h)
    }

    private func denseMLP(fc1: PackedLinear, fc2: PackedLinear, s: Scratch) {
        let rows = s.frames * weights.config.tokens
        fc1.apply(rows: rows, x: s.h, .gelu, y: s.hidden)
        fc2.apply(rows: rows, x: s.hidden, .accumulate, y: s.x)
    }

    /// Routes every frame's tokens, then runs each expert once on the tokens of all frames routed
    /// to it (frame by frame, each frame's queue in token order). Returns each frame's routing.
    private func moe(block: Int, gate: PackedLinear, w1: [PackedLinear], w2: [PackedLinear], s: Scratch) -> [MoERouting] {
        let c = weights.config
        let T = c.tokens, D = c.embedDim, E = c.experts, K = c.topK, rows = s.frames * T
        gate.apply(rows: rows, x: s.h, .store, y: s.logits)
        softmaxRows(s.logits, rows: rows, cols: E)
        var routing: [MoERouting] = []
        var rowsOf = (0..<E).map { _ in [Int32]().reserving(rows) }
        for f in 0..<s.frames {
            let probs = UnsafeBufferPointer(start: s.logits + f * T * E, count: T * E)
            let (top, topW, queues, margins) = route(probs: probs, tokens: T, experts: E, topK: K)
            routing.append(MoERouting(block: block, topExperts: top, topWeights: topW, queues: queues, margins: margins))
            for e in 0..<E { rowsOf[e].append(contentsOf: queues[e].map { Int32(f * T) + $0 }) }
        }

        s.mlp.update(repeating: 0, count: rows * D)
        for e in 0..<E where !rowsOf[e].isEmpty {
            let queue = rowsOf[e]
            for (r, t) in queue.enumerated() { s.rowScale[r] = s.logits[Int(t) * E + e] }
            queue.withUnsafeBufferPointer { q in
                // hidden[r] = GELU(w1·h[queue[r]] + b1); mlp[queue[r]] += p[queue[r], e]·(w2·hidden[r] + b2)
                w1[e].apply(rows: q.count, x: s.h, xRows: q.baseAddress, .gelu, y: s.hidden)
                w2[e].apply(rows: q.count, x: s.hidden, .accumulateScaled, rowScale: s.rowScale,
                            y: s.mlp, yRows: q.baseAddress)
            }
        }
        for j in 0..<rows * D { s.x[j] += s.mlp[j] }
        return routing
    }
}

/// The backbone's linear layers packed once (`PackedLinear`), for one task's gates.
struct PackedBackbone: Sendable {
    let patchEmbed: PackedLinear
    let blocks: [PackedBlock]

    /// `w` must have passed `FloatBackbone.validate`.
    init(_ w: BackboneWeights, isa: moepack_isa) {
        let c = w.config
        let D = c.embedDim
        patchEmbed = PackedLinear(weight: w.patchEmbedWeight, bias: w.patchEmbedBias, outDim: D,
                                  inDim: c.inChans * c.patchSize * c.patchSize, isa: isa)
        blocks = w.blocks.map { b in
            let mlp: PackedBlock.MLP
            switch b.mlp {
            case let .dense(fc1Weight, fc1Bias, fc2Weight, fc2Bias):
                mlp = .dense(fc1: PackedLinear(weight: fc1Weight, bias: fc1Bias, outDim: c.mlpHidden, inDim: D, isa: isa),
                             fc2: PackedLinear(weight: fc2Weight, bias: fc2Bias, outDim: D, inDim: c.mlpHidden, isa: isa))
            case let .moe(gates, w1, b1, w2, b2):
                let He = c.expertHidden
                mlp = .moe(gate: PackedLinear(weight: gates[w.task], bias: nil, outDim: c.experts, inDim: D, isa: isa),
                           w1: (0..<c.experts).map {
                               PackedLinear(weight: w1, offset: $0 * He * D, bias: b1, biasOffset: $0 * He,
                                            outDim: He, inDim: D, isa: isa)
                           },
                           w2: (0..<c.experts).map {
                               PackedLinear(weight: w2, offset: $0 * D * He, bias: b2, biasOffset: $0 * D,
                                            outDim: D, inDim: He, isa: isa)
                           })
            }
            // Q, K, V stacked [3D, D] with biases [3D]: one product for all three.
            return PackedBlock(qkv: PackedLinear(weight: b.qWeight + b.kWeight + b.vWeight, bias: b.qBias + b.kBias + b.vBias,
                                                 outDim: 3 * D, inDim: D, isa: isa),
                               proj: PackedLinear(weight: b.projWeight, bias: b.projBias, outDim: D, inDim: D, isa: isa),
                               mlp: mlp)
        }
    }
}

/// One block's packed layers.
struct PackedBlock: Sendable {
    enum MLP: Sendable {
        case dense(fc1: PackedLinear, fc2: PackedLinear)
        /// The gate of the backbone's task and each expert's two layers.
        case moe(gate: PackedLinear, w1: [PackedLinear], w2: [PackedLinear])
    }
    let qkv: PackedLinear
    let proj: PackedLinear
    let mlp: MLP
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
        // Row maximum, 16 lanes at a time (the maximum of finite values does not depend on the order).
        var m = row[0]
        var mv = SIMD16<Float>(repeating: m)
        var i = 0
        while i + 16 <= cols {
            let v = UnsafeRawPointer(row + i).loadUnaligned(as: SIMD16<Float>.self)
            mv.replace(with: v, where: v .> mv)
            i += 16
        }
        for k in 0..<16 where mv[k] > m { m = mv[k] }
        while i < cols { if row[i] > m { m = row[i] }; i += 1 }
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

/// Per-forward scratch buffers, allocated once and reused by every block (and by later `forward`
/// calls through `ScratchPool`). Every stage writes what it reads later, so nothing left from an
/// earlier call reaches a result.
final class Scratch {
    /// Frames in the current batch (≤ `capacity`); token rows are frame-major, [frames·tokens, ·].
    var frames: Int
    /// Frames the buffers hold.
    let capacity: Int
    /// attention: one head's work area (`moepack_attention_work_count`: packed K and V, [T, T]
    /// scores); patches: one frame's im2col; the rest for all frames.
    let x, h, qkv, attention, attnOut, hidden, mlp, logits, patches, rowScale: UnsafeMutablePointer<Float>
    private let all: [UnsafeMutablePointer<Float>]

    init(config c: M3ViTConfig, frames: Int = 1) {
        self.frames = frames
        self.capacity = frames
        let T = frames * c.tokens, D = c.embedDim
        func alloc(_ n: Int) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            p.initialize(repeating: 0, count: max(n, 1))
            return p
        }
        x = alloc(T * D); h = alloc(T * D); qkv = alloc(T * 3 * D)
        attention = alloc(moepack_attention_work_count(c.tokens, c.headDim)); attnOut = alloc(T * D)
        hidden = alloc(T * max(c.mlpHidden, c.expertHidden))
        mlp = alloc(T * D); logits = alloc(T * max(c.experts, 1)); rowScale = alloc(T)
        patches = alloc(c.patches * c.inChans * c.patchSize * c.patchSize)
        all = [x, h, qkv, attention, attnOut, hidden, mlp, logits, patches, rowScale]
    }

    deinit { for p in all { p.deallocate() } }
}

/// Scratch buffers handed from one `forward` call to the next (each call holds its own while it
/// runs; concurrent calls get different ones). Keeps at most `limit` idle.
final class ScratchPool: @unchecked Sendable {
    private let lock = NSLock()
    private var idle: [Scratch] = []
    private let limit = 8

    /// A scratch for `frames` frames: an idle one large enough, else a new one.
    func take(config: M3ViTConfig, frames: Int) -> Scratch {
        lock.lock()
        let found = idle.firstIndex { $0.capacity >= frames }.map { idle.remove(at: $0) }
        lock.unlock()
        let s = found ?? Scratch(config: config, frames: frames)
        s.frames = frames
        return s
    }

    func give(_ s: Scratch) {
        lock.lock(); defer { lock.unlock() }
        if idle.count < limit { idle.append(s) }
    }
}
