import Foundation

import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint

/// How expert weights are laid out in the image.
public enum DDRLayout: String, Sendable, Codable, CaseIterable {
    /// Every kernel argument exactly as `ViT_compute` declares it: what the published bitstream reads.
    case kernel
    /// The four expert arrays replaced by one `moe_experts` region of expert records in the order the
    /// patch-reordered MoE schedule fetches them (block by block, experts ascending): each record holds
    /// w1 (htoh4 weight [He][D]), b1 ([He]), w2 (h4toh weight [D][He]), b2 ([D]) back to back, each part
    /// at a 64-byte (AXI) aligned offset, each record on a 4096-byte boundary so no burst crosses a
    /// 4 KiB page. For kernels built with one expert base pointer:
    /// record address = base + moe_index·stride_block + expert·stride_expert.
    case expertMajor = "expert-major"
}

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

/// One region of the image: a kernel argument, an extra task's gates, or the expert records.
public struct PlannedBuffer: Sendable {
    public enum Content: Sendable {
        /// A kernel array filled from the model (`task` selects the gates for `moe_w_gate`).
        case kernelArray(String, task: Int)
        /// Expert records of every MoE block (expert-major layout).
        case expertRecords(ExpertRecordLayout)
        /// Zeros (scratch, output) or the frame (`images`).
        case zeros
        case frame
    }
    public var buffer: KernelProfile.Buffer
    public var type: FixedType
    public var offset: Int
    public var bytes: Int
    public var content: Content
}

/// Geometry of the expert records (offsets relative to the region start).
public struct ExpertRecordLayout: Sendable, Equatable {
    public var moeBlocks: [Int]
    public var experts: Int
    public var w1Count: Int, b1Count: Int, w2Count: Int, b2Count: Int
    public var elementBytes: Int
    /// Element types of w1, b1, w2, b2 (those of moe_weights_l1, moe_bias_l1, moe_weights_l2, moe_bias_l2).
    public var partTypes: [FixedType]
    public var partAlignment: Int
    public var recordAlignment: Int
    /// Offsets of the parts inside a record.
    public var w1: Int { 0 }
    public var b1: Int { align(w1 + w1Count * elementBytes, partAlignment) }
    public var w2: Int { align(b1 + b1Count * elementBytes, partAlignment) }
    public var b2: Int { align(w2 + w2Count * elementBytes, partAlignment) }
    /// Bytes of one record's payload and the distance between records.
    public var recordBytes: Int { b2 + b2Count * elementBytes }
    public var strideExpert: Int { align(recordBytes, recordAlignment) }
    public var strideBlock: Int { strideExpert * experts }
    public var totalBytes: Int { strideBlock * moeBlocks.count }
    public func recordOffset(moeIndex: Int, expert: Int) -> Int { moeIndex * strideBlock + expert * strideExpert }
}

/// The four kernel arrays the expert-major layout replaces.
public let expertArrayNames = ["moe_weights_l1", "moe_bias_l1", "moe_weights_l2", "moe_bias_l2"]

/// The DDR layout: every kernel argument in argument order, each at an `alignment`-byte offset
/// (plus extra task gates and expert records, depending on the options).
public struct DDRPlan: Sendable {
    public var buffers: [PlannedBuffer]
    public var totalBytes: Int
    public var expertLayout: ExpertRecordLayout?
    /// Every task's gates are packed (`--task all`).
    public var allTasks: Bool
    /// Largest image laid out (2^40 bytes): far above any DDR, and far below an overflow.
    public static let maximumImageBytes = 1 << 40

    /// Lays out the profile's buffers for `options` (kernel layout, one task, by default).
    /// - Parameter tasks: number of task gates the model has (for `allTasks`).
    /// - Throws: ``MoepackError`` when a type does not parse or sizes overflow.
    public init(profile: KernelProfile, layout: DDRLayout = .kernel, task: Int = 0, allTasks: Bool = false, tasks: Int = 1) throws {
        var offset = 0
        var out: [PlannedBuffer] = []
        var expertLayout: ExpertRecordLayout?
        func add(_ b: KernelProfile.Buffer, _ t: FixedType, _ bytes: Int, _ content: PlannedBuffer.Content) throws {
            offset = align(offset, profile.alignment)
            // Profiles are JSON anyone can edit: sizes are summed without overflow, below 2^40 bytes.
            let (end, o) = offset.addingReportingOverflow(bytes)
            guard !o, end <= Self.maximumImageBytes else {
                throw MoepackError(.badInput, file: profile.name, item: b.name, "the image would exceed \(Self.maximumImageBytes) bytes")
            }
            out.append(PlannedBuffer(buffer: b, type: t, offset: offset, bytes: bytes, content: content))
            offset = end
        }
        for b in profile.buffers {
            let t = try profile.fixedType(b.type)
            guard let bytes = checkedElementCount(b.shape, elementBytes: t.containerBytes) else {
                throw MoepackError(.badInput, file: profile.name, item: b.name, "size overflows")
            }
            switch b.role {
            case "weight":
                if layout == .expertMajor, expertArrayNames.contains(b.name) {
                    guard b.name == "moe_weights_l1" else { continue }
                    let m = profile.model
                    let partTypes = try expertArrayNames.map { n -> FixedType in
                        guard let pb = profile.buffer(n) else { throw MoepackError(.badInput, file: profile.name, item: n, "expert-major layout needs this buffer in the profile") }
                        return try profile.fixedType(pb.type)
                    }
                    guard Set(partTypes.map(\.containerBytes)).count == 1 else {
                        throw MoepackError(.unsupported, file: profile.name, item: "moe_experts", "expert arrays of different container sizes")
                    }
                    let el = ExpertRecordLayout(moeBlocks: m.moeBlocks, experts: m.experts,
                                                w1Count: m.expertHidden * m.embedDim, b1Count: m.expertHidden,
                                                w2Count: m.embedDim * m.expertHidden, b2Count: m.embedDim,
                                                elementBytes: t.containerBytes, partTypes: partTypes,
                                                partAlignment: profile.axiAlignment ?? 64,
                                                recordAlignment: 4096)
                    expertLayout = el
                    let region = KernelProfile.Buffer(name: "moe_experts", shape: [m.moeBlocks.count, m.experts, el.strideExpert / t.containerBytes],
                                                      type: b.type, role: "weight", register: nil)
                    try add(region, t, el.totalBytes, .expertRecords(el))
                    continue
                }
                if b.name == "moe_w_gate" && allTasks {
                    try add(b, t, bytes, .kernelArray(b.name, task: 0))
                    for extra in 1..<max(tasks, 1) {
                        try add(KernelProfile.Buffer(name: "moe_w_gate_task\(extra)", shape: b.shape, type: b.type, role: "weight", register: nil),
                            t, bytes, .kernelArray(b.name, task: extra))
                    }
                } else {
                    try add(b, t, bytes, .kernelArray(b.name, task: task))
                }
            case "input" where b.name == "images":
                try add(b, t, bytes, .frame)
            default:
                try add(b, t, bytes, .zeros)
            }
        }
        buffers = out
        totalBytes = align(offset, profile.alignment)
        self.expertLayout = expertLayout
        self.allTasks = allTasks
    }

    /// The manifest's expert records (expert-major layout; empty otherwise): block by block, experts
    /// ascending, with the absolute offsets of each record and of its four parts.
    public func expertRecords() -> [Manifest.ExpertRecord] {
        guard let el = expertLayout, let region = buffers.first(where: { $0.buffer.name == "moe_experts" }) else { return [] }
        return el.moeBlocks.enumerated().flatMap { mi, block in
            (0..<el.experts).map { e in
                let start = region.offset + el.recordOffset(moeIndex: mi, expert: e)
                return Manifest.ExpertRecord(block: block, expert: e, offset: start, bytes: el.recordBytes,
                                             w1: start + el.w1, b1: start + el.b1, w2: start + el.w2, b2: start + el.b2)
            }
        }
    }

    /// The manifest's task gates (`--task all`; empty otherwise): each task's copy of `moe_w_gate`.
    public func taskGates() -> [Manifest.TaskGate] {
        guard allTasks else { return [] }
        return buffers.compactMap { p in
            guard case .kernelArray("moe_w_gate", let task) = p.content else { return nil }
            return Manifest.TaskGate(task: task, offset: p.offset, bytes: p.bytes)
        }
    }
}

func align(_ x: Int, _ a: Int) -> Int { (x + a - 1) / a * a }

/// Streams a checkpoint into `DIR/ddr.bin`, `DIR/manifest.json`, `DIR/moepack_ddr.h` and
/// `DIR/manifest.sha256` (see ``ImageValidation``).
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

/// ``pack(kernel:options:outputDirectory:warn:)`` up to, not including, putting the files in place.
public func stagePack(kernel: KernelTensors, options: PackOptions, outputDirectory: String,
                      warn: (String) -> Void = { _ in }) throws -> StagedPack {
    let profile = options.profile
    let cfg = kernel.config
    guard options.task >= 0, options.task < max(cfg.tasks, 1) else {
        throw MoepackError(.usage, item: "--task", "task \(options.task) out of range: the checkpoint has \(cfg.tasks) task gate(s)")
    }
    let plan = try DDRPlan(profile: profile, layout: options.layout, task: options.task, allTasks: options.allTasks, tasks: cfg.tasks)
    // Every kernel array must have exactly the element count the model gives.
    for p in plan.buffers {
        guard case .kernelArray(let name, _) = p.content else { continue }
        guard let s = kernel.shape(of: name) else {
            throw MoepackError(.unsupported, file: profile.name, item: name, "no model tensor maps to this kernel argument")
        }
        if s.reduce(1, *) != p.buffer.shape.reduce(1, *) {
            throw MoepackError(.mismatch, file: kernel.checkpoint.source.path, item: name,
                               "model gives shape \(shapeString(s)), the profile declares \(shapeString(p.buffer.shape))")
        }
    }
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
    var manifestBuffers: [Manifest.Buffer] = []
    var reports: [Manifest.TensorReport] = []
    var warnings: [String] = []
    var overflowByType: [String: Int] = [:]

    func account(_ name: String, _ p: PlannedBuffer, _ t: FixedType, _ stats: QuantizationStats) throws {
        if stats.overflowCount > 0 {
            let range = "\(p.type.baseDescription) range [\(fmt(t.minValue)), \(fmt(t.maxValue))], largest |value| \(fmt(stats.maxOverflowMagnitude))"
            if options.strict {
                throw MoepackError(.numeric, file: kernel.checkpoint.source.path, item: name,
                                   "\(stats.overflowCount) value(s) outside \(range) (--strict)")
            }
            let msg = "\(name): \(stats.overflowCount) value(s) outside \(p.buffer.type) = \(range) (\(options.overflow.rawValue))"
            warnings.append(msg)
            warn(msg)
        }
        overflowByType[p.buffer.type, default: 0] += stats.overflowCount
        reports.append(Manifest.TensorReport(
            name: name, buffer: p.buffer.name, type: p.buffer.type, count: stats.count,
            min: stats.count > 0 ? stats.min : 0, max: stats.count > 0 ? stats.max : 0, overflow: stats.overflowCount,
            sqnr_db: stats.sqnrDB.isFinite ? (stats.sqnrDB * 1000).rounded() / 1000 : nil,
            max_abs_error: stats.maxAbsError))
    }

    for p in plan.buffers {
        try image.zeros(p.offset - image.position, intoBuffer: false)
        image.beginBuffer()
        let t = p.type.with(quantization: options.quantization, overflow: options.overflow)
        switch p.content {
        case .kernelArray(let name, let task):
            try kernel.forEachPart(of: name, task: task) { part in
                try account(part.name, p, t, try image.quantized(part.values[...], t))
            }
        case .expertRecords(let el):
            let counts = [el.w1Count, el.b1Count, el.w2Count, el.b2Count]
            let partOffsets = [el.w1, el.b1, el.w2, el.b2]
            for (mi, block) in el.moeBlocks.enumerated() {
                let tensors = expertArrayNames.map { KernelTensors.mlpTensor(of: $0, block: block)! }
                let values = try tensors.map { try kernel.checkpoint.read($0) }
                var stats = [QuantizationStats](repeating: QuantizationStats(), count: 4)
                for e in 0..<el.experts {
                    let recordStart = p.offset + el.recordOffset(moeIndex: mi, expert: e)
                    for k in 0..<4 {
                        try image.zeros(recordStart + partOffsets[k] - image.position)
                        let pt = el.partTypes[k].with(quantization: options.quantization, overflow: options.overflow)
                        stats[k].merge(try image.quantized(values[k][(e * counts[k])..<((e + 1) * counts[k])], pt))
                    }
                }
                for k in 0..<4 {
                    var pk = p
                    pk.buffer.type = options.profile.buffer(expertArrayNames[k])?.type ?? p.buffer.type
                    pk.type = el.partTypes[k]
                    try account(tensors[k], pk, el.partTypes[k].with(quantization: options.quantization, overflow: options.overflow), stats[k])
                }
            }
            try image.zeros(p.offset + p.bytes - image.position)
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
    let (imageSHA, bufferSHAs) = image.finish()
    for i in manifestBuffers.indices { manifestBuffers[i].sha256 = bufferSHAs[i] }
    let tensorSHAs = digests.finish()
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
        let reg = profile.buffer("moe_w_gate")?.register.map { String($0) } ?? "moe_w_gate's register"
        notes.append("All task gates are packed (task_gates); moe_w_gate points at task 0's copy. To switch task on the board, write base + task_gates[t].offset to register \(reg) (one register write) before starting the kernel.")
    } else {
        notes.append("moe_w_gate holds task \(options.task)'s gates.")
    }
    if let el = plan.expertLayout, let region = plan.buffers.first(where: { $0.buffer.name == "moe_experts" }) {
        notes.append("expert-major layout: for kernels built with one expert base pointer. Record address = base + \(region.offset) + moe_index·\(el.strideBlock) + expert·\(el.strideExpert); inside a record w1 at +\(el.w1), b1 at +\(el.b1), w2 at +\(el.w2), b2 at +\(el.b2). The published bitstream needs --layout kernel.")
    }
    if kernel.checkpoint.naming == .edgeMoE { notes.append("Source is an Edge-MoE folder: already folded, folds not applied.") }
    let manifest0 = Manifest(
        format: "moepack-ddr/1", tool: options.tool, profile: profile.name,
        profile_definition: (try? KernelProfile.builtin(profile.name)) == profile ? nil : profile, kernel: profile.kernel,
        task: options.allTasks ? 0 : options.task, layout: options.layout.rawValue, model: cfg,
        folds: kernel.checkpoint.naming == .m3vit ? kernel.folds : nil,
        quantization: Manifest.Quantization(mode: options.quantization.rawValue, overflow: options.overflow.rawValue, tensors: reports),
        source: Manifest.Source(path: src.path, container: src.container, bytes: pathBytes(src.path),
                                sha256: try sourceHash?.value(), tensors_sha256: TensorDigests.combined(sourceTensors),
                                tensors: sourceTensors, notes: src.notes),
        image: Manifest.Image(file: "ddr.bin", bytes: plan.totalBytes, sha256: imageSHA),
        header: nil,
        alignment: profile.alignment, types: profile.types, registers: profile.registers, buffers: manifestBuffers,
        expert_records: plan.expertLayout == nil ? nil : plan.expertRecords(),
        expert_types: plan.expertLayout.map { el in Dictionary(uniqueKeysWithValues: zip(expertArrayNames, el.partTypes.map(\.baseDescription))) },
        task_gates: taskGates, notes: notes)
    var manifest = manifest0
    let header = Array(CHeader.render(manifest).utf8)
    manifest.header = Manifest.Image(file: "moepack_ddr.h", bytes: header.count, sha256: hex(SHA256.hash(data: header)))
    try AtomicFileWriter.write(header, to: stage.path("moepack_ddr.h"))
    let manifestBytes = Array(try manifest.encoded())
    try AtomicFileWriter.write(manifestBytes, to: stage.path("manifest.json"))
    try AtomicFileWriter.write(Array(ImageValidation.manifestDigestText(manifestBytes).utf8), to: stage.path(ImageValidation.manifestDigestFile))
    return StagedPack(result: PackResult(manifest: manifest, warnings: warnings, overflowByType: overflowByType), stage: stage)
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
