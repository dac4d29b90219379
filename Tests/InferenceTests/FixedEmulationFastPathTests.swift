import XCTest
import Foundation
import MoepackCore
import MoepackModel
@testable import MoepackInference

/// The 16-bit SIMD linear kernel (``dotRows4``) and the blocked ``linearForward`` against the
/// step-by-step replay of linear.cpp (``dotReplay``), including the edges of the a′/b4 split.
final class FixedEmulationFastPathTests: XCTestCase {
    struct LCG {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return state >> 33
        }
    }

    /// Values that stress the split x = a·2^14 + b: b = 2^13 − 1, 2^13, 2^14 − 1, 0, and the ends of
    /// the range −2^29 ≤ x < 2^29 − 2^13.
    static let edgeX: [Int32] = [
        -(1 << 29), -(1 << 29) + 1, (1 << 29) - (1 << 13) - 1, (1 << 29) - (1 << 14), 0, 1, -1,
        (1 << 13) - 1, 1 << 13, (1 << 14) - 1, 1 << 14, -(1 << 13), -(1 << 13) - 1, -(1 << 14) + 1,
        12345 << 14 | 0x2000, -(12345 << 14) | 0x3FFF,
    ]
    static let edgeW: [Int16] = [Int16.min, Int16.max, -1, 1, 0, 16380, -16380, 8192, -8193]

    func testInPairRangeEdges() {
        XCTAssertTrue(inPairRange(-(1 << 29)))
        XCTAssertFalse(inPairRange(-(1 << 29) - 1))
        XCTAssertTrue(inPairRange((1 << 29) - (1 << 13) - 1))
        XCTAssertFalse(inPairRange((1 << 29) - (1 << 13)))
    }

    func testDotRows4EqualsReplayModulo2To32() {
        var rng = LCG(state: 2024)
        for trial in 0..<300 {
            let n = [8, 16, 24, 40, 64, 72, 96][trial % 7]
            let rowCount = 1 + trial % 4
            let smallW = trial % 3 != 0          // |w| ≤ 16380 allows the Int16 high-half sums
            var x = [Int32](repeating: 0, count: rowCount * n)
            for i in 0..<x.count {
                if rng.next() % 4 == 0 {
                    x[i] = Self.edgeX[Int(rng.next() % UInt64(Self.edgeX.count))]
                } else {
                    let r = Int64(rng.next() % ((1 << 30) - (1 << 13))) - (1 << 29)
                    x[i] = Int32(r)
                }
            }
            let w: [Int16] = (0..<n).map { _ in
                if rng.next() % 5 == 0 {
                    let e = Self.edgeW[Int(rng.next() % UInt64(Self.edgeW.count))]
                    return smallW ? max(-16380, min(16380, e)) : e
                }
                let r = Int16(truncatingIfNeeded: rng.next())
                return smallW ? r / 2 : r
            }
            var a = [Int16](repeating: 0, count: 4 * n), b4 = [Int16](repeating: 0, count: 4 * n)
            x.withUnsafeBufferPointer { xb in
                a.withUnsafeMutableBufferPointer { ab in
                    b4.withUnsafeMutableBufferPointer { bb in
                        for r in 0..<rowCount {
                            splitPairRow(xb.baseAddress! + r * n, n: n, a: ab.baseAddress! + r * n,
                                         b4: bb.baseAddress! + r * n)
                        }
                    }
                }
            }
            for useHigh in smallW ? [false, true] : [false] {
                let dots = dotRows4(a: a, b4: b4, w: w, n: n, rowCount: rowCount,
                                    ones: SIMD8<Int16>(repeating: 1), highSum4: useHigh)
                for r in 0..<rowCount {
                    var ignored = 0
                    let exact = x.withUnsafeBufferPointer { xb in
                        dotReplay(x: xb.baseAddress! + r * n, w: w, n: n, start: 0, shift: 14,
                                  form: .perProduct, wraps: &ignored)
                    }
                    XCTAssertEqual(dots[r], exact, "trial \(trial) row \(r) highSum4 \(useHigh)")
                }
            }
        }
    }

    func testBlockedLinearEqualsReplayWithWrapCounts() {
        // 7 rows (a block of 4 and a remainder of 3), outputs whose bound forces the replay next to
        // outputs on the SIMD path, and one row outside the pair range (three-part fallback).
        var rng = LCG(state: 77)
        let n = 48, m = 6, rows = 7
        var w = [Int16](repeating: 0, count: m * n)
        for o in 0..<m {
            for i in 0..<n {
                let r = Int16(truncatingIfNeeded: rng.next())
                w[o * n + i] = o == 2 ? r : r / 16     // output 2: large weights
            }
        }
        let bias: [Int32] = (0..<m).map { _ in Int32(truncatingIfNeeded: rng.next()) >> 4 }
        let layer = FixedLinear(outDim: m, inDim: n, w: w, bias: bias)
        for big in [false, true] {
            var x = [Int32](repeating: 0, count: rows * n)
            for r in 0..<rows {
                for i in 0..<n {
                    let v = Int32(truncatingIfNeeded: rng.next())
                    x[r * n + i] = big ? v >> 1 : v >> 6
                }
            }
            if big { x[5 * n + 3] = Int32.max }   // row 5 outside the pair range
            var out = [Int32](repeating: 0, count: rows * m)
            var scratch = [Int16](repeating: 0, count: 3 * n)
            var wraps = 0, geluWraps = 0
            linearForward(layer, input: x, rows: rows, output: &out, gelu: false, scratch: &scratch,
                          wraps: &wraps, geluWraps: &geluWraps)
            var expectedWraps = 0
            for r in 0..<rows {
                for o in 0..<m {
                    let v = x.withUnsafeBufferPointer { xb in
                        w.withUnsafeBufferPointer { wb in
                            dotReplay(x: xb.baseAddress! + r * n, w: wb.baseAddress! + o * n, n: n,
                                      start: bias[o], shift: 14, form: .perProduct, wraps: &expectedWraps)
                        }
                    }
                    XCTAssertEqual(out[r * m + o], v, "big \(big) row \(r) output \(o)")
                }
            }
            XCTAssertEqual(wraps, expectedWraps, "big \(big)")
            if big { XCTAssertGreaterThan(wraps, 0) }
        }
    }
}

/// Full-size outputs pinned to the bits of the first (unoptimised) emulation: raw output, every
/// block output, routing and wrap counts hashed (FNV-1a 64 over the values). Runs only with
/// MOEPACK_BENCH=1 (meant for `swift test -c release -Xswiftc -enable-testing`); the second case
/// scales the linear weights ×6 so that nearly every unit wraps (replay paths).
final class FixedEmulationGoldenTests: XCTestCase {
    func fullSizeHash(weightScale: Double) throws -> UInt64 {
        let c = M3ViTConfig.edgeMoE
        let model = try FixedBackbone(arrays: syntheticFullSizeArrays(weightScale: weightScale))
        let pixels = (0..<(3 * c.imageHeight * c.imageWidth)).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
        let r = try model.forward(pixels: pixels, recordBlocks: true)
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ v: Int64) { h = (h ^ UInt64(bitPattern: v)) &* 0x100_0000_01b3 }
        for v in r.outputRaw { mix(Int64(v)) }
        for b in r.blockOutputs { for v in b { mix(Int64(v.bitPattern)) } }
        for rt in r.routing {
            for v in rt.topExperts { mix(Int64(v)) }
            for v in rt.topWeights { mix(Int64(v.bitPattern)) }
        }
        for o in r.overflow { mix(Int64(o.layer)); mix(0); mix(Int64(o.count)) }
        return h
    }

    func testFullSizeBitsUnchanged() throws {
        guard ProcessInfo.processInfo.environment["MOEPACK_BENCH"] == "1" else {
            throw XCTSkip("set MOEPACK_BENCH=1 (release build) to check the full-size golden hashes")
        }
        XCTAssertEqual(String(try fullSizeHash(weightScale: 1), radix: 16), "b141c83b82fe879e")
        XCTAssertEqual(String(try fullSizeHash(weightScale: 6), radix: 16), "81738d74eea291b2")
    }
}
