import Foundation
import MoepackCore
import MoepackModel
import MoepackFixedPoint
import MoepackPacking

/// Which datapath runs the backbone from a packed image.
public enum InferenceMode: String, Sendable, Codable, CaseIterable {
    /// Dequantize the image's weights and run in float32 (exact GELU, float softmax): checks the packed weights.
    case float
    /// Emulate the Edge-MoE kernel's fixed-point arithmetic on the raw image values: what the board outputs.
    case fixed
}

/// One frame's result from either datapath, in a common form.
public struct FrameResult: Sendable {
    /// Backbone output [tokens, D] float32.
    public var output: [Float]
    /// x after each block, [depth][tokens·D] (empty unless recorded).
    public var blockOutputs: [[Float]]
    /// Per MoE block: top-k experts [tokens, k].
    public var routing: [MoERouting]
    /// Fixed mode only: wrap-arounds seen per layer and unit.
    public var overflow: [OverflowCount]
}

extension PackedImage {
    /// Raw fixed-point values of buffer `name` (sign- or zero-extended to Int32) with their format.
    public func rawArray(_ name: String) throws -> RawArray {
        let t = try type(of: name)
        let bytes = try raw(name)
        let shape = manifest.buffer(name)?.shape ?? KernelArgument(name: name)?.shape(manifest.model) ?? [bytes.count / t.containerBytes]
        return RawArray(raw: Self.ints(bytes, type: t), shape: shape,
                        fracBits: t.fractionBits, width: t.width, signed: t.signed)
    }

    /// Little-endian containers of type `t` → their values sign- (ap_fixed) or zero-extended
    /// (ap_ufixed) from the type's width to Int32; trailing bytes short of a container are ignored.
    public static func ints(_ bytes: ArraySlice<UInt8>, type t: FixedType) -> [Int32] {
        let eb = t.containerBytes
        let n = bytes.count / eb
        var out = [Int32](repeating: 0, count: n)
        bytes.withUnsafeBytes { src in
            for i in 0..<n {
                var v: UInt64 = 0
                for k in 0..<eb { v |= UInt64(src[i * eb + k]) << (8 * k) }
                let shift = UInt64(64 - t.width)
                let x = t.signed ? Int64(bitPattern: v << shift) >> Int64(shift) : Int64(bitPattern: (v << shift) >> shift)
                out[i] = Int32(truncatingIfNeeded: x)
            }
        }
        return out
    }

    /// The kernel's arrays as raw integers for the fixed-point emulation, with `task`'s gates in `moe_w_gate`.
    /// - Throws: ``MoepackError`` when a buffer is missing or the task is not in the image.
    public func kernelArrays(task: Int? = nil) throws -> KernelArrays {
        var arrays: [String: RawArray] = [:]
        for arg in KernelArgument.weights { arrays[arg.name] = try rawArray(arg.name) }
        let want = task ?? manifest.task
        if let gates = manifest.task_gates, !gates.isEmpty {
            guard let g = gates.first(where: { $0.task == want }) else {
                throw MoepackError(.usage, file: directory, item: "--task", "task \(want) is not in this image (packed: \(gates.map { String($0.task) }.joined(separator: ",")))")
            }
            let gate = KernelArgument.moe_w_gate.name
            let t = try type(of: gate)
            var a = arrays[gate]!
            a.raw = Self.ints(try raw(offset: g.offset, count: g.bytes), type: t)
            arrays[gate] = a
        } else if want != manifest.task {
            throw MoepackError(.usage, file: directory, item: "--task", "task \(want) is not in this image (packed: \(manifest.task); pack with --task all for every task)")
        }
        return KernelArrays(config: manifest.model, arrays: arrays)
    }
}

/// A backbone ready to run frames, built from a packed image alone.
public final class ImageModel: Sendable {
    public let mode: InferenceMode
    public let task: Int
    public let config: M3ViTConfig
    private let float: FloatBackbone?
    private let fixed: FixedBackbone?

    /// - Throws: ``MoepackError`` when the image is inconsistent or lacks the task.
    public init(image: PackedImage, mode: InferenceMode, task: Int? = nil) throws {
        self.mode = mode
        self.task = task ?? image.manifest.task
        config = image.manifest.model
        switch mode {
        case .float:
            float = FloatBackbone(weights: try image.backboneWeights(task: task))
            fixed = nil
        case .fixed:
            fixed = try FixedBackbone(arrays: try image.kernelArrays(task: task))
            float = nil
        }
    }

    /// How many frames `run(batch:)` should be given at once for the best throughput: the float path
    /// reads every weight matrix once per batch (``FloatBackbone/forward(batch:recordBlocks:)``);
    /// the fixed-point emulation runs frame by frame.
    public var preferredBatch: Int { mode == .float ? 4 : 1 }

    /// Runs several frames; the same results as one `run` per frame, in order.
    public func run(batch frames: [Frame], recordBlocks: Bool = false) throws -> [FrameResult] {
        if let float {
            return try float.forward(batch: frames.map(\.pixels), recordBlocks: recordBlocks).map {
                FrameResult(output: $0.output, blockOutputs: $0.blockOutputs, routing: $0.routing, overflow: [])
            }
        }
        return try frames.map { try run($0, recordBlocks: recordBlocks) }
    }

    /// Runs one frame.
    public func run(_ frame: Frame, recordBlocks: Bool = false) throws -> FrameResult {
        if let float {
            let r = try float.forward(pixels: frame.pixels, recordBlocks: recordBlocks)
            return FrameResult(output: r.output, blockOutputs: r.blockOutputs,
                               routing: r.routing, overflow: [])
        }
        let r = try fixed!.forward(pixels: frame.bytes, recordBlocks: recordBlocks)
        return FrameResult(output: r.output, blockOutputs: r.blockOutputs,
                           routing: r.routing, overflow: r.overflow)
    }
}

/// Splits frames 0..<count into consecutive batches of at most `atMost` frames, their number a
/// multiple of `workers` (unless there are fewer frames than that) and their sizes differing by at
/// most one, so that workers taking every `workers`-th batch get equal shares within one batch-size
/// step. Returns [] for no frames.
public func balancedBatches(_ count: Int, workers: Int, atMost: Int) -> [Range<Int>] {
    guard count > 0 else { return [] }
    let workers = max(1, workers), atMost = max(1, atMost)
    let needed = (count + atMost - 1) / atMost
    let n = min(count, (needed + workers - 1) / workers * workers)
    var start = 0
    return (0..<n).map { b in
        let size = count / n + (b < count % n ? 1 : 0)
        defer { start += size }
        return start..<start + size
    }
}
