import Foundation
import MoepackCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Output files go through MoepackCore's AtomicFileWriter (temporary sibling, renamed when complete).

// MARK: - Float conversions

/// Float conversions used when writing narrower float dtypes.
public enum FloatConversion {
    /// IEEE binary16 bits of `x`, rounded to nearest, ties to even; overflow gives ±inf, NaN stays NaN.
    public static func float16Bits(_ x: Float) -> UInt16 { Float16(x).bitPattern }

    /// bfloat16 bits of `x` (the upper 16 bits of binary32), rounded to nearest, ties to even; NaN
    /// becomes the quiet NaN `0x7FC0` with the sign kept (as PyTorch's `round_to_nearest_even`).
    public static func bfloat16Bits(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) & 0x8000 | 0x7FC0 }
        let bias: UInt32 = 0x7FFF + ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: (bits &+ bias) >> 16)
    }

    /// Exact widening of binary16 bits.
    public static func float(fromFloat16Bits b: UInt16) -> Float { Float(Float16(bitPattern: b)) }

    /// Exact widening of bfloat16 bits.
    public static func float(fromBFloat16Bits b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

    /// Little-endian bytes of `values` in `dtype`: F32 as is, F16/BF16 rounded to nearest even, F64
    /// widened exactly.
    /// - Throws: ``MoepackError`` (`unsupported`) for integer and BOOL dtypes (moepack does not quantize here).
    public static func encode(_ values: [Float], as dtype: DType) throws -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(values.count * dtype.byteSize)
        switch dtype {
        case .float32:
            for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        case .float64:
            for v in values { withUnsafeBytes(of: Double(v).bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        case .float16:
            for v in values { withUnsafeBytes(of: float16Bits(v).littleEndian) { out.append(contentsOf: $0) } }
        case .bfloat16:
            for v in values { withUnsafeBytes(of: bfloat16Bits(v).littleEndian) { out.append(contentsOf: $0) } }
        default:
            throw MoepackError(.unsupported, "float values cannot be encoded as \(dtype.rawValue)")
        }
        return out
    }
}

// MARK: - safetensors writer

/// Writes `.safetensors` files byte-identical to the Python `safetensors` package (Rust `serialize`):
///
/// - tensors are laid out by dtype size-class, largest first, in the Rust `Dtype` order
///   `U64 I64 F64 F32 U32 I32 BF16 F16 U16 I16 I8 U8 BOOL`, then by name (bytewise), so every tensor is
///   aligned to its element size;
/// - the header is compact JSON (serde_json escaping) with `__metadata__` first when given, then the
///   tensors in data order, each `{"dtype":…,"shape":[…],"data_offsets":[begin,end]}`;
/// - the header is padded with spaces to a multiple of 8 bytes.
///
/// Metadata keys are written in ascending order (Python writes its metadata `HashMap` in an unspecified
/// order, so files with more than one metadata key match Python only up to that order).
///
/// Output goes to a temporary file in the destination folder, renamed into place when complete.
public enum SafetensorsWriter {
    /// One tensor to write from memory.
    public typealias Item = (name: String, dtype: DType, shape: [Int], bytes: [UInt8])

    /// One tensor to copy from a ``TensorSource``: stored under `outName`, read from `sourceName`, and
    /// converted to `targetDType` when given (float dtypes only; nil keeps the stored dtype and bytes).
    public struct Selection: Sendable, Equatable {
        public var outName: String
        public var sourceName: String
        public var targetDType: DType?
        public init(outName: String, sourceName: String, targetDType: DType? = nil) {
            self.outName = outName
            self.sourceName = sourceName
            self.targetDType = targetDType
        }
    }

    /// Layout rank of a dtype in the Rust `Dtype` enum (declaration order); higher is written first.
    static func rank(_ d: DType) -> Int {
        switch d {
        case .bool: return 0
        case .uint8: return 1
        case .int8: return 2
        case .int16: return 3
        case .uint16: return 4
        case .float16: return 5
        case .bfloat16: return 6
        case .int32: return 7
        case .uint32: return 8
        case .float32: return 9
        case .float64: return 10
        case .int64: return 11
        case .uint64: return 12
        }
    }

    /// Header bytes (length prefix + padded JSON) and the write order for tensors described by
    /// `(name, dtype, shape)`.
    /// - Returns: `header` (the complete bytes before the data section) and `order` (indices into
    ///   `specs` in data order) with each tensor's byte count.
    /// - Throws: ``MoepackError`` (`badInput`) for duplicate or reserved names and overflowing shapes.
    public static func layout(_ specs: [(name: String, dtype: DType, shape: [Int])], metadata: [String: String]?)
        throws -> (header: [UInt8], order: [(index: Int, byteCount: Int)])
    {
        var seen = Set<String>()
        var sizes: [Int] = []
        for s in specs {
            guard s.name != "__metadata__" else {
                throw MoepackError(.badInput, item: s.name, "tensor name is reserved by the safetensors format")
            }
            guard seen.insert(s.name).inserted else {
                throw MoepackError(.badInput, item: s.name, "tensor name given twice")
            }
            var n = s.dtype.byteSize
            for d in s.shape {
                guard d >= 0 else { throw MoepackError(.badInput, item: s.name, "negative dimension in shape \(shapeString(s.shape))") }
                let (p, o) = n.multipliedReportingOverflow(by: d)
                guard !o else { throw MoepackError(.badInput, item: s.name, "byte count of shape \(shapeString(s.shape)) overflows") }
                n = p
            }
            sizes.append(n)
        }
        let order = specs.indices.sorted { a, b in
            let ra = rank(specs[a].dtype), rb = rank(specs[b].dtype)
            if ra != rb { return ra > rb }
            return Array(specs[a].name.utf8).lexicographicallyPrecedes(Array(specs[b].name.utf8))
        }
        var json = "{"
        var first = true
        if let metadata {
            json += "\"__metadata__\":{"
            json += metadata.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
                .map { "\(jsonString($0)):\(jsonString(metadata[$0] ?? ""))" }.joined(separator: ",")
            json += "}"
            first = false
        }
        var offset = 0
        for i in order {
            let s = specs[i]
            let (end, o) = offset.addingReportingOverflow(sizes[i])
            guard !o else { throw MoepackError(.badInput, item: s.name, "data section size overflows") }
            if !first { json += "," }
            first = false
            json += "\(jsonString(s.name)):{\"dtype\":\"\(s.dtype.rawValue)\",\"shape\":[\(s.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(end)]}"
            offset = end
        }
        json += "}"
        var body = Array(json.utf8)
        let pad = (8 - body.count % 8) % 8
        body.append(contentsOf: [UInt8](repeating: 0x20, count: pad))
        var header = [UInt8]()
        header.reserveCapacity(8 + body.count)
        withUnsafeBytes(of: UInt64(body.count).littleEndian) { header.append(contentsOf: $0) }
        header.append(contentsOf: body)
        return (header, order.map { ($0, sizes[$0]) })
    }

    /// A JSON string literal escaped as serde_json writes it: `"` `\` and control characters escaped
    /// (`\b \f \n \r \t`, others `\u00XX`), everything else (including `/` and non-ASCII) verbatim.
    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    /// Writes tensors held in memory. `bytes` are little-endian, C order, in `dtype`.
    /// - Parameter metadata: the `__metadata__` map; nil writes none.
    /// - Throws: ``MoepackError`` naming the output file and tensor when a byte count does not match
    ///   product(shape) × dtype size, names repeat, or the file cannot be written (no file is left).
    public static func write(tensors: [Item], metadata: [String: String]? = nil, to path: String) throws {
        do {
            let (header, order) = try layout(tensors.map { ($0.name, $0.dtype, $0.shape) }, metadata: metadata)
            for (i, n) in order where tensors[i].bytes.count != n {
                throw MoepackError(.badInput, item: tensors[i].name,
                                   "\(tensors[i].bytes.count) bytes given, shape \(shapeString(tensors[i].shape)) × \(tensors[i].dtype.rawValue) needs \(n)")
            }
            try AtomicFileWriter.write(to: path) { w in
                try w.write(header)
                for (i, _) in order { try w.write(tensors[i].bytes) }
            }
        } catch let e as MoepackError {
            throw e.inFile(path)
        }
    }

    /// Streams tensors from `source` into a safetensors file, reading and writing one tensor at a time.
    ///
    /// Without `targetDType` (or when it equals the stored dtype) the stored bytes are copied
    /// (``TensorSource/readRaw(_:)``); otherwise the tensor is read as float32 and encoded as F32, F16,
    /// BF16 (round to nearest even) or F64 (exact widening of the float32 values).
    /// - Throws: ``MoepackError``: `badInput` for unknown source names, duplicate output names, or a
    ///   source returning the wrong byte count; `unsupported` for a non-float target dtype different
    ///   from the stored one; errors of the source; `io` for write failures. No file is left on error.
    public static func write(from source: any TensorSource, selecting: [Selection],
                             metadata: [String: String]? = nil, to path: String) throws {
        do {
            var specs: [(name: String, dtype: DType, shape: [Int])] = []
            var stored: [DType] = []
            var byName: [String: TensorEntry] = [:]
            for e in source.entries where byName[e.name] == nil { byName[e.name] = e }
            for s in selecting {
                guard let e = byName[s.sourceName] else {
                    throw MoepackError(.badInput, file: source.path, item: s.sourceName, "no such tensor")
                }
                let target = s.targetDType ?? e.dtype
                if target != e.dtype, !target.isFloatingPoint {
                    throw MoepackError(.unsupported, item: s.outName,
                                       "cannot convert \(e.dtype.rawValue) to \(target.rawValue) (only float targets)")
                }
                specs.append((s.outName, target, e.shape))
                stored.append(e.dtype)
            }
            let (header, order) = try layout(specs, metadata: metadata)
            try AtomicFileWriter.write(to: path) { w in
                try w.write(header)
                for (i, n) in order {
                    let sel = selecting[i]
                    let bytes: [UInt8]
                    if specs[i].dtype == stored[i] {
                        bytes = try source.readRaw(sel.sourceName)
                    } else {
                        bytes = try FloatConversion.encode(try source.readFloat32(sel.sourceName), as: specs[i].dtype)
                    }
                    guard bytes.count == n else {
                        throw MoepackError(.badInput, file: source.path, item: sel.sourceName,
                                           "source gave \(bytes.count) bytes, shape \(shapeString(specs[i].shape)) × \(specs[i].dtype.rawValue) needs \(n)")
                    }
                    try w.write(bytes)
                }
            }
        } catch let e as MoepackError {
            throw e.inFile(path)
        }
    }
}
