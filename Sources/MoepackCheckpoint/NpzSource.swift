import Foundation
import MoepackCore

/// Header of one NumPy `.npy` array (NumPy NEP 1 format): `\x93NUMPY`, version, header length (u16 for
/// v1, u32 for v2/v3), then an ASCII dict `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
struct NpyHeader: Equatable {
    var dtype: DType
    var shape: [Int]
    var fortranOrder: Bool
    /// Bytes before the array data.
    var dataOffset: Int

    static let dtypes: [String: DType] = [
        "<f4": .float32, "<f8": .float64, "<f2": .float16, "<i8": .int64, "<i4": .int32, "<i2": .int16,
        "|i1": .int8, "<u8": .uint64, "<u4": .uint32, "<u2": .uint16, "|u1": .uint8, "|b1": .bool,
    ]

    /// Parses the header at the start of `bytes` (which may hold more than the header).
    /// - Throws: ``MoepackError`` (`badInput`) naming `file`/`item` for a bad magic, length or dict,
    ///   (`unsupported`) for big-endian or other dtypes.
    static func parse(_ bytes: [UInt8], file: String, item: String) throws -> NpyHeader {
        func bad(_ m: String) -> MoepackError { MoepackError(.badInput, file: file, item: item, "npy: " + m) }
        guard bytes.count >= 10, Array(bytes[0..<6]) == [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59] else { throw bad("missing \\x93NUMPY magic") }
        let major = bytes[6]
        var r = LEReader(bytes, at: 8)
        let hlen: Int
        switch major {
        case 1: hlen = r.u16() ?? -1
        case 2, 3: hlen = r.u32() ?? -1
        default: throw bad("version \(major) is not supported")
        }
        guard hlen >= 0, hlen <= 1 << 20, let h = r.take(hlen) else { throw bad("header is truncated") }
        let text = String(decoding: h, as: UTF8.self)
        func field(_ key: String) -> Substring? {
            guard let k = text.range(of: "'\(key)':") else { return nil }
            return text[k.upperBound...].drop { $0 == " " }
        }
        guard let d = field("descr"), d.first == "'", let end = d.dropFirst().firstIndex(of: "'") else { throw bad("header has no descr") }
        let descr = String(d[d.index(after: d.startIndex)..<end])
        guard let dtype = dtypes[descr] else {
            throw MoepackError(.unsupported, file: file, item: item, "npy: dtype '\(descr)' is not supported")
        }
        guard let f = field("fortran_order") else { throw bad("header has no fortran_order") }
        let fortran: Bool
        if f.hasPrefix("True") { fortran = true } else if f.hasPrefix("False") { fortran = false } else { throw bad("bad fortran_order") }
        guard let s = field("shape"), s.first == "(", let close = s.firstIndex(of: ")") else { throw bad("header has no shape") }
        var shape: [Int] = []
        for part in s[s.index(after: s.startIndex)..<close].split(separator: ",") {
            let t = part.trimmingCharacters(in: .whitespaces)
            if t.isEmpty { continue }
            guard let v = Int(t), v >= 0 else { throw bad("bad shape entry '\(t)'") }
            shape.append(v)
        }
        return NpyHeader(dtype: dtype, shape: shape, fortranOrder: fortran, dataOffset: r.pos)
    }
}

/// A NumPy `.npz` archive (`numpy.savez`, stored or deflated), container `npz`: a zip whose members
/// `<name>.npy` are arrays; tensor names are the member names without `.npy`.
///
/// Opening reads the zip directory and each member's npy header (stored members: the header bytes
/// only; deflated members: the whole member). Fortran-order arrays are gathered to C order on read.
public final class NpzSource: TensorSource {
    public let path: String
    public let container = "npz"
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
            let h = try NpyHeader.parse(head, file: path, item: e.name)
            var count = 1
            for s in h.shape {
                let (c, o) = count.multipliedReportingOverflow(by: s)
                guard !o else { throw MoepackError(.badInput, file: path, item: e.name, "element count overflows") }
                count = c
            }
            let (bytes, o1) = count.multipliedReportingOverflow(by: h.dtype.byteSize)
            let (total, o2) = bytes.addingReportingOverflow(h.dataOffset)
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
        let bytes = Array(try archive.read(member).dropFirst(h.dataOffset))
        guard h.fortranOrder, h.shape.count > 1 else { return bytes }
        var stride = [Int](repeating: 1, count: h.shape.count)
        for k in 1..<h.shape.count { stride[k] = stride[k - 1] * h.shape[k - 1] }
        let count = h.shape.reduce(1, *)
        let ref = TensorRef(storage: StorageRef(key: member, dtype: h.dtype, numel: count, location: "cpu"),
                            offset: 0, shape: h.shape, stride: stride)
        return TorchCheckpoint.gather(bytes, ref)
    }

    public func readFloat32(_ name: String) throws -> [Float] {
        guard let (_, h) = headers[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        return TorchCheckpoint.toFloat32(try readRaw(name), dtype: h.dtype)
    }
}
