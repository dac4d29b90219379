import XCTest
import MoepackFixedPoint
@testable import MoepackInference
import CMoepackKernels
import TestSupport

/// The exact path (CMoepackKernels `moepack_replay_lanes`, every form this CPU runs) against the
/// step-by-step replay of the kernel's statements: ``dotReplay`` for linear.cpp's per-product form
/// and moe.cpp's blocks of 8, and a statement-by-statement replay of attention.cpp's Q·K (blocks of
/// 8, times the scale) and attn × V (keys in the rotated order), on values that wrap: per-product
/// wraps, accumulator wraps and block-sum wraps all occur, and the tests check that they do.
final class FixedEmulationExactTests: XCTestCase {
    var rng = SplitMix64(seed: 0x5EED_E7AC)

    /// Hostile fm_t values: the ends of the range, values near ±2^31 and ±2^29, and random ones.
    func hostileX() -> Int32 {
        let edges: [Int32] = [Int32.min, Int32.max, Int32.min + 1, Int32.max - 1, 0, -1, 1, 1 << 30, -(1 << 30),
                              (1 << 29) - 1, -(1 << 29), 0x4000_2000, -0x3FFF_C001]
        switch rng.next() % 4 {
        case 0: return edges[Int(rng.next() % UInt64(edges.count))]
        case 1: return Int32(truncatingIfNeeded: rng.next()) >> Int32(rng.next() % 8)
        default: return Int32(truncatingIfNeeded: rng.next())
        }
    }

    func hostileW16() -> Int16 {
        let edges: [Int16] = [Int16.min, Int16.max, -1, 1, 0, 16384, -16384, 8191]
        return rng.next() % 4 == 0 ? edges[Int(rng.next() % UInt64(edges.count))] : Int16(truncatingIfNeeded: rng.next())
    }

    func hostileW32() -> Int32 {
        rng.next() % 5 == 0 ? [Int32.min, Int32.max, 0, -1][Int(rng.next() % 4)] : Int32(truncatingIfNeeded: rng.next())
    }

    /// Per-product wraps of one replay (the floored product outside fm_t), counted apart to show
    /// that the hostile inputs reach that case too.
    func productWraps<W: FixedWidthInteger>(_ x: [Int32], _ w: [W], shift: Int64) -> Int {
        zip(x, w).reduce(0) { $0 + (outsideFm((Int64($1.0) * Int64($1.1)) >> shift) ? 1 : 0) }
    }

    /// One trial for each form this CPU runs: lanes × outs dot products in both weight widths and
    /// both forms, compared value by value with ``dotReplay`` and by total wrap count.
    func checkAgainstDotReplay(lanes: Int, outs: Int, n: Int, wide: Bool, shift: Int, form: DotForm,
                               smallW: Bool = false, expectWraps: inout (product: Int, any: Int)) {
        let ldx = lanes + Int(rng.next() % 3)
        var x = [Int32](repeating: 0, count: n * ldx)
        for i in 0..<x.count { x[i] = hostileX() }
        // smallW: |w| < 2^13, so no product of an fm_t and w leaves fm_t (the kernels' no-check path).
        let w16: [Int16] = wide ? [] : (0..<(outs * n)).map { _ in smallW ? hostileW16() >> 3 : hostileW16() }
        let w32: [Int32] = wide ? (0..<(outs * n)).map { _ in hostileW32() } : []
        let start: [Int32] = (0..<(outs * lanes)).map { _ in hostileX() }
        var expected = [Int32](repeating: 0, count: outs * lanes)
        var expectedWraps = 0
        for o in 0..<outs {
            for l in 0..<lanes {
                let column = (0..<n).map { x[$0 * ldx + l] }
                column.withUnsafeBufferPointer { xb in
                    if wide {
                        let row = Array(w32[(o * n)..<(o * n + n)])
                        if form == .perProduct { expectWraps.product += productWraps(column, row, shift: Int64(shift)) }
                        expected[o * lanes + l] = row.withUnsafeBufferPointer { wb in
                            dotReplay(x: xb.baseAddress!, w: wb.baseAddress!, n: n, start: start[o * lanes + l],
                                      shift: Int64(shift), form: form, wraps: &expectedWraps)
                        }
                    } else {
                        let row = Array(w16[(o * n)..<(o * n + n)])
                        if form == .perProduct { expectWraps.product += productWraps(column, row, shift: Int64(shift)) }
                        expected[o * lanes + l] = row.withUnsafeBufferPointer { wb in
                            dotReplay(x: xb.baseAddress!, w: wb.baseAddress!, n: n, start: start[o * lanes + l],
                                      shift: Int64(shift), form: form, wraps: &expectedWraps)
                        }
                    }
                }
            }
        }
        expectWraps.any += expectedWraps
        for isa in FixedEmulationFastPathTests.runnableISAs {
            var acc = start
            let wraps = w16.withUnsafeBufferPointer { w16b in
                w32.withUnsafeBufferPointer { w32b in
                    moepack_replay_lanes(isa, x, ldx, lanes, wide ? nil : w16b.baseAddress, wide ? w32b.baseAddress : nil,
                                         n, outs, n, Int32(shift), form.replayForm, 0, 0, &acc, lanes)
                }
            }
            let what = "form \(isa.rawValue) lanes \(lanes) outs \(outs) n \(n) wide \(wide) shift \(shift) \(form)"
            XCTAssertEqual(acc, expected, what)
            XCTAssertEqual(Int(wraps), expectedWraps, what)
        }
    }

    func testReplayLanesEqualsDotReplayEveryForm() {
        var seen = (product: 0, any: 0)
        var seenBlock = (product: 0, any: 0)
        var seenSmall = (product: 0, any: 0)
        // Lane counts around the 16-lane chunk and the vectors of 8, steps around the blocks of 8.
        for (trial, lanes) in [1, 3, 8, 15, 16, 17, 32, 33, 40].enumerated() {
            for n in [1, 7, 8, 9, 24, 61] {
                let outs = 1 + (trial + n) % 3
                checkAgainstDotReplay(lanes: lanes, outs: outs, n: n, wide: false, shift: 14, form: .perProduct,
                                      expectWraps: &seen)
                checkAgainstDotReplay(lanes: lanes, outs: outs, n: n, wide: true, shift: [0, 9, 22, 31][n % 4],
                                      form: .perProduct, expectWraps: &seen)
                checkAgainstDotReplay(lanes: lanes, outs: outs, n: n, wide: false, shift: 14, form: .perProduct,
                                      smallW: true, expectWraps: &seenSmall)
                checkAgainstDotReplay(lanes: lanes, outs: outs, n: n, wide: false, shift: 14, form: .blockSum8,
                                      expectWraps: &seenBlock)
                checkAgainstDotReplay(lanes: lanes, outs: outs, n: n, wide: true, shift: 22, form: .blockSum8,
                                      expectWraps: &seenBlock)
            }
        }
        // The inputs reach every kind of wrap: per product, and (beyond those) in the accumulator.
        XCTAssertGreaterThan(seen.product, 100)
        XCTAssertGreaterThan(seen.any - seen.product, 100)
        XCTAssertGreaterThan(seenBlock.any, 100)
        XCTAssertEqual(seenSmall.product, 0)
        XCTAssertGreaterThan(seenSmall.any, 100)
    }

    /// attention.cpp Q·K for one query replayed statement by statement: per block of 8 dims
    /// `addend += q*k` (exact product floored to fm_t), `addend *= scale`, `score += addend`.
    func qkReplay(q: [Int32], kRow: ArraySlice<Int32>, scale: Int32, wraps: inout Int) -> Int32 {
        var s: Int32 = 0
        let k = Array(kRow)
        for b in stride(from: 0, to: q.count, by: 8) {
            var addend: Int32 = 0
            for j in b..<min(b + 8, q.count) {
                addend = addFm(Int64(addend), (Int64(q[j]) * Int64(k[j])) >> 22, &wraps)
            }
            addend = mulFm(addend, scale, &wraps)
            s = addFm(Int64(s), Int64(addend), &wraps)
        }
        return s
    }

    /// linear.cpp's per-product form with Int16 weights where no product leaves fm_t (|x| < 2^25,
    /// |w| < 2^12: the kernels' form without the per-product check), whole and partial 16-lane
    /// chunks: outputs whose lanes all start small next to outputs with a lane started at fm_t's
    /// upper end, which wrap; against ``dotReplay``.
    func testPerProductReplayWithoutProductWraps() {
        for (lanes, n) in [(16, 200), (32, 61), (16, 8), (48, 333)] {
            let outs = 6
            var x = [Int32](repeating: 0, count: n * lanes)
            for i in 0..<x.count { x[i] = Int32(truncatingIfNeeded: rng.next()) >> 7 }
            let w: [Int16] = (0..<(outs * n)).map { _ in Int16(truncatingIfNeeded: rng.next()) >> 4 }
            var start = [Int32](repeating: 0, count: outs * lanes)
            for o in 0..<outs {
                for l in 0..<lanes {
                    start[o * lanes + l] = o % 2 == 0 ? Int32(truncatingIfNeeded: rng.next()) >> 8
                        : (l == o ? Int32.max - Int32(o) : Int32(truncatingIfNeeded: rng.next()) >> 2)
                }
            }
            var expected = [Int32](repeating: 0, count: outs * lanes)
            var expectedWraps = 0
            for o in 0..<outs {
                for l in 0..<lanes {
                    let column = (0..<n).map { x[$0 * lanes + l] }
                    let row = Array(w[(o * n)..<(o * n + n)])
                    XCTAssertEqual(productWraps(column, row, shift: 14), 0)
                    expected[o * lanes + l] = column.withUnsafeBufferPointer { xb in
                        row.withUnsafeBufferPointer { wb in
                            dotReplay(x: xb.baseAddress!, w: wb.baseAddress!, n: n, start: start[o * lanes + l],
                                      shift: 14, form: .perProduct, wraps: &expectedWraps)
                        }
                    }
                }
            }
            XCTAssertGreaterThan(expectedWraps, 0, "lanes \(lanes) n \(n)")
            for isa in FixedEmulationFastPathTests.runnableISAs {
                var acc = start
                let wraps = moepack_replay_lanes(isa, x, lanes, lanes, w, nil, n, outs, n, 14, MOEPACK_REPLAY_PER_PRODUCT,
                                                 0, 0, &acc, lanes)
                XCTAssertEqual(acc, expected, "form \(isa.rawValue) lanes \(lanes) n \(n)")
                XCTAssertEqual(Int(wraps), expectedWraps, "form \(isa.rawValue) lanes \(lanes) n \(n)")
            }
        }
    }

    func testQKScaledReplayEqualsStatementReplay() {
        for (keys, hd) in [(1, 8), (17, 16), (40, 32), (33, 64)] {
            let q = (0..<hd).map { _ in hostileX() }
            let kRows = (0..<(keys * hd)).map { _ in hostileX() }        // [key][dim]
            let scale = Int32(truncatingIfNeeded: rng.next()) >> Int32(rng.next() % 12)
            var kT = [Int32](repeating: 0, count: hd * keys)              // [dim][key]
            for key in 0..<keys { for j in 0..<hd { kT[j * keys + key] = kRows[key * hd + j] } }
            var expectedWraps = 0
            let expected = (0..<keys).map {
                qkReplay(q: q, kRow: kRows[($0 * hd)..<($0 * hd + hd)], scale: scale, wraps: &expectedWraps)
            }
            XCTAssertGreaterThan(expectedWraps, 0)
            for isa in FixedEmulationFastPathTests.runnableISAs {
                var scores = [Int32](repeating: 0, count: keys)
                let wraps = moepack_replay_lanes(isa, kT, keys, keys, nil, q, hd, 1, hd, 22,
                                                 MOEPACK_REPLAY_BLOCK8_SCALED, scale, 22, &scores, keys)
                XCTAssertEqual(scores, expected, "form \(isa.rawValue) keys \(keys) hd \(hd)")
                XCTAssertEqual(Int(wraps), expectedWraps, "form \(isa.rawValue) keys \(keys) hd \(hd)")
            }
        }
    }

    func testAttnVRotatedReplayEqualsStatementReplay() {
        // attention.cpp attn × V for one query: keys in the order o, o+1, …, T−1, 0, …, o−1;
        // acc = v*a (floored, wrapped), then acc += v*a. The emulation runs it as two segments.
        // Weights below 2^21 (under 0.5) let no product leave fm_t (the kernels' no-check path); larger
        // ones with hostile values wrap per product too (the per-product check). Head widths 32 and 64
        // fill whole groups of 4 vectors, 8 and 40 end in a shorter group; `zeros` makes two keys in
        // three weigh exactly 0 (the kernels skip those keys: they add nothing and cannot wrap).
        let keys = 37
        var seenProductWraps = 0
        for (o, smallA, smallV, hd, zeros) in [(0, false, false, 32, false), (1, false, false, 32, false),
                                               (3, false, false, 32, false), (0, true, false, 32, false),
                                               (5, true, false, 32, false), (2, true, false, 32, false),
                                               (4, false, true, 32, false), (1, false, false, 64, false),
                                               (2, false, false, 40, true), (3, false, false, 8, false),
                                               (6, false, false, 64, true), (1, true, false, 40, true)] {
            let ldv = 3 * hd
            // With the small weights, values of one sign (up to 512) so that the sums still wrap.
            // smallV: positive values below 2^19, so that weights up to 2^31 give no product outside
            // fm_t while the sums still wrap.
            var v = (0..<(keys * ldv)).map { _ in
                smallA ? Int32(truncatingIfNeeded: (1 << 30) + rng.next() % (1 << 30))
                    : smallV ? Int32(truncatingIfNeeded: (1 << 18) + rng.next() % (1 << 18)) : hostileX()
            }
            var a = (0..<keys).map { _ in
                Int32(truncatingIfNeeded: rng.next() % (1 << 31)) >> Int32(smallA ? 10 + rng.next() % 3 : smallV ? 0 : rng.next() % 20)
            }
            if zeros { for k in 0..<keys where k % 3 != 1 { a[k] = 0 } }
            if o == 2 {
                // The ends: a weight of exactly 1.0 against fm_t's extremes.
                a[2] = 1 << 22
                v[2 * ldv] = Int32.min; v[2 * ldv + 1] = Int32.max; v[2 * ldv + 2] = Int32.min + 1
            }
            var expectedWraps = 0, productWraps = 0
            var expected = [Int32](repeating: 0, count: hd)
            for d in 0..<hd {
                var r: Int32 = 0
                for step in 0..<keys {
                    let ki = (o + step) % keys
                    let prod = (Int64(v[ki * ldv + d]) * Int64(a[ki])) >> 22
                    if outsideFm(prod) { expectedWraps += 1; productWraps += 1 }
                    r = step == 0 ? wrapFm(prod) : addFm(Int64(wrapFm(prod)), Int64(r), &expectedWraps)
                }
                expected[d] = r
            }
            XCTAssertGreaterThan(expectedWraps, productWraps, "accumulator wraps, o \(o) hd \(hd)")
            seenProductWraps += productWraps
            if smallA || smallV { XCTAssertEqual(productWraps, 0) }
            for isa in FixedEmulationFastPathTests.runnableISAs {
                var acc = [Int32](repeating: 0, count: hd)
                var wraps = 0
                v.withUnsafeBufferPointer { vb in
                    a.withUnsafeBufferPointer { ab in
                        wraps += Int(moepack_replay_lanes(isa, vb.baseAddress! + o * ldv, ldv, hd, nil, ab.baseAddress! + o,
                                                          keys - o, 1, keys - o, 22, MOEPACK_REPLAY_PER_PRODUCT, 0, 0,
                                                          &acc, hd))
                        wraps += Int(moepack_replay_lanes(isa, vb.baseAddress!, ldv, hd, nil, ab.baseAddress!,
                                                          o, 1, o, 22, MOEPACK_REPLAY_PER_PRODUCT, 0, 0, &acc, hd))
                    }
                }
                XCTAssertEqual(acc, expected, "form \(isa.rawValue) o \(o) hd \(hd)")
                XCTAssertEqual(wraps, expectedWraps, "form \(isa.rawValue) o \(o) hd \(hd)")
            }
        }
        // Weights above 1.0 against hostile values: products outside fm_t occur (the checked form).
        XCTAssertGreaterThan(seenProductWraps, 100)
    }

    /// A ViT-Small-shaped layer (inDim 384, 12 heads' worth of rows) with activations that wrap:
    /// ``linearForward`` (exact rows through the lanes kernel, the rest through the fast kernels)
    /// gives, per (row, output), ``dotReplay``'s value and GELU of it, and the same wrap counts, in
    /// the fast and the general weight form and both dot forms.
    func testViTSmallShapedLinearEqualsReplay() {
        let n = 384, m = 40, rows = 37
        for general in [false, true] {
            for form in [DotForm.perProduct, .blockSum8] {
                let type = general ? FixedType(width: 18, integerBits: 3) : FixedType(width: 16, integerBits: 2)
                let raw = ArraySlice((0..<(m * n)).map { _ in
                    Int32(truncatingIfNeeded: rng.next()) >> Int32(32 - type.width)
                })
                let bias: [Int32] = (0..<m).map { _ in Int32(truncatingIfNeeded: rng.next()) >> 2 }
                let layer = FixedLinear(outDim: m, inDim: n, raw: raw, type: type, bias: bias, general: general)
                XCTAssertEqual(layer.isFast, !general)
                // Rows 0..<12 small (provably wrap-free, fast kernels), the rest large (exact path),
                // interleaved so both paths take runs of rows.
                var x = [Int32](repeating: 0, count: rows * n)
                for r in 0..<rows {
                    for i in 0..<n {
                        let v = Int32(truncatingIfNeeded: rng.next())
                        x[r * n + i] = r % 3 == 0 ? v >> 16 : v >> Int32(rng.next() % 3)
                    }
                }
                for gelu in [false, true] {
                    var out = [Int32](repeating: 0, count: rows * m)
                    var scratch = [Int16](repeating: 0, count: 3 * n)
                    var wraps = 0, geluWraps = 0
                    linearForward(layer, input: x, rows: rows, output: &out, gelu: gelu, scratch: &scratch,
                                  wraps: &wraps, geluWraps: &geluWraps, form: form)
                    var expectedWraps = 0, expectedGelu = 0
                    let w = raw.map { $0 }
                    for r in 0..<rows {
                        for o in 0..<m {
                            var v = x.withUnsafeBufferPointer { xb in
                                w.withUnsafeBufferPointer { wb in
                                    dotReplay(x: xb.baseAddress! + r * n, w: wb.baseAddress! + o * n, n: n,
                                              start: bias[o], shift: Int64(type.fractionBits), form: form,
                                              wraps: &expectedWraps)
                                }
                            }
                            if gelu { v = geluFm(v, &expectedGelu) }
                            XCTAssertEqual(out[r * m + o], v, "general \(general) \(form) gelu \(gelu) row \(r) output \(o)")
                        }
                    }
                    XCTAssertEqual(wraps, expectedWraps, "general \(general) \(form) gelu \(gelu)")
                    XCTAssertEqual(geluWraps, expectedGelu, "general \(general) \(form) gelu \(gelu)")
                    XCTAssertGreaterThan(wraps, 1000)
                }
            }
        }
    }
}
