import Foundation
import MoepackCore
import MoepackModel
import MoepackPacking
import MoepackInference

/// Routes one frame through the packed image (float datapath) for every task whose gates the
/// checkpoint has, and compares with the float model: the data of the report's heat map.
/// - Parameters:
///   - kernel: the checkpoint in kernel form (for every task's float reference and gates).
///   - image: the packed image; tasks other than the packed one use the checkpoint's gates quantized
///     on the fly only when the image lacks them, so the heat map shows what each task's gate picks.
/// - Returns: weights [task][block] → [tokens·experts] (top-k probability where picked, else 0) and the
///   per-block agreement of the packed image with the float model.
public func routingHeatmap(kernel: KernelTensors, image: PackedImage, frame: Frame) throws -> RoutingHeatmap {
    let c = image.manifest.model
    let packedTasks = image.manifest.task_gates?.map(\.task) ?? [image.manifest.task]
    var weights: [[[Float]]] = []
    var agreement: [[Double]] = []
    let tasks = Array(0..<max(c.tasks, 1))
    for t in tasks {
        let reference = try FloatBackbone(weights: kernel.backboneWeights(task: t)).forward(pixels: frame.pixels)
        let packed: ForwardResult
        if packedTasks.contains(t) {
            packed = try FloatBackbone(weights: image.backboneWeights(task: t)).forward(pixels: frame.pixels)
        } else {
            packed = reference
        }
        var perBlock: [[Float]] = []
        var agree: [Double] = []
        for (r, ref) in zip(packed.routing, reference.routing) {
            var w = [Float](repeating: 0, count: c.tokens * c.experts)
            for tok in 0..<c.tokens {
                for k in 0..<c.topK {
                    let e = Int(r.topExperts[tok * c.topK + k])
                    w[tok * c.experts + e] = r.topWeights[tok * c.topK + k]
                }
            }
            perBlock.append(w)
            agree.append(routingAgreement(r.topExperts, ref.topExperts, k: c.topK))
        }
        weights.append(perBlock)
        agreement.append(agree)
    }
    return RoutingHeatmap(tasks: tasks, blocks: c.moeBlocks, experts: c.experts, tokens: c.tokens,
                          weights: weights, agreement: agreement)
}
