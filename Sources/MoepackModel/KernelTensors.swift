import Foundation
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

    /// The weight arguments' names in `ViT_compute` argument order (``KernelArgument/weights``).
    public static var arrayNames: [String] { KernelArgument.weights.map(\.name) }

    /// The last tensor read (Q, K, V and proj slice one qkv tensor in turn). Guarded by `cacheLock`:
    /// `sweep` packs several candidates from one instance at once.
    private var cache: (name: String, values: [Float])?
    private let cacheLock = NSLock()

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

    /// C shape of kernel array `array` for a model of configuration `c` (``KernelArgument/shape(_:)``),
    /// or nil for unknown names and profile-sized scratch.
    public static func shape(of array: String, config c: M3ViTConfig) -> [Int]? {
        KernelArgument(name: array)?.shape(c)
    }

    /// The M³ViT tensor of block `block` behind kernel MLP array `array` (``KernelArgument/mlpTensor(block:)``).
    public static func mlpTensor(of array: String, block: Int) -> String? {
        KernelArgument(name: array)?.mlpTensor(block: block)
    }

    private func read(_ canonical: String) throws -> [Float] {
        if let hit = cacheLock.withLock({ cache?.name == canonical ? cache?.values : nil }) { return hit }
        let v = try checkpoint.read(canonical)
        cacheLock.withLock { cache = (canonical, v) }
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
        guard let arg = KernelArgument(name: array), arg.role == .weight else {
            throw MoepackError(.unsupported, item: array, "no such kernel array (known: \(Self.arrayNames.joined(separator: ", ")))")
        }
        try forEachPart(of: arg, task: task, body)
    }

    /// ``forEachPart(of:task:_:)`` for a typed argument, following its ``KernelArgumentSource``.
    public func forEachPart(of arg: KernelArgument, task: Int = 0, _ body: (KernelPart) throws -> Void) throws {
        let c = config, d = c.embedDim
        let folded = checkpoint.naming == .edgeMoE
        switch arg.source {
        case .patchEmbed(let kind):
            let pe = try patchEmbed()
            try body(KernelPart(name: "patch_embed.proj.\(kind.rawValue)", values: kind == .weight ? pe.weight : pe.bias))
        case .posEmbed:
            var pos = try read("pos_embed")
            if !folded {
                let cls = try checkpoint.read("cls_token")
                for j in 0..<d { pos[j] = Float(Double(pos[j]) + Double(cls[j])) }
            }
            try body(KernelPart(name: folded ? "pos_embed" : "pos_embed+cls_token", values: pos))
        case .attention(let kind):
            for i in 0..<c.depth {
                for (p, tag) in ["q", "k", "v"].enumerated() {
                    try body(KernelPart(name: "blocks.\(i).attn.qkv.\(kind.rawValue)[\(tag)]",
                                        values: try rows("blocks.\(i).attn.qkv.\(kind.rawValue)", p, of: 3)))
                }
                try body(KernelPart(name: "blocks.\(i).attn.proj.\(kind.rawValue)", values: try read("blocks.\(i).attn.proj.\(kind.rawValue)")))
            }
        case .gate:
            for i in c.moeBlocks {
                try body(try gate(block: i, task: task))
            }
        case .mlp(_, let blocks):
            // One M³ViT tensor per MoE (expert arrays) or dense (ViT MLP arrays) block, as stored.
            for i in blocks.blocks(c) {
                let canonical = arg.mlpTensor(block: i)!
                try body(KernelPart(name: canonical, values: try read(canonical)))
            }
        case .norm(let kind):
            for i in 0..<c.depth {
                for n in ["norm1", "norm2"] {
                    let canonical = "blocks.\(i).\(n).\(kind.rawValue)"
                    try body(KernelPart(name: canonical, values: try read(canonical)))
                }
            }
        case .none:
            throw MoepackError(.unsupported, item: arg.name, "not made from the checkpoint (\(arg.role.rawValue))")
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
        func get(_ arg: KernelArgument) throws -> [Float] {
            guard let v = a[arg.name] else { throw MoepackError(.badInput, item: arg.name, "missing kernel array") }
            guard let count = arg.elementCount(c), v.count == count else {
                throw MoepackError(.mismatch, item: arg.name, "\(v.count) elements, expected \(arg.elementCount(c).map(String.init) ?? "a valid shape")")
            }
            return v
        }
        /// Logical tensor `slot` of block entry `entry` of `arg` (one Q/K/V/proj, one norm, one expert array entry).
        func part(_ arg: KernelArgument, _ values: [Float], _ entry: Int, slot: Int = 0) -> [Float] {
            let n = arg.elementsPerBlock(c)! / arg.spec.slots
            let i = entry * arg.spec.slots + slot
            return Array(values[(i * n)..<((i + 1) * n)])
        }
        var v: [KernelArgument: [Float]] = [:]
        for arg in KernelArgument.weights { v[arg] = try get(arg) }
        var blocks: [BlockWeights] = []
        for i in 0..<c.depth {
            let mlp: MLPWeights
            if let m = c.moeBlocks.firstIndex(of: i) {
                let gates: [[Float]] = allGates.map { $0.map { $0[m] } } ?? [part(.moe_w_gate, v[.moe_w_gate]!, m)]
                mlp = .moe(gates: gates, w1: part(.moe_weights_l1, v[.moe_weights_l1]!, m), b1: part(.moe_bias_l1, v[.moe_bias_l1]!, m),
                           w2: part(.moe_weights_l2, v[.moe_weights_l2]!, m), b2: part(.moe_bias_l2, v[.moe_bias_l2]!, m))
            } else {
                let k = c.denseBlocks.firstIndex(of: i)!
                mlp = .dense(fc1Weight: part(.vit_weights_l1, v[.vit_weights_l1]!, k), fc1Bias: part(.vit_bias_l1, v[.vit_bias_l1]!, k),
                             fc2Weight: part(.vit_weights_l2, v[.vit_weights_l2]!, k), fc2Bias: part(.vit_bias_l2, v[.vit_bias_l2]!, k))
            }
            let aw = v[.attn_weights]!, ab = v[.attn_bias]!, nw = v[.norm_weights]!, nb = v[.norm_bias]!
            blocks.append(BlockWeights(
                norm1Weight: part(.norm_weights, nw, i, slot: 0), norm1Bias: part(.norm_bias, nb, i, slot: 0),
                norm2Weight: part(.norm_weights, nw, i, slot: 1), norm2Bias: part(.norm_bias, nb, i, slot: 1),
                qWeight: part(.attn_weights, aw, i, slot: 0), kWeight: part(.attn_weights, aw, i, slot: 1),
                vWeight: part(.attn_weights, aw, i, slot: 2), projWeight: part(.attn_weights, aw, i, slot: 3),
                qBias: part(.attn_bias, ab, i, slot: 0), kBias: part(.attn_bias, ab, i, slot: 1),
                vBias: part(.attn_bias, ab, i, slot: 2), projBias: part(.attn_bias, ab, i, slot: 3), mlp: mlp))
        }
        let pw = v[.patch_embed_weights]!, pb = v[.patch_embed_bias]!, pos = v[.pos_embed]!
        self.init(config: c, patchEmbedWeight: pw, patchEmbedBias: pb, posEmbed: pos, blocks: blocks,
                  task: allGates == nil ? 0 : task)
    }
}
