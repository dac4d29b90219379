/// Element types a checkpoint tensor can be stored in.
///
/// Raw values are the safetensors spec's dtype strings (`F32`, `BF16`, …), which moepack also uses in
/// its JSON output. All multi-byte values are handled little-endian unless a reader says otherwise.
public enum DType: String, Sendable, Codable, CaseIterable {
    case float64 = "F64", float32 = "F32", float16 = "F16", bfloat16 = "BF16"
    case int64 = "I64", int32 = "I32", int16 = "I16", int8 = "I8"
    case uint64 = "U64", uint32 = "U32", uint16 = "U16", uint8 = "U8"
    case bool = "BOOL"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .float64, .int64, .uint64: return 8
        case .float32, .int32, .uint32: return 4
        case .float16, .bfloat16, .int16, .uint16: return 2
        case .int8, .uint8, .bool: return 1
        }
    }

    /// True for the floating-point dtypes moepack accepts as weights.
    public var isFloatingPoint: Bool {
        switch self {
        case .float64, .float32, .float16, .bfloat16: return true
        default: return false
        }
    }
}

/// Converts `count` little-endian elements of `dtype` at `bytes` to Float32 (C order is the caller's).
///
/// float64 is rounded to nearest float32; float16 and bfloat16 widen exactly; integers convert by value.
public func decodeToFloat32(_ bytes: UnsafeRawBufferPointer, dtype: DType, count: Int,
                            into out: UnsafeMutableBufferPointer<Float>) {
    precondition(bytes.count >= count * dtype.byteSize && out.count >= count)
    switch dtype {
    case .float32:
        #if _endian(little)
        if count > 0 { UnsafeMutableRawPointer(out.baseAddress!).copyMemory(from: bytes.baseAddress!, byteCount: count * 4) }
        #else
        for i in 0..<count { out[i] = Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))) }
        #endif
    case .float64:
        for i in 0..<count { out[i] = Float(Double(bitPattern: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)))) }
    case .float16:
        float16Table.withUnsafeBufferPointer { table in
            for i in 0..<count { out[i] = table[Int(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)))] }
        }
    case .bfloat16:
        for i in 0..<count { out[i] = Float(bitPattern: UInt32(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))) << 16) }
    case .int64:
        for i in 0..<count { out[i] = Float(Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 8, as: Int64.self))) }
    case .int32:
        for i in 0..<count { out[i] = Float(Int32(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 4, as: Int32.self))) }
    case .int16:
        for i in 0..<count { out[i] = Float(Int16(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 2, as: Int16.self))) }
    case .int8:
        for i in 0..<count { out[i] = Float(bytes.load(fromByteOffset: i, as: Int8.self)) }
    case .uint64:
        for i in 0..<count { out[i] = Float(UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))) }
    case .uint32:
        for i in 0..<count { out[i] = Float(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))) }
    case .uint16:
        for i in 0..<count { out[i] = Float(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))) }
    case .uint8, .bool:
        for i in 0..<count { out[i] = Float(bytes[i]) }
    }
}

/// Every float16 bit pattern widened to float32 (exact), so bulk decoding is a table lookup instead of
/// a runtime call per element.
let float16Table: [Float] = (0...UInt16.max).map { Float(Float16(bitPattern: $0)) }

/// Index of the first NaN or ±Inf in `values`, or nil. Scans blocks of 4096 with a max-reduction of
/// the magnitude bits (|x| bits ≥ 0x7F800000 ⇔ exponent all ones), which the compiler vectorises.
public func firstNonFiniteIndex(_ values: UnsafeBufferPointer<Float>) -> Int? {
    let n = values.count
    guard let base = values.baseAddress else { return nil }
    let bits = UnsafeRawPointer(base).assumingMemoryBound(to: UInt32.self)
    var start = 0
    while start < n {
        let end = min(start + 4096, n)
        var m: UInt32 = 0
        for i in start..<end { m = max(m, bits[i] & 0x7FFF_FFFF) }
        if m >= 0x7F80_0000 {
            for i in start..<end where !values[i].isFinite { return i }
        }
        start = end
    }
    return nil
}
