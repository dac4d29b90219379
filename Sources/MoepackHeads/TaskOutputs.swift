import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel

/// One task's output for one frame: `[channels, height, width]` float32, what M³ViT's multi-task
/// model returns for that task.
public struct TaskOutput: Sendable {
    public var task: String
    public var channels: Int
    public var height: Int
    public var width: Int
    public var values: [Float]
    /// Backbone task (gate set) whose output fed the decoder; nil when features were given directly.
    public var backboneTask: Int?

    public init(task: String, channels: Int, height: Int, width: Int, values: [Float], backboneTask: Int? = nil) {
        self.task = task
        self.channels = channels
        self.height = height
        self.width = width
        self.values = values
        self.backboneTask = backboneTask
    }

    /// `<task>.npy` and `<task>.png` written into `folder` (through `path`, which maps a file name to
    /// its staged path). `frame` `[3, H, W]` uint8 is blended under segmentations.
    public func write(path: (String) -> String, frame: [UInt8]?) throws {
        try NpyWriter.write(Tensor(shape: [channels, height, width], values: values), to: path("\(task).npy"))
        try TaskRenderer.render(task: task, output: values, channels: channels, height: height, width: width, frame: frame)
            .writePNG(to: path("\(task).png"))
    }
}

/// Which backbone task (gate set) feeds each decoder.
public enum TaskMap {
    /// Parses `semseg=0,depth=1`.
    /// - Throws: ``MoepackError`` `.usage` on a malformed entry, an unknown decoder or a task the image
    ///   does not hold.
    public static func parse(_ text: String, heads: [TaskHeadInfo], imageTasks: [Int]) throws -> [String: Int] {
        var map: [String: Int] = [:]
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let kv = part.split(separator: "=", omittingEmptySubsequences: false)
            guard kv.count == 2, let t = Int(kv[1].trimmingCharacters(in: .whitespaces)) else {
                throw MoepackError(.usage, item: "--task-map", "'\(part)' is not <decoder>=<task index> (e.g. semseg=0,depth=1)")
            }
            let name = kv[0].trimmingCharacters(in: .whitespaces)
            guard heads.contains(where: { $0.task == name }) else {
                throw MoepackError(.usage, item: "--task-map", "no decoder '\(name)' in the checkpoint (decoders: \(heads.map(\.task).joined(separator: ", ")))")
            }
            guard imageTasks.contains(t) else {
                throw MoepackError(.usage, item: "--task-map", "task \(t) for '\(name)' is not in the image (packed: \(imageTasks.map(String.init).joined(separator: ",")); pack with --task all)")
            }
            map[name] = t
        }
        return map
    }

    /// Each decoder gets the backbone output of its task index (``TaskHeadInfo/index``: M³ViT's task
    /// list, not the file's key order); an image holding one task feeds every decoder from it.
    /// `overrides` (from ``parse(_:heads:imageTasks:)``) win.
    /// - Throws: ``MoepackError`` `.usage` when decoder i's task is not in an image of several tasks, or
    ///   its index is a guess (``TaskIndexSource/unordered``) and `overrides` do not name it.
    public static func resolve(heads: [TaskHeadInfo], imageTasks: [Int], overrides: [String: Int] = [:]) throws -> [String: Int] {
        var map: [String: Int] = [:]
        for h in heads {
            if let t = overrides[h.task] { map[h.task] = t; continue }
            if imageTasks.count == 1 { map[h.task] = imageTasks[0]; continue }
            if h.indexSource == .unordered {
                let names = heads.map(\.task)
                throw MoepackError(.usage, item: "--task-map", "decoders \(names.joined(separator: ", ")) are not M³ViT's task names and the checkpoint's container keeps no order, so which task's gates feed '\(h.task)' is ambiguous; name every decoder's task, e.g. --task-map \(names.enumerated().map { "\($1)=\($0)" }.joined(separator: ","))")
            }
            guard imageTasks.contains(h.index) else {
                throw MoepackError(.usage, item: "--task-map", "decoder '\(h.task)' is task \(h.index), which is not in the image (packed: \(imageTasks.map(String.init).joined(separator: ","))); name its task with --task-map \(h.task)=N")
            }
            map[h.task] = h.index
        }
        return map
    }
}
