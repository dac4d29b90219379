import MoepackCore
import MoepackModel
import MoepackPacking
import MoepackInference

/// What one MoE block fetches from DDR for one frame under the kernel's schedule (moe.cpp
/// compute_moe): every expert with a non-empty queue, in ascending index, loads its w1, b1, w2 and
/// b2 once (load_linear_weights / load_linear_bias), whatever its queue length.
public struct MoEBlockFetch: Sendable, Codable, Equatable {
    public var block: Int
    /// Experts visited, ascending.
    public var visit_order: [Int]
    /// Tokens queued per expert [experts].
    public var queue_lengths: [Int]
    /// DDR bytes read for the visited experts' weights and biases.
    public var bytes_fetched: Int
    /// AXI bursts of at most `burstBytes` those reads take (each part rounded up to whole bursts).
    public var bursts: Int
    /// Bytes of one expert's w1 + b1 + w2 + b2 (what the kernel's ping/pong buffers hold).
    public var largest_expert_bytes: Int
}

/// The DDR traffic of the MoE schedule for one frame's routing through `image`.
///
/// Each part is sized with its own element type's DDR container (``PackedImage/expertPartBytes()``:
/// moe_weights_l1 [He][D], moe_bias_l1 [He], moe_weights_l2 [D][He], moe_bias_l2 [D]), so narrower weights shrink the
/// traffic even when the biases keep their width.
/// - Parameters:
///   - routing: the MoE blocks' routing, in layer order (``FrameResult/routing``).
///   - burstBytes: AXI burst length in bytes (256-bit beats × 16 = 512 on the published build).
/// - Throws: ``MoepackError`` when the image lacks one of the expert arrays' types.
public func moeScheduleFetch(routing: [MoERouting], image: PackedImage, burstBytes: Int = 512) throws -> [MoEBlockFetch] {
    let parts = try image.expertPartBytes()
    let perExpert = parts.reduce(0, +)
    let burstsPerExpert = parts.map { ($0 + burstBytes - 1) / burstBytes }.reduce(0, +)
    return routing.map { route in
        let lengths = route.queues.map(\.count)
        let order = lengths.indices.filter { lengths[$0] > 0 }
        return MoEBlockFetch(block: route.block, visit_order: order, queue_lengths: lengths,
                             bytes_fetched: order.count * perExpert, bursts: order.count * burstsPerExpert,
                             largest_expert_bytes: perExpert)
    }
}
