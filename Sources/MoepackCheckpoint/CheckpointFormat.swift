import Foundation
import MoepackCore

/// The checkpoint containers moepack reads: the one registry of formats. Each kind has its sniff
/// (signature of the first bytes, or shape of a folder) and its open; ``openCheckpoint(_:options:)``
/// dispatches through it and nothing else. Raw values are the spellings of `inspect --json` and of a
/// manifest's `source.container`.
///
/// Cases are declared in dispatch order: the first kind whose sniff matches opens the checkpoint.
public enum CheckpointContainer: String, Sendable, Codable, CaseIterable {
    /// `torch.save` zip (PyTorch ≥ 1.6): `PK\x03\x04`/`PK\x05\x06` with a `data.pkl` record.
    case pytorchZip = "pytorch-zip"
    /// NumPy `.npz`: a zip whose members are all `.npy` arrays.
    case npz
    /// Legacy `torch.save` stream: first pickle is PROTO 2…5 then LONG1 (the magic number).
    case pytorchLegacy = "pytorch-legacy"
    /// NumPy `.npy`: magic string `\x93NUMPY`.
    case npy
    /// HDF5: superblock signature `\x89HDF\r\n\x1a\n` at offset 0, 512, 1024, 2048, … (user block allowed).
    case hdf5
    /// safetensors: 8-byte little-endian header length, then `{` (or, when the length fits the file,
    /// `[` or JSON whitespace, so that a malformed header gets the reader's reason).
    case safetensors
    /// Expert-parallel save: a folder with `0.pth`, `1.pth`, … (one `torch.save` per rank).
    case expertParallelFolder = "expert-parallel-folder"
    /// Edge-MoE raw folder: `*.float32.bin` files.
    case edgeMoEFolder = "edge-moe-folder"
    /// Tensors held in memory (``MemorySource``); never sniffed.
    case memory

    /// True for the kinds that are folders rather than files.
    public var isFolder: Bool { self == .expertParallelFolder || self == .edgeMoEFolder }

    /// True when the container can hold a training checkpoint whose state_dict sits under a key.
    public var hasStateDictKey: Bool { self == .pytorchZip || self == .pytorchLegacy || self == .expertParallelFolder }

    /// Whether `probe` is a checkpoint of this kind.
    /// - Throws: ``MoepackError`` naming the file when a zip's central directory cannot be read
    ///   (sniffing a zip kind lists its members).
    public func sniffs(_ probe: CheckpointProbe) throws -> Bool {
        switch (self, probe.shape) {
        case (.pytorchZip, .file(let f)):
            return try f.zip()?.entries.contains(where: { $0.name == "data.pkl" || $0.name.hasSuffix("/data.pkl") }) ?? false
        case (.npz, .file(let f)):
            guard let zip = try f.zip() else { return false }
            return !zip.entries.isEmpty && zip.entries.allSatisfy { $0.name.hasSuffix(".npy") || $0.name.hasSuffix("/") }
        case (.pytorchLegacy, .file(let f)):
            let h = f.head
            return h.count >= 3 && h[0] == 0x80 && (2...5).contains(h[1]) && h[2] == 0x8a
        case (.npy, .file(let f)):
            return f.starts(with: NpyHeader.magic)
        case (.hdf5, .file(let f)):
            return try !f.isZip && hasHDF5Signature(f.file)
        case (.safetensors, .file(let f)):
            guard f.head.count >= 9, !f.isZip else { return false }
            var r = LEReader(f.head)
            // `{` after any length ≥ 2, even an absurd one: the reader then reports the length
            // against the file size and its cap instead of "unknown container".
            guard let n = r.uint(8), n >= 2 else { return false }
            return f.head[8] == 0x7b || safetensorsHeaderFits(f.head, fileSize: f.file.size)
        case (.expertParallelFolder, .folder(let names)):
            return names.contains("0.pth")
        case (.edgeMoEFolder, .folder(let names)):
            return names.contains(where: { $0.hasSuffix(".float32.bin") })
        default:
            return false
        }
    }

    /// Opens `probe` with this kind's reader (call after ``sniffs(_:)`` returned true).
    /// - Throws: the reader's ``MoepackError`` naming the file and tensor; `badInput` for `memory`.
    public func open(_ probe: CheckpointProbe, options: OpenOptions) throws -> any TensorSource {
        switch (self, probe.shape) {
        case (.pytorchZip, .file(let f)): return try PyTorchZipSource(archive: try f.zip()!, options: options)
        case (.npz, .file(let f)): return try NpzSource(archive: try f.zip()!)
        case (.pytorchLegacy, .file(let f)): return try PyTorchLegacySource(file: f.file, options: options)
        case (.npy, .file): return try NpySource(path: probe.path)
        case (.hdf5, .file): return try HDF5Source(path: probe.path)
        case (.safetensors, .file): return try SafetensorsSource(path: probe.path)
        case (.expertParallelFolder, .folder): return try ExpertParallelSource(path: probe.path, options: options)
        case (.edgeMoEFolder, .folder): return try EdgeMoEFolderSource(path: probe.path)
        default:
            throw MoepackError(.badInput, file: probe.path, "not a \(rawValue) checkpoint")
        }
    }

    /// The first kind, in declaration order, whose sniff matches `probe`; nil when none does.
    /// - Throws: as ``sniffs(_:)``.
    public static func sniff(_ probe: CheckpointProbe) throws -> CheckpointContainer? {
        try allCases.first { try $0.sniffs(probe) }
    }
}

extension CheckpointContainer: CustomStringConvertible {
    /// The JSON spelling (``rawValue``), as messages print it.
    public var description: String { rawValue }
}

/// What the sniffs of ``CheckpointContainer`` look at: a file's first bytes, size and (for a zip) its
/// member list, read once; or a folder's file names.
public final class CheckpointProbe: @unchecked Sendable {
    public let path: String
    let shape: Shape

    enum Shape {
        case file(FileProbe)
        case folder([String])
    }

    /// Probes the file or folder at `path`; reads at most its first 16 bytes.
    /// - Throws: ``MoepackError`` (`io`) naming the path when it does not exist or cannot be read.
    public init(path: String) throws {
        self.path = path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw MoepackError(.io, file: path, "no such file or folder")
        }
        if isDir.boolValue {
            do { shape = .folder(try FileManager.default.contentsOfDirectory(atPath: path)) } catch {
                throw MoepackError(.io, file: path, "cannot list folder")
            }
        } else {
            shape = .file(try FileProbe(RandomAccessFile(path)))
        }
    }
}

/// A file's first 16 bytes and, when it starts with a zip signature, its parsed central directory.
final class FileProbe {
    let file: RandomAccessFile
    let head: [UInt8]
    private var archive: ZipArchive?

    init(_ file: RandomAccessFile) throws {
        self.file = file
        self.head = try file.prefix(16)
    }

    func starts(with magic: [UInt8]) -> Bool {
        head.count >= magic.count && Array(head.prefix(magic.count)) == magic
    }

    /// `PK\x03\x04` (local file header) or `PK\x05\x06` (empty archive's end record).
    var isZip: Bool { starts(with: [0x50, 0x4b, 0x03, 0x04]) || starts(with: [0x50, 0x4b, 0x05, 0x06]) }

    /// The zip archive (parsed once), or nil when the file is not a zip.
    /// - Throws: ``MoepackError`` naming the file when the central directory is invalid.
    func zip() throws -> ZipArchive? {
        guard isZip else { return nil }
        if let archive { return archive }
        let z = try ZipArchive(file: file)
        archive = z
        return z
    }
}

/// True when `head` (at least 9 bytes of a file of `fileSize` bytes) starts with a safetensors header
/// length that fits the file and ``SafetensorsSource/maxHeaderBytes``, followed by the start of a JSON
/// value: `{`, `[` or JSON whitespace (so a malformed header, e.g. nested too deep, gets the JSON
/// parser's reason rather than "unknown container").
func safetensorsHeaderFits(_ head: [UInt8], fileSize: Int) -> Bool {
    guard head.count >= 9, fileSize >= 10 else { return false }
    var n: UInt64 = 0
    for k in 0..<8 { n |= UInt64(head[k]) << (8 * UInt64(k)) }
    guard n >= 2, n <= UInt64(SafetensorsSource.maxHeaderBytes), n <= UInt64(fileSize - 8) else { return false }
    return [UInt8(ascii: "{"), UInt8(ascii: "["), 0x20, 0x09, 0x0A, 0x0D].contains(head[8])
}
