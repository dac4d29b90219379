import Foundation
import MoepackCore

/// A NumPy `.npz` archive (`numpy.savez`, stored or deflated), container `npz`: a zip whose members
/// `<name>.npy` are arrays; tensor names are the member names without `.npy`.
///
/// Opening reads the zip directory and each member's npy header (stored members: the header bytes
/// only; deflated members: the whole member). Fortran-order arrays are gathered to C order on read.
public final class NpzSource: TensorSource {
    public let path: String
    public let container = CheckpointContainer.npz
    public let entries: [TensorEntry]
    public let skipped: [SkippedEntry]
    public let notes: [String]
    public let archive: ZipArchive
    private let headers: [String: (member: String, header: NpyHeader)]

    public convenience init(path: String) throws {
        try self.init(archive: ZipArchive(path: path))
    }

    init(archive: ZipArchive) throws {
        self.archive = archive
        self.path = archive.path
        var entries: [TensorEntry] = []
        var skipped: [SkippedEntry] = []
        var headers: [String: (String, NpyHeader)] = [:]
        for e in archive.entries {
            guard e.name.hasSuffix(".npy") else { skipped.append(SkippedEntry(name: e.name, reason: "not an .npy member")); continue }
            let name = String(e.name.dropLast(4))
            let head = try archive.readStoredPrefix(e, count: 4096)
            let h: NpyHeader
            do { h = try NpyHeader.parse(bytes: head) } catch let err as MoepackError {
                throw MoepackError(err.kind, file: path, item: e.name, err.message)
            }
            guard let count = checkedElementCount(h.shape) else {
                throw MoepackError(.badInput, file: path, item: e.name, "element count overflows")
            }
            let (bytes, o1) = count.multipliedReportingOverflow(by: h.dtype.byteSize)
            let (total, o2) = bytes.addingReportingOverflow(h.headerBytes)
            guard !o1, !o2, total == e.uncompressedSize else {
                throw MoepackError(.badInput, file: path, item: e.name, "npy: member holds \(e.uncompressedSize) bytes, header declares \(total)")
            }
            headers[name] = (e.name, h)
            entries.append(TensorEntry(name: name, dtype: h.dtype, shape: h.shape))
        }
        self.entries = entries
        self.skipped = skipped
        self.headers = headers
        self.notes = []
    }

    public func readRaw(_ name: String) throws -> [UInt8] {
        guard let (member, h) = headers[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        let stored = Array(try archive.read(member).dropFirst(h.headerBytes))
        do { return try h.toLittleEndianCOrder(stored) } catch let err as MoepackError {
            throw MoepackError(err.kind, file: path, item: member, err.message)
        }
    }

    public func readFloat32(_ name: String) throws -> [Float] {
        guard let (_, h) = headers[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        return TorchCheckpoint.toFloat32(try readRaw(name), dtype: h.dtype)
    }
}
