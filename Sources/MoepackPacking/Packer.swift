import Foundation

import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint

/// Options of `moepack pack`.
public struct PackOptions: Sendable {
    public var profile: KernelProfile
    /// Task whose gates are packed into `moe_w_gate`.
    public var task: Int
    /// Pack every task's gates (`--task all`): `moe_w_gate` holds task 0's, the others follow as
    /// `moe_w_gate_task<t>` buffers; switching task on the board is one write of `moe_w_gate`'s register.
    public var allTasks: Bool
    public var layout: DDRLayout
    /// Quantization and overflow modes used to convert float weights (default AP_RND_CONV, AP_SAT;
    /// AP_TRN, AP_WRAP reproduce the published testbench's plain assignments).
    public var quantization: Quantization
    public var overflow: Overflow
    /// Values outside a type's range are errors instead of warnings.
    public var strict: Bool
    /// Frame for the `images` slot ([3,H,W] bytes), or nil for zeros.
    public var frame: [UInt8]?
    /// Also record the SHA-256 of the whole checkpoint file (`source.sha256`). This reads every byte of
    /// the file, optimizer state included (about 1 GB/s here, on the second core); without it only the
    /// tensors moepack uses are read, and `source.tensors` fingerprints those.
    public var hashSourceFile: Bool
    public var tool: String

    public init(profile: KernelProfile, task: Int = 0, allTasks: Bool = false, layout: DDRLayout = .kernel,
                quantization: Quantization = .AP_RND_CONV, overflow: Overflow = .AP_SAT, strict: Bool = false,
                frame: [UInt8]? = nil, hashSourceFile: Bool = false, tool: String = "moepack") {
        self.profile = profile; self.task = task; self.allTasks = allTasks; self.layout = layout
        self.quantization = quantization; self.overflow = overflow
        self.strict = strict; self.frame = frame; self.hashSourceFile = hashSourceFile; self.tool = tool
    }
}

/// What `pack` did: the manifest it wrote and the warnings it printed.
public struct PackResult: Sendable {
    public var manifest: Manifest
    public var warnings: [String]
    /// Overflow counts per kernel type name.
    public var overflowByType: [String: Int]
}

/// Streams a checkpoint into `DIR/ddr.bin`, `DIR/manifest.json`, `DIR/moepack_ddr.h` and
/// `DIR/manifest.sha256` (see ``ImageValidation``): plan → write → manifest → commit.
///
/// Weights are read tensor by tensor, folded, quantized to each buffer's `ap_fixed` type with the
/// chosen modes and written at once; nothing but the tensor being converted is held in memory.
/// Buffers that are not weights are zero (the `images` slot holds `options.frame` when given).
/// All files are staged and moved into `outputDirectory` only when complete.
/// - Throws: ``MoepackError``: missing/mismatched tensors, NaN/Inf, overflow with `strict`, I/O.
public func pack(kernel: KernelTensors, options: PackOptions, outputDirectory: String,
                 warn: (String) -> Void = { _ in }) throws -> PackResult {
    let staged = try stagePack(kernel: kernel, options: options, outputDirectory: outputDirectory, warn: warn)
    try staged.commit()
    return staged.result
}

/// A packed image complete in its staging folder beside `outputDirectory`, not yet in place: read it
/// there (``stagingPath``) to derive other outputs, then ``commit(alongside:)`` puts it in place,
/// with those outputs in the same uninterruptible step. Dropped uncommitted, it is removed.
public final class StagedPack {
    public let result: PackResult
    private let stage: StagedDirectory
    /// The folder holding the finished files until ``commit(alongside:)``.
    public var stagingPath: String { stage.staging }

    init(result: PackResult, stage: StagedDirectory) { self.result = result; self.stage = stage }

    /// Moves the image files into place, then `alongside` (e.g. the report), as one step an
    /// interrupt does not cut (``StagedDirectory/commit(alongside:)``).
    public func commit(alongside: [AtomicFileWriter] = []) throws { try stage.commit(alongside: alongside) }
}

/// ``pack(kernel:options:outputDirectory:warn:)`` up to, not including, putting the files in place:
/// plan → write → manifest → stage.
public func stagePack(kernel: KernelTensors, options: PackOptions, outputDirectory: String,
                      warn: (String) -> Void = { _ in }) throws -> StagedPack {
    let plan = try planImage(kernel: kernel, options: options)
    // SHA-256 work (the image, each buffer, the tensors read, and with hashSourceFile the whole
    // source file) runs on the other core while this thread reads, quantizes and writes.
    let sourcePath = kernel.checkpoint.source.path
    let sourceHash = options.hashSourceFile ? Background { try sha256OfPath(sourcePath) } : nil
    let hasher = BackgroundHasher()
    let digests = TensorDigests(hasher: hasher)
    kernel.checkpoint.observeReads { name, values in digests.record(name, values) }
    defer { kernel.checkpoint.observeReads(nil) }
    let stage = try StagedDirectory(destination: outputDirectory)
    let image = try ImageStream(path: stage.path("ddr.bin"), hasher: hasher)
    // On every exit, errors included: no hashing work (which holds the image writer) outlives this
    // call, the temporary image is removed unless committed, and only then may the staging folder go.
    defer {
        hasher.sync {}
        image.file.abort()
        withExtendedLifetime(stage) {}
    }
    var writer = try withoutActuallyEscaping(warn) { warn in
        var w = ImageWriter(kernel: kernel, options: options, image: image, warn: warn)
        try w.write(plan)
        return w.dropWarn()
    }
    let (imageSHA, bufferSHAs) = image.finish()
    for i in writer.manifestBuffers.indices { writer.manifestBuffers[i].sha256 = bufferSHAs[i] }
    let (manifest, header) = try describeImage(plan: plan, written: writer, imageSHA: imageSHA, tensorSHAs: digests.finish(),
                                     sourceSHA: try sourceHash?.value(), kernel: kernel, options: options)
    try stageImageFiles(manifest, header: header, stage: stage)
    return StagedPack(result: PackResult(manifest: manifest, warnings: writer.warnings, overflowByType: writer.overflowByType), stage: stage)
}

/// The DDR plan for `options`, checked against the model: the task exists and every kernel array
/// has the element count the model gives.
/// - Throws: ``MoepackError`` `.usage` for a task out of range, `.mismatch` naming the array.
func planImage(kernel: KernelTensors, options: PackOptions) throws -> DDRPlan {
    let profile = options.profile
    let cfg = kernel.config
    guard options.task >= 0, options.task < max(cfg.tasks, 1) else {
        throw MoepackError(.usage, item: "--task", "task \(options.task) out of range: the checkpoint has \(cfg.tasks) task gate(s)")
    }
    let plan = try DDRPlan(profile: profile, layout: options.layout, task: options.task, allTasks: options.allTasks, tasks: cfg.tasks)
    for p in plan.buffers {
        guard case .kernelArray(let arg, _) = p.content else { continue }
        guard let s = arg.shape(cfg) else {
            throw MoepackError(.unsupported, file: profile.name, item: arg.name, "no model tensor maps to this kernel argument")
        }
        if s.reduce(1, *) != p.buffer.shape.reduce(1, *) {
            throw MoepackError(.mismatch, file: kernel.checkpoint.source.path, item: arg.name,
                               "model gives shape \(shapeString(s)), the profile declares \(shapeString(p.buffer.shape))")
        }
    }
    return plan
}

/// Writes a plan's regions into the image stream and keeps what the manifest reports about them.
struct ImageWriter {
    let kernel: KernelTensors
    let options: PackOptions
    let image: ImageStream
    var warn: (String) -> Void
    var manifestBuffers: [Manifest.Buffer] = []
    var reports: [Manifest.TensorReport] = []
    var warnings: [String] = []
    var overflowByType: [String: Int] = [:]

    init(kernel: KernelTensors, options: PackOptions, image: ImageStream, warn: @escaping (String) -> Void) {
        self.kernel = kernel; self.options = options; self.image = image; self.warn = warn
    }

    /// The writer without its (non-escaping) warning callback, once writing is done.
    func dropWarn() -> ImageWriter { var w = self; w.warn = { _ in }; return w }

    /// `t` with the pack's quantization and overflow modes.
    func converting(_ t: FixedType) -> FixedType { t.with(quantization: options.quantization, overflow: options.overflow) }

    /// Every region in plan order, zeros between them, then zeros to the plan's end; the image file is
    /// complete (committed to its staging name) on return.
    mutating func write(_ plan: DDRPlan) throws {
        for p in plan.buffers {
            try image.zeros(p.offset - image.position, intoBuffer: false)
            image.beginBuffer()
            try write(p)
            guard image.position == p.offset + p.bytes else {
                throw MoepackError(.mismatch, item: p.buffer.name, "wrote \(image.position - p.offset) bytes, planned \(p.bytes)")
            }
            manifestBuffers.append(Manifest.Buffer(
                name: p.buffer.name, offset: p.offset, bytes: p.bytes, type: p.buffer.type,
                ctype: p.type.baseDescription, element_bytes: p.type.containerBytes, shape: p.buffer.shape,
                register: p.buffer.register, role: p.buffer.role, sha256: ""))
            image.endBuffer()
        }
        try image.zeros(plan.totalBytes - image.position, intoBuffer: false)
        try image.file.commit()
    }

    /// One region's bytes.
    mutating func write(_ p: PlannedBuffer) throws {
        switch p.content {
        case .kernelArray(let arg, let task):
            let t = converting(p.type)
            try kernel.forEachPart(of: arg, task: task) { part in
                try account(part.name, buffer: p.buffer.name, typeName: p.buffer.type, p.type, try image.quantized(part.values[...], t))
            }
        case .expertRecords(let el):
            try writeExpertRecords(el, region: p)
        case .frame where options.frame != nil:
            let frame = options.frame!
            guard frame.count * p.type.containerBytes <= p.bytes else {
                throw MoepackError(.mismatch, item: "images", "frame has \(frame.count) bytes, the slot holds \(p.bytes)")
            }
            try image.write(frame)
            try image.zeros(p.bytes - frame.count)
        case .frame, .zeros:
            try image.zeros(p.bytes)
        }
    }

    /// Expert records block by block: each block's four expert tensors are read once and every
    /// expert's slice goes into its record, each part in its own element type.
    mutating func writeExpertRecords(_ el: ExpertRecordLayout, region p: PlannedBuffer) throws {
        let parts = KernelArgument.experts
        let counts = el.partCounts, partOffsets = el.partOffsets
        for (mi, block) in el.moeBlocks.enumerated() {
            let tensors = parts.map { $0.mlpTensor(block: block)! }
            let values = try tensors.map { try kernel.checkpoint.read($0) }
            var stats = [QuantizationStats](repeating: QuantizationStats(), count: parts.count)
            for e in 0..<el.experts {
                let recordStart = p.offset + el.recordOffset(moeIndex: mi, expert: e)
                for k in parts.indices {
                    try image.zeros(recordStart + partOffsets[k] - image.position)
                    stats[k].merge(try image.quantized(values[k][(e * counts[k])..<((e + 1) * counts[k])], converting(el.partTypes[k])))
                }
            }
            for k in parts.indices {
                let typeName = options.profile.buffer(parts[k].name)?.type ?? p.buffer.type
                try account(tensors[k], buffer: p.buffer.name, typeName: typeName, el.partTypes[k], stats[k])
            }
        }
        try image.zeros(p.offset + p.bytes - image.position)
    }

    /// Records one tensor's quantization statistics; overflow is a warning, or an error with `strict`.
    mutating func account(_ name: String, buffer: String, typeName: String, _ type: FixedType, _ stats: QuantizationStats) throws {
        let t = converting(type)
        if stats.overflowCount > 0 {
            let range = "\(type.baseDescription) range [\(fmt(t.minValue)), \(fmt(t.maxValue))], largest |value| \(fmt(stats.maxOverflowMagnitude))"
            if options.strict {
                throw MoepackError(.numeric, file: kernel.checkpoint.source.path, item: name,
                                   "\(stats.overflowCount) value(s) outside \(range) (--strict)")
            }
            let msg = "\(name): \(stats.overflowCount) value(s) outside \(typeName) = \(range) (\(options.overflow.rawValue))"
            warnings.append(msg)
            warn(msg)
        }
        overflowByType[typeName, default: 0] += stats.overflowCount
        reports.append(Manifest.TensorReport(
            name: name, buffer: buffer, type: typeName, count: stats.count,
            min: stats.count > 0 ? stats.min : 0, max: stats.count > 0 ? stats.max : 0, overflow: stats.overflowCount,
            sqnr_db: stats.sqnrDB.isFinite ? (stats.sqnrDB * 1000).rounded() / 1000 : nil,
            max_abs_error: stats.maxAbsError))
    }
}

/// The manifest of a written image (the plan's buffers with their digests, the quantization report,
/// the source's provenance, the layout's records and notes for host programmers) and the C header
/// rendered from it, whose digest it records.
func describeImage(plan: DDRPlan, written w: ImageWriter, imageSHA: String, tensorSHAs: [String: String],
                   sourceSHA: String?, kernel: KernelTensors, options: PackOptions) throws -> (manifest: Manifest, header: [UInt8]) {
    let profile = options.profile
    let sourceTensors = tensorSHAs.keys.sorted().map { name in
        Manifest.SourceTensor(name: name, source_name: kernel.checkpoint.canonicalToSource[name] ?? name,
                              shape: kernel.checkpoint.entry(name)?.shape ?? [], sha256: tensorSHAs[name]!)
    }
    let src = kernel.checkpoint.source
    var notes = [
        "Write each buffer's physical address (image base + offset) to its register (low 32 bits) and register+4 (high 32 bits), num_images to \(profile.registers["num_images"].map(String.init) ?? "num_images"), reload_one_time_weights=1 on the first run, then start through CTRL (offset \(profile.registers["CTRL"] ?? 0)).",
    ]
    var taskGates: [Manifest.TaskGate]?
    if options.allTasks {
        taskGates = plan.taskGates()
        let reg = profile.buffer(KernelArgument.moe_w_gate.name)?.register.map { String($0) } ?? "moe_w_gate's register"
        notes.append("All task gates are packed (task_gates); moe_w_gate points at task 0's copy. To switch task on the board, write base + task_gates[t].offset to register \(reg) (one register write) before starting the kernel.")
    } else {
        notes.append("moe_w_gate holds task \(options.task)'s gates.")
    }
    if let note = plan.layout.placement.hostNote(plan) { notes.append(note) }
    if kernel.checkpoint.naming == .edgeMoE { notes.append("Source is an Edge-MoE folder: already folded, folds not applied.") }
    var manifest = Manifest(
        format: "moepack-ddr/1", tool: options.tool, profile: profile.name,
        profile_definition: (try? KernelProfile.builtin(profile.name)) == profile ? nil : profile, kernel: profile.kernel,
        task: options.allTasks ? 0 : options.task, layout: plan.layout.rawValue, model: kernel.config,
        folds: kernel.checkpoint.naming == .m3vit ? kernel.folds : nil,
        quantization: Manifest.Quantization(mode: options.quantization.rawValue, overflow: options.overflow.rawValue, tensors: w.reports),
        source: Manifest.Source(path: src.path, container: src.container, bytes: pathBytes(src.path),
                                sha256: sourceSHA, tensors_sha256: TensorDigests.combined(sourceTensors),
                                tensors: sourceTensors, notes: src.notes),
        image: Manifest.Image(file: "ddr.bin", bytes: plan.totalBytes, sha256: imageSHA),
        header: nil,
        alignment: profile.alignment, types: profile.types, registers: profile.registers, buffers: w.manifestBuffers,
        expert_records: plan.layout.placement.expertRecords(plan),
        expert_types: plan.expertLayout?.partTypeNames,
        task_gates: taskGates, notes: notes)
    let header = Array(CHeader.render(manifest).utf8)
    manifest.header = Manifest.Image(file: "moepack_ddr.h", bytes: header.count, sha256: hex(SHA256.hash(data: header)))
    return (manifest, header)
}

/// Writes the header, the manifest and its digest into the staging folder beside `ddr.bin`.
func stageImageFiles(_ manifest: Manifest, header: [UInt8], stage: StagedDirectory) throws {
    try AtomicFileWriter.write(header, to: stage.path("moepack_ddr.h"))
    let manifestBytes = Array(try manifest.encoded())
    try AtomicFileWriter.write(manifestBytes, to: stage.path("manifest.json"))
    try AtomicFileWriter.write(Array(ImageValidation.manifestDigestText(manifestBytes).utf8), to: stage.path(ImageValidation.manifestDigestFile))
}

func fmt(_ x: Double) -> String {
    if x == x.rounded() && abs(x) < 1e9 { return String(Int(x)) }
    return String(format: "%.6g", x)
}
func fmt(_ x: Float) -> String { fmt(Double(x)) }

extension FixedType {
    /// `ap_fixed<W,I>` / `ap_ufixed<W,I>` without the modes (the kernel's own spelling).
    public var baseDescription: String { "\(signed ? "ap_fixed" : "ap_ufixed")<\(width),\(integerBits)>" }
}
