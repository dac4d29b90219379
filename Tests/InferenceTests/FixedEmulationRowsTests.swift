import XCTest
@testable import MoepackInference
import CMoepackKernels

/// CMoepackKernels rows.c (`moepack_layer_norm`, `moepack_linear_split_rows`), every form this CPU
/// runs, against the step-by-step Swift replay of the kernel's statements (``layerNormRow``, whose
/// own values are pinned by FixedEmulationTests) and ``rowNormAndRange`` / ``splitPairRow``, on
/// rows that wrap in every LayerNorm step, negative variances, and the edges of the a′/b4 split.
final class FixedEmulationRowsTests: XCTestCase {
    typealias LCG = FixedEmulationFastPathTests.LCG

    func testLayerNormEveryFormEqualsReplay() {
        var rng = LCG(state: 2024)
        for n in [192, 16, 40] {
            var rows: [[Int32]] = []
            rows.append((0..<n).map { $0 % 2 == 0 ? 21 << 22 : 19 << 22 })                       // pinned case
            rows.append((0..<n).map { _ in Int32(truncatingIfNeeded: rng.next() % (8 << 22)) - (4 << 22) })
            rows.append((0..<n).map { _ in Int32(truncatingIfNeeded: rng.next() << 31 | rng.next()) })   // wraps
            rows.append((0..<n).map { i in i % 3 == 0 ? Int32.max : Int32.min })
            rows.append([Int32](repeating: 0, count: n))                                              // variance = eps
            rows.append([Int32](repeating: -(300 << 22), count: n))
            // E[x^2] just inside fm_t (22.5^2 < 512) and just past it (23^2): the rows' sums taken at
            // once, and per block with the wrap.
            rows.append((0..<n).map { i in i % 2 == 0 ? 45 << 21 : -(45 << 21) })
            rows.append([Int32](repeating: 23 << 22, count: n))
            let x = rows.flatMap { $0 }
            let invDim = Int32((4_194_304.0 / Double(n)).rounded(.down))
            // The last case's bias and weights are small enough that rows without wraps scale at once.
            for (weightFrac, wScale, bShift) in [(11, Int32(1) << 15, 3), (0, Int32.max, 3), (30, Int32(1) << 20, 3),
                                                  (11, Int32(1) << 13, 10)] {
                let weight = (0..<n).map { i -> Int32 in i == 0 ? -wScale : Int32(truncatingIfNeeded: rng.next()) % wScale }
                let bias = (0..<n).map { i -> Int32 in
                    i == 1 && bShift == 3 ? Int32.max : Int32(truncatingIfNeeded: rng.next() << 31 | rng.next()) >> bShift
                }
                var expected = [Int32](repeating: 0, count: x.count)
                var expectedWraps = 0
                x.withUnsafeBufferPointer { xb in
                    expected.withUnsafeMutableBufferPointer { ob in
                        for r in 0..<rows.count {
                            layerNormRow(xb.baseAddress! + r * n, out: ob.baseAddress! + r * n, n: n, invDim: invDim, eps: 4,
                                         weight: weight, weightFrac: weightFrac, bias: bias, wraps: &expectedWraps)
                        }
                    }
                }
                XCTAssertGreaterThan(expectedWraps, 0)
                for isa in FixedEmulationFastPathTests.runnableISAs {
                    var out = [Int32](repeating: 3, count: x.count)
                    let wraps = moepack_layer_norm(isa, x, rows.count, n, invDim, 4, weight, Int32(weightFrac), bias, &out)
                    let label = "form \(isa.rawValue) n \(n) frac \(weightFrac)"
                    XCTAssertEqual(out, expected, label)
                    XCTAssertEqual(Int(wraps), expectedWraps, label)
                }
            }
        }
    }

    func testLinearSplitRowsEveryFormEqualsSwift() {
        var rng = LCG(state: 55)
        let edges = FixedEmulationFastPathTests.edgeX
        for n in [192, 768, 24, 7] {
            for rows in 1...4 {
                for outOfRange in [false, true] {
                    var x = (0..<(rows * n)).map { i -> Int32 in
                        i % 3 == 0 ? edges[i % edges.count] : Int32(truncatingIfNeeded: rng.next()) >> 3
                    }
                    if outOfRange { x[(rows * n) / 2] = (1 << 29) - (1 << 13) }   // first value past the range
                    var expectedNorms: [Double] = []
                    var expectedOK = true
                    var expectedA = [Int16](repeating: 0, count: rows * n), expectedB4 = expectedA
                    x.withUnsafeBufferPointer { xb in
                        for r in 0..<rows {
                            let (nrm, ok) = rowNormAndRange(xb.baseAddress! + r * n, n: n)
                            expectedNorms.append(nrm)
                            expectedOK = expectedOK && ok
                        }
                        if expectedOK {
                            expectedA.withUnsafeMutableBufferPointer { ab in
                                expectedB4.withUnsafeMutableBufferPointer { bb in
                                    splitPairRow(xb.baseAddress!, n: rows * n, a: ab.baseAddress!, b4: bb.baseAddress!)
                                }
                            }
                        }
                    }
                    XCTAssertEqual(expectedOK, !outOfRange)
                    for isa in FixedEmulationFastPathTests.runnableISAs {
                        var norms = [Double](repeating: -1, count: 4)
                        var a = [Int16](repeating: 0, count: rows * n), b4 = a
                        let ok = moepack_linear_split_rows(isa, x, n, Int32(rows), &norms, &a, &b4)
                        let label = "form \(isa.rawValue) n \(n) rows \(rows)"
                        XCTAssertEqual(ok != 0, expectedOK, label)
                        for r in 0..<rows {
                            // Only the summation order differs: relative difference ≤ n·2^−52.
                            XCTAssertEqual(norms[r], expectedNorms[r], accuracy: expectedNorms[r] * 1e-13, label)
                        }
                        if expectedOK {
                            XCTAssertEqual(a, expectedA, label)
                            XCTAssertEqual(b4, expectedB4, label)
                        }
                    }
                }
            }
        }
    }
    /// GELU of `moepack_bias_gelu` (zero bias) against ``geluFm`` at every table step and its
    /// neighbours, a sweep of fractions inside several steps, both signs, the table's end and
    /// Int32.min.
    func testBiasGeluSweepEveryFormEqualsGeluFm() {
        var xs: [Int32] = [Int32.min, Int32.min + 1, Int32.max, geluTableMaxRaw, geluTableMaxRaw - 1, geluTableMaxRaw + 1]
        for step in 0...177 {
            for dx in [-2, -1, 0, 1, 2, 0xFFFF, 0x1FFFE] {
                let v = Int32(step << 17) + Int32(dx)
                xs.append(v); xs.append(-v)
            }
        }
        for f in stride(from: 0, to: 1 << 17, by: 97) {
            for step in [0, 1, 37, 100, 175] { xs.append(Int32(step << 17 + f)); xs.append(-Int32(step << 17 + f)) }
        }
        while xs.count % 64 != 0 { xs.append(0) }
        var expectedWraps = 0
        let expected = xs.map { geluFm($0, &expectedWraps) }
        XCTAssertEqual(expectedWraps, 1)
        let bias = [Int32](repeating: 0, count: 64)
        for isa in FixedEmulationFastPathTests.runnableISAs {
            var y = xs
            let wraps = moepack_bias_gelu(isa, &y, xs.count / 64, 64, 64, bias, geluDeltaTablePointer, geluTableMaxRaw)
            XCTAssertEqual(y, expected, "form \(isa.rawValue)")
            XCTAssertEqual(Int(wraps), expectedWraps, "form \(isa.rawValue)")
        }
    }
    /// `moepack_qk_scores` with attention scales large enough that both the scaled block sum and the
    /// score wrap (the scale of a 64-wide head never does), against mulFm / addFm.
    func testQKScoresWrapCountsEveryFormEqualReplay() {
        var rng = LCG(state: 8080)
        for (keys, hd) in [(129, 64), (21, 16)] {
            let q = (0..<hd).map { _ in Int32(truncatingIfNeeded: rng.next() << 31 | rng.next()) >> 7 }
            let k = (0..<(keys * hd)).map { _ in Int32(truncatingIfNeeded: rng.next() << 31 | rng.next()) >> 7 }
            let ops = QKOperands(q: q, k: k, keys: keys, hd: hd)
            let scales: [Int32] = [Int32.max, -(1 << 30), (1 << 25) + 123, Int32.min, 1 << 19]
            for scale in scales {
                var expectedWraps = 0
                let expected = qkReplay(q: q, k: k, keys: keys, hd: hd, scale: scale, wraps: &expectedWraps)
                if abs(Int64(scale)) >= 1 << 30 { XCTAssertGreaterThan(expectedWraps, 0, "scale \(scale)") }
                for isa in FixedEmulationFastPathTests.runnableISAs {
                    var scores = [Int32](repeating: 0, count: keys), t = [UInt32](repeating: 0, count: keys)
                    let wraps = moepack_qk_scores(isa, ops.qU, ops.qBlock9, ops.kT, keys, ops.kBlock9T, keys, hd, scale, &t, &scores)
                    XCTAssertEqual(scores, expected, "form \(isa.rawValue) scale \(scale)")
                    XCTAssertEqual(Int(wraps), expectedWraps, "form \(isa.rawValue) scale \(scale)")
                }
            }
        }
    }
}
