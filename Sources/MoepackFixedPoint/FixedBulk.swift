import Foundation
import MoepackCore

/// Statistics of converting a float tensor to a fixed-point type (see ``FixedType/encode(_:into:stats:)``).
///
/// All sums are over finite inputs x and their converted values q(x) (after quantization *and*
/// overflow), in Double. Mergeable: ``merge(_:)`` treats the other statistics as covering the
/// elements that follow this one's, so element indices stay global when a tensor is converted in
/// consecutive chunks.
public struct QuantizationStats: Sendable, Equatable, Codable {
    /// Elements seen (finite or not).
    public var count: Int = 0
    /// NaN/±∞ elements seen; they are written as code 0 and must be refused by the caller.
    public var nonFiniteCount: Int = 0
    /// Index (0-based, over all elements seen) of the first NaN/±∞, if any.
    public var firstNonFiniteIndex: Int?
    /// Smallest finite input (+∞ when there is none).
    public var min: Double = .infinity
    /// Largest finite input (−∞ when there is none).
    public var max: Double = -.infinity
    /// Finite elements whose quantized value was outside the type's range (see
    /// ``FixedType/quantize(_:)``), whatever the overflow mode did with them.
    public var overflowCount: Int = 0
    /// Largest |x| among overflowing elements (0 when none overflowed).
    public var maxOverflowMagnitude: Double = 0
    /// Σ x² over finite inputs.
    public var sumSquares: Double = 0
    /// Σ (x − q(x))² over finite inputs.
    public var sumSquaredError: Double = 0
    /// max |x − q(x)| over finite inputs.
    public var maxAbsError: Double = 0

    public init() {}

    /// Signal-to-quantization-noise ratio in dB, 10·log10(Σx² / Σ(x−q(x))²); +∞ when the error is 0.
    public var sqnrDB: Double {
        if sumSquaredError == 0 { return .infinity }
        return 10 * log10(sumSquares / sumSquaredError)
    }

    /// Root-mean-square error over finite elements (0 when there are none).
    public var rmsError: Double {
        let n = count - nonFiniteCount
        return n > 0 ? (sumSquaredError / Double(n)).squareRoot() : 0
    }

    /// Adds `other`, whose elements are taken to follow this one's (its indices are offset by `count`).
    public mutating func merge(_ other: QuantizationStats) {
        if firstNonFiniteIndex == nil, let j = other.firstNonFiniteIndex {
            firstNonFiniteIndex = count + j
        }
        count += other.count
        nonFiniteCount += other.nonFiniteCount
        min = Swift.min(min, other.min)
        max = Swift.max(max, other.max)
        overflowCount += other.overflowCount
        maxOverflowMagnitude = Swift.max(maxOverflowMagnitude, other.maxOverflowMagnitude)
        sumSquares += other.sumSquares
        sumSquaredError += other.sumSquaredError
        maxAbsError = Swift.max(maxAbsError, other.maxAbsError)
    }

    /// Throws `MoepackError(.numeric)` naming `file`, `tensor` and the first NaN/±∞ index, if any.
    public func checkFinite(tensor: String?, file: String? = nil) throws {
        if let j = firstNonFiniteIndex {
            throw MoepackError(.numeric, file: file, item: tensor,
                               "\(nonFiniteCount) NaN/Inf value(s), first at flat index \(j); refusing to convert to fixed point")
        }
    }

    // Codable: min/max are null when no finite value was seen (JSON has no ±∞).
    private enum CodingKeys: String, CodingKey {
        case count, nonFiniteCount, firstNonFiniteIndex, min, max, overflowCount, maxOverflowMagnitude
        case sumSquares, sumSquaredError, maxAbsError
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(count, forKey: .count)
        try c.encode(nonFiniteCount, forKey: .nonFiniteCount)
        try c.encodeIfPresent(firstNonFiniteIndex, forKey: .firstNonFiniteIndex)
        try c.encodeIfPresent(min.isFinite ? min : nil, forKey: .min)
        try c.encodeIfPresent(max.isFinite ? max : nil, forKey: .max)
        try c.encode(overflowCount, forKey: .overflowCount)
        try c.encode(maxOverflowMagnitude, forKey: .maxOverflowMagnitude)
        try c.encode(sumSquares, forKey: .sumSquares)
        try c.encode(sumSquaredError, forKey: .sumSquaredError)
        try c.encode(maxAbsError, forKey: .maxAbsError)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        count = try c.decode(Int.self, forKey: .count)
        nonFiniteCount = try c.decode(Int.self, forKey: .nonFiniteCount)
        firstNonFiniteIndex = try c.decodeIfPresent(Int.self, forKey: .firstNonFiniteIndex)
        min = try c.decodeIfPresent(Double.self, forKey: .min) ?? .infinity
        max = try c.decodeIfPresent(Double.self, forKey: .max) ?? -.infinity
        overflowCount = try c.decode(Int.self, forKey: .overflowCount)
        maxOverflowMagnitude = try c.decode(Double.self, forKey: .maxOverflowMagnitude)
        sumSquares = try c.decode(Double.self, forKey: .sumSquares)
        sumSquaredError = try c.decode(Double.self, forKey: .sumSquaredError)
        maxAbsError = try c.decode(Double.self, forKey: .maxAbsError)
    }
}

extension FixedType {
    /// Converts float32 values to codes of this type and writes them as little-endian containers of
    /// ``containerBytes`` bytes each (element i at byte offset i·containerBytes; sign-extended to the
    /// container for `ap_fixed`, zero-extended for `ap_ufixed`), bit-exact with Vitis assignment
    /// (``quantize(_:)``). Accumulates into `stats` (elements continue its index count).
    ///
    /// NaN/±∞ are written as 0 and recorded in `stats` (``QuantizationStats/checkFinite(tensor:file:)``).
    /// Fast path (W ≤ 32, value in range): exact Double arithmetic on x·2^F; everything else goes
    /// through the exact integer conversion. No allocation.
    ///
    /// - Precondition: `output.count ≥ values.count · containerBytes` (a programming error otherwise).
    public func encode(_ values: UnsafeBufferPointer<Float>, into output: UnsafeMutableRawBufferPointer,
                       stats: inout QuantizationStats) {
        let cb = containerBytes
        precondition(output.count >= values.count * cb, "FixedType.encode: output buffer too small")
        let f = fractionBits
        // x·2^F and q·2^−F are exact in Double for float32 x and |q| < 2^32 while 2^±F is far from
        // the Double range limits.
        let fast = width <= 32 && f >= -700 && f <= 700
        let scale = Double(sign: .plus, exponent: f, significand: 1)
        let invScale = Double(sign: .plus, exponent: -f, significand: 1)
        let hi = Double(maxRaw)
        let lo: Double = !signed ? 0
            : (overflow == .AP_SAT_SYM && width > 1 ? -Double(maxRaw) : Double(minRaw))
        let q = quantization

        var local = QuantizationStats()
        var mn = Double.infinity, mx = -Double.infinity
        var sx = 0.0, se = 0.0, maxErr = 0.0, maxOvf = 0.0
        var ovf = 0, nonFinite = 0
        var firstBad: Int? = nil

        for i in 0..<values.count {
            let x = Double(values[i])
            var raw: Int64 = 0
            var qv = 0.0
            if !x.isFinite {
                nonFinite += 1
                if firstBad == nil { firstBad = i }
            } else {
                var done = false
                if fast {
                    let y = x * scale
                    if y >= lo - 1 && y <= hi + 1 {
                        let fl = y.rounded(.down)
                        let d = y - fl  // exact, in [0, 1)
                        var r: Double
                        switch q {
                        case .AP_TRN: r = fl
                        case .AP_TRN_ZERO: r = (y < 0 && d > 0) ? fl + 1 : fl
                        case .AP_RND: r = d >= 0.5 ? fl + 1 : fl
                        case .AP_RND_ZERO: r = (d > 0.5 || (d == 0.5 && y < 0)) ? fl + 1 : fl
                        case .AP_RND_MIN_INF: r = d > 0.5 ? fl + 1 : fl
                        case .AP_RND_INF: r = (d > 0.5 || (d == 0.5 && y > 0)) ? fl + 1 : fl
                        case .AP_RND_CONV:
                            r = (d > 0.5 || (d == 0.5 && fl.truncatingRemainder(dividingBy: 2) != 0)) ? fl + 1 : fl
                        }
                        if r >= lo && r <= hi {
                            raw = Int64(r)
                            qv = r * invScale
                            done = true
                        }
                    }
                }
                if !done {
                    let res = quantize(x)
                    raw = res.raw
                    qv = value(raw: raw)
                    if res.overflowed {
                        ovf += 1
                        maxOvf = Swift.max(maxOvf, abs(x))
                    }
                }
                mn = Swift.min(mn, x)
                mx = Swift.max(mx, x)
                sx += x * x
                let err = x - qv
                se += err * err
                maxErr = Swift.max(maxErr, abs(err))
            }
            let off = i &* cb
            switch cb {
            case 1: output.storeBytes(of: UInt8(truncatingIfNeeded: raw), toByteOffset: off, as: UInt8.self)
            case 2: output.storeBytes(of: UInt16(truncatingIfNeeded: raw).littleEndian, toByteOffset: off, as: UInt16.self)
            case 4: output.storeBytes(of: UInt32(truncatingIfNeeded: raw).littleEndian, toByteOffset: off, as: UInt32.self)
            default: output.storeBytes(of: UInt64(bitPattern: raw).littleEndian, toByteOffset: off, as: UInt64.self)
            }
        }
        local.count = values.count
        local.nonFiniteCount = nonFinite
        local.firstNonFiniteIndex = firstBad
        local.min = mn
        local.max = mx
        local.overflowCount = ovf
        local.maxOverflowMagnitude = maxOvf
        local.sumSquares = sx
        local.sumSquaredError = se
        local.maxAbsError = maxErr
        stats.merge(local)
    }

    /// Convenience: converts an array and returns the container bytes and the statistics.
    public func encode(_ values: [Float]) -> (bytes: [UInt8], stats: QuantizationStats) {
        var bytes = [UInt8](repeating: 0, count: values.count * containerBytes)
        var stats = QuantizationStats()
        values.withUnsafeBufferPointer { src in
            bytes.withUnsafeMutableBytes { dst in encode(src, into: dst, stats: &stats) }
        }
        return (bytes, stats)
    }

    /// Reads `count` little-endian containers (``containerBytes`` each; only the low W bits are used,
    /// sign-extended for `ap_fixed`) and writes their values as the nearest Float.
    ///
    /// - Precondition: `bytes.count ≥ count · containerBytes` and `output.count ≥ count`.
    public func decode(_ bytes: UnsafeRawBufferPointer, count: Int, into output: UnsafeMutableBufferPointer<Float>) {
        let cb = containerBytes
        precondition(count >= 0 && bytes.count >= count * cb && output.count >= count,
                     "FixedType.decode: buffer too small")
        let scale = Float(sign: .plus, exponent: -fractionBits, significand: 1)
        // Float(raw)·2^−F is correctly rounded when 2^−F is a normal Float and W ≤ 24 keeps the
        // product exact; otherwise use the general (rounding-once-per-step) path.
        let fast = width <= 24 && scale.isNormal && fractionBits >= -100 && fractionBits <= 100
        for i in 0..<count {
            let off = i &* cb
            let bits: UInt64
            switch cb {
            case 1: bits = UInt64(bytes.load(fromByteOffset: off, as: UInt8.self))
            case 2: bits = UInt64(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: off, as: UInt16.self)))
            case 4: bits = UInt64(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: off, as: UInt32.self)))
            default: bits = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: off, as: UInt64.self))
            }
            let raw = signExtend(bits)
            output[i] = fast ? Float(raw) * scale : floatValue(raw: raw)
        }
    }

    /// Convenience: decodes `count` containers from a byte array.
    public func decode(_ bytes: [UInt8], count: Int) -> [Float] {
        var out = [Float](repeating: 0, count: count)
        bytes.withUnsafeBytes { src in
            out.withUnsafeMutableBufferPointer { dst in decode(src, count: count, into: dst) }
        }
        return out
    }
}
