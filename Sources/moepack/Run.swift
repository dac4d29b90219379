import ArgumentParser
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackPacking
import MoepackInference
import MoepackVerify
import MoepackBoard
import MoepackHeads

extension InferenceMode: ExpressibleByArgument {}

/// Frame arguments shared by run and verify.
struct FrameOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Input frame: raw uint8 [3,H,W], .npy (uint8 or float byte/256), PNG, or a folder of frames; repeatable. Frames of another size are resized with an area filter.", valueName: "frame"))
    var image: [String] = []

    /// True when the outputs go to a folder, one per frame: several `--image`, or a folder of frames
    /// (even of one).
    var outputsFolder: Bool {
        image.count > 1 || image.contains { p in
            var isDir: ObjCBool = false
            return FileManager.default.fileExists(atPath: p, isDirectory: &isDir) && isDir.boolValue
        }
    }

    /// Expands folders (sorted file names) and loads every frame.
    func load(config: M3ViTConfig) throws -> [NamedFrame] {
        guard !image.isEmpty else { throw MoepackError(.usage, "give at least one --image FRAME") }
        var paths: [String] = []
        for p in image {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir) else {
                throw MoepackError(.io, file: p, "no such file or folder")
            }
            if isDir.boolValue {
                // Frame files only (by extension); anything else in the folder is passed over.
                let frameExtensions: Set<String> = ["png", "npy", "u8", "bin", "raw"]
                let names = ((try? FileManager.default.contentsOfDirectory(atPath: p)) ?? [])
                    .filter { !$0.hasPrefix(".") && frameExtensions.contains(($0 as NSString).pathExtension.lowercased()) }.sorted()
                guard !names.isEmpty else {
                    throw MoepackError(.badInput, file: p, "no frame files (.png, .npy, .u8, .bin, .raw) in this folder")
                }
                paths += names.map { (p as NSString).appendingPathComponent($0) }
            } else {
                paths.append(p)
            }
        }
        return try paths.map { NamedFrame(name: $0, frame: try FrameLoader.load(path: $0, config: config)) }
    }
}

func loadFrameBytes(_ path: String, config: M3ViTConfig) throws -> [UInt8] {
    try FrameLoader.load(path: path, config: config).bytes
}

/// A progress line on a terminal for long runs (stderr, only when it is a TTY).
func progressReporter(_ label: String) -> (@Sendable (Int, Int) -> Void)? {
    guard isatty(2) != 0 else { return nil }
    return { done, total in
        if total < 4 { return }
        FileHandle.standardError.write(Data("\r\(label) \(done)/\(total)\(done == total ? "\n" : "")".utf8))
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the backbone from a packed image alone and write its output [tokens, D] as float32 .npy.",
        discussion: """
        --mode float dequantizes the weights and runs in float32 (exact GELU, LayerNorm eps 1e-6, softmax over all gate logits then top-k without renormalising, tokens grouped per expert as the kernel schedules them). --mode fixed emulates the Edge-MoE kernel's fixed-point datapath with integer arithmetic; exp, sqrt and reciprocal use correctly rounded float64 results converted to the kernel's types, so they may differ from Vitis hls_math in the last bits.
        """)

    @Argument(help: "Folder written by `moepack pack`.")
    var directory: String

    @OptionGroup var frames: FrameOptions

    @Option(name: .shortAndLong, help: "Output .npy file (one frame) or folder (several frames: <frame name>.npy each).")
    var output: String

    @Option(help: "Datapath: float or fixed.")
    var mode: InferenceMode = .float

    @Option(parsing: .unconditional, help: "Task (its gates must be in the image; default: the image's task).")
    var task: Int?

    @Option(help: "Also run this checkpoint's task decoders: -o is then a folder with <task>.npy [C,H,W] float32 and <task>.png per task (several frames: one subfolder each).")
    var heads: String?

    @Option(help: ArgumentHelp("Which backbone task feeds which decoder, e.g. semseg=0,depth=1 (default: decoder i gets task i's gates; an image of one task feeds every decoder).", valueName: "map"))
    var taskMap: String?

    @OptionGroup var headOptions: HeadOptions
    @OptionGroup var checkpointOptions: CheckpointOptions

    @Flag(help: "JSON summary on stdout (outputs per frame, their shape, mode and task).")
    var json = false

    func run() throws {
        try guarded {
            let image = try PackedImage(directory: directory)
            if let heads {
                return try runWithHeads(image: image, checkpoint: heads)
            }
            let inputs = try frames.load(config: image.manifest.model)
            let model = try ImageModel(image: image, mode: mode, task: task)
            let c = image.manifest.model
            var summary = RunSummary(image: directory, mode: mode.rawValue, task: model.task, shape: [c.tokens, c.embedDim], outputs: [])
            // One output file for one frame named alone; a folder for several --image, a folder of
            // frames, or -o ending in '/'.
            if inputs.count == 1 && !frames.outputsFolder && !output.hasSuffix("/") {
                let r = try model.run(inputs[0].frame)
                try NpyWriter.write(Tensor(shape: [c.tokens, c.embedDim], values: r.output), to: output)
                if let n = inputs[0].frame.note { note("moepack: \(inputs[0].name): \(n)") }
                summary.outputs = [.init(frame: inputs[0].name, file: output, note: inputs[0].frame.note)]
                if json { return try printJSON(summary) }
                print("wrote \(output): [\(c.tokens), \(c.embedDim)] float32 (\(mode.rawValue) datapath, task \(model.task))")
                return
            }
            if output.lowercased().hasSuffix(".npy") {
                throw MoepackError(.usage, file: output, inputs.count > 1
                    ? "\(inputs.count) frames give \(inputs.count) outputs: -o must name a folder, not a .npy file"
                    : "a folder of frames gives a folder of outputs (one .npy per frame): -o must name a folder, not a .npy file")
            }
            let stage = try StagedDirectory(destination: output)
            let progress = progressReporter("run")
            // Frames run in parallel across the cores; outputs are written in input order.
            let outputs = try runFrames(model, inputs, progress: progress)
            for (input, (name, values)) in zip(inputs, zip(outputNames(inputs.map(\.name)), outputs)) {
                try NpyWriter.write(Tensor(shape: [c.tokens, c.embedDim], values: values), to: stage.path(name))
                summary.outputs.append(.init(frame: input.name, file: (output as NSString).appendingPathComponent(name), note: input.frame.note))
            }
            try stage.commit()
            if json { return try printJSON(summary) }
            print("wrote \(inputs.count) outputs to \(output)/ ([\(c.tokens), \(c.embedDim)] float32 each, \(mode.rawValue) datapath, task \(model.task))")
        }
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Prove from a packed image alone that it computes the checkpoint's model.",
        discussion: """
        Runs the image (float or fixed datapath) and the unquantized float model from the checkpoint on each frame and reports MSE, max abs error, cosine, per-block error and, for every MoE block, the fraction of tokens whose top-k expert set agrees. Exits 1 below the thresholds (float: cosine ≥ 0.9999, agreement ≥ 0.98; fixed: MSE ≤ 0.1 as the published testbench, agreement ≥ 0.97). Fixed mode: exp, sqrt and reciprocal use correctly rounded float64 results, so they may differ from Vitis hls_math in the last bits.
        It also checks that the checkpoint is the one packed: the SHA-256 of every tensor it reads is compared with the manifest's source.tensors (report field source_check; a difference is a warning, or a failure with --require-same-source).
        """)

    @Argument(help: "Folder written by `moepack pack`.")
    var directory: String

    @Option(help: "The checkpoint the image was packed from (the float reference).")
    var checkpoint: String?

    @Option(help: ArgumentHelp("What a board returned in x (moepack_host's OUT.bin, moepack_pynq.py's OUT.npy), or the folder of moepack_pynq.py --bisect: compare with the fixed-point emulation of the same image and frame; no checkpoint needed.", valueName: "OUT"))
    var boardOutput: String?

    @Option(parsing: .unconditional, help: "With --board-output: the debug_id the board ran with (0: the whole kernel; 256 after the patch embedding; layer*16+k after step k of that layer).")
    var debugId: Int = 0

    @Option(parsing: .unconditional, help: "With --board-output: pass when no element is off by more than this many LSBs of fm_t (default 0: identical).")
    var maxLsb: Double = 0

    @OptionGroup var frames: FrameOptions
    @OptionGroup var checkpointOptions: CheckpointOptions

    @Option(help: "Datapath of the image: float or fixed.")
    var mode: InferenceMode = .float

    @Option(parsing: .unconditional, help: "Task (default: the image's task).")
    var task: Int?

    @Option(parsing: .unconditional, help: "Minimum cosine similarity, -1…1 (default 0.9999 for float, none for fixed).")
    var minCosine: Double?

    @Option(parsing: .unconditional, help: "Maximum output MSE, ≥ 0 (default none for float, 0.1 for fixed).")
    var maxMse: Double?

    @Option(parsing: .unconditional, help: "Minimum routing agreement per MoE block, 0…1 (default 0.98 float, 0.97 fixed).")
    var minRoutingAgreement: Double?

    @Flag(help: "Fail (exit 1) when the checkpoint is not the one the image was packed from, or cannot be checked. Without it a difference is a warning; either way it is in the report (source_check).")
    var requireSameSource = false

    @Option(parsing: .unconditional, help: ArgumentHelp("Count a token routed differently as agreeing when the float model's gate margin there (probability of its k-th expert minus the best one left out) is below this: a near-tie any rounding may flip. Default: every differing token counts.", valueName: "p"))
    var tieMargin: Double?

    @Flag(help: "JSON report on stdout.")
    var json = false

    @OptionGroup var headVerify: HeadVerifyOptions

    /// The thresholds, checked before anything is loaded (NaN would disable a check silently).
    func thresholds() throws -> VerifyThresholds {
        func check(_ v: Double?, _ flag: String, _ range: ClosedRange<Double>, _ what: String) throws {
            guard let v else { return }
            guard v.isFinite, range.contains(v) else { throw MoepackError(.usage, item: flag, "must be \(what), got \(v)") }
        }
        try check(minCosine, "--min-cosine", -1...1, "a cosine in -1…1")
        try check(maxMse, "--max-mse", 0...Double.greatestFiniteMagnitude, "a finite MSE ≥ 0")
        try check(minRoutingAgreement, "--min-routing-agreement", 0...1, "a fraction in 0…1")
        try check(tieMargin, "--tie-margin", 0...1, "a probability gap in 0…1")
        var th = VerifyThresholds.defaults(for: mode)
        if let minCosine { th.min_cosine = minCosine }
        if let maxMse { th.max_mse = maxMse }
        if let minRoutingAgreement { th.min_routing_agreement = minRoutingAgreement }
        th.tie_margin = tieMargin
        return th
    }

    func run() throws {
        try guarded {
            if let boardOutput {
                guard checkpoint == nil else {
                    throw MoepackError(.usage, item: "--board-output", "compares with the emulation of the image, not with a checkpoint: omit --checkpoint")
                }
                guard debugId >= 0, debugId <= Int(UInt32.max) else { throw MoepackError(.usage, item: "--debug-id", "must be a 32-bit register value ≥ 0") }
                guard maxLsb >= 0, maxLsb.isFinite else { throw MoepackError(.usage, item: "--max-lsb", "must be a finite number ≥ 0") }
                try verifyBoardOutput(directory: directory, output: boardOutput, frames: frames, task: task,
                                      debugID: debugId, maxLSB: maxLsb, json: json)
                return
            }
            guard let checkpoint else {
                throw MoepackError(.usage, item: "--checkpoint", "give --checkpoint CKPT (the model the image came from) or --board-output OUT (what a board returned)")
            }
            let th = try thresholds()
            _ = try headVerify.thresholds(mode: mode)
            let image = try PackedImage(directory: directory)
            let inputs = try frames.load(config: image.manifest.model)
            let source = try openCheckpointIsolated(checkpoint, options: checkpointOptions.open)
            let backbone = try BackboneCheckpoint(source: source, expected: image.manifest.model)
            if let packed = image.manifest.folds, checkpointOptions.foldsGiven, packed != checkpointOptions.folds {
                throw MoepackError(.usage, file: directory, item: "--mean/--std",
                                   "the image was packed with mean \(packed.mean) std \(packed.std); verify uses the manifest's values (omit --mean/--std)")
            }
            let folds = image.manifest.folds ?? checkpointOptions.folds
            // The reference should be the checkpoint the image was packed from: compare the digests
            // of the tensors read here with the manifest's (the file's SHA-256 for older manifests).
            let digests = TensorDigests()
            backbone.observeReads { name, values in digests.record(name, values) }
            let kernel = try KernelTensors(checkpoint: backbone, folds: folds)
            let reference = try kernel.backboneWeights(task: task ?? image.manifest.task)
            backbone.observeReads(nil)
            let sourceCheck = SourceCheck.compare(checkpoint: checkpoint, manifest: image.manifest, readDigests: digests.finish())
            var report = try verify(image: image, reference: reference, frames: inputs, mode: mode, task: task,
                                    thresholds: th, checkpointPath: checkpoint, progress: progressReporter("verify"))
            report.apply(sourceCheck, required: requireSameSource)
            if let heads = headVerify.heads {
                report.apply(try headVerify.verify(image: image, kernel: kernel, checkpoint: heads, frames: inputs, mode: mode,
                                                   open: checkpointOptions.open))
            }
            if json {
                if !sourceCheck.same && sourceCheck.method != .none { note("moepack: warning: \(sourceCheck.summary)") }
                try printJSON(report)
            } else {
                print(renderVerifyReport(report))
            }
            if !report.passed { throw ExitCode(1) }
        }
    }
}

extension Run {
    /// `run --heads`: the backbone with each decoder's task gates, then the decoders, per frame.
    func runWithHeads(image: PackedImage, checkpoint: String) throws {
        if task != nil { throw MoepackError(.usage, item: "--task", "with --heads, tasks are chosen per decoder: use --task-map") }
        let config = image.manifest.model
        let inputs = try frames.load(config: config)
        let (ck, decoders) = try headOptions.load(checkpoint, open: checkpointOptions.open, config: config)
        let imageTasks = ImageWithHeads.tasks(of: image)
        let overrides = try taskMap.map { try TaskMap.parse($0, heads: ck.heads, imageTasks: imageTasks) } ?? [:]
        let map = try TaskMap.resolve(heads: ck.heads, imageTasks: imageTasks, overrides: overrides)
        let model = try ImageWithHeads(image: image, mode: mode, heads: decoders, taskMap: map)
        let progress = progressReporter("run")
        var perFrame: [(name: String, frame: [UInt8]?, outputs: [TaskOutput])] = []
        for (i, f) in inputs.enumerated() {
            perFrame.append((f.name, f.frame.bytes, try model.run(f.frame).outputs))
            if let n = f.frame.note { note("moepack: \(f.name): \(n)") }
            progress?(i + 1, inputs.count)
        }
        let summaries = try writeTaskOutputs(perFrame, to: output)
        if json {
            let c = image.manifest.model
            return try printJSON(RunSummary(image: directory, mode: mode.rawValue, task: nil, shape: [c.tokens, c.embedDim],
                                            outputs: [], tasks: summaries))
        }
        print("wrote \(output)/: \(summaries.count) task outputs (.npy + .png), \(mode.rawValue) datapath")
        for s in summaries { print("  " + (inputs.count > 1 ? "\((s.frame.map { ($0 as NSString).lastPathComponent }) ?? "") " : "") + s.line) }
    }
}

/// Runs every frame through `model`, in parallel across the cores (each worker takes batches of up to
/// `model.preferredBatch` frames), returning outputs in input order.
func runFrames(_ model: ImageModel, _ frames: [NamedFrame], progress: (@Sendable (Int, Int) -> Void)?) throws -> [[Float]] {
    final class Slots: @unchecked Sendable {
        let lock = NSLock()
        var values: [Result<[Float], Error>?]
        var done = 0
        init(_ n: Int) { values = Array(repeating: nil, count: n) }
    }
    let slots = Slots(frames.count)
    let workers = min(frames.count, max(1, ProcessInfo.processInfo.activeProcessorCount))
    let batches = balancedBatches(frames.count, workers: workers, atMost: model.preferredBatch)
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        var b = w
        while b < batches.count {
            let range = batches[b]
            let results: [Result<[Float], Error>]
            do {
                results = try model.run(batch: range.map { frames[$0].frame }).map { .success($0.output) }
            } catch {
                results = range.map { i in Result { try model.run(frames[i].frame).output } }
            }
            slots.lock.lock()
            for (i, r) in zip(range, results) { slots.values[i] = r }
            slots.done += range.count
            let d = slots.done
            slots.lock.unlock()
            progress?(d, frames.count)
            b += workers
        }
    }
    return try slots.values.map { try $0!.get() }
}

/// Output file names for frames: `<stem>.npy`; when two frames share a stem, `<file name>.npy`, and
/// when those collide too, a `-<n>` suffix, so that no output overwrites another.
func outputNames(_ frames: [String]) -> [String] {
    let stems = frames.map { (($0 as NSString).lastPathComponent as NSString).deletingPathExtension }
    var counts: [String: Int] = [:]
    for s in stems { counts[s, default: 0] += 1 }
    var used = Set<String>()
    return zip(frames, stems).map { path, stem in
        var name = counts[stem]! > 1 ? (path as NSString).lastPathComponent : stem
        if used.contains(name + ".npy") {
            var n = 2
            while used.contains("\(name)-\(n).npy") { n += 1 }
            name = "\(name)-\(n)"
        }
        used.insert(name + ".npy")
        return name + ".npy"
    }
}
