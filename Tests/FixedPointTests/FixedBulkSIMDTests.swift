import XCTest
import TestSupport
@testable import MoepackFixedPoint

/// The SIMD path of `FixedType.encode(_:into:stats:)` against the scalar loop (`encodeScalar`) and
/// against per-element `quantize(_:)`: output bytes identical, statistics identical up to float
/// rounding noise in the sums.
final class FixedBulkSIMDTests: XCTestCase {
    /// (type, whether the SIMD path applies to it)
    static let types: [(String, Bool)] = [
        ("ap_fixed<16,2>", true), ("ap_fixed<16,5>", true), ("ap_fixed<16,0>", true), ("ap_fixed<16,7>", true),
        ("ap_fixed<8,3>", true), ("ap_fixed<8,0>", true), ("ap_ufixed<8,0>", true), ("ap_fixed<12,4>", true),
        ("ap_fixed<20,1>", true), ("ap_ufixed<20,4>", true), ("ap_fixed<16,-2>", true), ("ap_fixed<1,1>", true),
        ("ap_fixed<32,10>", false), ("ap_fixed<24,3>", false), ("ap_fixed<4,8>", false),
    ]

    /// Seeded mixture: mostly in-range values (so many groups of 8 take the SIMD path) plus exact
    /// ties (k+½)·LSB, grid points, ±max/min and ±½ LSB around them, tiny values, subnormals, ±0,
    /// out-of-range values, NaN and ±∞.
    static func mixture(_ t: FixedType, count n: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        func unit() -> Double { Double(rng.next() >> 11) * 0x1p-53 }
        func int(_ k: Int) -> Int { Int(rng.next() % UInt64(k)) }
        let lsb = t.lsb
        let lo = t.minValue, hi = t.maxValue, span = hi - lo
        let loCode = Double(t.minRaw), hiCode = Double(t.maxRaw)
        var xs: [Float] = []
        xs.reserveCapacity(n)
        for _ in 0..<n {
            let c = int(100)
            let x: Double
            switch c {
            case 0..<70: x = lo + unit() * span
            case 70..<78: x = (loCode + Double(int(Int(hiCode - loCode) + 1)) + 0.5) * lsb      // tie
            case 78..<82: x = (loCode + Double(int(Int(hiCode - loCode) + 1))) * lsb            // grid
            case 82..<85: x = [hi, lo, -hi, -lo, hi + lsb / 2, lo - lsb / 2, hi - lsb / 2, lo + lsb / 2,
                               -hi - lsb / 2, -hi + lsb / 2][int(10)]
            case 85..<88: x = (unit() * 2 - 1) * lsb * [0.5, 1, 1e-3, 1e-30][int(4)]           // tiny
            case 88..<90: x = Double(Float(bitPattern: UInt32(1 + int(0x7F_FFFF)) | (int(2) == 0 ? 0 : 0x8000_0000)))
            case 90..<92: x = int(2) == 0 ? 0 : -0.0
            case 92..<97: x = (int(2) == 0 ? 1 : -1) * (span * (1 + unit() * [1, 1e3, 1e30][int(3)]))
            default: x = [Double.nan, .infinity, -.infinity, Double(Float.greatestFiniteMagnitude)][int(4)]
            }
            xs.append(Float(x))
        }
        return xs
    }

    /// `xs` through the scalar loop (`encodeScalar`): the reference the SIMD path must match.
    static func scalarEncode(_ t: FixedType, _ xs: [Float]) -> (bytes: [UInt8], stats: QuantizationStats) {
        var bytes = [UInt8](repeating: 0, count: xs.count * t.containerBytes)
        var stats = QuantizationStats()
        xs.withUnsafeBufferPointer { src in
            bytes.withUnsafeMutableBytes { t.encodeScalar(src, into: $0, stats: &stats) }
        }
        return (bytes, stats)
    }

    static func codes(_ t: FixedType, _ bytes: [UInt8], _ i: Int) -> Int64 {
        var bits: UInt64 = 0
        for j in 0..<t.containerBytes { bits |= UInt64(bytes[i * t.containerBytes + j]) << (8 * j) }
        return t.signExtend(bits)
    }

    func assertStats(_ a: QuantizationStats, _ b: QuantizationStats, _ what: String,
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        XCTAssertEqual(a.nonFiniteCount, b.nonFiniteCount, what, file: file, line: line)
        XCTAssertEqual(a.firstNonFiniteIndex, b.firstNonFiniteIndex, what, file: file, line: line)
        XCTAssertEqual(a.min, b.min, what, file: file, line: line)
        XCTAssertEqual(a.max, b.max, what, file: file, line: line)
        XCTAssertEqual(a.overflowCount, b.overflowCount, what, file: file, line: line)
        XCTAssertEqual(a.maxOverflowMagnitude, b.maxOverflowMagnitude, what, file: file, line: line)
        func close(_ u: Double, _ v: Double, _ name: String) {
            XCTAssertLessThanOrEqual(abs(u - v), 1e-6 * max(abs(u), abs(v)), "\(what) \(name) \(u) vs \(v)",
                                     file: file, line: line)
        }
        close(a.sumSquares, b.sumSquares, "sumSquares")
        close(a.sumSquaredError, b.sumSquaredError, "sumSquaredError")
        close(a.maxAbsError, b.maxAbsError, "maxAbsError")
        if a.sumSquaredError > 0 && a.sumSquares > 0 {
            XCTAssertEqual(a.sqnrDB, b.sqnrDB, accuracy: 1e-4, what, file: file, line: line)
        }
    }

    /// Every type × quantization × overflow mode on 12 003 seeded values (not a multiple of 8):
    /// bytes identical to `encodeScalar` and to `quantize`; statistics as `assertStats`.
    func testSIMDMatchesScalarAllModes() {
        for (k, (spec, simd)) in Self.types.enumerated() {
            let base = try! FixedType(parsing: spec)
            XCTAssertEqual(base.simdEncodeEligible, simd, spec)
            let xs = Self.mixture(base, count: 12_003, seed: 1000 + UInt64(k))
            // The mixture really exercises both paths: count groups of 8 that are all in range.
            var cleanGroups = 0, groups = 0
            for g in stride(from: 0, to: xs.count - 7, by: 8) {
                groups += 1
                if (g..<g + 8).allSatisfy({ xs[$0].isFinite && !base.quantize(Double(xs[$0])).overflowed }) { cleanGroups += 1 }
            }
            XCTAssertGreaterThan(cleanGroups, groups / 10, spec)
            XCTAssertLessThan(cleanGroups, groups * 9 / 10, spec)
            for q in Quantization.allCases {
                for o in Overflow.allCases {
                    let t = base.with(quantization: q, overflow: o)
                    let (bytes, stats) = t.encode(xs)
                    let (refBytes, refStats) = Self.scalarEncode(t, xs)
                    XCTAssertEqual(bytes, refBytes, "\(t) bytes")
                    assertStats(stats, refStats, "\(t)")
                    // Independent check of the codes and the overflow count.
                    var ovf = 0, mismatches = 0
                    for (i, x) in xs.enumerated() where x.isFinite {
                        let r = t.quantize(Double(x))
                        if r.overflowed { ovf += 1 }
                        if Self.codes(t, bytes, i) != r.raw { mismatches += 1 }
                    }
                    XCTAssertEqual(mismatches, 0, "\(t) codes vs quantize")
                    XCTAssertEqual(stats.overflowCount, ovf, "\(t)")
                }
            }
        }
    }

    /// Every code of ap_fixed<8,3> (and neighbours outside the range) at fractions 0, ¼, ½, ¾ LSB and
    /// both signs, in every mode: the SIMD path's tie handling against `quantize`.
    func testSIMDTiesExhaustive8Bit() {
        for spec in ["ap_fixed<8,3>", "ap_ufixed<8,3>", "ap_fixed<16,2>"] {
            let base = try! FixedType(parsing: spec)
            var xs: [Float] = []
            for k in (base.minRaw - 3)...(base.maxRaw + 3) {
                for f in [0.0, 0.25, 0.5, 0.75] { xs.append(Float((Double(k) + f) * base.lsb)) }
            }
            for q in Quantization.allCases {
                for o in Overflow.allCases {
                    let t = base.with(quantization: q, overflow: o)
                    let (bytes, stats) = t.encode(xs)
                    var bad = 0
                    for (i, x) in xs.enumerated() where Self.codes(t, bytes, i) != t.quantize(Double(x)).raw { bad += 1 }
                    XCTAssertEqual(bad, 0, "\(t)")
                    let (refBytes, refStats) = Self.scalarEncode(t, xs)
                    XCTAssertEqual(bytes, refBytes, "\(t)")
                    assertStats(stats, refStats, "\(t)")
                }
            }
        }
    }

    /// Chunked and misaligned calls (every start offset 0…8 and ragged chunk lengths) give the same
    /// bytes and statistics (global non-finite index included) as one call.
    func testSIMDChunkedAndMisaligned() {
        let t = try! FixedType(parsing: "ap_fixed<16,2,AP_RND_CONV,AP_SAT>")
        var xs = Self.mixture(t, count: 5000, seed: 99)
        for i in 0..<200 { xs[i] = Float(i) * 0x1p-10 }  // a clean prefix so the first NaN comes late
        let (whole, wholeStats) = t.encode(xs)
        XCTAssertNotNil(wholeStats.firstNonFiniteIndex)
        for start in 0...8 {
            var out = [UInt8](repeating: 0xAA, count: xs.count * 2)
            var s = QuantizationStats()
            let cuts = [start, start + 13, start + 64, start + 65, start + 1000, start + 2999, xs.count]
            xs.withUnsafeBufferPointer { p in
                out.withUnsafeMutableBytes { o in
                    if start > 0 {
                        t.encode(UnsafeBufferPointer(rebasing: p[0..<start]),
                                 into: UnsafeMutableRawBufferPointer(rebasing: o[0..<2 * start]), stats: &s)
                    }
                    for (a, b) in zip(cuts, cuts.dropFirst()) {
                        t.encode(UnsafeBufferPointer(rebasing: p[a..<b]),
                                 into: UnsafeMutableRawBufferPointer(rebasing: o[2 * a..<2 * b]), stats: &s)
                    }
                }
            }
            XCTAssertEqual(out, whole, "start \(start)")
            assertStats(s, wholeStats, "start \(start)")
        }
    }

    /// Known statistics from the SIMD path alone (64 values = 8 whole groups, all negative errors):
    /// ap_fixed<16,2,AP_RND_CONV>, x_i = −(i + ¼)·LSB → code −i, error −¼ LSB.
    func testSIMDStatsKnownValues() {
        let t = try! FixedType(parsing: "ap_fixed<16,2,AP_RND_CONV,AP_SAT>")
        XCTAssertTrue(t.simdEncodeEligible)
        let lsb = 0x1p-14
        let xs = (0..<64).map { Float(-(Double($0) + 0.25) * lsb) }
        let (bytes, s) = t.encode(xs)
        for i in 0..<64 { XCTAssertEqual(Self.codes(t, bytes, i), Int64(-i), "element \(i)") }
        XCTAssertEqual(s.count, 64)
        XCTAssertEqual(s.overflowCount, 0)
        XCTAssertNil(s.firstNonFiniteIndex)
        XCTAssertEqual(s.min, -63.25 * lsb)
        XCTAssertEqual(s.max, -0.25 * lsb)
        XCTAssertEqual(s.maxAbsError, 0.25 * lsb)
        XCTAssertEqual(s.sumSquaredError, 64 * 0.0625 * lsb * lsb)
        // Σ (i + ¼)² = Σi² + ½Σi + 64/16 = 85344 + 1008 + 4 (exact in Double).
        XCTAssertEqual(s.sumSquares, 86356 * lsb * lsb)
    }

    /// Empty input: no bytes written, count 0.
    func testEmpty() {
        let (bytes, stats) = FixedType(width: 16, integerBits: 2).encode([])
        XCTAssertEqual(bytes, [])
        XCTAssertEqual(stats, QuantizationStats())
    }
}
