import Foundation
import MoepackCore
import MoepackModel
import MoepackPacking
import MoepackInference

/// A packed image's backbone followed by a checkpoint's decoders: each decoder gets the backbone
/// output computed with its task's gates (``TaskMap``), from the image alone.
public final class ImageWithHeads: Sendable {
    public let heads: TaskHeads
    public let taskMap: [String: Int]
    /// One backbone per task the map uses.
    public let backbones: [Int: ImageModel]

    /// - Throws: ``MoepackError`` when the image lacks a mapped task or is inconsistent.
    public init(image: PackedImage, mode: InferenceMode, heads: TaskHeads, taskMap: [String: Int]) throws {
        self.heads = heads
        self.taskMap = taskMap
        var b: [Int: ImageModel] = [:]
        for t in Set(taskMap.values).sorted() { b[t] = try ImageModel(image: image, mode: mode, task: t) }
        backbones = b
    }

    /// The tasks a packed image holds: every task of a `--task all` image, else its one task.
    public static func tasks(of image: PackedImage) -> [Int] {
        if let g = image.manifest.task_gates, !g.isEmpty { return g.map(\.task).sorted() }
        return [image.manifest.task]
    }

    /// Runs one frame: the backbone once per mapped task, then every decoder.
    /// - Returns: outputs in decoder order, each `[C, H, W]` at the frame's (model-size) resolution,
    ///   and the backbone results per task (routing, for reports).
    public func run(_ frame: Frame) throws -> (outputs: [TaskOutput], backbone: [Int: FrameResult]) {
        var results: [Int: FrameResult] = [:]
        for (t, model) in backbones { results[t] = try model.run(frame) }
        let outputs = try heads.run(tokens: { results[$0]!.output }, taskMap: taskMap)
        return (outputs, results)
    }
}
