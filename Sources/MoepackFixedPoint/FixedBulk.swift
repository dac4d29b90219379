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
    ///
    /// Paths (all give the codes of ``quantize(_:)``, bit for bit):
    /// - SIMD path, for W ≤ 20 and 0 ≤ F ≤ 100 (e.g. `ap_fixed<16,2>`, `<16,5>`, `<16,0>`, `<8,3>`):
    ///   8 values at a time in `SIMD8<Float>` (see `encodeSIMD`); a group of 8 with any value that
    ///   is not finite or whose code would overflow goes through the scalar path.
    /// - Scalar path: exact Double arithmetic on x·2^F for W ≤ 32 and in-range values; everything
    ///   else (out of range, NaN/±∞, W > 32, huge F) through the exact integer conversion.
    /// No allocation.
    ///
    /// Statistics: count, min, max, overflow count, max overflowing |x| and the non-finite count and
    /// index are exact. Σx² adds the exact squares Double(x)² in Double (only the summation order
    /// differs between paths). Σ(x−q)² and max|x−q| use x−q computed in Float on the SIMD path,
    /// which is exact except for AP_TRN of −LSB/2 < x < 0 (q = −LSB), where it is within a relative
    /// 2^−24; so sums differ from the scalar path by rounding noise only (≲ 1e-12 relative in
    /// practice, ≤ 6e-8 for max|x−q|), and SQNR is unchanged to far below 0.001 dB.
    ///
    /// - Precondition: `output.count ≥ values.count · containerBytes` (a programming error otherwise).
    public func encode(_ values: UnsafeBufferPointer<Float>, into output: UnsafeMutableRawBufferPointer,
                       stats: inout QuantizationStats) {
        precondition(output.count >= values.count * containerBytes, "FixedType.encode: output buffer too small")
        encodeDispatch(values, output, &stats, vectorized: true)
    }

    /// ``encode(_:into:stats:)`` without the SIMD path: one scalar element at a time. The reference
    /// the SIMD path is tested against; same contract and output.
    func encodeScalar(_ values: UnsafeBufferPointer<Float>, into output: UnsafeMutableRawBufferPointer,
                      stats: inout QuantizationStats) {
        precondition(output.count >= values.count * containerBytes, "FixedType.encode: output buffer too small")
        encodeDispatch(values, output, &stats, vectorized: false)
    }

    /// Whether the SIMD path of ``encode(_:into:stats:)`` is exact for this type: W ≤ 20 keeps every
    /// candidate code y = x·2^F within |y| ≤ 2^20 < 2^22 (magic-number rounding is exact there),
    /// F ≥ 0 makes x·2^F exact in Float for every finite x (subnormal x included; overflow gives ±∞,
    /// which is out of range), and F ≤ 100 keeps 2^F and q = code·2^−F normal Floats.
    var simdEncodeEligible: Bool {
        width <= 20 && fractionBits >= 0 && fractionBits <= 100
    }

    private func encodeDispatch(_ values: UnsafeBufferPointer<Float>, _ output: UnsafeMutableRawBufferPointer,
                                _ stats: inout QuantizationStats, vectorized: Bool) {
        // One loop per rounding rule, so the per-element work has no mode dispatch.
        switch quantization {
        case .AP_TRN: encodeLoop(values, output, &stats, RoundTRN.self, vectorized)
        case .AP_TRN_ZERO: encodeLoop(values, output, &stats, RoundTRNZero.self, vectorized)
        case .AP_RND: encodeLoop(values, output, &stats, RoundRND.self, vectorized)
        case .AP_RND_ZERO: encodeLoop(values, output, &stats, RoundRNDZero.self, vectorized)
        case .AP_RND_MIN_INF: encodeLoop(values, output, &stats, RoundRNDMinInf.self, vectorized)
        case .AP_RND_INF: encodeLoop(values, output, &stats, RoundRNDInf.self, vectorized)
        case .AP_RND_CONV: encodeLoop(values, output, &stats, RoundRNDConv.self, vectorized)
        }
    }

    // Generic over the rounding rule only: the container width is a run-time value (a perfectly
    // predicted switch per store), which keeps the specializations to one per rule (compile time).
    private func encodeLoop<R: RoundingRule>(_ values: UnsafeBufferPointer<Float>, _ output: UnsafeMutableRawBufferPointer,
                                             _ stats: inout QuantizationStats, _ rule: R.Type, _ vectorized: Bool) {
        let n = values.count
        guard n > 0, let src = values.baseAddress, let out = output.baseAddress else {
            var empty = QuantizationStats()
            empty.count = n
            stats.merge(empty)
            return
        }
        let cb = containerBytes
        var acc = _EncodeAccumulator(self)
        var i = 0
        #if _endian(little)
        if vectorized && n >= 8 && simdEncodeEligible && cb <= 4 {
            i = encodeSIMD(src, n, out, &acc, rule, cb)
        }
        #endif
        while i < n {
            acc.element(i, src[i], out, rule, cb)
            i &+= 1
        }
        stats.merge(acc.finish(count: n))
    }

    /// The SIMD path over the whole groups of 8 in `src[0..<n]`; returns the index where the scalar
    /// tail starts. Requires ``simdEncodeEligible`` and a little-endian host.
    ///
    /// Per group: y = x·2^F (exact, see ``simdEncodeEligible``); t = y + 1.5·2^23 rounds y to the
    /// nearest integer, ties to even, because |y| < 2^22 puts t in [2^23, 2^24) where the Float
    /// spacing is 1; so t − 1.5·2^23 = rne(y) exactly, d = rne(y) − y is exact (Sterbenz, or y = 0 /
    /// |y| < ½), and the integer rne(y) is bits(t) − bits(1.5·2^23). The rounding rule then moves the
    /// code by ±1 from d and the sign of y (`RoundingRule.adjust`). If any lane lies outside [lo, hi]
    /// (NaN/±∞/huge y give codes far outside) the group is redone by the scalar path.
    @inline(__always)
    private func encodeSIMD<R: RoundingRule>(
        _ src: UnsafePointer<Float>, _ n: Int, _ out: UnsafeMutableRawPointer,
        _ acc: inout _EncodeAccumulator, _ rule: R.Type, _ cb: Int) -> Int {
        typealias V = SIMD8<Float>
        typealias I = SIMD8<Int32>
        let magic: Float = 0x1.8p23
        let vMagic = V(repeating: magic)
        let magicBits = I(repeating: Int32(bitPattern: magic.bitPattern))
        let scale = V(repeating: Float(sign: .plus, exponent: fractionBits, significand: 1))
        let invScale = V(repeating: Float(sign: .plus, exponent: -fractionBits, significand: 1))
        let lo = I(repeating: Int32(acc.lo)), hi = I(repeating: Int32(acc.hi))
        let absMask = SIMD8<UInt32>(repeating: 0x7FFF_FFFF)
        var vmn = V(repeating: .infinity), vmx = V(repeating: -.infinity), vme = V.zero
        var sx0 = SIMD4<Double>.zero, sx1 = SIMD4<Double>.zero
        var se0 = SIMD4<Double>.zero, se1 = SIMD4<Double>.zero
        let raw = UnsafeRawPointer(src)
        var i = 0
        while i &+ 8 <= n {
            let x = raw.loadUnaligned(fromByteOffset: i &* 4, as: V.self)
            let y = x * scale
            let t = y + vMagic
            let d = (t - vMagic) - y
            let r = R.adjust(unsafeBitCast(t, to: I.self) &- magicBits, y: y, d: d)
            if all((r .>= lo) .& (r .<= hi)) {
                let off = i &* cb
                if cb == 1 {
                    out.storeBytes(of: SIMD8<Int8>(truncatingIfNeeded: r), toByteOffset: off, as: SIMD8<Int8>.self)
                } else if cb == 2 {
                    out.storeBytes(of: SIMD8<Int16>(truncatingIfNeeded: r), toByteOffset: off, as: SIMD8<Int16>.self)
                } else {
                    out.storeBytes(of: r, toByteOffset: off, as: I.self)
                }
                // q = code·2^−F, exact; code as a Float by the same magic number.
                let q = (unsafeBitCast(r &+ magicBits, to: V.self) - vMagic) * invScale
                let e = x - q
                vmn = vmn.replacing(with: x, where: x .< vmn)
                vmx = vmx.replacing(with: x, where: x .> vmx)
                let ae = unsafeBitCast(unsafeBitCast(e, to: SIMD8<UInt32>.self) & absMask, to: V.self)
                vme = vme.replacing(with: ae, where: ae .> vme)
                let xl = SIMD4<Double>(x.lowHalf), xh = SIMD4<Double>(x.highHalf)
                let el = SIMD4<Double>(e.lowHalf), eh = SIMD4<Double>(e.highHalf)
                sx0 += xl * xl
                sx1 += xh * xh
                se0 += el * el
                se1 += eh * eh
            } else {
                for j in i..<(i &+ 8) { acc.element(j, src[j], out, rule, cb) }
            }
            i &+= 8
        }
        acc.mn = Swift.min(acc.mn, Double(vmn.min()))
        acc.mx = Swift.max(acc.mx, Double(vmx.max()))
        acc.maxErr = Swift.max(acc.maxErr, Double(vme.max()))
        acc.sx += (sx0 + sx1).sum()
        acc.se += (se0 + se1).sum()
        return i
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

/// A quantization mode as used by ``FixedType/encode(_:into:stats:)``: the scalar rule on the exact
/// value y = x·2^F, and the same rule on 8 lanes given the round-half-even code.
protocol RoundingRule {
    /// Whether y, with floor `floor` and fraction `fraction` = y − floor ∈ [0, 1), rounds up to
    /// floor + 1 (UG1399 definitions; ties are fraction == 0.5).
    static func roundUp(y: Double, floor: Int64, fraction d: Double) -> Bool
    /// The code from `rne` = y rounded to nearest, ties to even, and d = rne − y ∈ [−½, ½] (exact):
    /// rne moved by −1, 0 or +1. Ties are d = ±½; rne > y iff d > 0.
    static func adjust(_ rne: SIMD8<Int32>, y: SIMD8<Float>, d: SIMD8<Float>) -> SIMD8<Int32>
}

/// −1 in the lanes where `m` holds, 0 elsewhere (the lane pattern of a SIMD comparison).
@inline(__always)
func _minusOne(_ m: SIMDMask<SIMD8<Int32>>) -> SIMD8<Int32> {
    SIMD8<Int32>.zero.replacing(with: -1, where: m)
}

/// AP_TRN: toward −∞.
enum RoundTRN: RoundingRule {
    @inline(__always) static func roundUp(y: Double, floor: Int64, fraction d: Double) -> Bool { false }
    @inline(__always) static func adjust(_ r: SIMD8<Int32>, y: SIMD8<Float>, d: SIMD8<Float>) -> SIMD8<Int32> {
        r &+ _minusOne(d .> 0)
    }
}
/// AP_TRN_ZERO: toward zero.
enum RoundTRNZero: RoundingRule {
    @inline(__always) static func roundUp(y: Double, floor: Int64, fraction d: Double) -> Bool { y < 0 && d > 0 }
    @inline(__always) static func adjust(_ r: SIMD8<Int32>, y: SIMD8<Float>, d: SIMD8<Float>) -> SIMD8<Int32> {
        r &+ _minusOne((d .> 0) .& (y .> 0)) &- _minusOne((d .< 0) .& (y .< 0))
    }
}
/// AP_RND: ties toward +∞.
enum RoundRND: RoundingRule {
    @inline(__always) static func roundUp(y: Double, floor: Int64, fraction d: Double) -> Bool { d >= 0.5 }
    @inline(__always) static func adjust(_ r: SIMD8<Int32>, y: SIMD8<Float>, d: SIMD8<Float>) -> SIMD8<Int32> {
        r &- _minusOne(d .== -0.5)
    }
}
/// AP_RND_ZERO: ties toward zero.
enum RoundRNDZero: RoundingRule {
    @inline(__always) static func roundUp(y: Double, floor: Int64, fraction d: Double) -> Bool { d > 0.5 || (d == 0.5 && y < 0) }
    @inline(__always) static func adjust(_ r: SIMD8<Int32>, y: SIMD8<Float>, d: SIMD8<Float>) -> SIMD8<Int32> {
        r &+ _minusOne((d .== 0.5) .& (y .> 0)) &- _minusOne((d .== -0.5) .& (y .< 0))
    }
}
/// AP_RND_MIN_INF: ties toward −∞.
enum RoundRNDMinInf: RoundingRule {
    @inline(__always) static func roundUp(y: Double, floor: Int64, fraction d: Double) -> Bool { d > 0.5 }
    @inline(__always) static func adjust(_ r: SIMD8<Int32>, y: SIMD8<Float>, d: SIMD8<Float>) -> SIMD8<Int32> {
        r &+ _minusOne(d .== 0.5)
    }
}
/// AP_RND_INF: ties away from zero.
enum RoundRNDInf: RoundingRule {
    @inline(__always) static func roundUp(y: Double, floor: Int64, fraction d: Double) -> Bool { d > 0.5 || (d == 0.5 && y > 0) }
    @inline(__always) static func adjust(_ r: SIMD8<Int32>, y: SIMD8<Float>, d: SIMD8<Float>) -> SIMD8<Int32> {
        r &- _minusOne((d .== -0.5) .& (y .> 0)) &+ _minusOne((d .== 0.5) .& (y .< 0))
    }
}
/// AP_RND_CONV: ties to even.
enum RoundRNDConv: RoundingRule {
    @inline(__always) static func roundUp(y: Double, floor: Int64, fraction d: Double) -> Bool { d > 0.5 || (d == 0.5 && floor & 1 != 0) }
    @inline(__always) static func adjust(_ r: SIMD8<Int32>, y: SIMD8<Float>, d: SIMD8<Float>) -> SIMD8<Int32> { r }
}

/// Parameters and running statistics of the scalar conversion path of ``FixedType/encode(_:into:stats:)``.
struct _EncodeAccumulator {
    let type: FixedType
    /// x·2^F and q·2^−F are exact in Double for float32 x and |q| < 2^32 while 2^±F is far from
    /// the Double range limits.
    let fast: Bool
    let scale: Double, invScale: Double
    /// Code range that needs no overflow handling, and the same widened by one (pre-rounding test).
    let lo: Double, hi: Double, loGuard: Double, hiGuard: Double
    var mn = Double.infinity, mx = -Double.infinity
    var sx = 0.0, se = 0.0, maxErr = 0.0, maxOvf = 0.0
    var ovf = 0, nonFinite = 0
    var firstBad: Int? = nil

    init(_ t: FixedType) {
        type = t
        let f = t.fractionBits
        fast = t.width <= 32 && f >= -700 && f <= 700
        scale = Double(sign: .plus, exponent: f, significand: 1)
        invScale = Double(sign: .plus, exponent: -f, significand: 1)
        hi = Double(t.maxRaw)
        lo = !t.signed ? 0 : (t.overflow == .AP_SAT_SYM && t.width > 1 ? -Double(t.maxRaw) : Double(t.minRaw))
        loGuard = lo - 1
        hiGuard = hi + 1
    }

    /// Converts element `i` (value `xf`), stores its container and updates the statistics.
    @inline(__always)
    mutating func element<R: RoundingRule>(
        _ i: Int, _ xf: Float, _ out: UnsafeMutableRawPointer, _ rule: R.Type, _ cb: Int) {
        let x = Double(xf)
        var raw: Int64 = 0
        var qv = 0.0
        let y = x * scale
        // NaN fails both comparisons; ±∞ fails one.
        if fast && y >= loGuard && y <= hiGuard {
            // floor without a libm call: |y| ≤ 2^32 + 1, so Int64(y) (toward zero) is exact.
            let t = Int64(y)
            let fl = Double(t) > y ? t &- 1 : t
            let d = y - Double(fl)  // exact, in [0, 1)
            let r = R.roundUp(y: y, floor: fl, fraction: d) ? fl &+ 1 : fl
            let rd = Double(r)
            if rd >= lo && rd <= hi {
                raw = r
                qv = rd * invScale
            } else {
                (raw, qv) = slowPath(x)
            }
        } else if !x.isFinite {
            nonFinite += 1
            if firstBad == nil { firstBad = i }
            storeContainer(0, out, i, cb)
            return
        } else {
            (raw, qv) = slowPath(x)
        }
        mn = x < mn ? x : mn
        mx = x > mx ? x : mx
        sx += x * x
        let err = x - qv
        se += err * err
        let ae = abs(err)
        maxErr = ae > maxErr ? ae : maxErr
        storeContainer(raw, out, i, cb)
    }

    /// Stores the low bits of `raw` as little-endian container `i` of `cb` bytes (1, 2, 4 or 8).
    @inline(__always)
    func storeContainer(_ raw: Int64, _ out: UnsafeMutableRawPointer, _ i: Int, _ cb: Int) {
        switch cb {
        case 1: out.storeBytes(of: UInt8(truncatingIfNeeded: raw), toByteOffset: i, as: UInt8.self)
        case 2: out.storeBytes(of: UInt16(truncatingIfNeeded: raw).littleEndian, toByteOffset: i &* 2, as: UInt16.self)
        case 4: out.storeBytes(of: UInt32(truncatingIfNeeded: raw).littleEndian, toByteOffset: i &* 4, as: UInt32.self)
        default: out.storeBytes(of: UInt64(truncatingIfNeeded: raw).littleEndian, toByteOffset: i &* 8, as: UInt64.self)
        }
    }

    /// The exact conversion for values the fast path cannot take (out of range, W > 32, huge F).
    @inline(never)
    mutating func slowPath(_ x: Double) -> (Int64, Double) {
        let res = type.quantize(x)
        if res.overflowed {
            ovf += 1
            maxOvf = Swift.max(maxOvf, abs(x))
        }
        return (res.raw, type.value(raw: res.raw))
    }

    /// The statistics of `count` elements.
    func finish(count: Int) -> QuantizationStats {
        var s = QuantizationStats()
        s.count = count
        s.nonFiniteCount = nonFinite
        s.firstNonFiniteIndex = firstBad
        s.min = mn
        s.max = mx
        s.overflowCount = ovf
        s.maxOverflowMagnitude = maxOvf
        s.sumSquares = sx
        s.sumSquaredError = se
        s.maxAbsError = maxErr
        return s
    }
}
