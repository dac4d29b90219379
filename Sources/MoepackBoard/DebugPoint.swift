import MoepackCore
import MoepackInference

/// The kernel's `debug_id` argument (ViT_compute.cpp): where `ViT_compute` returns early, and what
/// `x` then holds.
///
/// `256` returns after the patch embedding. `layer·16 + k` returns after step k of that layer: 1 norm1,
/// 2 Q, 3 K, 4 Q·K, 5 V, 6 attention·V, 7 projection (these leave `x` as the layer's input), 8 the
/// attention residual add, 9 norm2, 10 and 11 the MLP or MoE (these leave `x` = input + attention),
/// 12 the MLP residual add (`x` = the layer's output). Any other value (0 included) runs everything.
/// The early return leaves the whole kernel, so only the first image of a batch is computed.
public enum DebugPoint: Sendable, Equatable {
    /// No early return.
    case none
    /// Returns after `step` (1…12) of `layer`, or after the patch embedding (`debug_id` 256).
    case step(layer: Int, step: Int)
    case patchEmbedding

    /// `debug_id` value returning after the patch embedding.
    public static let patchEmbeddingID = 256
    /// Steps per layer in the id space (`layer * 16 + k`) and the step that completes a layer.
    public static let stride = 16, lastStep = 12

    /// Decodes a `debug_id` register value for a model of `depth` layers.
    public init(debugID: Int, depth: Int) {
        if debugID == Self.patchEmbeddingID { self = .patchEmbedding; return }
        let layer = debugID / Self.stride, k = debugID % Self.stride
        if debugID > 0, layer < depth, (1...Self.lastStep).contains(k) {
            self = .step(layer: layer, step: k)
        } else {
            self = .none
        }
    }

    /// Decodes a `debug_id` the kernel defines for a model of `depth` layers (the depth is the
    /// manifest's): 0, 256, or `layer·16 + k` with `layer < depth` and k in 1…12.
    /// - Throws: ``MoepackError`` `.usage` naming `item` for any other value (the kernel would run
    ///   everything and the comparison would be with the wrong point).
    public init(validating debugID: Int, depth: Int, item: String = "debug_id") throws {
        let point = DebugPoint(debugID: debugID, depth: depth)
        guard point != .none || debugID == 0 else {
            throw MoepackError(.usage, item: item, "\(debugID) is not 0, \(Self.patchEmbeddingID) or layer*\(Self.stride)+k with layer < \(depth) (the model's depth) and k in 1...\(Self.lastStep)")
        }
        self = point
    }

    /// `debug_id` returning with layer `layer`'s output in x.
    public static func layerOutputID(_ layer: Int) -> Int { layer * stride + lastStep }

    /// Whether the kernel returns early (only the first image is computed).
    public var returnsEarly: Bool { self != .none }

    /// What the emulation must compute for `x` to hold what the kernel leaves in it.
    public var stopPoint: FixedStopPoint? {
        switch self {
        case .none: return nil
        case .patchEmbedding: return .patchEmbedding
        case let .step(layer, step):
            if step == Self.lastStep { return .layerOutput(layer: layer) }
            if step >= 8 { return .attentionResidual(layer: layer) }
            return layer == 0 ? .patchEmbedding : .layerOutput(layer: layer - 1)
        }
    }
}
