import XCTest
import Foundation
@testable import MoepackInference
import CMoepackKernels

/// The C softmax kernels (CMoepackKernels softmax.c: `moepack_exp_fm`, `moepack_exp_fm_many`,
/// `moepack_attn_softmax`), every form this CPU runs, against a step-by-step replay written here
/// from attention.cpp's statements with the C library's `exp` (the emulation's definition of
/// hls::exp), on hostile arguments: wrapped differences, ±512, exact zero, values next to the
/// points where exp(x)·2^22 crosses an integer, and the tail where it falls below 1.
final class FixedEmulationSoftmaxTests: XCTestCase {
    typealias LCG = FixedEmulationFastPathTests.LCG

    /// floor(exp(x / 2^22) · 2^22) through the C library, saturating at 2^31 (one wrap).
    static func expLibm(_ x: Int32, _ wraps: inout Int) -> Int32 {
        let s = (exp(Double(x) / 4_194_304.0) * 4_194_304.0).rounded(.down)
        if !(s < 2_147_483_648.0) { wraps += 1; return Int32.max }
        return Int32(s)
    }

    /// Arguments where exp(x)·2^22 is within a few raw units of an integer n (x = 2^22·ln(n/2^22)),
    /// plus the ends of every range the fast formula distinguishes.
    static func hostileArguments() -> [Int32] {
        var xs: [Int32] = [0, -1, 1, 2, Int32.min, Int32.max, Int32.min + 1, Int32.max - 1,
                           -(16 << 22), -(16 << 22) + 1, -(16 << 22) - 1, -(15 << 22), 1 << 22, (9 << 22) - 1,
                           (6 << 22) + 2_000_000, -(1 << 22), -(1 << 21), -(64 << 22)]
        var n = 1
        while n <= (1 << 22) {
            let x = (log(Double(n) / 4_194_304.0) * 4_194_304.0).rounded()
            for dx in -2...2 { xs.append(Int32(x) + Int32(dx)) }
            n = n < 64 ? n + 1 : n + n / 7 + 1
        }
        for x in -70_000...0 where x % 7 == 0 || x > -3000 { xs.append(Int32(x)) }
        return xs
    }

    func testExpFmEqualsLibmFloorOnHostileAndRandomArguments() {
        var rng = LCG(state: 9001)
        var xs = Self.hostileArguments()
        for _ in 0..<200_000 { xs.append(-Int32(truncatingIfNeeded: rng.next() % (17 << 22))) }
        for _ in 0..<20_000 { xs.append(Int32(truncatingIfNeeded: rng.next() << 31 | rng.next())) }
        var expectedWraps = 0
        let expected = xs.map { Self.expLibm($0, &expectedWraps) }
        XCTAssertGreaterThan(expectedWraps, 0)   // the saturating arguments above 2^9 are present
        var scalarWraps: Int64 = 0
        let scalar = xs.map { moepack_exp_fm($0, &scalarWraps) }
        XCTAssertEqual(scalar, expected)
        XCTAssertEqual(Int(scalarWraps), expectedWraps)
        var w = 0
        XCTAssertEqual(xs.map { expFm($0, &w) }, expected)
        XCTAssertEqual(w, expectedWraps)
        for isa in FixedEmulationFastPathTests.runnableISAs {
            var e = [Int32](repeating: -7, count: xs.count)
            var wraps: Int64 = 0
            moepack_exp_fm_many(isa, xs, xs.count, &e, &wraps)
            XCTAssertEqual(e, expected, "form \(isa.rawValue)")
            XCTAssertEqual(Int(wraps), expectedWraps, "form \(isa.rawValue)")
        }
    }

    /// attention.cpp's softmax for one query, replayed statement by statement.
    static func replaySoftmax(_ scores: [Int32], first: Int) -> (weights: [Int32], wraps: Int) {
        let T = scores.count
        func outside(_ v: Int64) -> Bool { v < Int64(Int32.min) || v > Int64(Int32.max) }
        var wraps = 0
        var sum: Int32 = 0, bias = Int32.min
        for step in 0..<T {
            let s = scores[(first + step) % T]
            let d = Int64(bias) - Int64(s)
            let arg = d < 0 ? d : -d
            if outside(arg) && sum != 0 { wraps += 1 }
            var ew = 0
            let e = expLibm(Int32(truncatingIfNeeded: arg), &ew)
            if sum != 0 { wraps += ew }
            let next: Int64
            if d < 0 {
                let p = (Int64(sum) * Int64(e)) >> 22
                if outside(p) { wraps += 1 }
                next = Int64(Int32(truncatingIfNeeded: p)) + (1 << 22)
                bias = s
            } else {
                next = Int64(sum) + Int64(e)
            }
            if outside(next) { wraps += 1 }
            sum = Int32(truncatingIfNeeded: next)
        }
        var recip = Int32.max
        if sum <= 0 { wraps += 1 } else {
            let q = (Int64(1) << 44) / Int64(sum)
            if outside(q) { wraps += 1 }
            recip = Int32(truncatingIfNeeded: q)
        }
        var weights = [Int32](repeating: 0, count: T)
        for step in 0..<T {
            let k = (first + step) % T
            let d = Int64(scores[k]) - Int64(bias)
            if outside(d) { wraps += 1 }
            let e = expLibm(Int32(truncatingIfNeeded: d), &wraps)
            let p = (Int64(e) * Int64(recip)) >> 22
            if outside(p) { wraps += 1 }
            weights[k] = Int32(truncatingIfNeeded: p)
        }
        return (weights, wraps)
    }

    func testAttentionSoftmaxEveryFormEqualsReplay() {
        var rng = LCG(state: 31337)
        var cases: [[Int32]] = []
        // 300 and 1025 keys (ViT-Small-sized): the wide and full-range cases, where fewer than a
        // quarter of the arguments lie in (−16, 0), take the gathered exponential over several chunks.
        for keys in [5, 37, 129, 197, 300, 1025] {
            // Realistic scores (|s| < 8), wide ones (exp arguments below −16), full-range ones
            // (wrapped differences), all equal, and the minimum value (first-step edge).
            cases.append((0..<keys).map { _ in Int32(truncatingIfNeeded: rng.next() % (16 << 22)) - (8 << 22) })
            cases.append((0..<keys).map { _ in Int32(truncatingIfNeeded: rng.next() % (200 << 22)) - (100 << 22) })
            cases.append((0..<keys).map { _ in Int32(truncatingIfNeeded: rng.next() << 31 | rng.next()) })
            cases.append([Int32](repeating: 3 << 21, count: keys))
            cases.append([Int32](repeating: Int32.min, count: keys))
            // The last new maximum at the last step (ascending) and at the first (descending): the
            // weights' exponentials all recomputed, or all taken from the running pass.
            cases.append((0..<keys).map { Int32($0) << 18 })
            cases.append((0..<keys).map { -(Int32($0) << 18) })
            var mixed = (0..<keys).map { _ in Int32(truncatingIfNeeded: rng.next() % (4 << 22)) }
            mixed[keys / 2] = Int32.max; mixed[0] = Int32.min; mixed[keys - 1] = Int32.min + 1
            cases.append(mixed)
            // Rows the kernel takes apart (scores within 2^31 of each other, a quarter of them within
            // 16 of the maximum) at the edge: a spread of exactly 2^31, and one raw unit more.
            var spread = [Int32](repeating: 0, count: keys)
            spread[keys / 3] = Int32.min
            cases.append(spread)
            spread[0] = 1
            cases.append(spread)
            // Many equal scores with a slightly larger one every 64 keys: the running sum leaves fm_t
            // (at 1025 keys) both between two new maxima and on the product at one.
            cases.append((0..<keys).map { Int32($0 / 64) })
            // At 1025 keys the sum leaves fm_t among equal scores, then a new maximum 8 higher
            // brings the product back into range.
            var late = [Int32](repeating: 0, count: keys)
            late[keys * 3 / 5] = 8 << 22
            cases.append(late)
        }
        var sawWraps = false
        for scores in cases {
            let T = scores.count
            for first in 0..<4 {
                let (expected, expectedWraps) = Self.replaySoftmax(scores, first: first)
                sawWraps = sawWraps || expectedWraps > 0
                let expectedAbs = expected.reduce(Int64(0)) { $0 + abs(Int64($1)) }
                for isa in FixedEmulationFastPathTests.runnableISAs {
                    var weights = [Int32](repeating: -9, count: T)
                    var scratch = [Int32](repeating: 0, count: 3 * T)
                    var absSum: Int64 = -1
                    var nonNegative: Int32 = -1
                    let wraps = moepack_attn_softmax(isa, scores, T, first, &weights, &scratch, &absSum, &nonNegative)
                    let label = "form \(isa.rawValue) keys \(T) first \(first)"
                    XCTAssertEqual(weights, expected, label)
                    XCTAssertEqual(Int(wraps), expectedWraps, label)
                    XCTAssertEqual(absSum, expectedAbs, label)
                    XCTAssertEqual(nonNegative != 0, expected.allSatisfy { $0 >= 0 }, label)
                }
            }
        }
        XCTAssertTrue(sawWraps)
    }
}
