import Foundation

import MoepackCore
import MoepackModel
import MoepackFixedPoint

/// A packed DDR image opened through its manifest: the only thing inference and verification read.
public final class PackedImage: @unchecked Sendable {
    public let directory: String
    public let manifest: Manifest
    public let imagePath: String
    private let bytes: [UInt8]

    /// Opens an image folder and proves it before anything reads it: the manifest is validated
    /// (``ImageValidation``: fields against each other, the profile and the buffer layout), its
    /// SHA-256 is checked against `manifest.sha256`, and `ddr.bin` is read (its size first) and, with
    /// `verifyingDigests`, checked against `image.sha256` and the header against `header.sha256`.
    /// - Parameter verifyingDigests: false only for ``check()``, which lists every mismatch itself.
    /// - Throws: ``MoepackError`` `.badInput` naming the file and field (invalid, edited or corrupted
    ///   image), `.io` when a file is missing or unreadable.
    public init(directory: String, verifyingDigests: Bool = true) throws {
        self.directory = directory
        let (m, manifestBytes) = try Manifest.load(directory: directory)
        manifest = m
        let digestPath = (directory as NSString).appendingPathComponent(ImageValidation.manifestDigestFile)
        let digestText = regularFileSize(digestPath).flatMap { $0 <= 4096 ? FileManager.default.contents(atPath: digestPath) : Data(count: 4097) }
        try ImageValidation.checkManifestDigest(manifestBytes, digestText: digestText, digestFile: digestPath)
        imagePath = (directory as NSString).appendingPathComponent(m.image.file)
        guard let size = regularFileSize(imagePath) else {
            throw MoepackError(.io, file: imagePath, "no image file (a regular file named by image.file)")
        }
        guard size == m.image.bytes else {
            throw MoepackError(.badInput, file: imagePath, "\(size) bytes, the manifest says \(m.image.bytes) (truncated or wrong copy?)")
        }
        guard let data = FileManager.default.contents(atPath: imagePath), data.count == m.image.bytes else {
            throw MoepackError(.io, file: imagePath, "cannot read the image")
        }
        bytes = [UInt8](data)
        if verifyingDigests {
            let r = checkDigests(buffers: false)
            guard r.imageOK else {
                throw MoepackError(.badInput, file: imagePath, item: "image.sha256", "the image's SHA-256 differs from the manifest's (corrupted or modified; `moepack check` names the buffers)")
            }
            guard r.headerOK else {
                throw MoepackError(.badInput, file: (directory as NSString).appendingPathComponent(m.header?.file ?? ""), item: "header.sha256", "missing, or its SHA-256 differs from the manifest's (edited?)")
            }
        }
        try checkHeaderRecord()
    }

    /// The manifest's modes and task against what its header (`moepack_ddr.h`, covered by
    /// `header.sha256`) recorded at pack time: the element types do not carry the conversion modes,
    /// so a manifest edited to another valid mode with its digest recomputed is caught here. Skipped
    /// when the header's digest differs (reported by the digest checks instead).
    /// - Throws: ``MoepackError`` `.badInput` naming `manifest.json` and the field.
    func checkHeaderRecord() throws {
        guard let h = manifest.header else { return }
        let path = (directory as NSString).appendingPathComponent(h.file)
        guard let data = FileManager.default.contents(atPath: path), hex(SHA256.hash(data: data)) == h.sha256 else { return }
        let file = (directory as NSString).appendingPathComponent("manifest.json")
        guard let rec = CHeader.record(in: String(decoding: data, as: UTF8.self)) else {
            throw MoepackError(.badInput, file: path, item: "header", "records no quantization modes and task (not written by moepack?)")
        }
        let m = manifest
        for (field, mine, theirs) in [("quantization.mode", m.quantization.mode, rec.mode),
                                      ("quantization.overflow", m.quantization.overflow, rec.overflow),
                                      ("task", String(m.task), String(rec.task))] where mine != theirs {
            throw MoepackError(.badInput, file: file, item: field, "\(mine), but \(h.file) (covered by header.sha256) records \(theirs) from the pack (edited manifest?)")
        }
    }

    /// Result of ``check()``: buffers whose SHA-256 differs from the manifest.
    public struct CheckResult: Sendable {
        public var imageOK: Bool
        public var badBuffers: [String]
        /// False when `moepack_ddr.h` is missing or differs from the manifest's checksum.
        public var headerOK: Bool = true
        /// What is wrong with the manifest's provenance block (nil: consistent): `source.tensors_sha256`
        /// not the digest of `source.tensors`, one of them without the other, or a tensor listed twice.
        public var sourceDigestsProblem: String? = nil
        public var ok: Bool { imageOK && badBuffers.isEmpty && headerOK && sourceDigestsProblem == nil }

        /// What is wrong, for a one-line message (empty when ``ok``).
        public var problems: [String] {
            var p: [String] = []
            if !imageOK { p.append("ddr.bin (whole image)") }
            if !badBuffers.isEmpty { p.append("buffers " + badBuffers.joined(separator: ", ")) }
            if !headerOK { p.append("moepack_ddr.h") }
            if let sp = sourceDigestsProblem { p.append("manifest " + sp) }
            return p
        }
    }

    /// Re-hashes the image and every buffer and compares with the manifest.
    public func check() -> CheckResult { checkDigests(buffers: true) }

    func checkDigests(buffers: Bool) -> CheckResult {
        let whole = hex(SHA256.hash(data: bytes))
        var bad: [String] = []
        for b in manifest.buffers where buffers {
            let h = bytes.withUnsafeBytes { hex(SHA256.hash(data: UnsafeRawBufferPointer(rebasing: $0[b.offset..<(b.offset + b.bytes)]))) }
            if h != b.sha256 { bad.append(b.name) }
        }
        var headerOK = true
        if let h = manifest.header {
            let path = (directory as NSString).appendingPathComponent(h.file)
            headerOK = FileManager.default.contents(atPath: path).map { hex(SHA256.hash(data: $0)) == h.sha256 } ?? false
        }
        return CheckResult(imageOK: whole == manifest.image.sha256, badBuffers: bad, headerOK: headerOK,
                           sourceDigestsProblem: Self.sourceDigestsProblem(manifest.source))
    }

    /// See ``CheckResult/sourceDigestsProblem``. `pack` writes `tensors` and `tensors_sha256` together.
    static func sourceDigestsProblem(_ src: Manifest.Source) -> String? {
        switch (src.tensors, src.tensors_sha256) {
        case (nil, nil): return nil
        case (nil, .some): return "source.tensors_sha256 without source.tensors"
        case (.some, nil): return "source.tensors without source.tensors_sha256"
        case let (tensors?, digest?):
            var seen = Set<String>()
            for t in tensors where !seen.insert(t.name).inserted { return "source.tensors lists \(t.name) twice" }
            return digest == TensorDigests.combined(tensors) ? nil : "source.tensors_sha256 (not the digest of source.tensors)"
        }
    }

    /// The element type of buffer `name` (base spelling from the manifest, Vitis default modes).
    public func type(of name: String) throws -> FixedType {
        let isExpert = KernelArgument(name: name).map(KernelArgument.experts.contains) ?? false
        if isExpert, manifest.buffer(name) == nil, let ctype = manifest.expert_types?[name] {
            do { return try FixedType(parsing: ctype) } catch {
                throw MoepackError(.badInput, file: directory, item: name, "bad type '\(ctype)'")
            }
        }
        guard let b = manifest.buffer(name) else { throw MoepackError(.badInput, file: directory, item: name, "no such buffer in the manifest") }
        do { return try FixedType(parsing: b.ctype) } catch {
            throw MoepackError(.badInput, file: directory, item: name, "bad type '\(b.ctype)'")
        }
    }

    /// Raw bytes of kernel array `name` in the kernel's layout (little-endian containers, C order).
    /// In an expert-major image the four expert arrays are gathered back from the expert records.
    public func raw(_ name: String) throws -> ArraySlice<UInt8> {
        if let b = manifest.buffer(name) { return bytes[b.offset..<(b.offset + b.bytes)] }
        if let recs = manifest.expert_records, let arg = KernelArgument(name: name), let k = KernelArgument.experts.firstIndex(of: arg) {
            let c = manifest.model
            let eb = try type(of: name).containerBytes
            let count = arg.elementsPerExpert(c)!
            var out = [UInt8]()
            out.reserveCapacity(recs.count * count * eb)
            for block in c.moeBlocks {
                for e in 0..<c.experts {
                    guard let r = recs.first(where: { $0.block == block && $0.expert == e }) else {
                        throw MoepackError(.badInput, file: directory, item: "expert_records", "no record for block \(block) expert \(e)")
                    }
                    let start = [r.w1, r.b1, r.w2, r.b2][k]
                    out += try raw(offset: start, count: count * eb)
                }
            }
            return out[...]
        }
        throw MoepackError(.badInput, file: directory, item: name, "no such buffer in the manifest")
    }

    /// DDR bytes of one expert's w1, b1, w2 and b2 (``KernelArgument/experts`` order), each in its own
    /// element type's container: what the MoE schedule fetches per visited expert.
    /// - Throws: ``MoepackError`` when the image lacks an expert array's type.
    public func expertPartBytes() throws -> [Int] {
        try KernelArgument.experts.map { $0.elementsPerExpert(manifest.model)! * (try type(of: $0.name)).containerBytes }
    }

    /// Raw bytes at an absolute range of the image (for expert records and task gates).
    public func raw(offset: Int, count: Int) throws -> ArraySlice<UInt8> {
        guard offset >= 0, count >= 0, count <= bytes.count, offset <= bytes.count - count else {
            throw MoepackError(.badInput, file: imagePath, "range \(offset)+\(count) outside the image")
        }
        return bytes[offset..<(offset + count)]
    }

    /// Buffer `name` dequantized to float32 values (C order).
    public func dequantized(_ name: String) throws -> [Float] {
        let t = try type(of: name)
        let r = try raw(name)
        let count = r.count / t.containerBytes
        var out = [Float](repeating: 0, count: count)
        r.withUnsafeBytes { src in out.withUnsafeMutableBufferPointer { t.decode(src, count: count, into: $0) } }
        return out
    }

    /// Dequantized gates of every packed task: [task][moeBlock][E·D]. Single-task images give one task.
    public func allTaskGates() throws -> [[[Float]]] {
        let c = manifest.model
        let per = KernelArgument.moe_w_gate.elementsPerBlock(c)!
        let t = try type(of: KernelArgument.moe_w_gate.name)
        func split(_ v: [Float]) -> [[Float]] { (0..<c.moeBlocks.count).map { Array(v[($0 * per)..<(($0 + 1) * per)]) } }
        guard let gates = manifest.task_gates, !gates.isEmpty else { return [split(try dequantized(KernelArgument.moe_w_gate.name))] }
        return try gates.sorted { $0.task < $1.task }.map { g in
            let r = try raw(offset: g.offset, count: g.bytes)
            let n = g.bytes / t.containerBytes
            var out = [Float](repeating: 0, count: n)
            r.withUnsafeBytes { src in out.withUnsafeMutableBufferPointer { t.decode(src, count: n, into: $0) } }
            return split(out)
        }
    }

    /// Kernel-form float weights rebuilt from the image alone, using `task`'s gates (nil: the manifest's task).
    /// - Throws: ``MoepackError`` when a buffer is missing, or the task is not in the image.
    public func backboneWeights(task: Int? = nil) throws -> BackboneWeights {
        var arrays: [String: [Float]] = [:]
        for arg in KernelArgument.weights { arrays[arg.name] = try dequantized(arg.name) }
        let gates = try allTaskGates()
        let packedTasks = manifest.task_gates?.map(\.task).sorted() ?? [manifest.task]
        let want = task ?? manifest.task
        guard let idx = packedTasks.firstIndex(of: want) else {
            throw MoepackError(.usage, file: directory, item: "--task", "task \(want) is not in this image (packed: \(packedTasks.map(String.init).joined(separator: ",")))")
        }
        return try BackboneWeights(kernelArrays: arrays, config: manifest.model, task: idx, allGates: gates)
    }
}
