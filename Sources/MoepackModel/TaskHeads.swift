import Foundation
import MoepackCore
import MoepackCheckpoint

/// The tensors of one M³ViT task decoder (`VisionTransformerUpHead`, models/vit_up_head.py), named
/// relative to `decoders.<task>.`. `{i}` is a layer index.
///
/// Two structures are supported, the ones the decoder builds for `num_conv` 4 and 2:
/// - 4: `conv_0…conv_3` 3×3 (padding 1) each followed by BatchNorm `syncbn_fc_i` and ReLU, then the
///   1×1 `conv_4` to the task's channels;
/// - 2: `conv_0` (3×3 padding 1, or 1×1) → `syncbn_fc_0` → ReLU, then the 1×1 `conv_1`.
/// Both start with the head's own LayerNorm `norm` (eps 1e-6) over the tokens.
public enum HeadNameTable {
    /// Prefix of every decoder tensor after the training prefixes are stripped (``NameTable/stripPrefixes(_:)``).
    public static let decoderPrefix = "decoders."
    public static let norm = ["norm.weight", "norm.bias"]
    public static let conv = ["conv_{i}.weight", "conv_{i}.bias"]
    /// BatchNorm in eval mode: affine weight/bias and running statistics (`num_batches_tracked` is
    /// bookkeeping, never read).
    public static let batchNorm = ["syncbn_fc_{i}.weight", "syncbn_fc_{i}.bias",
                                   "syncbn_fc_{i}.running_mean", "syncbn_fc_{i}.running_var"]
    public static let bookkeeping = "syncbn_fc_{i}.num_batches_tracked"
    /// LayerNorm epsilon of the decoder's `norm` (partial(nn.LayerNorm, eps=1e-6)).
    public static let layerNormEps: Float = 1e-6
    /// BatchNorm epsilon (mmcv SyncBN default, 1e-5).
    public static let batchNormEps: Double = 1e-5

    /// Every tensor name a decoder of `numConv` convolutions must hold (relative to its prefix).
    public static func required(numConv: Int) -> [String] {
        var names = norm
        for i in 0...lastConv(numConv: numConv) { names += conv.map { NameTable.fill($0, i: i) } }
        for i in 0..<(numConv == 4 ? 4 : 1) { names += batchNorm.map { NameTable.fill($0, i: i) } }
        return names
    }

    /// Index of the final 1×1 convolution: `conv_4` with four 3×3 layers before it, `conv_1` with one.
    public static func lastConv(numConv: Int) -> Int { numConv == 4 ? 4 : 1 }

    /// Splits a prefix-stripped state_dict key into (task, name inside the decoder).
    public static func split(_ stripped: String) -> (task: String, name: String)? {
        guard stripped.hasPrefix(decoderPrefix) else { return nil }
        let rest = stripped.dropFirst(decoderPrefix.count)
        guard let dot = rest.firstIndex(of: "."), dot != rest.startIndex else { return nil }
        return (String(rest[..<dot]), String(rest[rest.index(after: dot)...]))
    }

    /// True when `name` (inside a decoder) is one of the table's patterns for some layer index.
    static func isKnown(_ name: String) -> Bool {
        (norm + conv + batchNorm + [bookkeeping]).contains { NameTable.match($0, name) != nil }
    }
}

/// How the decoder upsamples when it has two convolutions (`num_upsampe_layer`, a config value that
/// the weights do not show): 1 resizes `conv_1`'s output to the image size; 2 first resizes to
/// `4·w × 4·w` (an int size in F.interpolate), then `conv_1`, then to the image size.
public enum TwoConvUpsampling: Int, Sendable, Codable, CaseIterable {
    case one = 1
    case two = 2
}

/// One task decoder found in a checkpoint: where its tensors are, what structure they make.
public struct TaskHeadInfo: Sendable, Equatable {
    /// Task name as in `decoders.<task>.` (e.g. `semseg`, `depth`).
    public var task: String
    /// Task index (which gate set of the backbone belongs to this decoder): position in M³ViT's task
    /// list (``M3ViTTaskOrder``) when every decoder name is in it, else in the checkpoint's stored order.
    public var index: Int
    /// Where ``index`` comes from.
    public var indexSource: TaskIndexSource = .taskList
    /// `num_conv`: 4 or 2.
    public var numConv: Int
    /// Output channels (classes for segmentation, 1 for depth, 3 for normals).
    public var outChannels: Int
    /// Hidden channels of the convolutions (256 in M³ViT).
    public var channels: Int
    /// Backbone width D the decoder takes.
    public var embedDim: Int
    /// Kernel size of `conv_0` (3, or 1 for a two-convolution head built with conv3x3_conv1x1=False).
    public var conv0Kernel: Int
}

/// Where a decoder's task index comes from.
public enum TaskIndexSource: Sendable, Equatable {
    /// M³ViT's task list (``M3ViTTaskOrder``): every decoder name is a known task.
    case taskList
    /// The order the decoders were stored in a pickle (`torch.save` keeps the state_dict's insertion order).
    case storedOrder
    /// Unknown names in a container that keeps no order (safetensors sorts its keys; HDF5 and .npz
    /// list by name): the index is a guess, and a task map must name it.
    case unordered
}

/// M³ViT's task order: `utils/config.py` `parse_task_dictionary` appends each included task in this
/// order to `TASKS.NAMES`, which orders both the decoders and the gates (Cityscapes: semseg, depth;
/// PASCAL-Context: semseg, human_parts, sal, normals, edge; NYUD: semseg, normals, edge, depth).
public enum M3ViTTaskOrder {
    public static let names = ["semseg", "human_parts", "sal", "normals", "edge", "depth"]

    /// Task indices for `decoders` found in a `container`: by the task list when every name is in it,
    /// else stored order for a pickle, else stored order marked ``TaskIndexSource/unordered``.
    public static func indices(of decoders: [String], container: CheckpointContainer) -> [(index: Int, source: TaskIndexSource)] {
        if decoders.allSatisfy(names.contains) {
            let sorted = decoders.sorted { names.firstIndex(of: $0)! < names.firstIndex(of: $1)! }
            return decoders.map { (sorted.firstIndex(of: $0)!, .taskList) }
        }
        let pickled: Bool = [.pytorchZip, .pytorchLegacy, .expertParallelFolder].contains(container)
        return decoders.indices.map { ($0, pickled ? .storedOrder : .unordered) }
    }
}

/// The decoders of a checkpoint, located by name without reading any data.
public final class TaskHeadsCheckpoint: @unchecked Sendable {
    public let source: any TensorSource
    /// Decoders in task order (``TaskHeadInfo/index``).
    public let heads: [TaskHeadInfo]
    /// Decoder-relative name → source name, per task.
    private let names: [String: [String: String]]

    /// Finds `decoders.<task>.*` among the source's entries (training prefixes stripped) and checks
    /// each decoder's structure and shapes.
    /// - Throws: ``MoepackError`` `.badInput` when there are no decoders, a tensor is missing (named, with
    ///   the structure that needs it) or a decoder holds a tensor of another structure; `.mismatch` on a
    ///   shape that does not fit.
    public init(source: any TensorSource) throws {
        self.source = source
        var order: [String] = []
        var map: [String: [String: String]] = [:]
        for e in source.entries {
            guard let (task, name) = HeadNameTable.split(NameTable.stripPrefixes(e.name)) else { continue }
            if map[task] == nil { order.append(task); map[task] = [:] }
            if let prev = map[task]![name] {
                throw MoepackError(.badInput, file: source.path, item: e.name, "decoder tensor already given by '\(prev)'")
            }
            map[task]![name] = e.name
        }
        guard !order.isEmpty else {
            throw MoepackError(.badInput, file: source.path, item: "decoders.*",
                               "no task decoders in this checkpoint (expected M³ViT's 'decoders.<task>.conv_0.weight', …)")
        }
        names = map
        let indices = M3ViTTaskOrder.indices(of: order, container: source.container)
        heads = try order.enumerated().map { i, task in
            var h = try Self.describe(task: task, index: indices[i].index, names: map[task]!, source: source)
            h.indexSource = indices[i].source
            return h
        }.sorted { $0.index < $1.index }
    }

    /// The decoder for a task name.
    public func head(_ task: String) -> TaskHeadInfo? { heads.first { $0.task == task } }

    static func describe(task: String, index: Int, names: [String: String], source: any TensorSource) throws -> TaskHeadInfo {
        let prefix = "decoders.\(task)."
        for n in names.keys.sorted() where !HeadNameTable.isKnown(n) {
            throw MoepackError(.unsupported, file: source.path, item: names[n]!,
                               "not a tensor of M³ViT's VisionTransformerUpHead (num_conv 2 or 4, no multi-level outputs); only that decoder is supported")
        }
        let fourConv = ["conv_2.weight", "conv_3.weight", "conv_4.weight", "syncbn_fc_1.weight"].contains { names[$0] != nil }
        guard fourConv || names["conv_0.weight"] != nil else {
            throw MoepackError(.badInput, file: source.path, item: prefix + "conv_0.weight",
                               "missing tensor (a VisionTransformerUpHead decoder needs conv_0 … conv_4, or conv_0/conv_1 with num_conv=2)")
        }
        let numConv = fourConv ? 4 : 2
        for n in HeadNameTable.required(numConv: numConv) where names[n] == nil {
            throw MoepackError(.badInput, file: source.path, item: prefix + n,
                               "missing tensor (a num_conv=\(numConv) VisionTransformerUpHead decoder needs it)")
        }
        func shape(_ n: String) -> [Int] { source.entry(names[n]!)?.shape ?? [] }
        let lastIndex = HeadNameTable.lastConv(numConv: numConv)
        let last = "conv_\(lastIndex).weight"
        let d = shape("norm.weight").first ?? 0
        let w0 = shape("conv_0.weight"), wl = shape(last)
        guard w0.count == 4, wl.count == 4, w0[2] == w0[3], w0[1] == d else {
            throw MoepackError(.mismatch, file: source.path, item: names["conv_0.weight"]!,
                               "shape \(shapeString(w0)), expected [channels, \(d), k, k] (D from norm.weight)")
        }
        let ch = w0[0], k0 = w0[2], c = wl[0]
        var want: [(String, [Int])] = [("norm.weight", [d]), ("norm.bias", [d]),
                                        ("conv_0.bias", [ch]), (last, [c, ch, 1, 1]), ("conv_\(lastIndex).bias", [c])]
        if numConv == 4 {
            guard k0 == 3 else {
                throw MoepackError(.mismatch, file: source.path, item: names["conv_0.weight"]!,
                                   "shape \(shapeString(w0)): num_conv=4 decoders use 3×3 convolutions")
            }
            for i in 1...3 {
                want += [("conv_\(i).weight", [ch, ch, 3, 3]), ("conv_\(i).bias", [ch])]
            }
        } else if k0 != 3 && k0 != 1 {
            throw MoepackError(.mismatch, file: source.path, item: names["conv_0.weight"]!,
                               "shape \(shapeString(w0)): conv_0 is 3×3 or 1×1")
        }
        for i in 0..<(numConv == 4 ? 4 : 1) {
            want += HeadNameTable.batchNorm.map { (NameTable.fill($0, i: i), [ch]) }
        }
        for (n, s) in want where shape(n) != s {
            throw MoepackError(.mismatch, file: source.path, item: names[n]!, "shape \(shapeString(shape(n))), expected \(shapeString(s))")
        }
        return TaskHeadInfo(task: task, index: index, numConv: numConv, outChannels: c, channels: ch, embedDim: d, conv0Kernel: k0)
    }

    /// Reads one decoder tensor (name relative to `decoders.<task>.`) as float32, refusing NaN/Inf.
    public func read(task: String, _ name: String) throws -> [Float] {
        guard let s = names[task]?[name] else {
            throw MoepackError(.badInput, file: source.path, item: "decoders.\(task).\(name)", "missing tensor")
        }
        let v = try source.readFloat32(s)
        if let bad = v.withUnsafeBufferPointer(firstNonFiniteIndex) {
            throw MoepackError(.numeric, file: source.path, item: s, "\(v[bad]) at flat index \(bad); NaN/Inf weights are refused")
        }
        return v
    }
}

/// A convolution with its BatchNorm folded in, ready for GEMMs.
public struct FoldedConv: Sendable {
    /// Weights [out, in·k·k] row-major (PyTorch's [out, in, k, k] flattened), BatchNorm scale applied.
    public var weight: [Float]
    /// Bias [out]: (b − running_mean)·γ/√(var + eps) + β, or the conv bias when there is no BatchNorm.
    public var bias: [Float]
    public var outChannels: Int
    public var inChannels: Int
    /// Kernel side (3 or 1); 3×3 convolutions use padding 1, stride 1.
    public var kernel: Int
    /// ReLU after this layer.
    public var relu: Bool
}

/// One step of a decoder's forward pass after the tokens become a `[D, h, w]` map.
public enum HeadStep: Sendable, Equatable {
    /// Convolution `i` (folded BatchNorm, optional ReLU).
    case conv(Int)
    /// Bilinear ×2 on both sides (align_corners=False).
    case upsample2
    /// Bilinear to a square of 4·w on each side (the two-convolution head's int-size interpolate).
    case upsampleSquare4w
    /// Bilinear to the configured image size.
    case resizeToImage
}

/// A decoder's weights in compute form: LayerNorm, folded convolutions and the step list.
public struct TaskHeadWeights: Sendable {
    public var info: TaskHeadInfo
    public var normWeight: [Float]
    public var normBias: [Float]
    public var convs: [FoldedConv]
    public var steps: [HeadStep]

    /// Reads one decoder and folds each BatchNorm (eval mode: running statistics, eps 1e-5) into the
    /// convolution before it, in float64, rounded once to float32.
    /// - Throws: ``MoepackError`` from reading; `.numeric` when a running variance is negative.
    public init(checkpoint: TaskHeadsCheckpoint, task: String, twoConvUpsampling: TwoConvUpsampling = .one) throws {
        guard let info = checkpoint.head(task) else {
            throw MoepackError(.usage, file: checkpoint.source.path, item: task,
                               "no decoder for this task (decoders: \(checkpoint.heads.map(\.task).joined(separator: ", ")))")
        }
        self.info = info
        normWeight = try checkpoint.read(task: task, "norm.weight")
        normBias = try checkpoint.read(task: task, "norm.bias")
        let n = HeadNameTable.lastConv(numConv: info.numConv)
        var convs: [FoldedConv] = []
        for i in 0...n {
            let w = try checkpoint.read(task: task, "conv_\(i).weight")
            let b = try checkpoint.read(task: task, "conv_\(i).bias")
            let isLast = i == n
            let k = i == 0 ? info.conv0Kernel : (isLast ? 1 : 3)
            let cin = i == 0 ? info.embedDim : info.channels
            var conv = FoldedConv(weight: w, bias: b, outChannels: isLast ? info.outChannels : info.channels,
                                  inChannels: cin, kernel: k, relu: !isLast)
            if !isLast {
                func bn(_ p: String) throws -> [Float] { try checkpoint.read(task: task, "syncbn_fc_\(i).\(p)") }
                try Self.fold(&conv, gamma: bn("weight"), beta: bn("bias"), mean: bn("running_mean"), variance: bn("running_var"),
                              item: "decoders.\(task).syncbn_fc_\(i).running_var", file: checkpoint.source.path)
            }
            convs.append(conv)
        }
        self.convs = convs
        if info.numConv == 4 {
            steps = [.conv(0), .upsample2, .conv(1), .upsample2, .conv(2), .upsample2, .conv(3), .conv(4), .upsample2]
        } else {
            steps = twoConvUpsampling == .two ? [.conv(0), .upsampleSquare4w, .conv(1), .resizeToImage]
                                               : [.conv(0), .conv(1), .resizeToImage]
        }
    }

    static func fold(_ c: inout FoldedConv, gamma: [Float], beta: [Float], mean: [Float], variance: [Float],
                     item: String, file: String) throws {
        let per = c.inChannels * c.kernel * c.kernel
        for o in 0..<c.outChannels {
            guard variance[o] >= 0 else {
                throw MoepackError(.numeric, file: file, item: item, "negative running variance \(variance[o]) at channel \(o)")
            }
            let s = Double(gamma[o]) / (Double(variance[o]) + HeadNameTable.batchNormEps).squareRoot()
            for j in 0..<per { c.weight[o * per + j] = Float(Double(c.weight[o * per + j]) * s) }
            c.bias[o] = Float((Double(c.bias[o]) - Double(mean[o])) * s + Double(beta[o]))
        }
    }
}
