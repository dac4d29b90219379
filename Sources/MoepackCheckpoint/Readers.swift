import Foundation
import MoepackCore

/// Why `probe`, which no ``CheckpointContainer`` sniffs, is refused: a zip with neither a `data.pkl`
/// record nor `.npy` members, a tar-based torch.save (torch < 0.4), an empty file, an unknown container,
/// or a folder of neither folder kind.
/// - Returns: ``MoepackError`` naming the path (`badInput`; `unsupported` for the tar format).
func refusal(_ probe: CheckpointProbe) throws -> MoepackError {
    let path = probe.path
    guard case .file(let f) = probe.shape else {
        return MoepackError(.badInput, file: path, "not a checkpoint folder: no 0.pth (expert-parallel ranks) and no *.float32.bin files (Edge-MoE folder)")
    }
    if f.isZip {
        return MoepackError(.badInput, file: path, "not a checkpoint: zip archive without a data.pkl record or .npy members")
    }
    if f.file.size >= 262, try f.file.read(at: 257, count: 5, what: "header") == Array("ustar".utf8) {
        return MoepackError(.unsupported, file: path, "tar-based PyTorch checkpoint (torch < 0.4) is not supported")
    }
    if f.head.isEmpty { return MoepackError(.badInput, file: path, "not a checkpoint: empty file") }
    return MoepackError(.badInput, file: path, "not a checkpoint: unknown container (first bytes \(hexPrefix(f.head)))")
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
