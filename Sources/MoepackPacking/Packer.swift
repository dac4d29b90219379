import Foundation
import Crypto
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint

/// Options of `moepack pack`.
public struct PackOptions: Sendable {
    public var profile: KernelProfile
    /// Task whose gates are packed into `moe_w_gate`.
    public var task: Int
    /// Quantization and overflow modes used to convert float weights (default AP_RND_CONV, AP_SAT;
    /// AP_TRN, AP_WRAP reproduce the published testbench's plain assignments).
    public var quantization: Quantization
    public var overflow: Overflow
    /// Values outside a type's range are errors instead of warnings.
    public var strict: Bool
    /// Frame for the `images` slot ([3,H,W] bytes), or nil for zeros.
    public var frame: [UInt8]?
    public var tool: String

    public init(profile: KernelProfile, task: Int = 0, quantization: Quantization = .AP_RND_CONV,
                overflow: Overflow = .AP_SAT, strict: Bool = false, frame: [UInt8]? = nil, tool: String = "moepack") {
        self.profile = profile; self.task = task; self.quantization = quantization; self.overflow = overflow
        self.strict = strict; self.frame = frame; self.tool = tool
    }
}

/// What `pack` did: the manifest it wrote and the warnings it printed.
public struct PackResult: Sendable {
    public var manifest: Manifest
    public var warnings: [String]
    /// Overflow counts per kernel type name.
    public var overflowByType: [String: Int]
}

/// A buffer's place in the image.
public struct PlannedBuffer: Sendable {
    public var buffer: KernelProfile.Buffer
    public var type: FixedType
    public var offset: Int
    public var bytes: Int
}

/// The DDR layout: every kernel argument in argument order, each at an `alignment`-byte offset.
public struct DDRPlan: Sendable {
    public var buffers: [PlannedBuffer]
    public var totalBytes: Int

    /// Lays out the profile's buffers.
    /// - Throws: ``MoepackError`` when a type does not parse or sizes overflow.
    public init(profile: KernelProfile) throws {
        var offset = 0
        var out: [PlannedBuffer] = []
        for b in profile.buffers {
            let t = try profile.fixedType(b.type)
            var count = 1
            for s in b.shape {
                let (m, o) = count.multipliedReportingOverflow(by: s)
                guard !o else { throw MoepackError(.badInput, file: profile.name, item: b.name, "size overflows") }
                count = m
            }
            let bytes = count * t.containerBytes
            offset = align(offset, profile.alignment)
            out.append(PlannedBuffer(buffer: b, type: t, offset: offset, bytes: bytes))
            offset += bytes
        }
        buffers = out
        totalBytes = align(offset, profile.alignment)
    }
}

func align(_ x: Int, _ a: Int) -> Int { (x + a - 1) / a * a }

func hex(_ d: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var s = [UInt8]()
    for b in d { s.append(digits[Int(b >> 4)]); s.append(digits[Int(b & 15)]) }
    return String(decoding: s, as: UTF8.self)
}

/// SHA-256 of a file (streamed), or of a folder: each regular file's name and bytes in name order.
public func sha256OfPath(_ path: String) throws -> String {
    var hasher = SHA256()
    var isDir: ObjCBool = false
    FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
    let files: [String]
    if isDir.boolValue {
        files = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
            .map { (path as NSString).appendingPathComponent($0) }
    } else {
        files = [path]
    }
    for f in files {
        var d: ObjCBool = false
        guard FileManager.default.fileExists(atPath: f, isDirectory: &d), !d.boolValue else { continue }
        if isDir.boolValue { hasher.update(data: Array((f as NSString).lastPathComponent.utf8) + [0]) }
        guard let h = FileHandle(forReadingAtPath: f) else { throw MoepackError(.io, file: f, "cannot read") }
        defer { try? h.close() }
        while let chunk = try h.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
        }
    }
    return hex(hasher.finalize())
}

/// Streams a checkpoint into `DIR/ddr.bin`, `DIR/manifest.json` and `DIR/moepack_ddr.h`.
///
/// Weights are read tensor by tensor, folded, quantized to each buffer's `ap_fixed` type with the
/// chosen modes and written at once; nothing but the tensor being converted is held in memory.
/// Buffers that are not weights are zero (the `images` slot holds `options.frame` when given).
/// All files are staged and moved into `outputDirectory` only when complete.
/// - Throws: ``MoepackError``: missing/mismatched tensors, NaN/Inf, overflow with `strict`, I/O.
public func pack(kernel: KernelTensors, options: PackOptions, outputDirectory: String,
                 warn: (String) -> Void = { _ in }) throws -> PackResult {
    let profile = options.profile
    let cfg = kernel.config
    guard options.task >= 0, options.task < max(cfg.tasks, 1) else {
        throw MoepackError(.usage, item: "--task", "task \(options.task) out of range: the checkpoint has \(cfg.tasks) task gate(s)")
    }
    let plan = try DDRPlan(profile: profile)
    // Every weight buffer must have exactly the element count the model gives.
    for p in plan.buffers where p.buffer.role == "weight" {
        guard let s = kernel.shape(of: p.buffer.name) else {
            throw MoepackError(.unsupported, file: profile.name, item: p.buffer.name, "no model tensor maps to this kernel argument")
        }
        if s.reduce(1, *) != p.buffer.shape.reduce(1, *) {
            throw MoepackError(.mismatch, file: kernel.checkpoint.source.path, item: p.buffer.name,
                               "model gives shape \(shapeString(s)), the profile declares \(shapeString(p.buffer.shape))")
        }
    }
    let stage = try StagedDirectory(destination: outputDirectory)
    let image = try AtomicFileWriter(path: stage.path("ddr.bin"))
    var imageHash = SHA256()
    var manifestBuffers: [Manifest.Buffer] = []
    var reports: [Manifest.TensorReport] = []
    var warnings: [String] = []
    var overflowByType: [String: Int] = [:]

    func emit(_ bytes: UnsafeRawBufferPointer, _ bufferHash: inout SHA256) throws {
        try image.write(bytes)
        imageHash.update(bufferPointer: bytes)
        bufferHash.update(bufferPointer: bytes)
    }
    var scratch = [UInt8]()
    for p in plan.buffers {
        let pad = p.offset - image.bytesWritten
        if pad > 0 {
            let zeros = [UInt8](repeating: 0, count: pad)
            try image.write(zeros)
            zeros.withUnsafeBytes { imageHash.update(bufferPointer: $0) }
        }
        var h = SHA256()
        switch p.buffer.role {
        case "weight":
            let t = p.type.with(quantization: options.quantization, overflow: options.overflow)
            try kernel.forEachPart(of: p.buffer.name, task: options.task) { part in
                var stats = QuantizationStats()
                let n = part.values.count * t.containerBytes
                if scratch.count < n { scratch = [UInt8](repeating: 0, count: n) }
                try scratch.withUnsafeMutableBytes { raw in
                    let out = UnsafeMutableRawBufferPointer(rebasing: raw[0..<n])
                    part.values.withUnsafeBufferPointer { t.encode($0, into: out, stats: &stats) }
                    try emit(UnsafeRawBufferPointer(out), &h)
                }
                if stats.overflowCount > 0 {
                    let msg = "\(part.name): \(stats.overflowCount) value(s) outside \(p.buffer.type) = \(p.type.baseDescription) range [\(fmt(t.minValue)), \(fmt(t.maxValue))], largest |value| \(fmt(stats.maxOverflowMagnitude)) (\(options.overflow.rawValue))"
                    if options.strict {
                        throw MoepackError(.numeric, file: kernel.checkpoint.source.path, item: part.name,
                                           "\(stats.overflowCount) value(s) outside \(p.type.baseDescription) range [\(fmt(t.minValue)), \(fmt(t.maxValue))], largest |value| \(fmt(stats.maxOverflowMagnitude)) (--strict)")
                    }
                    warnings.append(msg)
                    warn(msg)
                }
                overflowByType[p.buffer.type, default: 0] += stats.overflowCount
                reports.append(Manifest.TensorReport(
                    name: part.name, buffer: p.buffer.name, type: p.buffer.type, count: stats.count,
                    min: stats.min, max: stats.max, overflow: stats.overflowCount,
                    sqnr_db: stats.sqnrDB.isFinite ? (stats.sqnrDB * 1000).rounded() / 1000 : nil,
                    max_abs_error: stats.maxAbsError))
            }
        case "input" where p.buffer.name == "images" && options.frame != nil:
            let frame = options.frame!
            guard frame.count * p.type.containerBytes <= p.bytes else {
                throw MoepackError(.mismatch, item: "images", "frame has \(frame.count) bytes, the slot holds \(p.bytes)")
            }
            try frame.withUnsafeBytes { try emit($0, &h) }
            let rest = [UInt8](repeating: 0, count: p.bytes - frame.count)
            try rest.withUnsafeBytes { try emit($0, &h) }
        default:
            let zeros = [UInt8](repeating: 0, count: p.bytes)
            try zeros.withUnsafeBytes { try emit($0, &h) }
        }
        guard image.bytesWritten == p.offset + p.bytes else {
            throw MoepackError(.mismatch, item: p.buffer.name, "wrote \(image.bytesWritten - p.offset) bytes, planned \(p.bytes)")
        }
        manifestBuffers.append(Manifest.Buffer(
            name: p.buffer.name, offset: p.offset, bytes: p.bytes, type: p.buffer.type,
            ctype: p.type.baseDescription, element_bytes: p.type.containerBytes, shape: p.buffer.shape,
            register: p.buffer.register, role: p.buffer.role, sha256: hex(h.finalize())))
    }
    let tail = plan.totalBytes - image.bytesWritten
    if tail > 0 {
        let zeros = [UInt8](repeating: 0, count: tail)
        try image.write(zeros)
        zeros.withUnsafeBytes { imageHash.update(bufferPointer: $0) }
    }
    try image.commit()

    let src = kernel.checkpoint.source
    var notes = [
        "Write each buffer's physical address (image base + offset) to its register (low 32 bits) and register+4 (high 32 bits), num_images to \(profile.registers["num_images"].map(String.init) ?? "num_images"), reload_one_time_weights=1 on the first run, then start through CTRL (offset \(profile.registers["CTRL"] ?? 0)).",
        "moe_w_gate holds task \(options.task)'s gates.",
    ]
    if kernel.checkpoint.naming == .edgeMoE { notes.append("Source is an Edge-MoE folder: already folded, folds not applied.") }
    let manifest = Manifest(
        format: "moepack-ddr/1", tool: options.tool, profile: profile.name, kernel: profile.kernel,
        task: options.task, layout: "kernel", model: cfg,
        folds: kernel.checkpoint.naming == .m3vit ? kernel.folds : nil,
        quantization: Manifest.Quantization(mode: options.quantization.rawValue, overflow: options.overflow.rawValue, tensors: reports),
        source: Manifest.Source(path: src.path, container: src.container, sha256: try sha256OfPath(src.path), notes: src.notes),
        image: Manifest.Image(file: "ddr.bin", bytes: plan.totalBytes, sha256: hex(imageHash.finalize())),
        alignment: profile.alignment, types: profile.types, registers: profile.registers, buffers: manifestBuffers,
        expert_records: nil, task_gates: nil, notes: notes)
    try AtomicFileWriter.write(Array(try manifest.encoded()), to: stage.path("manifest.json"))
    try AtomicFileWriter.write(Array(CHeader.render(manifest).utf8), to: stage.path("moepack_ddr.h"))
    try stage.commit()
    return PackResult(manifest: manifest, warnings: warnings, overflowByType: overflowByType)
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
