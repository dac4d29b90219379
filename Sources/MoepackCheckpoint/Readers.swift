import Foundation
import MoepackCore

// Container dispatch by content (magic bytes), never by file extension.

/// Opens a checkpoint file, choosing the reader from its first bytes:
/// `PK\x03\x04`/`PK\x05\x06` zip (PyTorch zip when it has `data.pkl`, npz when it has `.npy` members),
/// `\x80 n \x8a` pickle PROTO + LONG1 (PyTorch legacy magic number), `\x93NUMPY` (npy), `\x89HDF\r\n\x1a\n` at 0/512/1024/…
/// (HDF5), 8-byte little-endian header length followed by `{` (safetensors).
/// - Throws: ``MoepackError`` (`badInput`) "not a checkpoint: unknown container (first bytes …)".
func openFile(_ path: String, options: OpenOptions) throws -> any TensorSource {
    let file = try RandomAccessFile(path)
    let head = try file.prefix(16)
    func starts(_ magic: [UInt8]) -> Bool { head.count >= magic.count && Array(head.prefix(magic.count)) == magic }

    if starts([0x50, 0x4b, 0x03, 0x04]) || starts([0x50, 0x4b, 0x05, 0x06]) {
        let zip = try ZipArchive(file: file)
        if zip.entries.contains(where: { $0.name == "data.pkl" || $0.name.hasSuffix("/data.pkl") }) {
            return try PyTorchZipSource(archive: zip, options: options)
        }
        if !zip.entries.isEmpty, zip.entries.allSatisfy({ $0.name.hasSuffix(".npy") || $0.name.hasSuffix("/") }) {
            return try NpzSource(archive: zip)
        }
        throw MoepackError(.badInput, file: path, "not a checkpoint: zip archive without a data.pkl record or .npy members")
    }
    if head.count >= 3, head[0] == 0x80, (2...5).contains(head[1]), head[2] == 0x8a {
        // Legacy torch.save: first pickle is PROTO n, LONG1 <magic number>.
        return try PyTorchLegacySource(file: file, options: options)
    }
    if starts([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]) {
        return try NpySource(path: path)
    }
    if try hasHDF5Signature(file) {
        return try HDF5Source(path: path)
    }
    if head.count >= 9 {
        // An 8-byte length then `{`: safetensors, even when the length is absurd (the reader then
        // reports the length against the file size and its cap instead of "unknown container").
        // A length that fits the file then `[` or JSON whitespace: a safetensors file whose header is
        // malformed JSON (nested too deep, not an object), which the reader names.
        var r = LEReader(head)
        if let n = r.uint(8), n >= 2, head[8] == 0x7b || SafetensorsSource.matches(head, fileSize: file.size) {
            return try SafetensorsSource(path: path)
        }
    }
    if file.size >= 262 {
        let tar = try file.read(at: 257, count: 5, what: "header")
        if tar == Array("ustar".utf8) {
            throw MoepackError(.unsupported, file: path, "tar-based PyTorch checkpoint (torch < 0.4) is not supported")
        }
    }
    if head.isEmpty { throw MoepackError(.badInput, file: path, "not a checkpoint: empty file") }
    throw MoepackError(.badInput, file: path, "not a checkpoint: unknown container (first bytes \(hexPrefix(head)))")
}

/// Opens a checkpoint folder: expert-parallel (`0.pth` present) or the Edge-MoE raw float32 folder
/// (`*.float32.bin` files).
/// - Throws: ``MoepackError`` (`badInput`) naming the folder when it is neither.
func openFolder(_ path: String, options: OpenOptions) throws -> any TensorSource {
    let names: [String]
    do { names = try FileManager.default.contentsOfDirectory(atPath: path) } catch {
        throw MoepackError(.io, file: path, "cannot list folder")
    }
    if names.contains("0.pth") {
        return try ExpertParallelSource(path: path, options: options)
    }
    if names.contains(where: { $0.hasSuffix(".float32.bin") }) {
        return try EdgeMoEFolderSource(path: path)
    }
    throw MoepackError(.badInput, file: path, "not a checkpoint folder: no 0.pth (expert-parallel ranks) and no *.float32.bin files (Edge-MoE folder)")
}

/// The HDF5 file format's superblock signature `\x89HDF\r\n\x1a\n`, searched at offsets 0, 512, 1024,
/// 2048, … (the format allows a user block before the superblock).
func hasHDF5Signature(_ file: RandomAccessFile) throws -> Bool {
    let magic: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]
    var offset = 0
    while offset + 8 <= file.size {
        if try file.read(at: offset, count: 8, what: "header") == magic { return true }
        offset = offset == 0 ? 512 : offset * 2
    }
    return false
}

/// True when `path` is a regular file with an HDF5 signature (see ``hasHDF5Signature(_:)``); false when
/// it cannot be read.
public func isHDF5File(_ path: String) -> Bool {
    guard let file = try? RandomAccessFile(path) else { return false }
    return (try? hasHDF5Signature(file)) ?? false
}
