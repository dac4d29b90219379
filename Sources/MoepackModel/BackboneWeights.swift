import MoepackCore

/// Hyper-parameters of an M³ViT backbone, inferred from tensor shapes (see ``inferConfig``) or read
/// from a kernel profile.
public struct M3ViTConfig: Sendable, Codable, Equatable {
    /// Feature dimension D (192 for ViT-Tiny).
    public var embedDim: Int
    /// Number of transformer blocks (12).
    public var depth: Int
    /// Attention heads; head dim = embedDim / heads (3 × 64).
    public var heads: Int
    /// Indices of MoE blocks (odd blocks 1,3,…,11 in the published build).
    public var moeBlocks: [Int]
    /// Experts per MoE block (16).
    public var experts: Int
    /// Hidden width of one expert MLP (384).
    public var expertHidden: Int
    /// Hidden width of the dense MLP (768).
    public var mlpHidden: Int
    /// Number of task gates per MoE block (2: semantic segmentation, depth).
    public var tasks: Int
    /// Experts chosen per token (2).
    public var topK: Int
    /// Tokens = patches + 1 cls token (129).
    public var tokens: Int
    /// Patch side in pixels (16).
    public var patchSize: Int
    /// Input channels (3).
    public var inChans: Int
    /// Input height and width in pixels (128 × 256).
    public var imageHeight: Int
    public var imageWidth: Int
    /// LayerNorm epsilon (1e-6).
    public var layerNormEps: Float

    public init(embedDim: Int, depth: Int, heads: Int, moeBlocks: [Int], experts: Int, expertHidden: Int,
                mlpHidden: Int, tasks: Int, topK: Int = 2, tokens: Int, patchSize: Int, inChans: Int,
                imageHeight: Int, imageWidth: Int, layerNormEps: Float = 1e-6) {
        self.embedDim = embedDim; self.depth = depth; self.heads = heads; self.moeBlocks = moeBlocks
        self.experts = experts; self.expertHidden = expertHidden; self.mlpHidden = mlpHidden
        self.tasks = tasks; self.topK = topK; self.tokens = tokens; self.patchSize = patchSize
        self.inChans = inChans; self.imageHeight = imageHeight; self.imageWidth = imageWidth
        self.layerNormEps = layerNormEps
    }

    /// Head dimension = embedDim / heads.
    public var headDim: Int { embedDim / heads }
    /// Attention scale = headDim^-0.5 (0.125 for 64).
    public var attentionScale: Float { 1 / Float(headDim).squareRoot() }
    /// Patches per image = (H/p)·(W/p) (128).
    public var patches: Int { (imageHeight / patchSize) * (imageWidth / patchSize) }
    /// Dense (non-MoE) block indices, ascending.
    public var denseBlocks: [Int] { (0..<depth).filter { !moeBlocks.contains($0) } }

    /// Checks that the configuration describes a model moepack can lay out and run: every size
    /// positive and below 2^20 (depth below 1024), D divisible by heads, the image a whole number of
    /// patches with tokens = patches + 1, MoE block indices distinct and inside the depth, top-k within
    /// the experts, a finite positive LayerNorm epsilon, and every kernel array below 2^40 elements.
    /// Profiles and manifests are JSON anyone can edit: this runs before anything is sized from them.
    /// - Throws: ``MoepackError`` `.badInput` naming `file`, the field and the problem.
    public func validate(file: String) throws {
        func bad(_ field: String, _ message: String) -> MoepackError {
            MoepackError(.badInput, file: file, item: "model.\(field)", message)
        }
        let sizes: [(String, Int, Int)] = [
            ("embedDim", embedDim, 1), ("heads", heads, 1), ("tokens", tokens, 1), ("patchSize", patchSize, 1),
            ("inChans", inChans, 1), ("imageHeight", imageHeight, 1), ("imageWidth", imageWidth, 1),
            ("mlpHidden", mlpHidden, 0), ("experts", experts, 0), ("expertHidden", expertHidden, 0),
            ("tasks", tasks, 0), ("topK", topK, 0),
        ]
        for (name, v, least) in sizes where v < least || v >= 1 << 20 {
            throw bad(name, "\(v) is outside \(least)…\((1 << 20) - 1)")
        }
        guard depth >= 1, depth < 1024 else { throw bad("depth", "\(depth) is outside 1…1023") }
        guard embedDim % heads == 0 else { throw bad("heads", "embedDim \(embedDim) is not divisible by \(heads) heads") }
        guard imageHeight % patchSize == 0, imageWidth % patchSize == 0 else {
            throw bad("patchSize", "\(imageHeight)×\(imageWidth) is not a whole number of \(patchSize)-pixel patches")
        }
        guard tokens == patches + 1 else { throw bad("tokens", "\(tokens), expected patches + 1 = \(patches + 1)") }
        guard Set(moeBlocks).count == moeBlocks.count, moeBlocks.allSatisfy({ $0 >= 0 && $0 < depth }) else {
            throw bad("moeBlocks", "\(moeBlocks) must be distinct block indices in 0…\(depth - 1)")
        }
        if !moeBlocks.isEmpty {
            guard experts >= 1, expertHidden >= 1, tasks >= 1 else { throw bad("experts", "MoE blocks need experts, expertHidden and tasks ≥ 1") }
            guard topK >= 1, topK <= experts else { throw bad("topK", "\(topK) is outside 1…\(experts) experts") }
        }
        if moeBlocks.count < depth, mlpHidden < 1 { throw bad("mlpHidden", "dense blocks need mlpHidden ≥ 1") }
        guard layerNormEps.isFinite, layerNormEps > 0 else { throw bad("layerNormEps", "\(layerNormEps) must be finite and > 0") }
        // The largest arrays: expert weights, attention weights, the attention scratch (heads·T·T).
        for (name, dims) in [("experts", [moeBlocks.count, experts, expertHidden, embedDim]),
                             ("depth", [depth, 4, embedDim, embedDim]), ("tokens", [heads, tokens, tokens]),
                             ("mlpHidden", [depth, mlpHidden, embedDim])]
        where checkedElementCount(dims, limit: (1 << 40) - 1) == nil {
            throw bad(name, "arrays of \(dims.map(String.init).joined(separator: "×")) elements are too large")
        }
    }

    /// The published Edge-MoE ZCU102 build: ViT-Tiny, 12 blocks, odd blocks MoE (16 × 384), 2 tasks, 128×256.
    public static let edgeMoE = M3ViTConfig(
        embedDim: 192, depth: 12, heads: 3, moeBlocks: [1, 3, 5, 7, 9, 11], experts: 16, expertHidden: 384,
        mlpHidden: 768, tasks: 2, topK: 2, tokens: 129, patchSize: 16, inChans: 3, imageHeight: 128,
        imageWidth: 256)
}

/// The MLP half of a block: dense (fc1 → GELU → fc2) or a mixture of experts.
public enum MLPWeights: Sendable, Equatable {
    /// fc1 weight [mlpHidden, D] (out, in), bias [mlpHidden]; fc2 weight [D, mlpHidden], bias [D].
    case dense(fc1Weight: [Float], fc1Bias: [Float], fc2Weight: [Float], fc2Bias: [Float])
    /// gates[task] = gate matrix [experts, D] (already transposed from M³ViT's w_gate [D, experts]);
    /// w1 = htoh4 weight [experts, expertHidden, D], b1 [experts, expertHidden];
    /// w2 = h4toh weight [experts, D, expertHidden], b2 [experts, D].
    case moe(gates: [[Float]], w1: [Float], b1: [Float], w2: [Float], b2: [Float])
}

/// One transformer block in kernel form (all linear weights [out, in], C order, float32).
public struct BlockWeights: Sendable, Equatable {
    /// LayerNorm 1 and 2 scale and shift, each [D].
    public var norm1Weight: [Float], norm1Bias: [Float], norm2Weight: [Float], norm2Bias: [Float]
    /// Q, K, V and output projection weights, each [D, D] (out, in); biases [D].
    public var qWeight: [Float], kWeight: [Float], vWeight: [Float], projWeight: [Float]
    public var qBias: [Float], kBias: [Float], vBias: [Float], projBias: [Float]
    public var mlp: MLPWeights

    public init(norm1Weight: [Float], norm1Bias: [Float], norm2Weight: [Float], norm2Bias: [Float],
                qWeight: [Float], kWeight: [Float], vWeight: [Float], projWeight: [Float],
                qBias: [Float], kBias: [Float], vBias: [Float], projBias: [Float], mlp: MLPWeights) {
        self.norm1Weight = norm1Weight; self.norm1Bias = norm1Bias
        self.norm2Weight = norm2Weight; self.norm2Bias = norm2Bias
        self.qWeight = qWeight; self.kWeight = kWeight; self.vWeight = vWeight; self.projWeight = projWeight
        self.qBias = qBias; self.kBias = kBias; self.vBias = vBias; self.projBias = projBias
        self.mlp = mlp
    }
}

/// The whole backbone in the form the kernel consumes (folds applied), as float32.
///
/// Input convention: the kernel's pixel `ap_ufixed<8,0>` = byte/256, so the patch embedding here
/// already has the input normalisation folded in, and `posEmbed` row 0 already includes the cls token.
/// The backbone output is `x` after the last block ([tokens, D], no final norm).
public struct BackboneWeights: Sendable, Equatable {
    public var config: M3ViTConfig
    /// Conv weight [D, inChans, patch, patch] and bias [D].
    public var patchEmbedWeight: [Float]
    public var patchEmbedBias: [Float]
    /// [tokens, D]; row 0 = cls token + pos_embed[0].
    public var posEmbed: [Float]
    public var blocks: [BlockWeights]
    /// Which task's gate the forward pass uses (index into `MLPWeights.moe.gates`).
    public var task: Int

    public init(config: M3ViTConfig, patchEmbedWeight: [Float], patchEmbedBias: [Float], posEmbed: [Float],
                blocks: [BlockWeights], task: Int) {
        self.config = config; self.patchEmbedWeight = patchEmbedWeight; self.patchEmbedBias = patchEmbedBias
        self.posEmbed = posEmbed; self.blocks = blocks; self.task = task
    }
}
