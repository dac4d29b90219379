import Foundation
import MoepackCore

/// Writes NumPy `.npy` files (format version 1.0, C order, little-endian) byte-identical to
/// `numpy.save` (NumPy `numpy.lib.format`: header dict with keys in sorted order, spare spaces for
/// growing the first axis, padded so the data starts at a multiple of 64 bytes, ended by `\n`).
///
/// Output goes to a temporary file in the destination folder, renamed into place when complete.
public enum NpyWriter {
    /// NumPy type string for a dtype: `<f4 <f8 <f2 |i1 <i2 <i4 <i8 |u1 <u2 <u4 <u8 |b1`; nil for BF16
    /// (NumPy has no bfloat16).
    public static func descr(_ dtype: DType) -> String? {
        switch dtype {
        case .float32: return "<f4"
        case .float64: return "<f8"
        case .float16: return "<f2"
        case .bfloat16: return nil
        case .int8: return "|i1"
        case .int16: return "<i2"
        case .int32: return "<i4"
        case .int64: return "<i8"
        case .uint8: return "|u1"
        case .uint16: return "<u2"
        case .uint32: return "<u4"
        case .uint64: return "<u8"
        case .bool: return "|b1"
        }
    }

    /// The complete version 1.0 header (magic, version, length, dict, padding, `\n`) for a C-order
    /// array of `shape` with type string `descr`.
    /// - Throws: ``MoepackError`` (`badInput`) when the header would exceed the 1.0 format's 65535 bytes.
    public static func header(descr: String, shape: [Int]) throws -> [UInt8] {
        let shapeRepr: String
        switch shape.count {
        case 0: shapeRepr = "()"
        case 1: shapeRepr = "(\(shape[0]),)"
        default: shapeRepr = "(" + shape.map(String.init).joined(separator: ", ") + ")"
        }
        var dict = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeRepr), }"
        // numpy: spare room so the first axis can grow in place (GROWTH_AXIS_MAX_DIGITS = 21).
        if let first = shape.first { dict += String(repeating: " ", count: max(0, 21 - String(first).count)) }
        let body = Array(dict.utf8)
        let hlen = body.count + 1
        let padlen = 64 - ((8 + 2 + hlen) % 64)  // MAGIC_LEN + u16 length field; ARRAY_ALIGN = 64
        let total = hlen + padlen
        guard total <= 0xFFFF else {
            throw MoepackError(.badInput, ".npy 1.0 header of \(total) bytes exceeds 65535")
        }
        var out = NpyHeader.magic + [1, 0, UInt8(total & 0xFF), UInt8(total >> 8)]
        out += body
        out += [UInt8](repeating: 0x20, count: padlen)
        out.append(0x0A)
        return out
    }

    /// Writes `tensor` as a float32 (`<f4`) C-order array.
    /// - Throws: ``MoepackError`` (`io`) naming `path` when the file cannot be written (no file is left).
    public static func write(_ tensor: Tensor, to path: String) throws {
        try writeRaw(bytes: littleEndianBytes(tensor.values), dtype: .float32, shape: tensor.shape, to: path)
    }

    /// float32 values as little-endian bytes: one copy on little-endian hosts (a per-element append
    /// took about a tenth of `moepack run`'s time, serially, after the frames).
    static func littleEndianBytes(_ values: [Float]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: values.count * 4)
        bytes.withUnsafeMutableBytes { dst in
            values.withUnsafeBytes { src in dst.copyMemory(from: src) }
            if 1.littleEndian != 1 {
                for i in 0..<values.count { dst.storeBytes(of: values[i].bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            }
        }
        return bytes
    }

    /// Writes little-endian C-order `bytes` of `dtype` (e.g. quantized `|i1`, `<i2`, `<i4`, `<i8`, `|u1`,
    /// `<u2`, `<u4` outputs, or float dtypes) with the given shape.
    /// - Throws: ``MoepackError``: `badInput` when `bytes.count != product(shape) × dtype size` or a
    ///   dimension is negative; `unsupported` for BF16; `io` for write failures (no file is left).
    public static func writeRaw(bytes: [UInt8], dtype: DType, shape: [Int], to path: String) throws {
        do {
            guard let d = descr(dtype) else {
                throw MoepackError(.unsupported, "dtype \(dtype.rawValue) has no NumPy equivalent")
            }
            var n = dtype.byteSize
            for s in shape {
                guard s >= 0 else { throw MoepackError(.badInput, "negative dimension in shape \(shapeString(shape))") }
                let (p, o) = n.multipliedReportingOverflow(by: s)
                guard !o else { throw MoepackError(.badInput, "byte count of shape \(shapeString(shape)) overflows") }
                n = p
            }
            guard bytes.count == n else {
                throw MoepackError(.badInput, "\(bytes.count) bytes given, shape \(shapeString(shape)) × \(dtype.rawValue) needs \(n)")
            }
            let h = try header(descr: d, shape: shape)
            try AtomicFileWriter.write(to: path) { w in
                try w.write(h)
                try w.write(bytes)
            }
        } catch let e as MoepackError {
            throw e.inFile(path)
        }
    }
}
