import Foundation
import MoepackCore

/// The parsed header of a NumPy `.npy` array (also the members of an `.npz`).
///
/// Layout (NumPy `numpy.lib.format`, format versions 1.0, 2.0, 3.0): magic `\x93NUMPY`, major and minor
/// version bytes, the header length (little-endian u16 for 1.0, u32 for 2.0 and 3.0), then the header: a
/// Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }` (latin-1 for 1.0/2.0,
/// UTF-8 for 3.0) padded with spaces and ended by `\n`. The array data follows immediately.
///
/// The literal is parsed by a small strict parser (strings, integers, booleans, tuples, lists); nothing is
/// evaluated. Object arrays (`|O`) are refused without reading further, because loading them needs
/// unpickling; structured dtypes are refused.
public struct NpyHeader: Sendable, Equatable {
    /// Element type (byte order is given by ``bigEndian``).
    public var dtype: DType
    /// Axis sizes, outermost first (as stored; `()` → `[]`).
    public var shape: [Int]
    /// True when the data is stored in Fortran (column-major) order.
    public var fortranOrder: Bool
    /// True when multi-byte elements are stored big-endian (`>` in `descr`).
    public var bigEndian: Bool
    /// Bytes before the array data: magic, version, length field and header.
    public var headerBytes: Int
    /// Bytes of array data: product(shape) × dtype size.
    public var dataByteCount: Int
    /// Format version (major, minor).
    public var version: (UInt8, UInt8)

    public static func == (a: NpyHeader, b: NpyHeader) -> Bool {
        a.dtype == b.dtype && a.shape == b.shape && a.fortranOrder == b.fortranOrder && a.bigEndian == b.bigEndian
            && a.headerBytes == b.headerBytes && a.dataByteCount == b.dataByteCount && a.version == b.version
    }

    /// The 6-byte magic string `\x93NUMPY`.
    public static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]
    /// Largest header accepted (NumPy itself refuses headers over 10 000 bytes unless told otherwise).
    public static let maxHeaderLength = 1 << 20

    /// Total bytes before the data (``headerBytes``), computed from the first 12 bytes of the array
    /// (fewer suffice for version 1.0: 10). Use it to know how many bytes ``parse(bytes:)`` needs.
    /// - Throws: ``MoepackError`` (`badInput`) without a file when the magic or version is wrong, or the
    ///   header length exceeds ``maxHeaderLength``.
    public static func totalHeaderLength(prefix: [UInt8]) throws -> Int {
        guard prefix.count >= 8, Array(prefix[0..<6]) == magic else {
            throw MoepackError(.badInput, "not a .npy array: the magic string \\x93NUMPY is missing")
        }
        let major = prefix[6]
        let fieldBytes: Int
        switch major {
        case 1: fieldBytes = 2
        case 2, 3: fieldBytes = 4
        default:
            throw MoepackError(.unsupported, ".npy format version \(major).\(prefix[7]) is not supported (1.0, 2.0, 3.0)")
        }
        guard prefix.count >= 8 + fieldBytes else {
            throw MoepackError(.badInput, ".npy header length field is truncated")
        }
        var len = 0
        for k in 0..<fieldBytes { len |= Int(prefix[8 + k]) << (8 * k) }
        guard len <= maxHeaderLength else {
            throw MoepackError(.badInput, ".npy header length \(len) exceeds the \(maxHeaderLength)-byte cap")
        }
        return 8 + fieldBytes + len
    }

    /// Parses a `.npy` header from `bytes`, which must hold at least the whole header (the array data
    /// may follow; it is not looked at).
    /// - Returns: the header; ``headerBytes`` is where the data starts.
    /// - Throws: ``MoepackError`` without a file (callers add it with `inFile`): `badInput` for a bad magic,
    ///   truncated or malformed header, negative or overflowing shape; `unsupported` for object arrays
    ///   ("object arrays are refused: unpickling is not allowed"), structured dtypes and dtypes moepack
    ///   does not read (complex, strings, datetimes, void).
    public static func parse(bytes: [UInt8]) throws -> NpyHeader {
        let total = try totalHeaderLength(prefix: Array(bytes.prefix(12)))
        guard bytes.count >= total else {
            throw MoepackError(.badInput, ".npy header is truncated: needs \(total) bytes, \(bytes.count) present")
        }
        let major = bytes[6], minor = bytes[7]
        let start = major == 1 ? 10 : 12
        let text = Array(bytes[start..<total])
        // 1.0 and 2.0 headers are latin-1; 3.0 is UTF-8. The dict literal itself must be ASCII in the
        // parts moepack understands, so the parser works on bytes either way.
        if major == 3, String(bytes: text, encoding: .utf8) == nil {
            throw MoepackError(.badInput, ".npy 3.0 header is not valid UTF-8")
        }
        guard text.last == 0x0A else {
            throw MoepackError(.badInput, ".npy header does not end with a newline")
        }
        let dict: [(String, PyLiteral)]
        do throws(PyLiteralParser.Failure) {
            var p = PyLiteralParser(b: text)
            p.skipWS()
            let v = try p.value()
            p.skipWS()
            guard p.i == text.count else { throw PyLiteralParser.Failure(message: "unexpected text after the dict at byte \(p.i)") }
            guard case let .dict(d) = v else { throw PyLiteralParser.Failure(message: "header is not a dict literal") }
            dict = d
        } catch {
            throw MoepackError(.badInput, ".npy header is not a valid dict literal: \(error.message)")
        }
        var descr: PyLiteral?, fortran: PyLiteral?, shapeV: PyLiteral?
        for (k, v) in dict {
            switch k {
            case "descr" where descr == nil: descr = v
            case "fortran_order" where fortran == nil: fortran = v
            case "shape" where shapeV == nil: shapeV = v
            default:
                throw MoepackError(.badInput, ".npy header has an unexpected or repeated key '\(k)' (expected descr, fortran_order, shape)")
            }
        }
        guard let descr, let fortran, let shapeV else {
            throw MoepackError(.badInput, ".npy header lacks one of the keys descr, fortran_order, shape")
        }
        // Object arrays are refused first, whatever else the header says.
        if descr.mentionsObjectType {
            throw MoepackError(.unsupported, "object arrays are refused: unpickling is not allowed (descr \(descr.repr))")
        }
        guard case let .str(descrText) = descr else {
            throw MoepackError(.unsupported, "structured dtypes are refused (descr \(descr.repr))")
        }
        let (dtype, bigEndian) = try parseDescr(descrText)
        guard case let .bool(isFortran) = fortran else {
            throw MoepackError(.badInput, ".npy header 'fortran_order' is \(fortran.repr), expected True or False")
        }
        guard case let .tuple(dims) = shapeV else {
            throw MoepackError(.badInput, ".npy header 'shape' is \(shapeV.repr), expected a tuple of integers")
        }
        var shape: [Int] = []
        var count = 1
        for d in dims {
            guard case let .int(v) = d, v >= 0 else {
                throw MoepackError(.badInput, ".npy header 'shape' holds \(d.repr), expected non-negative integers")
            }
            let (p, o) = count.multipliedReportingOverflow(by: v)
            guard !o else { throw MoepackError(.badInput, ".npy shape \(shapeString(shape + [v])) element count overflows") }
            count = p
            shape.append(v)
        }
        let (bytesNeeded, o) = count.multipliedReportingOverflow(by: dtype.byteSize)
        guard !o else { throw MoepackError(.badInput, ".npy shape \(shapeString(shape)) byte count overflows") }
        return NpyHeader(dtype: dtype, shape: shape, fortranOrder: isFortran, bigEndian: bigEndian,
                         headerBytes: total, dataByteCount: bytesNeeded, version: (major, minor))
    }

    /// Maps a NumPy type string (`<f4`, `>f8`, `|u1`, `|b1`, …) to a dtype and byte order.
    static func parseDescr(_ s: String) throws -> (DType, Bool) {
        var chars = Array(s.utf8)
        var big = false
        if let c = chars.first, c == UInt8(ascii: "<") || c == UInt8(ascii: ">") || c == UInt8(ascii: "|") || c == UInt8(ascii: "=") {
            big = c == UInt8(ascii: ">")
            chars.removeFirst()
        }
        guard let kind = chars.first, let size = Int(String(decoding: chars.dropFirst(), as: UTF8.self)) else {
            throw MoepackError(.unsupported, ".npy dtype '\(s)' is not supported")
        }
        let dtype: DType?
        switch (kind, size) {
        case (UInt8(ascii: "f"), 2): dtype = .float16
        case (UInt8(ascii: "f"), 4): dtype = .float32
        case (UInt8(ascii: "f"), 8): dtype = .float64
        case (UInt8(ascii: "i"), 1): dtype = .int8
        case (UInt8(ascii: "i"), 2): dtype = .int16
        case (UInt8(ascii: "i"), 4): dtype = .int32
        case (UInt8(ascii: "i"), 8): dtype = .int64
        case (UInt8(ascii: "u"), 1): dtype = .uint8
        case (UInt8(ascii: "u"), 2): dtype = .uint16
        case (UInt8(ascii: "u"), 4): dtype = .uint32
        case (UInt8(ascii: "u"), 8): dtype = .uint64
        case (UInt8(ascii: "b"), 1): dtype = .bool
        default: dtype = nil
        }
        guard let dtype else {
            throw MoepackError(.unsupported, ".npy dtype '\(s)' is not supported (float16/32/64, int8-64, uint8-64, bool)")
        }
        return (dtype, big && dtype.byteSize > 1)
    }

    /// Converts the stored array data (exactly ``dataByteCount`` bytes) to little-endian C order:
    /// big-endian elements are byte-swapped and Fortran-order data is transposed.
    /// - Throws: ``MoepackError`` (`badInput`) when `stored` has the wrong length.
    public func toLittleEndianCOrder(_ stored: [UInt8]) throws -> [UInt8] {
        guard stored.count == dataByteCount else {
            throw MoepackError(.badInput, ".npy data holds \(stored.count) bytes, shape \(shapeString(shape)) × \(dtype.rawValue) needs \(dataByteCount)")
        }
        var data = stored
        let s = dtype.byteSize
        if bigEndian, s > 1 {
            data.withUnsafeMutableBytes { buf in
                var k = 0
                while k < buf.count {
                    var lo = k, hi = k + s - 1
                    while lo < hi { buf.swapAt(lo, hi); lo += 1; hi -= 1 }
                    k += s
                }
            }
        }
        if fortranOrder, shape.count > 1 {
            data = Self.fortranToC(data, shape: shape, elementSize: s)
        }
        return data
    }

    /// Decodes the stored array data to float32 values in C order (see ``toLittleEndianCOrder(_:)``).
    public func decodeFloat32(_ stored: [UInt8]) throws -> [Float] {
        let le = try toLittleEndianCOrder(stored)
        let n = dataByteCount / max(dtype.byteSize, 1)
        var out = [Float](repeating: 0, count: n)
        le.withUnsafeBytes { src in
            out.withUnsafeMutableBufferPointer { dst in decodeToFloat32(src, dtype: dtype, count: n, into: dst) }
        }
        return out
    }

    /// Gathers column-major elements into row-major order.
    static func fortranToC(_ src: [UInt8], shape: [Int], elementSize s: Int) -> [UInt8] {
        let n = shape.count
        let count = shape.reduce(1, *)
        if count == 0 || n <= 1 { return src }
        var fStride = [Int](repeating: 1, count: n)
        for k in 1..<n { fStride[k] = fStride[k - 1] * shape[k - 1] }
        var out = [UInt8](repeating: 0, count: src.count)
        var idx = [Int](repeating: 0, count: n)
        var f = 0
        src.withUnsafeBytes { sp in
            out.withUnsafeMutableBytes { op in
                for o in 0..<count {
                    for b in 0..<s { op[o * s + b] = sp[f * s + b] }
                    var k = n - 1
                    while k >= 0 {
                        idx[k] += 1
                        f += fStride[k]
                        if idx[k] < shape[k] { break }
                        f -= fStride[k] * shape[k]
                        idx[k] = 0
                        k -= 1
                    }
                }
            }
        }
        return out
    }
}

/// A value of the Python literal subset used by `.npy` headers.
indirect enum PyLiteral: Sendable {
    case str(String)
    case int(Int)
    case bool(Bool)
    case none
    case tuple([PyLiteral])
    case list([PyLiteral])
    case dict([(String, PyLiteral)])

    var repr: String {
        switch self {
        case let .str(s): return "'\(s)'"
        case let .int(v): return String(v)
        case let .bool(b): return b ? "True" : "False"
        case .none: return "None"
        case let .tuple(t): return "(" + t.map(\.repr).joined(separator: ", ") + (t.count == 1 ? ",)" : ")")
        case let .list(l): return "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case let .dict(d): return "{" + d.map { "'\($0.0)': \($0.1.repr)" }.joined(separator: ", ") + "}"
        }
    }

    /// True when this dtype description names the object type `O` anywhere: a type string such as
    /// `|O` / `O8`, or a field of a structured dtype `[('name', '|O'), …]`.
    var mentionsObjectType: Bool {
        switch self {
        case let .str(s):
            var t = Substring(s)
            if let c = t.first, "<>|=".contains(c) { t = t.dropFirst() }
            return t.first == "O"
        case let .list(items):
            return items.contains { $0.mentionsObjectType }
        case let .tuple(items):
            // ('name', type) or ('name', type, shape) or (('title', 'name'), type)
            return items.count >= 2 && items[1].mentionsObjectType
        default:
            return false
        }
    }
}

/// Strict parser for the Python literal subset NumPy writes in `.npy` headers. Nothing is evaluated.
struct PyLiteralParser {
    struct Failure: Error { var message: String }
    let b: [UInt8]
    var i = 0
    var depth = 0

    init(b: [UInt8]) { self.b = b }

    mutating func skipWS() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x09 || b[i] == 0x0A || b[i] == 0x0D { i += 1 }
    }

    func fail(_ what: String) -> Failure { Failure(message: "\(what) at byte \(i)") }

    mutating func value() throws(Failure) -> PyLiteral {
        guard i < b.count else { throw fail("unexpected end of header") }
        let c = b[i]
        switch c {
        case UInt8(ascii: "'"), UInt8(ascii: "\""): return .str(try string())
        case UInt8(ascii: "{"): return try dict()
        case UInt8(ascii: "("): return .tuple(try sequence(close: UInt8(ascii: ")")))
        case UInt8(ascii: "["): return .list(try sequence(close: UInt8(ascii: "]")))
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .int(try integer())
        default:
            if try word("True") { return .bool(true) }
            if try word("False") { return .bool(false) }
            if try word("None") { return .none }
            throw fail("unexpected character '\(Character(Unicode.Scalar(c)))'")
        }
    }

    mutating func word(_ w: String) throws(Failure) -> Bool {
        let u = Array(w.utf8)
        guard b.count - i >= u.count, Array(b[i..<(i + u.count)]) == u else { return false }
        let after = i + u.count
        if after < b.count, (b[after] >= 0x41 && b[after] <= 0x5A) || (b[after] >= 0x61 && b[after] <= 0x7A)
            || (b[after] >= 0x30 && b[after] <= 0x39) || b[after] == UInt8(ascii: "_") {
            return false
        }
        i = after
        return true
    }

    mutating func integer() throws(Failure) -> Int {
        var neg = false
        if b[i] == UInt8(ascii: "-") { neg = true; i += 1 }
        var v = 0
        var n = 0
        while i < b.count, b[i] >= 0x30, b[i] <= 0x39 {
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int(b[i] - 0x30))
            if o1 || o2 { throw fail("integer too large") }
            v = a
            n += 1
            i += 1
        }
        guard n > 0 else { throw fail("invalid integer") }
        // Python 2 long suffix, written by old NumPy versions.
        if i < b.count, b[i] == UInt8(ascii: "L") { i += 1 }
        return neg ? -v : v
    }

    mutating func string() throws(Failure) -> String {
        let q = b[i]
        i += 1
        var out: [UInt8] = []
        while true {
            guard i < b.count else { throw fail("unterminated string") }
            let c = b[i]
            if c == q { i += 1; break }
            if c == 0x0A { throw fail("newline inside a string") }
            if c == UInt8(ascii: "\\") {
                i += 1
                guard i < b.count else { throw fail("unterminated escape") }
                out.append(b[i])
                i += 1
                continue
            }
            out.append(c)
            i += 1
        }
        // Latin-1 (1.0/2.0) or UTF-8 (3.0): decode as UTF-8 when valid, else byte-for-byte as latin-1.
        if let s = String(bytes: out, encoding: .utf8) { return s }
        return String(out.map { Character(Unicode.Scalar($0)) })
    }

    mutating func enter() throws(Failure) {
        depth += 1
        if depth > 32 { throw fail("literal nested deeper than 32 levels") }
    }

    mutating func sequence(close: UInt8) throws(Failure) -> [PyLiteral] {
        try enter()
        i += 1
        var items: [PyLiteral] = []
        while true {
            skipWS()
            guard i < b.count else { throw fail("unterminated tuple or list") }
            if b[i] == close { i += 1; break }
            items.append(try value())
            skipWS()
            guard i < b.count else { throw fail("unterminated tuple or list") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == close { i += 1; break }
            throw fail("expected ',' or closing bracket")
        }
        depth -= 1
        return items
    }

    mutating func dict() throws(Failure) -> PyLiteral {
        try enter()
        i += 1
        var members: [(String, PyLiteral)] = []
        while true {
            skipWS()
            guard i < b.count else { throw fail("unterminated dict") }
            if b[i] == UInt8(ascii: "}") { i += 1; break }
            guard b[i] == UInt8(ascii: "'") || b[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
            let k = try string()
            skipWS()
            guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            i += 1
            skipWS()
            members.append((k, try value()))
            skipWS()
            guard i < b.count else { throw fail("unterminated dict") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "}") { i += 1; break }
            throw fail("expected ',' or '}'")
        }
        depth -= 1
        return .dict(members)
    }
}

/// One NumPy `.npy` file opened for lazy reading: a single tensor named after the file stem
/// (`weights/head.weight.npy` → `head.weight`).
///
/// See ``NpyHeader`` for the format. Big-endian data is byte-swapped and Fortran-order data transposed
/// on read, so ``readRaw(_:)`` and ``readFloat32(_:)`` always give little-endian C order.
public final class NpySource: TensorSource {
    public let path: String
    public var container: CheckpointContainer { .npy }
    public let entries: [TensorEntry]
    public let skipped: [SkippedEntry] = []
    public let notes: [String]
    /// The parsed header.
    public let header: NpyHeader

    private let file: RandomAccessFile

    /// Opens the `.npy` file at `path` and validates its header and size; no array data is read.
    /// - Throws: ``MoepackError`` naming the file: `badInput` for a missing magic, malformed header or a
    ///   file shorter than the array; `unsupported` for object arrays (refused before anything else is
    ///   read), structured and other unsupported dtypes; `io` when the file cannot be opened.
    public init(path: String) throws {
        self.path = path
        let file = try RandomAccessFile(path)
        self.file = file
        let stem = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        do {
            let prefix = try file.read(at: 0, count: min(12, file.size))
            guard prefix.starts(with: NpyHeader.magic) else {
                throw MoepackError(.badInput, "not a .npy file: the magic string \\x93NUMPY is missing")
            }
            let total = try NpyHeader.totalHeaderLength(prefix: prefix)
            guard total <= file.size else {
                throw MoepackError(.badInput, ".npy header of \(total) bytes is longer than the file (\(file.size) bytes): truncated file")
            }
            let header = try NpyHeader.parse(bytes: try file.read(at: 0, count: total))
            guard header.dataByteCount <= file.size - total else {
                throw MoepackError(.badInput, item: stem,
                                   "array data needs \(header.dataByteCount) bytes, the file holds \(file.size - total) after the header: truncated file")
            }
            self.header = header
            var notes: [String] = []
            if header.dataByteCount < file.size - total {
                notes.append("\(file.size - total - header.dataByteCount) bytes after the array data are ignored")
            }
            if header.fortranOrder { notes.append("array is stored in Fortran order; it is transposed to C order on read") }
            if header.bigEndian { notes.append("array is stored big-endian; it is byte-swapped on read") }
            self.notes = notes
        } catch let e as MoepackError {
            throw e.inFile(path)
        }
        self.entries = [TensorEntry(name: stem, dtype: header.dtype, shape: header.shape)]
    }

    private func check(_ name: String) throws {
        guard name == entries[0].name else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
    }

    /// Reads the array as little-endian C-order bytes in its stored dtype.
    public func readRaw(_ name: String) throws -> [UInt8] {
        try check(name)
        let stored = try file.read(at: header.headerBytes, count: header.dataByteCount, what: name)
        do { return try header.toLittleEndianCOrder(stored) } catch let e as MoepackError {
            var e = e.inFile(path)
            if e.item == nil { e.item = name }
            throw e
        }
    }

    /// Reads the array as float32 in C order (float64 rounds to nearest, float16 widens exactly,
    /// integers and bool convert by value).
    public func readFloat32(_ name: String) throws -> [Float] {
        let raw = try readRaw(name)
        let n = entries[0].elementCount
        var out = [Float](repeating: 0, count: n)
        raw.withUnsafeBytes { src in
            out.withUnsafeMutableBufferPointer { dst in decodeToFloat32(src, dtype: header.dtype, count: n, into: dst) }
        }
        return out
    }
}
