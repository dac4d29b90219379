import MoepackCore
import MoepackCheckpoint

/// Options of the folds that turn training-form weights into the kernel's form.
public struct FoldOptions: Sendable, Equatable, Codable {
    /// Training input normalisation per channel: input = (byte/255 − mean[c]) / std[c].
    /// Defaults: ImageNet mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    public var mean: [Double]
    public var std: [Double]
    public init(mean: [Double] = [0.485, 0.456, 0.406], std: [Double] = [0.229, 0.224, 0.225]) {
        self.mean = mean
        self.std = std
    }
}

/// One logical tensor inside a kernel array (e.g. the Q rows of block 3's qkv weight inside
/// `attn_weights`), in buffer order.
public struct KernelPart: Sendable {
    /// Report name, e.g. `blocks.3.attn.qkv.weight[q]`.
    public var name: String
    public var values: [Float]
}

/// The kernel's arrays computed on demand from a checkpoint, folds applied.
///
/// Array names and C shapes follow the argument table of Edge-MoE's `ViT_compute`
/// (`../shared/edge-moe/README.md`): `patch_embed_weights [D][C][p][p]`, `patch_embed_bias [D]`,
/// `pos_embed [T][D]`, `attn_weights [depth][4][D][D]` (Q,K,V,proj; [out][in]), `attn_bias [depth][4][D]`,
/// `moe_w_gate [nMoE][E][D]`, `moe_weights_l1 [nMoE][E][He][D]`, `moe_bias_l1 [nMoE][E][He]`,
/// `moe_weights_l2 [nMoE][E][D][He]`, `moe_bias_l2 [nMoE][E][D]`, `vit_weights_l1 [nDense][Hm][D]`,
/// `vit_bias_l1 [nDense][Hm]`, `vit_weights_l2 [nDense][D][Hm]`, `vit_bias_l2 [nDense][D]`,
/// `norm_weights [depth][2][D]`, `norm_bias [depth][2][D]`.
///
/// Folds (each exact algebra, done in float64 then rounded to float32):
/// - input normalisation into the patch embedding. Training computes y = Σ W·((b/255 − m_c)/s_c) + β on
///   bytes b; the kernel reads p = b/256 (`ap_ufixed<8,0>`), so b/255 = p·256/255 and
///   W' = W·256/(255·s_c), β' = β − Σ_{c,y,x} W[o,c,y,x]·m_c/s_c;
/// - cls token into the first position embedding: pos'[0] = pos[0] + cls;
/// - qkv split: Q, K, V = rows [0,D), [D,2D), [2D,3D) of `attn.qkv.weight` [3D,D] (and bias);
/// - gate transposed: M³ViT's `w_gate` [D,E] → kernel [E,D]; the task picks which gate.
/// Edge-MoE folder checkpoints are already folded and are passed through.
public final class KernelTensors: @unchecked Sendable {
    public let checkpoint: BackboneCheckpoint
    public let folds: FoldOptions
    public var config: M3ViTConfig { checkpoint.config }

    /// The kernel array names in `ViT_compute` argument order.
    public static let arrayNames = [
        "patch_embed_weights", "patch_embed_bias", "pos_embed", "attn_weights", "attn_bias", "moe_w_gate",
        "moe_weights_l1", "moe_bias_l1", "moe_weights_l2", "moe_bias_l2", "vit_weights_l1", "vit_bias_l1",
        "vit_weights_l2", "vit_bias_l2", "norm_weights", "norm_bias",
    ]

    private var cacheName: String?
    private var cacheValues: [Float] = []

    /// - Throws: ``MoepackError`` when mean/std do not have one value per input channel or std has a 0.
    public init(checkpoint: BackboneCheckpoint, folds: FoldOptions = FoldOptions()) throws {
        self.checkpoint = checkpoint
        self.folds = folds
        let c = checkpoint.config.inChans
        if checkpoint.naming == .m3vit {
            guard folds.mean.count == c, folds.std.count == c else {
                throw MoepackError(.usage, "--mean and --std need \(c) values each (one per input channel)")
            }
            guard folds.mean.allSatisfy({ $0.isFinite }) else {
                throw MoepackError(.usage, "--mean values must be finite")
            }
            guard folds.std.allSatisfy({ $0 != 0 && $0.isFinite }) else {
                throw MoepackError(.usage, "--std values must be finite and non-zero")
            }
        }
    }

    /// C shape of a kernel array for this model (one task's gates for `moe_w_gate`).
    public func shape(of array: String) -> [Int]? { Self.shape(of: array, config: config) }

    /// C shape of kernel array `array` for a model of configuration `c`, or nil for unknown names.
    /// The M³ViT tensor of block `block` behind kernel MLP array `array` (`moe_weights_l1` →
    /// `blocks.N.mlp.experts.htoh4.weight`, `vit_bias_l2` → `blocks.N.mlp.fc2.bias`); nil for other arrays.
    public static func mlpTensor(of array: String, block: Int) -> String? {
        mlpArrays[array].map { "blocks.\(block).mlp.\($0.suffix)" }
    }

    /// Kernel MLP arrays → (M³ViT tensor after `blocks.N.mlp.`, whether it lives in the MoE blocks).
    static let mlpArrays: [String: (suffix: String, moe: Bool)] = [
        "moe_weights_l1": ("experts.htoh4.weight", true), "moe_bias_l1": ("experts.htoh4.bias", true),
        "moe_weights_l2": ("experts.h4toh.weight", true), "moe_bias_l2": ("experts.h4toh.bias", true),
        "vit_weights_l1": ("fc1.weight", false), "vit_bias_l1": ("fc1.bias", false),
        "vit_weights_l2": ("fc2.weight", false), "vit_bias_l2": ("fc2.bias", false),
    ]

    public static func shape(of array: String, config c: M3ViTConfig) -> [Int]? {
        let d = c.embedDim
        let nMoE = c.moeBlocks.count, nDense = c.denseBlocks.count
        switch array {
        case "patch_embed_weights": return [d, c.inChans, c.patchSize, c.patchSize]
        case "patch_embed_bias": return [d]
        case "pos_embed": return [c.tokens, d]
        case "attn_weights": return [c.depth, 4, d, d]
        case "attn_bias": return [c.depth, 4, d]
        case "moe_w_gate": return [nMoE, c.experts, d]
        case "moe_weights_l1": return [nMoE, c.experts, c.expertHidden, d]
        case "moe_bias_l1": return [nMoE, c.experts, c.expertHidden]
        case "moe_weights_l2": return [nMoE, c.experts, d, c.expertHidden]
        case "moe_bias_l2": return [nMoE, c.experts, d]
        case "vit_weights_l1": return [nDense, c.mlpHidden, d]
        case "vit_bias_l1": return [nDense, c.mlpHidden]
        case "vit_weights_l2": return [nDense, d, c.mlpHidden]
        case "vit_bias_l2": return [nDense, d]
        case "norm_weights", "norm_bias": return [c.depth, 2, d]
        default: return nil
        }
    }

    private func read(_ canonical: String) throws -> [Float] {
        if cacheName == canonical { return cacheValues }
        let v = try checkpoint.read(canonical)
        cacheName = canonical
        cacheValues = v
        return v
    }

    private func rows(_ canonical: String, _ part: Int, of parts: Int) throws -> [Float] {
        let v = try read(canonical)
        let n = v.count / parts
        return Array(v[(part * n)..<((part + 1) * n)])
    }

    /// Calls `body` with each logical tensor of `array`, in buffer order; the concatenation of the
    /// parts' values is the array in C order. Only the tensors the array needs are read.
    /// - Parameter task: which task's gate goes into `moe_w_gate`.
    /// - Throws: ``MoepackError`` for unknown arrays, missing tensors, NaN/Inf, task out of range.
    public func forEachPart(of array: String, task: Int = 0, _ body: (KernelPart) throws -> Void) throws {
        let c = config, d = c.embedDim
        let folded = checkpoint.naming == .edgeMoE
        switch array {
        case "patch_embed_weights":
            try body(KernelPart(name: "patch_embed.proj.weight", values: try patchEmbed().weight))
        case "patch_embed_bias":
            try body(KernelPart(name: "patch_embed.proj.bias", values: try patchEmbed().bias))
        case "pos_embed":
            var pos = try read("pos_embed")
            if !folded {
                let cls = try checkpoint.read("cls_token")
                for j in 0..<d { pos[j] = Float(Double(pos[j]) + Double(cls[j])) }
            }
            try body(KernelPart(name: folded ? "pos_embed" : "pos_embed+cls_token", values: pos))
        case "attn_weights", "attn_bias":
            let kind = array == "attn_weights" ? "weight" : "bias"
            for i in 0..<c.depth {
                for (p, tag) in ["q", "k", "v"].enumerated() {
                    try body(KernelPart(name: "blocks.\(i).attn.qkv.\(kind)[\(tag)]",
                                        values: try rows("blocks.\(i).attn.qkv.\(kind)", p, of: 3)))
                }
                try body(KernelPart(name: "blocks.\(i).attn.proj.\(kind)", values: try read("blocks.\(i).attn.proj.\(kind)")))
            }
        case "moe_w_gate":
            for i in c.moeBlocks {
                try body(try gate(block: i, task: task))
            }
        case _ where Self.mlpArrays[array] != nil:
            // One M³ViT tensor per MoE (expert arrays) or dense (ViT MLP arrays) block, as stored.
            for i in Self.mlpArrays[array]!.moe ? c.moeBlocks : c.denseBlocks {
                let canonical = Self.mlpTensor(of: array, block: i)!
                try body(KernelPart(name: canonical, values: try read(canonical)))
            }
        case "norm_weights", "norm_bias":
            let kind = array == "norm_weights" ? "weight" : "bias"
            for i in 0..<c.depth {
                for n in ["norm1", "norm2"] {
                    let canonical = "blocks.\(i).\(n).\(kind)"
                    try body(KernelPart(name: canonical, values: try read(canonical)))
                }
            }
        default:
            throw MoepackError(.unsupported, item: array, "no such kernel array (known: \(Self.arrayNames.joined(separator: ", ")))")
        }
    }

    /// The whole array in C order.
    public func array(_ name: String, task: Int = 0) throws -> [Float] {
        var out: [Float] = []
        if let s = shape(of: name) { out.reserveCapacity(s.reduce(1, *)) }
        try forEachPart(of: name, task: task) { out.append(contentsOf: $0.values) }
        return out
    }

    /// One task's gate of MoE block `block` in kernel form [E, D].
    public func gate(block i: Int, task: Int) throws -> KernelPart {
        let c = config, d = c.embedDim
        guard task >= 0, task < max(c.tasks, 1) else {
            throw MoepackError(.usage, file: checkpoint.source.path, item: "blocks.\(i).mlp.gate.\(task).w_gate",
                               "task \(task) out of range: the checkpoint has \(c.tasks) task gate(s)")
        }
        let canonical = "blocks.\(i).mlp.gate.\(task).w_gate"
        let g = try read(canonical)
        if checkpoint.naming == .edgeMoE {
            return KernelPart(name: canonical, values: g)
        }
        var t = [Float](repeating: 0, count: g.count)
        let e = c.experts
        for r in 0..<d { for col in 0..<e { t[col * d + r] = g[r * e + col] } }
        return KernelPart(name: canonical + "ᵀ", values: t)
    }

    /// The folded patch embedding (see the type's documentation for the formula).
    public func patchEmbed() throws -> (weight: [Float], bias: [Float]) {
        let w = try checkpoint.read("patch_embed.proj.weight")
        let b = try checkpoint.read("patch_embed.proj.bias")
        if checkpoint.naming == .edgeMoE { return (w, b) }
        let c = config
        let per = c.patchSize * c.patchSize
        var wf = [Float](repeating: 0, count: w.count)
        var bf = [Float](repeating: 0, count: b.count)
        for o in 0..<c.embedDim {
            var shift = 0.0
            for ch in 0..<c.inChans {
                let scale = 256.0 / (255.0 * folds.std[ch])
                let ms = folds.mean[ch] / folds.std[ch]
                let base = (o * c.inChans + ch) * per
                for k in 0..<per {
                    let wv = Double(w[base + k])
                    wf[base + k] = Float(wv * scale)
                    shift += wv * ms
                }
            }
            bf[o] = Float(Double(b[o]) - shift)
        }
        return (wf, bf)
    }

    /// All weights in kernel form for the float reference path, using `task`'s gate.
    public func backboneWeights(task: Int) throws -> BackboneWeights {
        var arrays: [String: [Float]] = [:]
        for name in Self.arrayNames {
            arrays[name] = try array(name, task: task)
        }
        var gates: [[[Float]]] = []
        for t in 0..<max(config.tasks, 1) {
            gates.append(try config.moeBlocks.map { try gate(block: $0, task: t).values })
        }
        return try BackboneWeights(kernelArrays: arrays, config: config, task: task, allGates: gates)
    }
}

extension BackboneWeights {
    /// Rebuilds kernel-form weights from the kernel's arrays (C order, shapes as in
    /// ``KernelTensors``), e.g. dequantized from a packed DDR image.
    /// - Parameters:
    ///   - allGates: per task, per MoE block, gate [E, D]; nil uses `moe_w_gate` as the only task's gate.
    /// - Throws: ``MoepackError`` `.mismatch` when an array is missing or has the wrong element count.
    public init(kernelArrays a: [String: [Float]], config c: M3ViTConfig, task: Int,
                allGates: [[[Float]]]? = nil) throws {
        let d = c.embedDim
        func get(_ name: String, _ count: Int) throws -> [Float] {
            guard let v = a[name] else { throw MoepackError(.badInput, item: name, "missing kernel array") }
            guard v.count == count else {
                throw MoepackError(.mismatch, item: name, "\(v.count) elements, expected \(count)")
            }
            return v
        }
        let nMoE = c.moeBlocks.count, nDense = c.denseBlocks.count
        let pw = try get("patch_embed_weights", d * c.inChans * c.patchSize * c.patchSize)
        let pb = try get("patch_embed_bias", d)
        let pos = try get("pos_embed", c.tokens * d)
        let aw = try get("attn_weights", c.depth * 4 * d * d)
        let ab = try get("attn_bias", c.depth * 4 * d)
        let gate = try get("moe_w_gate", nMoE * c.experts * d)
        let m1 = try get("moe_weights_l1", nMoE * c.experts * c.expertHidden * d)
        let mb1 = try get("moe_bias_l1", nMoE * c.experts * c.expertHidden)
        let m2 = try get("moe_weights_l2", nMoE * c.experts * d * c.expertHidden)
        let mb2 = try get("moe_bias_l2", nMoE * c.experts * d)
        let v1 = try get("vit_weights_l1", nDense * c.mlpHidden * d)
        let vb1 = try get("vit_bias_l1", nDense * c.mlpHidden)
        let v2 = try get("vit_weights_l2", nDense * d * c.mlpHidden)
        let vb2 = try get("vit_bias_l2", nDense * d)
        let nw = try get("norm_weights", c.depth * 2 * d)
        let nb = try get("norm_bias", c.depth * 2 * d)
        func slice(_ v: [Float], _ index: Int, _ n: Int) -> [Float] { Array(v[(index * n)..<((index + 1) * n)]) }
        var blocks: [BlockWeights] = []
        for i in 0..<c.depth {
            let mlp: MLPWeights
            if let m = c.moeBlocks.firstIndex(of: i) {
                let ed = c.experts * d, eh = c.experts * c.expertHidden * d
                let gates: [[Float]]
                if let allGates {
                    gates = allGates.map { $0[m] }
                } else {
                    gates = [slice(gate, m, ed)]
                }
                mlp = .moe(gates: gates, w1: slice(m1, m, eh), b1: slice(mb1, m, c.experts * c.expertHidden),
                           w2: slice(m2, m, eh), b2: slice(mb2, m, ed))
            } else {
                let k = c.denseBlocks.firstIndex(of: i)!
                mlp = .dense(fc1Weight: slice(v1, k, c.mlpHidden * d), fc1Bias: slice(vb1, k, c.mlpHidden),
                             fc2Weight: slice(v2, k, d * c.mlpHidden), fc2Bias: slice(vb2, k, d))
            }
            blocks.append(BlockWeights(
                norm1Weight: slice(nw, 2 * i, d), norm1Bias: slice(nb, 2 * i, d),
                norm2Weight: slice(nw, 2 * i + 1, d), norm2Bias: slice(nb, 2 * i + 1, d),
                qWeight: slice(aw, 4 * i, d * d), kWeight: slice(aw, 4 * i + 1, d * d),
                vWeight: slice(aw, 4 * i + 2, d * d), projWeight: slice(aw, 4 * i + 3, d * d),
                qBias: slice(ab, 4 * i, d), kBias: slice(ab, 4 * i + 1, d),
                vBias: slice(ab, 4 * i + 2, d), projBias: slice(ab, 4 * i + 3, d), mlp: mlp))
        }
        self.init(config: c, patchEmbedWeight: pw, patchEmbedBias: pb, posEmbed: pos, blocks: blocks,
                  task: allGates == nil ? 0 : task)
    }
}
