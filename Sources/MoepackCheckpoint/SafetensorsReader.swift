import Foundation
import MoepackCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Positioned reads go through RandomAccessFile (FileBytes.swift), shared by every reader.

// MARK: - Minimal strict JSON (safetensors header)

/// A parsed JSON value. Objects keep their key order; numbers keep their source text.
enum FormatJSON: Equatable {
    case object([(String, FormatJSON)])
    case array([FormatJSON])
    case string(String)
    case number(String)
    case bool(Bool)
    case null

    static func == (a: FormatJSON, b: FormatJSON) -> Bool {
        switch (a, b) {
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case let (.array(x), .array(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.bool(x), .bool(y)): return x == y
        case (.null, .null): return true
        default: return false
        }
    }

    /// The value as a non-negative integer, when it is written as one (no fraction, no exponent).
    var nonNegativeInt: Int? {
        guard case let .number(text) = self, !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            return nil
        }
        return Int(text)
    }

    var kindName: String {
        switch self {
        case .object: return "object"
        case .array: return "array"
        case .string: return "string"
        case .number: return "number"
        case .bool: return "boolean"
        case .null: return "null"
        }
    }
}

/// RFC 8259 JSON parser over bytes; refuses anything the RFC does not allow (trailing commas,
/// control characters in strings, unpaired surrogates, nesting deeper than 64).
struct FormatJSONParser {
    struct Failure: Error { var message: String }

    private let b: [UInt8]
    private var i = 0
    private var depth = 0

    static func parse(_ bytes: [UInt8]) throws(Failure) -> FormatJSON {
        var p = FormatJSONParser(b: bytes)
        p.skipWS()
        let v = try p.value()
        p.skipWS()
        guard p.i == p.b.count else { throw Failure(message: "unexpected text after the JSON value at byte \(p.i)") }
        return v
    }

    private init(b: [UInt8]) { self.b = b }

    private mutating func skipWS() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x09 || b[i] == 0x0A || b[i] == 0x0D { i += 1 }
    }

    private func fail(_ what: String) -> Failure { Failure(message: "\(what) at byte \(i)") }

    private mutating func value() throws(Failure) -> FormatJSON {
        guard i < b.count else { throw fail("unexpected end of JSON") }
        switch b[i] {
        case UInt8(ascii: "{"): return try object()
        case UInt8(ascii: "["): return try array()
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw fail("invalid JSON character")
        }
    }

    private mutating func literal(_ word: String) throws(Failure) {
        let w = Array(word.utf8)
        guard b.count - i >= w.count, Array(b[i..<(i + w.count)]) == w else { throw fail("invalid JSON literal") }
        i += w.count
    }

    private mutating func enter() throws(Failure) {
        depth += 1
        if depth > 64 { throw fail("JSON nested deeper than 64 levels") }
    }

    private mutating func object() throws(Failure) -> FormatJSON {
        try enter()
        i += 1
        var members: [(String, FormatJSON)] = []
        skipWS()
        if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; depth -= 1; return .object(members) }
        while true {
            skipWS()
            guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
            let k = try string()
            skipWS()
            guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            i += 1
            skipWS()
            let v = try value()
            members.append((k, v))
            skipWS()
            guard i < b.count else { throw fail("unexpected end of JSON object") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "}") { i += 1; break }
            throw fail("expected ',' or '}'")
        }
        depth -= 1
        return .object(members)
    }

    private mutating func array() throws(Failure) -> FormatJSON {
        try enter()
        i += 1
        var items: [FormatJSON] = []
        skipWS()
        if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; depth -= 1; return .array(items) }
        while true {
            skipWS()
            items.append(try value())
            skipWS()
            guard i < b.count else { throw fail("unexpected end of JSON array") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "]") { i += 1; break }
            throw fail("expected ',' or ']'")
        }
        depth -= 1
        return .array(items)
    }

    private mutating func number() throws(Failure) -> FormatJSON {
        let start = i
        if b[i] == UInt8(ascii: "-") { i += 1 }
        func digits(_ p: inout FormatJSONParser) -> Int {
            let s = p.i
            while p.i < p.b.count, p.b[p.i] >= 0x30, p.b[p.i] <= 0x39 { p.i += 1 }
            return p.i - s
        }
        let intStart = i
        let n = digits(&self)
        guard n > 0 else { throw fail("invalid JSON number") }
        if n > 1, b[intStart] == UInt8(ascii: "0") { throw fail("JSON number with a leading zero") }
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            guard digits(&self) > 0 else { throw fail("invalid JSON number") }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard digits(&self) > 0 else { throw fail("invalid JSON number") }
        }
        return .number(String(decoding: b[start..<i], as: UTF8.self))
    }

    private mutating func hex4() throws(Failure) -> UInt32 {
        guard b.count - i >= 4 else { throw fail("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = b[i]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw fail("invalid \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    private mutating func string() throws(Failure) -> String {
        i += 1
        var out: [UInt8] = []
        while true {
            guard i < b.count else { throw fail("unterminated JSON string") }
            let c = b[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c < 0x20 { throw fail("control character inside a JSON string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { throw fail("unterminated JSON escape") }
            let e = b[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if scalar >= 0xD800, scalar <= 0xDBFF {
                    guard b.count - i >= 6, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else {
                        throw fail("unpaired surrogate in \\u escape")
                    }
                    i += 2
                    let low = try hex4()
                    guard low >= 0xDC00, low <= 0xDFFF else { throw fail("unpaired surrogate in \\u escape") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if scalar >= 0xDC00, scalar <= 0xDFFF {
                    throw fail("unpaired surrogate in \\u escape")
                }
                guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default:
                throw fail("invalid JSON escape")
            }
        }
        guard let s = String(bytes: out, encoding: .utf8) else { throw fail("JSON string is not valid UTF-8") }
        return s
    }
}

// MARK: - safetensors

/// A `.safetensors` file opened for lazy reading.
///
/// Layout (safetensors spec, huggingface/safetensors README "Format"): an 8-byte little-endian u64 `N`,
/// then `N` bytes of UTF-8 JSON (an object, beginning with `{`, possibly padded with spaces), then the
/// data section. Each JSON entry is `{"dtype": "F32", "shape": [d0, d1, …], "data_offsets": [begin, end]}`
/// with offsets in bytes relative to the start of the data section; tensors are little-endian, C order.
/// The optional `__metadata__` entry is a string → string map.
///
/// Validation at open (before any tensor byte is read): `N ≤ fileSize − 8`, `N ≤ 100 MB`, header is a
/// JSON object, each `begin ≤ end ≤ data size`, `end − begin == product(shape) × dtype size`
/// (overflow-checked), no two tensors overlap, dtype is one of `F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32
/// U16 U8 BOOL`. Gaps in the data section or bytes after the last tensor (the spec asks for full
/// coverage) are accepted and reported in ``notes``.
public final class SafetensorsSource: TensorSource {
    /// Largest JSON header accepted (the reference implementation's `MAX_HEADER_SIZE`).
    public static let maxHeaderBytes = 100_000_000

    public let path: String
    public var container: CheckpointContainer { .safetensors }
    /// Tensors sorted by their begin offset in the data section.
    public let entries: [TensorEntry]
    public let skipped: [SkippedEntry] = []
    public let notes: [String]
    /// The `__metadata__` map (empty when the header has none).
    public let metadata: [String: String]
    /// Byte length `N` of the JSON header (including padding).
    public let headerByteCount: Int

    private let file: RandomAccessFile
    private let dataStart: Int
    /// name → (begin, end) relative to the data section.
    private let ranges: [String: (Int, Int)]

    /// Opens and validates the header of the safetensors file at `path`; no tensor data is read.
    /// - Throws: ``MoepackError`` (`badInput`) naming the file (and the tensor when there is one) for a
    ///   truncated file, an oversized or non-JSON header, out-of-bounds, overlapping or mis-sized data
    ///   offsets; (`unsupported`) for a dtype moepack does not read (e.g. `F8_E4M3`); (`io`) when the file
    ///   cannot be opened.
    public init(path: String) throws {
        self.path = path
        let file = try RandomAccessFile(path)
        self.file = file
        guard file.size >= 8 else {
            throw MoepackError(.badInput, file: path, "file of \(file.size) bytes is too short for a safetensors header length (8 bytes)")
        }
        let lenBytes = try file.read(at: 0, count: 8)
        var n: UInt64 = 0
        for k in 0..<8 { n |= UInt64(lenBytes[k]) << (8 * UInt64(k)) }
        guard n <= UInt64(Self.maxHeaderBytes) else {
            throw MoepackError(.badInput, file: path, "safetensors header length \(n) exceeds the \(Self.maxHeaderBytes)-byte cap")
        }
        guard n <= UInt64(file.size - 8) else {
            throw MoepackError(.badInput, file: path, "safetensors header length \(n) exceeds the \(file.size - 8) bytes after the length field: truncated file")
        }
        let headerLen = Int(n)
        self.headerByteCount = headerLen
        self.dataStart = 8 + headerLen
        let dataSize = file.size - dataStart
        let header = try file.read(at: 8, count: headerLen)
        guard String(bytes: header, encoding: .utf8) != nil else {
            throw MoepackError(.badInput, file: path, "safetensors header is not valid UTF-8")
        }
        let json: FormatJSON
        do {
            json = try FormatJSONParser.parse(header)
        } catch {
            throw MoepackError(.badInput, file: path, "safetensors header is not valid JSON: \(error.message)")
        }
        guard case let .object(members) = json else {
            throw MoepackError(.badInput, file: path, "safetensors header is a JSON \(json.kindName), not a JSON object")
        }

        var meta: [String: String] = [:]
        var seen = Set<String>()
        var table: [(entry: TensorEntry, begin: Int, end: Int)] = []
        for (name, value) in members {
            guard seen.insert(name).inserted else {
                throw MoepackError(.badInput, file: path, item: name, "name appears twice in the safetensors header")
            }
            if name == "__metadata__" {
                guard case let .object(kv) = value else {
                    throw MoepackError(.badInput, file: path, item: name, "__metadata__ is a JSON \(value.kindName), expected an object of strings")
                }
                for (k, v) in kv {
                    guard case let .string(s) = v else {
                        throw MoepackError(.badInput, file: path, item: "__metadata__.\(k)", "metadata value is a JSON \(v.kindName), expected a string")
                    }
                    meta[k] = s
                }
                continue
            }
            table.append(try Self.parseEntry(name: name, value: value, dataSize: dataSize, path: path))
        }
        table.sort { ($0.begin, $0.end, $0.entry.name) < ($1.begin, $1.end, $1.entry.name) }

        // Overlaps are errors; gaps and trailing bytes are notes (the spec wants full coverage).
        var notes: [String] = []
        var cursor = 0
        var cursorName: String?
        var gapBytes = 0
        for t in table where t.end > t.begin {  // zero-byte tensors occupy nothing
            if t.begin < cursor, let cursorName {
                throw MoepackError(.badInput, file: path, item: t.entry.name,
                                   "data_offsets [\(t.begin),\(t.end)] overlap tensor '\(cursorName)' (which ends at \(cursor))")
            }
            gapBytes += t.begin - cursor
            cursor = t.end
            cursorName = t.entry.name
        }
        if gapBytes > 0 {
            notes.append("data section has \(gapBytes) bytes between tensors not covered by any tensor (the safetensors spec requires full coverage)")
        }
        if cursor < dataSize {
            notes.append("data section has \(dataSize - cursor) bytes after the last tensor (the safetensors spec requires full coverage)")
        }
        self.entries = table.map(\.entry)
        var ranges: [String: (Int, Int)] = [:]
        for t in table { ranges[t.entry.name] = (t.begin, t.end) }
        self.ranges = ranges
        self.metadata = meta
        self.notes = notes
    }

    private static func parseEntry(name: String, value: FormatJSON, dataSize: Int, path: String) throws
        -> (entry: TensorEntry, begin: Int, end: Int)
    {
        guard case let .object(fields) = value else {
            throw MoepackError(.badInput, file: path, item: name, "header entry is a JSON \(value.kindName), expected an object with dtype, shape, data_offsets")
        }
        var dtypeV: FormatJSON?, shapeV: FormatJSON?, offV: FormatJSON?
        for (k, v) in fields {
            switch k {
            case "dtype": dtypeV = v
            case "shape": shapeV = v
            case "data_offsets": offV = v
            default: break
            }
        }
        guard case let .string(dtypeName)? = dtypeV else {
            throw MoepackError(.badInput, file: path, item: name, "header entry lacks a string 'dtype'")
        }
        guard let dtype = DType(rawValue: dtypeName) else {
            throw MoepackError(.unsupported, file: path, item: name, "dtype '\(dtypeName)' is not supported (F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL)")
        }
        guard case let .array(dimsV)? = shapeV else {
            throw MoepackError(.badInput, file: path, item: name, "header entry lacks a 'shape' array")
        }
        var shape: [Int] = []
        var count = 1
        for d in dimsV {
            guard let v = d.nonNegativeInt else {
                throw MoepackError(.badInput, file: path, item: name, "shape holds \(d.kindName == "number" ? "a value that is not a non-negative integer" : "a JSON \(d.kindName)")")
            }
            let (p, o) = count.multipliedReportingOverflow(by: v)
            guard !o else { throw MoepackError(.badInput, file: path, item: name, "shape \(shapeString(shape + [v])) element count overflows") }
            count = p
            shape.append(v)
        }
        guard case let .array(offs)? = offV, offs.count == 2,
              let begin = offs[0].nonNegativeInt, let end = offs[1].nonNegativeInt else {
            throw MoepackError(.badInput, file: path, item: name, "'data_offsets' must be two non-negative integers [begin, end]")
        }
        guard begin <= end else {
            throw MoepackError(.badInput, file: path, item: name, "data_offsets [\(begin),\(end)]: begin is after end")
        }
        guard end <= dataSize else {
            throw MoepackError(.badInput, file: path, item: name, "data_offsets [\(begin),\(end)] out of bounds: data section holds \(dataSize) bytes (truncated file?)")
        }
        let (bytes, o) = count.multipliedReportingOverflow(by: dtype.byteSize)
        guard !o else { throw MoepackError(.badInput, file: path, item: name, "byte count of shape \(shapeString(shape)) overflows") }
        guard bytes == end - begin else {
            throw MoepackError(.badInput, file: path, item: name,
                               "byte count mismatch: data_offsets [\(begin),\(end)] span \(end - begin) bytes, shape \(shapeString(shape)) × \(dtypeName) needs \(bytes)")
        }
        return (TensorEntry(name: name, dtype: dtype, shape: shape), begin, end)
    }

    private func range(_ name: String) throws -> (Int, Int) {
        guard let r = ranges[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        return r
    }

    /// Reads the tensor's stored bytes (little-endian, C order, stored dtype) by byte range.
    public func readRaw(_ name: String) throws -> [UInt8] {
        let (b, e) = try range(name)
        return try file.read(at: dataStart + b, count: e - b, what: name)
    }

    /// Reads the tensor as float32: F64 rounds to nearest, F16/BF16 widen exactly, integers and BOOL
    /// convert by value.
    public func readFloat32(_ name: String) throws -> [Float] {
        guard let e = entry(name) else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        let raw = try readRaw(name)
        let n = e.elementCount
        var out = [Float](repeating: 0, count: n)
        raw.withUnsafeBytes { src in
            out.withUnsafeMutableBufferPointer { dst in
                decodeToFloat32(src, dtype: e.dtype, count: n, into: dst)
            }
        }
        return out
    }
}
