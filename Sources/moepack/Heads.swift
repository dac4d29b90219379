import ArgumentParser
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint
import MoepackPacking
import MoepackInference
import MoepackHeads
import MoepackVerify

extension TwoConvUpsampling: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: Int(argument) ?? 0) }
}

/// Decoder options shared by heads, run and verify.
struct HeadOptions: ParsableArguments {
    @Option(help: "num_upsampe_layer of two-convolution decoders (1 or 2; the weights do not show it). Four-convolution decoders always upsample ×2 four times.")
    var twoConvUpsampling: TwoConvUpsampling = .one

    /// Opens the checkpoint's decoders and reads them (only now are their tensors read).
    func load(_ path: String, open: OpenOptions, config: M3ViTConfig, tasks: [String]? = nil) throws -> (TaskHeadsCheckpoint, TaskHeads) {
        let ck = try TaskHeadsCheckpoint(source: try openCheckpointIsolated(path, options: open))
        for h in ck.heads where h.embedDim != config.embedDim {
            throw MoepackError(.mismatch, file: path, item: "decoders.\(h.task).norm.weight",
                               "decoder takes D = \(h.embedDim), the backbone gives D = \(config.embedDim)")
        }
        let heads = try TaskHeads(checkpoint: ck, imageHeight: config.imageHeight, imageWidth: config.imageWidth,
                                  patch: config.patchSize, tasks: tasks, twoConvUpsampling: twoConvUpsampling)
        return (ck, heads)
    }
}

/// What `heads` and `run --heads` report per task and frame.
struct TaskOutputSummary: Codable {
    var frame: String?
    var task: String
    var shape: [Int]
    var backbone_task: Int?
    var files: [String]
    var min: Float
    var max: Float
    /// Segmentation: fraction of pixels per class (argmax).
    var class_fractions: [Double]?

    init(_ o: TaskOutput, frame: String?, folder: String) {
        self.frame = frame
        task = o.task
        shape = [o.channels, o.height, o.width]
        backbone_task = o.backboneTask
        files = ["\(o.task).npy", "\(o.task).png"].map { (folder as NSString).appendingPathComponent($0) }
        min = o.values.min() ?? 0
        max = o.values.max() ?? 0
        if case .segmentation = TaskKind.of(task: o.task, channels: o.channels) {
            let n = o.height * o.width
            var counts = [Int](repeating: 0, count: o.channels)
            for c in TaskRenderer.argmax(o.values, channels: o.channels, pixels: n) { counts[c] += 1 }
            class_fractions = counts.map { Double($0) / Double(n) }
        }
    }

    var line: String {
        var s = "\(task): [\(shape.map(String.init).joined(separator: ","))] float32"
        if let backbone_task { s += " from task \(backbone_task)'s backbone output" }
        s += String(format: ", range %.4g…%.4g", Double(min), Double(max))
        if let f = class_fractions, let top = f.indices.max(by: { f[$0] < f[$1] }) {
            s += String(format: ", %d classes present, largest class %d (%.1f%% of pixels)", f.filter { $0 > 0 }.count, top, 100 * f[top])
        }
        return s
    }
}

/// Writes each frame's task outputs: one frame into `output` itself, several into one subfolder per
/// frame; every folder staged and renamed into place.
func writeTaskOutputs(_ perFrame: [(name: String, frame: [UInt8]?, outputs: [TaskOutput])], to output: String) throws -> [TaskOutputSummary] {
    var summaries: [TaskOutputSummary] = []
    if perFrame.count == 1 {
        let stage = try StagedDirectory(destination: output)
        for o in perFrame[0].outputs {
            try o.write(path: stage.path, frame: perFrame[0].frame)
            summaries.append(TaskOutputSummary(o, frame: perFrame[0].name, folder: output))
        }
        try stage.commit()
        return summaries
    }
    try makeDirectory(output)
    let folders = outputNames(perFrame.map(\.name)).map { ($0 as NSString).deletingPathExtension }
    for (f, folder) in zip(perFrame, folders) {
        let dest = (output as NSString).appendingPathComponent(folder)
        let stage = try StagedDirectory(destination: dest)
        for o in f.outputs {
            try o.write(path: stage.path, frame: f.frame)
            summaries.append(TaskOutputSummary(o, frame: f.name, folder: dest))
        }
        try stage.commit()
    }
    return summaries
}

struct HeadsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "heads",
        abstract: "Run a checkpoint's task decoders on backbone features and write each task's output (.npy) and rendering (.png).",
        discussion: """
        The decoders are M³ViT's VisionTransformerUpHead (decoders.<task>.*, num_conv 4 or 2) in eval mode: cls token dropped, LayerNorm (eps 1e-6), 3×3 convolutions with BatchNorm folded in (running statistics, eps 1e-5) and ReLU, bilinear ×2 upsampling (align_corners=False), then a resize to the image size. Output per task: OUT/<task>.npy float32 [C, H, W] and OUT/<task>.png (segmentation: class colours blended over --image with a legend; depth: colour map with its scale; normals: RGB; saliency and edges: grey).
        Features: .npy float32 [tokens, D] or [n, tokens, D], or a board's raw x buffer (.bin: ap_fixed<32,10> in 4-byte little-endian containers, [n][tokens][D], the profile's type of x). Every decoder gets the same features; use `moepack run --heads` to feed each decoder its own task's backbone output.
        """)

    @Argument(help: "Checkpoint holding the decoders (decoders.<task>.*, training prefixes stripped).")
    var checkpoint: String

    @Option(help: "Backbone features: .npy float32 [tokens, D] (or [n, tokens, D]) or a board's raw x (.bin); repeatable (frames in order).")
    var features: [String]

    @Option(name: .shortAndLong, help: "Output folder (several frames of features: one subfolder each).")
    var output: String

    @Option(help: "Frame to draw segmentations over (resized to the model's input size like `run`'s frames).")
    var image: String?

    @Option(help: "Hardware profile giving the image size, patch size and x's type (built-in name or JSON file).")
    var profile: String = "edge-moe-zcu102"

    @Option(parsing: .upToNextOption, help: "Decoders to run (default: all, in the checkpoint's order).")
    var task: [String] = []

    @OptionGroup var headOptions: HeadOptions
    @OptionGroup var checkpointOptions: CheckpointOptions

    @Flag(help: "JSON summary on stdout.")
    var json = false

    func run() throws {
        try guarded {
            let prof = try KernelProfile.load(profile)
            let config = prof.model
            guard !features.isEmpty else { throw MoepackError(.usage, item: "--features", "give at least one features file") }
            let frames = try features.flatMap { try readFeatures($0, profile: prof) }
            let frameBytes = try image.map { try FrameLoader.load(path: $0, config: config).bytes }
            let (_, heads) = try headOptions.load(checkpoint, open: checkpointOptions.open, config: config, tasks: task.isEmpty ? nil : task)
            let progress = progressReporter("heads")
            var perFrame: [(name: String, frame: [UInt8]?, outputs: [TaskOutput])] = []
            for (i, tokens) in frames.enumerated() {
                perFrame.append((frames.count == 1 ? features[0] : "frame\(i)", frameBytes, try heads.run(tokens: { _ in tokens }, taskMap: nil)))
                progress?(i + 1, frames.count)
            }
            let summaries = try writeTaskOutputs(perFrame, to: output)
            if json { try printJSON(summaries) } else {
                print("wrote \(output)/: \(summaries.count) task outputs (.npy + .png)")
                for s in summaries { print("  " + (frames.count > 1 ? "\(s.frame ?? "") " : "") + s.line) }
            }
        }
    }

    /// Frames of features `[tokens·D]` each.
    func readFeatures(_ path: String, profile prof: KernelProfile) throws -> [[Float]] {
        let c = prof.model
        let per = c.tokens * c.embedDim
        let values: [Float]
        if path.lowercased().hasSuffix(".npy") {
            let src = try openCheckpoint(path)
            guard let e = src.entries.first, [[c.tokens, c.embedDim], [1, c.tokens, c.embedDim]].contains(e.shape) || (e.shape.count == 3 && e.shape.suffix(2) == [c.tokens, c.embedDim]) else {
                throw MoepackError(.mismatch, file: path, item: "features", "shape \(shapeString(src.entries.first?.shape ?? [])), expected [\(c.tokens), \(c.embedDim)] or [n, \(c.tokens), \(c.embedDim)]")
            }
            values = try src.readFloat32(e.name)
        } else {
            guard let xb = prof.buffer("x") else { throw MoepackError(.badInput, file: profile, item: "x", "profile has no x buffer") }
            let t = try prof.fixedType(xb.type)
            let bytes: [UInt8]
            do { bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) } catch {
                throw MoepackError(.io, file: path, "cannot read: \(error.localizedDescription)")
            }
            let eb = t.containerBytes
            guard bytes.count > 0, bytes.count % (per * eb) == 0 else {
                throw MoepackError(.mismatch, file: path, item: "x", "\(bytes.count) bytes is not a whole number of [\(c.tokens)][\(c.embedDim)] \(t) frames (\(per * eb) bytes each)")
            }
            values = t.decode(bytes, count: bytes.count / eb)
        }
        if let bad = values.withUnsafeBufferPointer(firstNonFiniteIndex) {
            throw MoepackError(.numeric, file: path, item: "features", "\(values[bad]) at flat index \(bad)")
        }
        return stride(from: 0, to: values.count, by: per).map { Array(values[$0..<min($0 + per, values.count)]) }
    }
}

/// `verify --heads`: the decoders' task-level fidelity and its thresholds.
struct HeadVerifyOptions: ParsableArguments {
    @Option(help: "Also compare task outputs: run this checkpoint's decoders on the image's backbone output and on the float model's (per task: segmentation pixel agreement and mIoU, depth abs-rel and RMSE, normals mean angular error).")
    var heads: String?

    @Option(help: ArgumentHelp("Which backbone task feeds which decoder, e.g. semseg=0,depth=1 (default: decoder i gets task i).", valueName: "map"))
    var taskMap: String?

    @Option(parsing: .unconditional, help: "Minimum segmentation pixel agreement, 0…1 (default 0.99 float, 0.95 fixed).")
    var minPixelAgreement: Double?

    @Option(parsing: .unconditional, help: "Minimum segmentation mIoU, 0…1 (default 0.95 float, 0.85 fixed).")
    var minMiou: Double?

    @Option(parsing: .unconditional, help: "Maximum depth abs-rel, ≥ 0 (default 0.05 float, 0.1 fixed; abs-rel divides by the reference depth, so small depths weigh heavily).")
    var maxAbsRel: Double?

    @Option(parsing: .unconditional, help: "Maximum normals mean angular error in degrees, 0…180 (default 1 float, 5 fixed).")
    var maxAngularError: Double?

    @OptionGroup var headOptions: HeadOptions

    func thresholds(mode: InferenceMode) throws -> TaskThresholds {
        func check(_ v: Double?, _ flag: String, _ range: ClosedRange<Double>) throws {
            guard let v else { return }
            guard v.isFinite, range.contains(v) else { throw MoepackError(.usage, item: flag, "must be in \(range.lowerBound)…\(range.upperBound), got \(v)") }
        }
        try check(minPixelAgreement, "--min-pixel-agreement", 0...1)
        try check(minMiou, "--min-miou", 0...1)
        try check(maxAbsRel, "--max-abs-rel", 0...Double.greatestFiniteMagnitude)
        try check(maxAngularError, "--max-angular-error", 0...180)
        var th = TaskThresholds.defaults(for: mode)
        if let minPixelAgreement { th.min_pixel_agreement = minPixelAgreement }
        if let minMiou { th.min_miou = minMiou }
        if let maxAbsRel { th.max_abs_rel = maxAbsRel }
        if let maxAngularError { th.max_angular_error_deg = maxAngularError }
        return th
    }

    @Option(help: "With --heads: write an HTML report (the quantization report plus, for the first frame, each task's rendering from the float model and from the image side by side with the pixels that differ, and the expert choice per patch).")
    var report: String?

    /// Loads the decoders, resolves the task map and compares every task.
    func verify(image: PackedImage, kernel: KernelTensors, checkpoint: String, frames: [NamedFrame], mode: InferenceMode,
                open: OpenOptions) throws -> HeadsReport {
        let (report, outputs) = try compareHeads(image: image, kernel: kernel, checkpoint: checkpoint, frames: frames, mode: mode,
                                                 thresholds: try thresholds(mode: mode), taskMap: taskMap, headOptions: headOptions, open: open)
        if let path = self.report {
            try writeTaskReport(path, image: image, kernel: kernel, frame: frames[0], mode: mode, heads: report, outputs: outputs[0])
        }
        return report
    }
}

/// Loads the decoders, resolves the task map (`taskMap` text overrides the default) and compares every
/// task of every frame (``verifyHeads(image:reference:heads:taskMap:frames:mode:thresholds:checkpointPath:progress:)``).
func compareHeads(image: PackedImage, kernel: KernelTensors, checkpoint: String, frames: [NamedFrame], mode: InferenceMode,
                  thresholds: TaskThresholds, taskMap: String?, headOptions: HeadOptions, open: OpenOptions) throws -> (HeadsReport, [HeadsFrameOutputs]) {
    let (ck, decoders) = try headOptions.load(checkpoint, open: open, config: image.manifest.model)
    let imageTasks = ImageWithHeads.tasks(of: image)
    let overrides = try taskMap.map { try TaskMap.parse($0, heads: ck.heads, imageTasks: imageTasks) } ?? [:]
    let map = try TaskMap.resolve(heads: ck.heads, imageTasks: imageTasks, overrides: overrides)
    return try verifyHeads(image: image, reference: { try kernel.backboneWeights(task: $0) }, heads: decoders, taskMap: map,
                           frames: frames, mode: mode, thresholds: thresholds, checkpointPath: checkpoint,
                           progress: progressReporter("heads"))
}

/// The quantization report with the task section of one frame, written atomically.
func writeTaskReport(_ path: String, image: PackedImage, kernel: KernelTensors, frame: NamedFrame, mode: InferenceMode,
                     heads: HeadsReport, outputs: HeadsFrameOutputs) throws {
    let c = image.manifest.model
    let section = TaskReportSection(frame: frame.frame.bytes, height: c.imageHeight, width: c.imageWidth, patch: c.patchSize,
                                    experts: c.experts, mode: mode, outputs: outputs,
                                    fidelity: heads.tasks.filter { $0.frame == nil || $0.frame == frame.name }, taskMap: heads.task_map)
    let heatmap = try routingHeatmap(kernel: kernel, image: image, frame: frame.frame)
    try AtomicFileWriter.write(Array(QuantReport.html(manifest: image.manifest, routing: heatmap, tasks: section).utf8), to: path)
}
