import XCTest
import Foundation
import MoepackCore
import MoepackModel
@testable import MoepackInference
import CMoepackKernels
import TestSupport

/// The C integer kernels (CMoepackKernels: linear dot products, bias + GELU, attention Q·K of
/// block-safe queries), every form this CPU runs, and the blocked ``linearForward`` against the
/// step-by-step replay of the kernel's statements (``dotReplay``, ``geluFm``, ``mulFm``/``addFm``),
/// including the edges of the a′/b4 split.
final class FixedEmulationFastPathTests: XCTestCase {
    /// The high 31 bits of each MMIX LCG state.
    struct LCG {
        var lcg: MMIXLCG
        init(state: UInt64) { lcg = MMIXLCG(state: state) }
        mutating func next() -> UInt64 { lcg.next() >> 33 }
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

    /// The C kernel forms this CPU runs (portable always; AVX2, AVX-512 when present). A form the CPU
    /// lacks cannot be run here and is named in the log instead.
    static var runnableISAs: [moepack_isa] {
        let all = [MOEPACK_ISA_PORTABLE, MOEPACK_ISA_AVX2, MOEPACK_ISA_AVX512]
        for isa in all where moepack_kernels_cpu_supports(isa) == 0 {
            print("CMoepackKernels: this CPU cannot run form \(isa.rawValue); its bit-identity test runs on CPUs that can")
        }
        return all.filter { moepack_kernels_cpu_supports($0) != 0 }
    }

    func testLinearDotsEveryFormEqualsReplayModulo2To32() {
        var rng = LCG(state: 2024)
        let isas = Self.runnableISAs
        XCTAssertTrue(isas.contains(MOEPACK_ISA_PORTABLE))
        for trial in 0..<240 {
            // Widths around the 16- and 32-lane vectors and their runs of chunks, with tails; row
            // counts across the kernels' tiles and row blocks (21 rows at n = 192 for AVX2).
            let n = [8, 16, 24, 40, 64, 72, 96, 127, 128, 129, 192, 200][trial % 12]
            let rowCount = [1, 2, 3, 4, 5, 9, 23][trial % 7]
            let m = 1 + (trial / 4) % 5
            // Weight classes: any Int16 (no Int16 high-half sums), |w| ≤ 16380 (runs of up to 4),
            // |w| ≤ 1024 (runs of up to 63: 63·(1024/2 + 1) ≤ 32767).
            let weightClass = trial % 3
            let smallW = weightClass != 0
            let wLimit: Int16 = weightClass == 2 ? 1024 : 16380
            var x = [Int32](repeating: 0, count: rowCount * n)
            for i in 0..<x.count {
                if rng.next() % 4 == 0 {
                    x[i] = Self.edgeX[Int(rng.next() % UInt64(Self.edgeX.count))]
                } else {
                    let r = Int64(rng.next() % ((1 << 30) - (1 << 13))) - (1 << 29)
                    x[i] = Int32(r)
                }
            }
            let w: [Int16] = (0..<(m * n)).map { _ in
                if rng.next() % 5 == 0 {
                    let e = Self.edgeW[Int(rng.next() % UInt64(Self.edgeW.count))]
                    return smallW ? max(-wLimit, min(wLimit, e)) : e
                }
                let r = Int16(truncatingIfNeeded: rng.next())
                return !smallW ? r : weightClass == 1 ? r / 2 : r / 32
            }
            var a = [Int16](repeating: 0, count: rowCount * n), b4 = [Int16](repeating: 0, count: rowCount * n)
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
            let ld = m + 3                        // a row stride wider than m: columns m..<ld untouched
            for isa in isas {
                let chunkCounts: [Int32] = [[0, 1], [0, 1, 2, 4], [0, 2, 3, 12, 63]][weightClass]
                for chunks in chunkCounts {
                    var dots = [Int32](repeating: 0x5A5A_5A5A, count: rowCount * ld)
                    moepack_linear_dots(isa, a, b4, n, rowCount, w, m, chunks, &dots, ld)
                    for r in 0..<rowCount {
                        for o in 0..<m {
                            var ignored = 0
                            let exact = x.withUnsafeBufferPointer { xb in
                                w.withUnsafeBufferPointer { wb in
                                    dotReplay(x: xb.baseAddress! + r * n, w: wb.baseAddress! + o * n, n: n, start: 0,
                                              shift: 14, form: .perProduct, wraps: &ignored)
                                }
                            }
                            XCTAssertEqual(dots[r * ld + o], exact,
                                           "form \(isa.rawValue) trial \(trial) row \(r) output \(o) high chunks \(chunks)")
                        }
                        for o in m..<ld { XCTAssertEqual(dots[r * ld + o], 0x5A5A_5A5A) }
                    }
                }
            }
        }
    }

    func testBiasGeluEveryFormEqualsGeluFm() {
        // GELU inputs at the table's steps and ends, its saturation, both signs and Int32.min
        // (the one wrapping input), plus random values; bias added with wrap-around first.
        var rng = LCG(state: 99)
        var xs: [Int32] = [Int32.min, Int32.max, 0, 1, -1, geluTableMaxRaw, geluTableMaxRaw - 1, -geluTableMaxRaw,
                           -geluTableMaxRaw + 1, 1 << 17, (1 << 17) - 1, -(1 << 17), 175 << 17, (175 << 17) + 0x1FFFF]
        while xs.count < 64 * 9 { xs.append(Int32(truncatingIfNeeded: rng.next() << 31 | rng.next()) >> Int32(rng.next() % 8 + 3)) }
        let m = 64, rows = xs.count / m, ld = m
        var bias = [Int32](repeating: 0, count: m)
        for o in 1..<m { bias[o] = Int32(truncatingIfNeeded: rng.next()) >> 6 }
        bias[1] = Int32.max                      // wraps when added to a positive dot
        for isa in Self.runnableISAs {
            for useGelu in [false, true] {
                var y = xs
                let got = y.withUnsafeMutableBufferPointer { yb in
                    bias.withUnsafeBufferPointer { bb in
                        moepack_bias_gelu(isa, yb.baseAddress!, rows, m, ld, bb.baseAddress!,
                                          useGelu ? geluDeltaTablePointer : nil, geluTableMaxRaw)
                    }
                }
                var expectedWraps = 0
                for r in 0..<rows {
                    for o in 0..<m {
                        var v = xs[r * ld + o] &+ bias[o]
                        if useGelu { v = geluFm(v, &expectedWraps) }
                        XCTAssertEqual(y[r * ld + o], v, "form \(isa.rawValue) gelu \(useGelu) row \(r) output \(o)")
                    }
                }
                XCTAssertEqual(Int(got), expectedWraps, "form \(isa.rawValue) gelu \(useGelu)")
                if useGelu { XCTAssertGreaterThan(expectedWraps, 0) }
            }
        }
    }

    /// attention.cpp's Q·K scores (per block of 8 dims: exact floored products summed, times
    /// attn_scale into fm_t, added to the score) for queries whose block sums fit fm_t, every C
    /// form against a step-by-step Swift computation with mulFm / addFm.
    func testBlockSafeQKKernelEveryFormEqualsScalar() {
        var rng = LCG(state: 4242)
        for (keys, hd, shift) in [(129, 64, 9), (37, 32, 4), (5, 8, 2), (16, 16, 0)] {
            // Block sums must fit fm_t (the caller's bound): values below 2^(31 − shift).
            func value() -> Int32 { Int32(truncatingIfNeeded: rng.next() << 31 | rng.next()) >> Int32(shift + 3) }
            let q = (0..<hd).map { _ in value() }
            let k = (0..<(keys * hd)).map { _ in value() }
            let scale = Int32(1 << 19) | Int32(rng.next() % 4096)
            var expectedWraps = 0
            let expected = qkReplay(q: q, k: k, keys: keys, hd: hd, scale: scale, wraps: &expectedWraps)
            let ops = QKOperands(q: q, k: k, keys: keys, hd: hd)
            for isa in Self.runnableISAs {
                var scores = [Int32](repeating: 0, count: keys)
                var t = [UInt32](repeating: 0, count: keys)
                let wraps = moepack_qk_scores(isa, ops.qU, ops.qBlock9, ops.kT, keys, ops.kBlock9T, keys, hd, scale, &t, &scores)
                XCTAssertEqual(scores, expected, "form \(isa.rawValue) keys \(keys) hd \(hd)")
                XCTAssertEqual(Int(wraps), expectedWraps, "form \(isa.rawValue) keys \(keys) hd \(hd)")
            }
        }
    }

    func testHighChunksFollowTheInt16Bound() {
        // k·(max|w|/2 + 1) ≤ 32767, capped at 64: 16385 → 1, 8191 → 4, 513 → 63, 1 → 64.
        for (maxW, chunks) in [(Int16.min, Int32(1)), (16380, 4), (-16384, 3), (1024, 63), (1, 64), (0, 64)] {
            let layer = FixedLinear(outDim: 2, inDim: 3, w: [0, 1, -1, maxW, 0, 0], bias: [0, 0])
            XCTAssertEqual(layer.highChunks, chunks, "max |w| \(maxW)")
        }
    }

    func testBlockedLinearEqualsReplayWithWrapCounts() {
        // 7 rows (runs of rows between replayed ones), rows whose bound forces the replay next to
        // rows on the SIMD path, and one row outside the pair range (three-part fallback); once with
        // the input split by the caller (shared as by Q, K and V), once split inside.
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
            let pairs = PairRowsBuffer(rows: rows, n: n)
            var outShared = [Int32](repeating: 0, count: rows * m)
            var wrapsShared = 0
            x.withUnsafeBufferPointer { xb in
                let split = pairs.split(xb.baseAddress!, rows: rows, n: n)
                XCTAssertEqual(split.inRange[5], !big)
                for _ in 0..<2 {   // the same split read twice
                    wrapsShared = 0
                    linearForward(layer, input: xb.baseAddress!, rows: rows, output: &outShared, gelu: false,
                                  scratch: &scratch, wraps: &wrapsShared, geluWraps: &geluWraps, split: split)
                }
            }
            XCTAssertEqual(outShared, out, "big \(big)")
            XCTAssertEqual(wrapsShared, wraps, "big \(big)")
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
