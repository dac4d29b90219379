import MoepackCore

/// What a kernel argument is to `ViT_compute`: the JSON spellings of profiles and manifests.
public enum KernelArgumentRole: String, Sendable, Codable, CaseIterable {
    /// Filled by `pack` from the checkpoint.
    case weight
    /// The frame slot (`images`).
    case input
    /// Where the kernel writes the backbone output (`x`).
    case output
    /// Working memory of the kernel; zero in the image.
    case scratch

    public init(from decoder: any Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let r = KernelArgumentRole(rawValue: s) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                debugDescription: "role '\(s)' is not \(Self.allCases.map(\.rawValue).joined(separator: "|"))"))
        }
        self = r
    }
}

/// Which blocks a per-block weight array has one entry for (its first axis).
public enum KernelBlockSet: Sendable, Equatable {
    /// Every transformer block, `0..<depth`.
    case all
    /// The MoE blocks, `config.moeBlocks` (entry i is block `moeBlocks[i]`).
    case moe
    /// The dense blocks, `config.denseBlocks`.
    case dense

    public func blocks(_ c: M3ViTConfig) -> [Int] {
        switch self {
        case .all: return Array(0..<c.depth)
        case .moe: return c.moeBlocks
        case .dense: return c.denseBlocks
        }
    }
}

/// How a weight argument is made from M³ViT checkpoint tensors (``KernelTensors`` applies it) and
/// how it maps back to per-block weights (``BackboneWeights/init(kernelArrays:config:task:allGates:)``).
public enum KernelArgumentSource: Sendable, Equatable {
    /// `patch_embed.proj.weight` / `.bias` with the input normalisation folded in.
    case patchEmbed(TensorKind)
    /// `pos_embed` with `cls_token` added to row 0.
    case posEmbed
    /// Per block: the Q, K, V rows of `blocks.N.attn.qkv.<kind>`, then `blocks.N.attn.proj.<kind>`.
    case attention(TensorKind)
    /// Per MoE block: the task's `blocks.N.mlp.gate.<task>.w_gate` [D,E] transposed to [E,D].
    case gate
    /// Per block of `blocks`: `blocks.N.mlp.<suffix>` as stored.
    case mlp(suffix: String, blocks: KernelBlockSet)
    /// Per block: `blocks.N.norm1.<kind>`, then `blocks.N.norm2.<kind>`.
    case norm(TensorKind)
    /// Not made from the checkpoint (frame, output, scratch).
    case none
}

/// `weight` or `bias` half of a layer's parameters.
public enum TensorKind: String, Sendable, Equatable {
    case weight, bias
}

/// The arguments of Edge-MoE's `ViT_compute`, in declaration order (the kernel's names): the one
/// description of the kernel's argument table that profiles, the packer, the manifest, the C header,
/// ``KernelTensors``, ``BackboneWeights`` and the fixed-point emulation use.
///
/// Profiles (JSON data) give each argument's element type and control register for one bitstream;
/// this table gives what the code knows: role, the element type name of the published build, the C
/// shape from the model dimensions (D = embedDim, T = tokens, p = patchSize, E = experts, He =
/// expertHidden, Hm = mlpHidden, nMoE / nDense = MoE / dense block counts) and the checkpoint
/// tensors the argument is made from. Adding an argument is one case and one entry of ``spec``.
public enum KernelArgument: String, Sendable, Codable, CaseIterable {
    case images, x, tmp1, tmp2, tmp3, tmp4, tmp_hidden, attn, attn_softmax_info
    case patch_embed_weights, patch_embed_bias, pos_embed, attn_weights, attn_bias, moe_w_gate
    case moe_weights_l1, moe_bias_l1, moe_weights_l2, moe_bias_l2
    case vit_weights_l1, vit_bias_l1, vit_weights_l2, vit_bias_l2
    case norm_weights, norm_bias

    /// One row of the argument table.
    public struct Spec: Sendable {
        public var role: KernelArgumentRole
        /// Element type name in the published build (`include/kernel.hpp` typedefs), a key of a
        /// profile's `types`.
        public var typeName: String
        public var source: KernelArgumentSource
        /// C shape for a model, outermost first; nil for scratch sized by the kernel's tiling, whose
        /// shape only the profile declares.
        public var shape: @Sendable (M3ViTConfig) -> [Int]?
        /// Logical tensors per block entry (4 for Q, K, V, proj; 2 for norm1, norm2; else 1).
        public var slots: Int
    }

    /// The argument's row of the table (the single place the arguments are described).
    public var spec: Spec {
        func s(_ role: KernelArgumentRole, _ type: String, _ source: KernelArgumentSource = .none, slots: Int = 1,
               _ shape: @escaping @Sendable (M3ViTConfig) -> [Int]?) -> Spec {
            Spec(role: role, typeName: type, source: source, shape: shape, slots: slots)
        }
        switch self {
        case .images: return s(.input, "pixel_t") { [1, $0.inChans, $0.imageHeight, $0.imageWidth] }
        case .x: return s(.output, "fm_t") { [1, $0.tokens, $0.embedDim] }
        case .tmp1, .tmp2, .tmp3, .tmp4: return s(.scratch, "fm_t") { [$0.tokens, $0.embedDim] }
        case .tmp_hidden, .attn, .attn_softmax_info: return s(.scratch, "fm_t") { _ in nil }
        case .patch_embed_weights:
            return s(.weight, "wt_patch_embed_t", .patchEmbed(.weight)) { [$0.embedDim, $0.inChans, $0.patchSize, $0.patchSize] }
        case .patch_embed_bias: return s(.weight, "wt_bias_t", .patchEmbed(.bias)) { [$0.embedDim] }
        case .pos_embed: return s(.weight, "fm_t", .posEmbed) { [$0.tokens, $0.embedDim] }
        case .attn_weights: return s(.weight, "wt_linear_t", .attention(.weight), slots: 4) { [$0.depth, 4, $0.embedDim, $0.embedDim] }
        case .attn_bias: return s(.weight, "wt_attn_bias_t", .attention(.bias), slots: 4) { [$0.depth, 4, $0.embedDim] }
        case .moe_w_gate: return s(.weight, "wt_linear_t", .gate) { [$0.moeBlocks.count, $0.experts, $0.embedDim] }
        case .moe_weights_l1:
            return s(.weight, "wt_linear_t", .mlp(suffix: "experts.htoh4.weight", blocks: .moe)) { [$0.moeBlocks.count, $0.experts, $0.expertHidden, $0.embedDim] }
        case .moe_bias_l1:
            return s(.weight, "wt_bias_t", .mlp(suffix: "experts.htoh4.bias", blocks: .moe)) { [$0.moeBlocks.count, $0.experts, $0.expertHidden] }
        case .moe_weights_l2:
            return s(.weight, "wt_linear_t", .mlp(suffix: "experts.h4toh.weight", blocks: .moe)) { [$0.moeBlocks.count, $0.experts, $0.embedDim, $0.expertHidden] }
        case .moe_bias_l2:
            return s(.weight, "wt_bias_t", .mlp(suffix: "experts.h4toh.bias", blocks: .moe)) { [$0.moeBlocks.count, $0.experts, $0.embedDim] }
        case .vit_weights_l1:
            return s(.weight, "wt_linear_t", .mlp(suffix: "fc1.weight", blocks: .dense)) { [$0.denseBlocks.count, $0.mlpHidden, $0.embedDim] }
        case .vit_bias_l1: return s(.weight, "wt_bias_t", .mlp(suffix: "fc1.bias", blocks: .dense)) { [$0.denseBlocks.count, $0.mlpHidden] }
        case .vit_weights_l2:
            return s(.weight, "wt_linear_t", .mlp(suffix: "fc2.weight", blocks: .dense)) { [$0.denseBlocks.count, $0.embedDim, $0.mlpHidden] }
        case .vit_bias_l2: return s(.weight, "wt_bias_t", .mlp(suffix: "fc2.bias", blocks: .dense)) { [$0.denseBlocks.count, $0.embedDim] }
        case .norm_weights: return s(.weight, "wt_norm_t", .norm(.weight), slots: 2) { [$0.depth, 2, $0.embedDim] }
        case .norm_bias: return s(.weight, "wt_bias_t", .norm(.bias), slots: 2) { [$0.depth, 2, $0.embedDim] }
        }
    }

    public var role: KernelArgumentRole { spec.role }
    public var source: KernelArgumentSource { spec.source }
    /// Published element type name (`wt_linear_t`, …).
    public var typeName: String { spec.typeName }
    /// C shape for model `c` (nil: declared by the profile only; see ``Spec/shape``).
    public func shape(_ c: M3ViTConfig) -> [Int]? { spec.shape(c) }
    /// Elements of the C shape for `c` (nil when the shape is the profile's or overflows).
    public func elementCount(_ c: M3ViTConfig) -> Int? { shape(c).flatMap { checkedElementCount($0) } }

    /// The blocks the first axis runs over, for per-block arrays (nil for the others).
    public var blockSet: KernelBlockSet? {
        switch source {
        case .attention, .norm: return .all
        case .gate: return .moe
        case .mlp(_, let blocks): return blocks
        case .patchEmbed, .posEmbed, .none: return nil
        }
    }

    /// Elements of one block entry (the shape without its first axis) for `c`; nil for arrays that
    /// are not per block.
    public func elementsPerBlock(_ c: M3ViTConfig) -> Int? {
        guard blockSet != nil, let s = shape(c) else { return nil }
        return checkedElementCount(Array(s.dropFirst()))
    }

    /// Elements of one expert's part inside a MoE block entry (the shape without its first two axes),
    /// e.g. He·D for `moe_weights_l1`; nil for arrays that are not per expert.
    public func elementsPerExpert(_ c: M3ViTConfig) -> Int? {
        guard case .mlp(_, .moe) = source, let s = shape(c) else { return nil }
        return checkedElementCount(Array(s.dropFirst(2)))
    }

    /// The M³ViT tensor of block `block` behind an MLP array (`moe_weights_l1` →
    /// `blocks.N.mlp.experts.htoh4.weight`, `vit_bias_l2` → `blocks.N.mlp.fc2.bias`); nil for others.
    public func mlpTensor(block: Int) -> String? {
        guard case .mlp(let suffix, _) = source else { return nil }
        return "blocks.\(block).mlp.\(suffix)"
    }

    /// The weight arguments in `ViT_compute` order (what `pack` fills from a checkpoint).
    public static let weights: [KernelArgument] = allCases.filter { $0.role == .weight }

    /// The four expert arrays, in expert-record order: w1, b1, w2, b2.
    public static let experts: [KernelArgument] = [.moe_weights_l1, .moe_bias_l1, .moe_weights_l2, .moe_bias_l2]

    /// The argument named `name` (a kernel argument name), or nil.
    public init?(name: String) { self.init(rawValue: name) }
    public var name: String { rawValue }
}
