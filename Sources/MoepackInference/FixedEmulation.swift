import MoepackCore
import MoepackModel
import MoepackFixedPoint
import CMoepackKernels

/// One kernel argument array as raw fixed-point integers, exactly as it sits in the packed DDR image.
///
/// `raw` holds the two's-complement codes of `type` (sign-extended for `ap_fixed`, zero-extended for
/// `ap_ufixed`) as Int32, in C order of `shape`. Value = raw · 2^−F with F = `type.fractionBits`.
/// Types wider than 32 bits do not fit and are refused by ``FixedBackbone/init(arrays:)``.
public struct RawArray: Sendable, Equatable {
    public var raw: [Int32]
    public var shape: [Int]
    /// The element type as the image's manifest declares it, quantization and overflow modes included.
    public var type: FixedType

    public init(raw: [Int32], shape: [Int], type: FixedType) {
        self.raw = raw; self.shape = shape; self.type = type
    }

    /// An `ap_fixed<width, width − fracBits>` (`ap_ufixed` when `signed` is false) with Vitis's
    /// default modes (AP_TRN, AP_WRAP).
    public init(raw: [Int32], shape: [Int], fracBits: Int, width: Int, signed: Bool = true) {
        self.init(raw: raw, shape: shape, type: FixedType(width: width, integerBits: width - fracBits, signed: signed))
    }

    public var fracBits: Int { type.fractionBits }
    public var width: Int { type.width }
    public var signed: Bool { type.signed }
}

/// The `ViT_compute` weight arguments of one task, keyed by the kernel argument names
/// (include/kernel.hpp), with the model configuration.
///
/// Expected keys and shapes, with the element types of the published build (each array's own
/// `type` is what the emulation uses; any type ``FixedEmulation/check(_:argument:)`` accepts)
/// (D = embedDim, T = tokens, p = patchSize, E = experts,
/// He = expertHidden, Hm = mlpHidden, nMoE = moeBlocks.count, nDense = denseBlocks.count; the first
/// axis of the moe_* / vit_* arrays may be longer than needed, as in the kernel's `max(n, 1)`):
/// - `patch_embed_weights` [D][inChans][p][p] ap_fixed<16,0>; `patch_embed_bias` [D] ap_fixed<16,5>
/// - `pos_embed` [T][D] ap_fixed<32,10> (row 0 already holds cls token + position 0)
/// - `attn_weights` [depth][4][D][D] ap_fixed<16,2> (Q, K, V, proj; [out][in]);
///   `attn_bias` [depth][4][D] ap_fixed<16,7>
/// - `moe_w_gate` [nMoE][E][D] ap_fixed<16,2> (this task's gate)
/// - `moe_weights_l1` [nMoE][E][He][D], `moe_weights_l2` [nMoE][E][D][He] ap_fixed<16,2>;
///   `moe_bias_l1` [nMoE][E][He], `moe_bias_l2` [nMoE][E][D] ap_fixed<16,5>
/// - `vit_weights_l1` [nDense][Hm][D], `vit_weights_l2` [nDense][D][Hm] ap_fixed<16,2>;
///   `vit_bias_l1` [nDense][Hm], `vit_bias_l2` [nDense][D] ap_fixed<16,5>
/// - `norm_weights` [depth][2][D] ap_fixed<16,5>; `norm_bias` [depth][2][D] ap_fixed<16,5>
///
/// MoE block `config.moeBlocks[i]` uses entry i of the moe_* arrays and dense block
/// `config.denseBlocks[i]` entry i of the vit_* arrays (for the published build, odd/even layers,
/// this is the kernel's `layer / 2`).
public struct KernelArrays: Sendable {
    public var config: M3ViTConfig
    public var arrays: [String: RawArray]

    public init(config: M3ViTConfig, arrays: [String: RawArray]) {
        self.config = config; self.arrays = arrays
    }
}

/// Number of fm_t wrap-arounds one unit produced in one forward pass.
///
/// A wrap is an assignment to an fm_t (ap_fixed<32,10>, AP_WRAP) whose exact value lies outside
/// [−512, 512): a product assigned to fm_t, a running-sum update, a conversion.
public struct OverflowCount: Sendable, Equatable {
    /// Transformer layer, or −1 for the patch embedding.
    public var layer: Int
    /// Unit: `patch_embed`, `pos_embed` (layer −1); `ln1`, `attn.q`, `attn.k`, `attn.v`, `attn.qk`,
    /// `attn.softmax`, `attn.av`, `attn.proj`, `add.attn`, `ln2`, `mlp.fc1`, `mlp.gelu`, `mlp.fc2`,
    /// `moe.gate`, `moe.softmax`, `moe.expert` (expert fc1, GELU, fc2), `moe.combine`, `add.mlp`.
    public var unit: String
    public var count: Int

    public init(layer: Int, unit: String, count: Int) { self.layer = layer; self.unit = unit; self.count = count }
}

/// Result of one fixed-point forward pass.
public struct FixedForwardResult: Sendable {
    /// Backbone output x after the last block, [tokens, D] row-major, fm_t dequantised (raw / 2^22).
    public var output: [Float]
    /// The same as fm_t raw values.
    public var outputRaw: [Int32]
    /// x after each block, [depth][tokens·D] dequantised; empty unless `recordBlocks` was requested.
    public var blockOutputs: [[Float]]
    /// Routing of every MoE block, in layer order.
    public var routing: [MoERouting]
    /// Units that wrapped at least once (units with no wrap are omitted), in datapath order.
    public var overflow: [OverflowCount]
}

/// Bit-accurate CPU emulation of the Edge-MoE HLS kernel's fixed-point datapath (`ViT_compute`,
/// sharc-lab/Edge-MoE src/*.cpp) on the raw integers of the packed DDR image.
///
/// Datapath (per image; fm_t = ap_fixed<32,10>, AP_TRN/AP_WRAP throughout; the weight and bias
/// types are each array's own, entering as described in ``FixedEmulation``; the shifts below are
/// the published types'):
/// - Patch embedding (conv.cpp): per patch and output dim, out = bias; per channel and patch row a
///   16-pixel sum `addend += pixel * weight` (pixel ap_ufixed<8,0> = byte/256, weight
///   ap_fixed<16,0>, products floored to 22 fraction bits) is added; then `+ pos_embed`. Token 0 is
///   `pos_embed[0]` (no computation). Patch tokens are in row-major patch order.
/// - LayerNorm (layernorm.cpp): mean and E[x²] accumulated in fm_t per block of 8 dims with the
///   factor fm_t(1/D) (floored) applied per term; variance = E[x²] − mean² + fm_t(eps);
///   rstd = fm_t(1) / hls::sqrt(variance); y = ((x − mean)·rstd)·γ + β, each step assigned to fm_t.
///   eps comes from `config.layerNormEps` (the kernel hard-codes 1e-6; both give fm_t raw 4).
/// - Linear (linear.cpp): out = bias; for each input in order, `addend = in * w` assigned to fm_t
///   (floored, wrapped), `out += addend`; GELU applied to fc1 outputs.
/// - Attention (attention.cpp): per head, score = Σ over blocks of 8 dims of
///   fm_t(fm_t(Σ q·k) · attn_scale) with attn_scale = fm_t(config.attentionScale) (the kernel
///   hard-codes 0.125, right for 64-wide heads); single-pass softmax per query in the kernel's key
///   order (keys q mod 4 … T−1, then 0 … q mod 4 − 1, ATTN_MATMUL_PARALLEL = 4), keeping a running
///   maximum ("bias") and sum; weight_k = fm_t(exp(fm_t(s_k − bias)) · recip(sum)); out = Σ_k
///   fm_t(v_k · weight_k).
/// - GELU (gelu.cpp): relu(x) − linearly interpolated correction table on |x| in 1/32 steps, exact
///   relu for |x| ≥ 5.5.
/// - MoE (moe.cpp): gate logits (no bias) in fm_t; running softmax over experts in index order;
///   top-k by strict comparison in expert order (ties keep the lower index); gate weight =
///   exp(fm_t(logit − max)) / sum; per-expert token queues in token order; experts in ascending
///   index each run fc1 → GELU → fc2 on their queue and add fm_t(y · weight) into a zeroed output.
/// - Residual adds (add.cpp) in fm_t.
///
/// `exp`, `sqrt` and reciprocal are emulated as the exact (floor) fixed-point result of the real
/// function (exp via the C library's double `exp`); Vitis `hls_math` fixed-point implementations
/// may differ from these in the last bits.
///
/// Immutable after `init`; `forward` may be called from several threads at once.
public final class FixedBackbone: Sendable {
    public let config: M3ViTConfig

    struct Layer: Sendable {
        let norm1Weight: [Int32], norm1Bias: [Int32], norm2Weight: [Int32], norm2Bias: [Int32]
        let q: FixedLinear, k: FixedLinear, v: FixedLinear, proj: FixedLinear
        let mlp: MLP
    }
    enum MLP: Sendable {
        case dense(fc1: FixedLinear, fc2: FixedLinear)
        case moe(gate: FixedLinear, fc1: [FixedLinear], fc2: [FixedLinear])
    }

    let patchWeights: [Int32]       // [D][C][p][p], wt_patch_embed_t raw
    let patchFrac: Int              // its fraction bits
    let patchFast: Bool             // FixedEmulation.patchFast: the unchecked 16-term sums apply
    let patchWeightsT: [Int16]      // fast form: the weights as [C·p·p][D] Int16 (CMoepackKernels), else empty
    let patchBias: [Int32]          // [D], fm_t raw
    let normFrac: Int               // fraction bits of wt_norm_t
    let posEmbed: [Int32]           // [T][D], fm_t raw
    let layers: [Layer]
    let invDimRaw: Int32            // fm_t(1.0 / D)
    let epsRaw: Int64               // fm_t(eps)
    let scaleRaw: Int32             // fm_t(attention scale)

    /// Validates the arrays against `arrays.config` and the kernel's element types and keeps them.
    ///
    /// - Throws: `MoepackError` `.mismatch` (item = argument name) for a missing array, a wrong shape
    ///   or a raw value outside its type's range; `.unsupported` for an element type the emulation
    ///   does not reproduce (``FixedEmulation/check(_:argument:)``) or a configuration
    ///   the kernel's blocking cannot run (D, hidden widths not multiples of 16, head width not a
    ///   multiple of 8, tokens ≠ patches + 1, tokens ≤ 4, image not a whole number of patches).
    public convenience init(arrays: KernelArrays) throws {
        try self.init(arrays: arrays, forceGeneral: false)
    }

    /// As ``init(arrays:)``; `forceGeneral` runs every unit on the general (any-type) path even where
    /// a fast path applies, so tests can check that both give the same bits.
    init(arrays: KernelArrays, forceGeneral: Bool) throws {
        let c = arrays.config
        config = c
        let D = c.embedDim, T = c.tokens, p = c.patchSize, C = c.inChans, E = c.experts
        let He = c.expertHidden, Hm = c.mlpHidden, L = c.depth
        func unsupported(_ m: String) -> MoepackError { MoepackError(.unsupported, item: "config", m) }
        guard D > 0, c.heads > 0, D % c.heads == 0, D % 16 == 0 else {
            throw unsupported("embedDim \(D) must be a positive multiple of 16 divisible by heads \(c.heads)")
        }
        guard c.headDim % 8 == 0 else { throw unsupported("head width \(c.headDim) is not a multiple of 8") }
        guard Hm > 0, Hm % 16 == 0, He > 0, He % 16 == 0 else {
            throw unsupported("mlpHidden \(Hm) and expertHidden \(He) must be positive multiples of 16")
        }
        guard p > 0, C > 0, c.imageHeight > 0, c.imageWidth > 0,
              c.imageHeight % p == 0, c.imageWidth % p == 0 else {
            throw unsupported("image \(c.imageHeight)x\(c.imageWidth) is not a whole number of \(p)-pixel patches")
        }
        guard T == c.patches + 1, T > 4 else {
            throw unsupported("tokens \(T) must be patches + 1 = \(c.patches + 1) and more than 4")
        }
        guard L > 0, Set(c.moeBlocks).count == c.moeBlocks.count,
              c.moeBlocks.allSatisfy({ $0 >= 0 && $0 < L }) else {
            throw unsupported("moeBlocks \(c.moeBlocks) are not distinct layers below depth \(L)")
        }
        guard c.moeBlocks.isEmpty || (E > 0 && c.topK >= 1 && c.topK <= E) else {
            throw unsupported("topK \(c.topK) must be in 1...experts (\(E))")
        }
        let nMoE = c.moeBlocks.count, nDense = c.denseBlocks.count

        /// Argument `arg` with its C shape from the argument table; `minFirst` accepts a longer first
        /// axis (the kernel's `max(n, 1)` for per-block arrays).
        func get(_ arg: KernelArgument, minFirst: Bool = false) throws -> (raw: [Int32], type: FixedType) {
            let name = arg.name
            guard let shape = arg.shape(c) else { throw MoepackError(.mismatch, item: name, "no shape for this model") }
            guard let a = arrays.arrays[name] else { throw MoepackError(.mismatch, item: name, "kernel array missing") }
            let shapeOK: Bool
            if minFirst {
                shapeOK = a.shape.count == shape.count && a.shape.first! >= shape[0]
                    && Array(a.shape.dropFirst()) == Array(shape.dropFirst())
            } else {
                shapeOK = a.shape == shape
            }
            guard shapeOK else {
                throw MoepackError(.mismatch, item: name, "shape \(shapeString(a.shape)), expected \(shapeString(shape))")
            }
            try FixedEmulation.check(a.type, argument: name)
            guard let count = checkedElementCount(shape) else { throw MoepackError(.mismatch, item: name, "shape too large") }
            guard a.raw.count >= count else {
                throw MoepackError(.mismatch, item: name, "\(a.raw.count) raw values, expected \(count)")
            }
            let lo = a.type.minRaw, hi = a.type.maxRaw
            if let bad = a.raw.firstIndex(where: { Int64($0) < lo || Int64($0) > hi }) {
                throw MoepackError(.mismatch, item: name, "raw value \(a.raw[bad]) at \(bad) outside \(a.type)")
            }
            return (Array(a.raw[0..<count]), a.type)
        }
        func toFm(_ a: ArraySlice<Int32>, _ t: FixedType) -> [Int32] {
            a.map { FixedEmulation.biasToFm($0, frac: t.fractionBits) }
        }
        func linear(_ w: ArraySlice<Int32>, _ wt: FixedType, out: Int, in n: Int, bias: [Int32]) -> FixedLinear {
            FixedLinear(outDim: out, inDim: n, raw: w, type: wt, bias: bias, general: forceGeneral)
        }

        let pw = try get(.patch_embed_weights)
        patchWeights = pw.raw
        patchFrac = pw.type.fractionBits
        patchFast = !forceGeneral && FixedEmulation.patchFast(pw.type)
        patchWeightsT = patchFast ? Self.transposed16(pw.raw, rows: D, columns: C * p * p) : []
        let pb = try get(.patch_embed_bias)
        patchBias = toFm(pb.raw[...], pb.type)
        let pe = try get(.pos_embed)
        posEmbed = pe.raw
        let (attnW, attnWT) = try get(.attn_weights)
        let (attnB, attnBT) = try get(.attn_bias)
        let (normW, normWT) = try get(.norm_weights)
        let (normB, normBT) = try get(.norm_bias)
        normFrac = normWT.fractionBits
        let none = (raw: [Int32](), type: FixedEmulation.fastLinearWeight)
        var gate = none, m1 = none, mb1 = none, m2 = none, mb2 = none
        if nMoE > 0 {
            gate = try get(.moe_w_gate, minFirst: true)
            m1 = try get(.moe_weights_l1, minFirst: true)
            mb1 = try get(.moe_bias_l1, minFirst: true)
            m2 = try get(.moe_weights_l2, minFirst: true)
            mb2 = try get(.moe_bias_l2, minFirst: true)
        }
        var v1 = none, vb1 = none, v2 = none, vb2 = none
        if nDense > 0 {
            v1 = try get(.vit_weights_l1, minFirst: true)
            vb1 = try get(.vit_bias_l1, minFirst: true)
            v2 = try get(.vit_weights_l2, minFirst: true)
            vb2 = try get(.vit_bias_l2, minFirst: true)
        }

        var built: [Layer] = []
        let dense = c.denseBlocks
        for l in 0..<L {
            func attnLinear(_ j: Int) -> FixedLinear {
                let wo = (l * 4 + j) * D * D, bo = (l * 4 + j) * D
                return linear(attnW[wo..<wo + D * D], attnWT, out: D, in: D, bias: toFm(attnB[bo..<bo + D], attnBT))
            }
            let n1 = (l * 2) * D, n2 = (l * 2 + 1) * D
            let mlp: MLP
            if let mi = c.moeBlocks.firstIndex(of: l) {
                let go = mi * E * D
                let g = linear(gate.raw[go..<go + E * D], gate.type, out: E, in: D,
                               bias: [Int32](repeating: 0, count: E))
                var f1: [FixedLinear] = [], f2: [FixedLinear] = []
                for e in 0..<E {
                    let w1o = (mi * E + e) * He * D, b1o = (mi * E + e) * He
                    let w2o = (mi * E + e) * D * He, b2o = (mi * E + e) * D
                    f1.append(linear(m1.raw[w1o..<w1o + He * D], m1.type, out: He, in: D,
                                     bias: toFm(mb1.raw[b1o..<b1o + He], mb1.type)))
                    f2.append(linear(m2.raw[w2o..<w2o + D * He], m2.type, out: D, in: He,
                                     bias: toFm(mb2.raw[b2o..<b2o + D], mb2.type)))
                }
                mlp = .moe(gate: g, fc1: f1, fc2: f2)
            } else {
                let di = dense.firstIndex(of: l)!   // every layer not in moeBlocks is in denseBlocks
                let w1o = di * Hm * D, w2o = di * D * Hm
                mlp = .dense(
                    fc1: linear(v1.raw[w1o..<w1o + Hm * D], v1.type, out: Hm, in: D,
                                bias: toFm(vb1.raw[di * Hm..<(di + 1) * Hm], vb1.type)),
                    fc2: linear(v2.raw[w2o..<w2o + D * Hm], v2.type, out: D, in: Hm,
                                bias: toFm(vb2.raw[di * D..<(di + 1) * D], vb2.type)))
            }
            built.append(Layer(
                norm1Weight: Array(normW[n1..<n1 + D]), norm1Bias: toFm(normB[n1..<n1 + D], normBT),
                norm2Weight: Array(normW[n2..<n2 + D]), norm2Bias: toFm(normB[n2..<n2 + D], normBT),
                q: attnLinear(0), k: attnLinear(1), v: attnLinear(2), proj: attnLinear(3), mlp: mlp))
        }
        layers = built
        invDimRaw = Int32((fmScale / Double(D)).rounded(.down))
        epsRaw = Int64((Double(c.layerNormEps) * fmScale).rounded(.down))
        scaleRaw = Int32((Double(c.attentionScale) * fmScale).rounded(.down))
    }

    /// Runs the emulated kernel on one image.
    ///
    /// - Parameters:
    ///   - pixels: the image as bytes [inChans, imageHeight, imageWidth] (C, row, column); the kernel
    ///     reads byte b as ap_ufixed<8,0> = b/256. Must hold exactly inChans·H·W bytes.
    ///   - recordBlocks: also return x after every block.
    ///   - stopAfter: return x as it stands at this point of the datapath (the kernel's `debug_id`
    ///     early returns); nil runs every layer.
    /// - Returns: output, routing and the wrap-around counts; see ``FixedForwardResult``.
    /// - Throws: `MoepackError` `.mismatch` when `pixels` has the wrong length, `.usage` for a stop
    ///   point in a layer the model does not have.
    public func forward(pixels: [UInt8], recordBlocks: Bool = false, stopAfter: FixedStopPoint? = nil) throws -> FixedForwardResult {
        let c = config
        let expected = c.inChans * c.imageHeight * c.imageWidth
        guard pixels.count == expected else {
            throw MoepackError(.mismatch, item: "pixels", "\(pixels.count) bytes, expected \(expected) ([\(c.inChans),\(c.imageHeight),\(c.imageWidth)])")
        }
        if let stopAfter, let l = stopAfter.layer, !(0..<c.depth).contains(l) {
            throw MoepackError(.usage, item: "stop point", "layer \(l) is not in 0..<\(c.depth)")
        }
        return run(pixels: pixels, recordBlocks: recordBlocks, stop: stopAfter)
    }
}

/// A point of the datapath where x is complete, for early returns (the kernel's `debug_id`).
public enum FixedStopPoint: Sendable, Equatable {
    /// After the patch embedding and position embedding (x = tokens of the image).
    case patchEmbedding
    /// After layer `layer`'s attention residual add (x = x + proj(attention)).
    case attentionResidual(layer: Int)
    /// After layer `layer` (x = the layer's output).
    case layerOutput(layer: Int)

    /// The layer of the stop point, nil for the patch embedding.
    public var layer: Int? {
        switch self {
        case .patchEmbedding: return nil
        case .attentionResidual(let l), .layerOutput(let l): return l
        }
    }
}

/// Wrap counts gathered during one forward pass.
struct WrapLedger {
    var entries: [OverflowCount] = []
    mutating func add(_ layer: Int, _ unit: String, _ n: Int) {
        guard n > 0 else { return }
        if let i = entries.firstIndex(where: { $0.layer == layer && $0.unit == unit }) {
            entries[i].count += n
        } else {
            entries.append(OverflowCount(layer: layer, unit: unit, count: n))
        }
    }
}

extension FixedBackbone {
    func run(pixels: [UInt8], recordBlocks: Bool, stop: FixedStopPoint? = nil) -> FixedForwardResult {
        let c = config
        let D = c.embedDim, T = c.tokens
        let maxHidden = max(c.mlpHidden, c.expertHidden, D)
        var ledger = WrapLedger()

        let x = UnsafeMutablePointer<Int32>.allocate(capacity: T * D)
        let h = UnsafeMutablePointer<Int32>.allocate(capacity: T * D)       // tmp1: LN / attention out
        let qb = UnsafeMutablePointer<Int32>.allocate(capacity: T * D)
        let kb = UnsafeMutablePointer<Int32>.allocate(capacity: T * D)
        let vb = UnsafeMutablePointer<Int32>.allocate(capacity: T * D)
        let y = UnsafeMutablePointer<Int32>.allocate(capacity: T * D)       // tmp3
        let gathered = UnsafeMutablePointer<Int32>.allocate(capacity: T * D)
        let expertOut = UnsafeMutablePointer<Int32>.allocate(capacity: T * D)
        let hidden = UnsafeMutablePointer<Int32>.allocate(capacity: T * maxHidden)
        let scratch = UnsafeMutablePointer<Int16>.allocate(capacity: 3 * maxHidden)
        let pairs = PairRowsBuffer(rows: T, n: maxHidden)   // each linear layer's input, split once
        defer {
            for p in [x, h, qb, kb, vb, y, gathered, expertOut, hidden] { p.deallocate() }
            scratch.deallocate()
        }

        var blockOutputs: [[Float]] = []
        var routing: [MoERouting] = []
        func result() -> FixedForwardResult {
            FixedForwardResult(output: dequantize(x, T * D), outputRaw: Array(UnsafeBufferPointer(start: x, count: T * D)),
                               blockOutputs: blockOutputs, routing: routing, overflow: ledger.entries)
        }

        patchEmbed(pixels: pixels, out: x, ledger: &ledger)
        if stop == .patchEmbedding { return result() }

        for (l, layer) in layers.enumerated() {
            var w = 0, w2 = 0
            layerNorm(x, out: h, weight: layer.norm1Weight, bias: layer.norm1Bias, wraps: &w)
            ledger.add(l, "ln1", w); w = 0
            let hSplit = pairs.split(h, rows: T, n: D)   // Q, K and V read the same rows
            linearForward(layer.q, input: h, rows: T, output: qb, gelu: false, scratch: scratch, wraps: &w, geluWraps: &w2,
                          split: hSplit)
            ledger.add(l, "attn.q", w); w = 0
            linearForward(layer.k, input: h, rows: T, output: kb, gelu: false, scratch: scratch, wraps: &w, geluWraps: &w2,
                          split: hSplit)
            ledger.add(l, "attn.k", w); w = 0
            linearForward(layer.v, input: h, rows: T, output: vb, gelu: false, scratch: scratch, wraps: &w, geluWraps: &w2,
                          split: hSplit)
            ledger.add(l, "attn.v", w); w = 0
            attention(q: qb, k: kb, v: vb, out: h, layer: l, ledger: &ledger)
            linearForward(layer.proj, input: h, rows: T, output: y, gelu: false, scratch: scratch, wraps: &w, geluWraps: &w2,
                          split: pairs.split(h, rows: T, n: D))
            ledger.add(l, "attn.proj", w); w = 0
            residualAdd(x, y, count: T * D, wraps: &w)
            ledger.add(l, "add.attn", w); w = 0
            if stop == .attentionResidual(layer: l) { return result() }
            layerNorm(x, out: h, weight: layer.norm2Weight, bias: layer.norm2Bias, wraps: &w)
            ledger.add(l, "ln2", w); w = 0
            switch layer.mlp {
            case let .dense(fc1, fc2):
                linearForward(fc1, input: h, rows: T, output: hidden, gelu: true, scratch: scratch, wraps: &w, geluWraps: &w2,
                              split: pairs.split(h, rows: T, n: D))
                ledger.add(l, "mlp.fc1", w); ledger.add(l, "mlp.gelu", w2); w = 0; w2 = 0
                linearForward(fc2, input: hidden, rows: T, output: y, gelu: false, scratch: scratch, wraps: &w, geluWraps: &w2,
                              split: pairs.split(hidden, rows: T, n: fc2.inDim))
                ledger.add(l, "mlp.fc2", w); w = 0
            case let .moe(gate, fc1, fc2):
                routing.append(moe(input: h, out: y, gate: gate, fc1: fc1, fc2: fc2, layer: l,
                                   gathered: gathered, hidden: hidden, expertOut: expertOut, scratch: scratch,
                                   pairs: pairs, ledger: &ledger))
            }
            residualAdd(x, y, count: T * D, wraps: &w)
            ledger.add(l, "add.mlp", w)
            if recordBlocks { blockOutputs.append(dequantize(x, T * D)) }
            if stop == .layerOutput(layer: l) { return result() }
        }
        return result()
    }

    func dequantize(_ p: UnsafePointer<Int32>, _ n: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: n) { buf, count in
            for i in 0..<n { buf[i] = Float(Double(p[i]) / fmScale) }
            count = n
        }
    }

    /// `raw` [rows][columns] (values that fit Int16) as [columns][rows] Int16.
    static func transposed16(_ raw: [Int32], rows: Int, columns: Int) -> [Int16] {
        [Int16](unsafeUninitializedCapacity: rows * columns) { buf, count in
            for r in 0..<rows {
                for c in 0..<columns { buf[c * rows + r] = Int16(truncatingIfNeeded: raw[r * columns + c]) }
            }
            count = rows * columns
        }
    }

    /// conv.cpp `compute_patch_embed`.
    func patchEmbed(pixels: [UInt8], out: UnsafeMutablePointer<Int32>, ledger: inout WrapLedger) {
        let c = config
        let D = c.embedDim, C = c.inChans, p = c.patchSize, H = c.imageHeight, W = c.imageWidth
        if patchFast {
            // The 16-term row sums cannot wrap (|each floored product| < 2^21): CMoepackKernels,
            // vectorised across the D outputs.
            var posWraps: Int64 = 0
            let wraps = withUnsafeTemporaryAllocation(of: Int32.self, capacity: D) { scratch in
                moepack_patch_embed(simdKernels, pixels, C, H, W, p, patchWeightsT, D, patchBias, posEmbed, out,
                                    scratch.baseAddress!, &posWraps)
            }
            ledger.add(-1, "patch_embed", Int(wraps))
            ledger.add(-1, "pos_embed", Int(posWraps))
            return
        }
        let gw = W / p, gh = H / p
        let patchLen = C * p * p
        var patch = [Int32](repeating: 0, count: patchLen)
        var wPatch = 0, wPos = 0
        patchWeights.withUnsafeBufferPointer { wb in
            pixels.withUnsafeBufferPointer { px in
                for py in 0..<gh {
                    for pxi in 0..<gw {
                        for ch in 0..<C {
                            for yy in 0..<p {
                                let src = (ch * H + py * p + yy) * W + pxi * p
                                for xx in 0..<p { patch[(ch * p + yy) * p + xx] = Int32(px[src + xx]) }
                            }
                        }
                        let token = 1 + py * gw + pxi
                        patch.withUnsafeBufferPointer { pb in
                            for d in 0..<D {
                                let wRow = wb.baseAddress! + d * patchLen
                                var acc = patchBias[d]
                                var r = 0
                                while r < patchLen {
                                    let addend = patchRowSumGeneral(pixels: pb.baseAddress! + r, weights: wRow + r,
                                                                    count: p, frac: patchFrac, wraps: &wPatch)
                                    acc = addFm(Int64(acc), Int64(addend), &wPatch)
                                    r += p
                                }
                                out[token * D + d] = addFm(Int64(acc), Int64(posEmbed[token * D + d]), &wPos)
                            }
                        }
                    }
                }
            }
        }
        for d in 0..<D { out[d] = posEmbed[d] }
        ledger.add(-1, "patch_embed", wPatch)
        ledger.add(-1, "pos_embed", wPos)
    }

    /// layernorm.cpp `compute_norm`: per token.
    func layerNorm(_ x: UnsafePointer<Int32>, out: UnsafeMutablePointer<Int32>, weight: [Int32], bias: [Int32],
                   wraps: inout Int) {
        let D = config.embedDim, T = config.tokens
        guard (0...62).contains(normFrac) else {   // the C kernel shifts by wt_norm_t's fraction bits
            for t in 0..<T {
                layerNormRow(x + t * D, out: out + t * D, n: D, invDim: invDimRaw, eps: epsRaw,
                             weight: weight, weightFrac: normFrac, bias: bias, wraps: &wraps)
            }
            return
        }
        wraps += Int(moepack_layer_norm(simdKernels, x, T, D, invDimRaw, epsRaw, weight, Int32(normFrac), bias, out))
    }

    /// add.cpp `compute_add`: x = x + y elementwise in fm_t.
    func residualAdd(_ x: UnsafeMutablePointer<Int32>, _ y: UnsafePointer<Int32>, count: Int, wraps: inout Int) {
        var n = 0
        for i in 0..<count {
            let s = Int64(x[i]) + Int64(y[i])
            n &+= outsideFm(s) ? 1 : 0
            x[i] = wrapFm(s)
        }
        wraps += n
    }

    /// moe.cpp `compute_moe` (gating, queues, experts, weighted accumulation).
    func moe(input: UnsafePointer<Int32>, out: UnsafeMutablePointer<Int32>, gate: FixedLinear,
             fc1: [FixedLinear], fc2: [FixedLinear], layer: Int,
             gathered: UnsafeMutablePointer<Int32>, hidden: UnsafeMutablePointer<Int32>,
             expertOut: UnsafeMutablePointer<Int32>, scratch: UnsafeMutablePointer<Int16>,
             pairs: PairRowsBuffer, ledger: inout WrapLedger) -> MoERouting {
        let D = config.embedDim, T = config.tokens, E = config.experts, K = config.topK
        var wGate = 0, wSoft = 0, wExpert = 0, wExpertGelu = 0, wCombine = 0, unused = 0
        var logits = [Int32](repeating: 0, count: T * E)
        logits.withUnsafeMutableBufferPointer { lb in
            linearForward(gate, input: input, rows: T, output: lb.baseAddress!, gelu: false, scratch: scratch,
                          wraps: &wGate, geluWraps: &unused, form: .blockSum8, split: pairs.split(input, rows: T, n: D))
        }
        var topExperts = [Int32](repeating: 0, count: T * K)
        var topWeights = [Float](repeating: 0, count: T * K)
        var queues = [[Int32]](repeating: [], count: E)
        var queueScores = [[Int32]](repeating: [], count: E)
        var idx = [Int](repeating: 0, count: K)
        var vals = [Int32](repeating: 0, count: K)
        logits.withUnsafeBufferPointer { lb in
            for t in 0..<T {
                let row = UnsafeBufferPointer(rebasing: lb[(t * E)..<(t * E + E)])
                var rs = RunningSoftmax()
                for e in 0..<E { rs.update(row[e], &wSoft) }
                topKFixed(row, k: K, indices: &idx, values: &vals)
                for j in 0..<K {
                    let dExact = Int64(vals[j]) - Int64(rs.bias)
                    if outsideFm(dExact) { wSoft += 1 }
                    let e = expFm(wrapFm(dExact), &wSoft)
                    let wgt = divFm(e, rs.sum, &wSoft)
                    topExperts[t * K + j] = Int32(idx[j])
                    topWeights[t * K + j] = Float(Double(wgt) / fmScale)
                    queues[idx[j]].append(Int32(t))
                    queueScores[idx[j]].append(wgt)
                }
            }
        }
        for i in 0..<(T * D) { out[i] = 0 }
        for e in 0..<E where !queues[e].isEmpty {
            let n = queues[e].count
            for (j, tok) in queues[e].enumerated() {
                (gathered + j * D).update(from: input + Int(tok) * D, count: D)
            }
            linearForward(fc1[e], input: gathered, rows: n, output: hidden, gelu: true, scratch: scratch,
                          wraps: &wExpert, geluWraps: &wExpertGelu, split: pairs.split(gathered, rows: n, n: D))
            linearForward(fc2[e], input: hidden, rows: n, output: expertOut, gelu: false, scratch: scratch,
                          wraps: &wExpert, geluWraps: &wExpertGelu,
                          split: pairs.split(hidden, rows: n, n: fc2[e].inDim))
            for (j, tok) in queues[e].enumerated() {
                let s = queueScores[e][j]
                let dst = out + Int(tok) * D, src = expertOut + j * D
                for d in 0..<D {
                    let prod = mulFm(src[d], s, &wCombine)
                    dst[d] = addFm(Int64(prod), Int64(dst[d]), &wCombine)
                }
            }
        }
        ledger.add(layer, "moe.gate", wGate)
        ledger.add(layer, "moe.softmax", wSoft)
        ledger.add(layer, "moe.expert", wExpert + wExpertGelu)
        ledger.add(layer, "moe.combine", wCombine)
        return MoERouting(block: layer, topExperts: topExperts, topWeights: topWeights, queues: queues)
    }
}

/// layernorm.cpp for one token row of n fm_t values: see ``FixedBackbone``. `weight` is wt_norm_t raw
/// with `weightFrac` fraction bits, `bias` already in fm_t raw units.
func layerNormRow(_ x: UnsafePointer<Int32>, out: UnsafeMutablePointer<Int32>, n: Int, invDim: Int32, eps: Int64,
                  weight: [Int32], weightFrac: Int, bias: [Int32], wraps: inout Int) {
    var mean: Int32 = 0, meanSq: Int32 = 0
    var b = 0
    while b < n {
        var pm: Int32 = 0, pms: Int32 = 0
        for i in b..<min(b + 8, n) {
            let xi = x[i]
            let term = mulFm(xi, invDim, &wraps)                               // x_dim_mean_term
            pm = addFm(Int64(pm), Int64(term), &wraps)                          // partial_mean += term
            pms = addFm(Int64(pms), (Int64(xi) * Int64(term)) >> fmFrac, &wraps)    // partial_mean_sq += x*term
        }
        mean = addFm(Int64(mean), Int64(pm), &wraps)
        meanSq = addFm(Int64(meanSq), Int64(pms), &wraps)
        b += 8
    }
    let sqMean = mulFm(mean, mean, &wraps)
    let variance = addFm(Int64(meanSq) - Int64(sqMean), eps, &wraps)
    let rstd = recipFm(sqrtFm(variance, &wraps), &wraps)
    for i in 0..<n {
        var t = addFm(Int64(x[i]), -Int64(mean), &wraps)                       // x_dim -= mean
        t = mulFm(t, rstd, &wraps)                                              // x_dim *= rstddev
        let pw = (Int64(t) * Int64(weight[i])) >> Int64(weightFrac)             // x_dim *= weights[dim]
        if outsideFm(pw) { wraps += 1 }
        out[i] = addFm(Int64(wrapFm(pw)), Int64(bias[i]), &wraps)               // x_dim += bias[dim]
    }
}
