import XCTest
import Foundation
@testable import MoepackInference
import CMoepackKernels

/// The attention batch kernels (CMoepackKernels attention.c: `moepack_attn_qk_batch`,
/// `moepack_attn_av_batch`), every form this CPU runs, against exact integer arithmetic written
/// here from their contracts (include/moepack_attention.h): 64-bit products floored by an
/// arithmetic shift and summed in Int64. Known answers at the floor's edges (products at, just
/// below and just above a multiple of 2^22, both signs) and at the ±2^51 limit of the vector forms'
/// exact double sums; row subsets, strides, and key counts around the 8-key panels.
final class FixedEmulationAttentionBatchTests: XCTestCase {
    typealias LCG = FixedEmulationFastPathTests.LCG
    static let panel = Int(MOEPACK_ATTN_PANEL)

    /// Scores of the queries `rows` (q rows of stride ldq) against keys [keys][hd] through every
    /// form; entries of other rows and past `keys` keep the sentinel 0x5A5A5A5A.
    func qkBatch(_ isa: moepack_isa, q: [Int32], ldq: Int, rows: [Int32], k: [Int32], keys: Int, hd: Int,
                 scale: Int32, lds: Int) -> [Int32] {
        var panels = [Double](repeating: .nan, count: (keys + Self.panel - 1) / Self.panel * Self.panel * hd)
        moepack_attn_key_panels(k, hd, keys, hd, &panels)
        let queries = q.count / ldq
        var scores = [Int32](repeating: 0x5A5A_5A5A, count: queries * lds)
        var scratch = [Double](repeating: 0, count: Int(MOEPACK_ATTN_GROUP) * max(hd, keys))
        moepack_attn_qk_batch(isa, q, ldq, rows, rows.count, panels, keys, hd, scale, &scores, lds, &scratch)
        return scores
    }

    func avBatch(_ isa: moepack_isa, a: [Int32], lda: Int, rows: [Int32], v: [Int32], keys: Int, hd: Int,
                 ldo: Int) -> [Int32] {
        var panels = [Double](repeating: .nan, count: keys * hd)
        moepack_attn_value_panels(v, hd, keys, hd, &panels)
        let queries = a.count / lda
        var out = [Int32](repeating: 0x5A5A_5A5A, count: queries * ldo)
        var scratch = [Double](repeating: 0, count: Int(MOEPACK_ATTN_GROUP) * max(hd, keys))
        moepack_attn_av_batch(isa, a, lda, rows, rows.count, panels, keys, hd, &out, ldo, &scratch)
        return out
    }

    /// Σ_b floor(S_b·scale / 2^22), S_b = Σ_{j in block b} floor(q_j·k_j / 2^22), exactly, mod 2^32.
    static func exactScore(_ q: ArraySlice<Int32>, _ k: ArraySlice<Int32>, scale: Int32) -> Int32 {
        let q = Array(q), k = Array(k)
        var score: Int64 = 0
        for b in stride(from: 0, to: q.count, by: 8) {
            var s: Int64 = 0
            for j in b..<(b + 8) { s += (Int64(q[j]) * Int64(k[j])) >> 22 }
            score += (s * Int64(scale)) >> 22
        }
        return Int32(truncatingIfNeeded: score)
    }

    /// max |x| per row, with |INT32_MIN| = 2^31 and rows of stride 11 whose last 2 values are
    /// outside the n = 9 measured (they must not count).
    func testRowMaxAbsKnownAnswers() {
        let ld = 11, n = 9
        var x = [Int32](repeating: 0, count: 5 * ld)
        let rows: [[Int32]] = [[0, 0, 0], [-1, 1, 0], [Int32.min, 5, 0], [Int32.max, -Int32.max, 0], [3, -4, 2]]
        for (r, values) in rows.enumerated() {
            for (j, value) in values.enumerated() { x[r * ld + j * 4] = value }   // dims 0, 4, 8
            x[r * ld + 9] = Int32.min; x[r * ld + 10] = Int32.min
        }
        for isa in FixedEmulationFastPathTests.runnableISAs {
            var got = [UInt32](repeating: 7, count: 5)
            moepack_attn_row_max_abs(isa, x, ld, 5, n, &got)
            XCTAssertEqual(got, [0, 1, 1 << 31, UInt32(Int32.max), 4], "form \(isa.rawValue)")
            moepack_attn_row_max_abs(isa, x, ld, 5, 0, &got)
            XCTAssertEqual(got, [0, 0, 0, 0, 0], "form \(isa.rawValue) n = 0")
        }
    }

    func testQKBatchKnownAnswers() {
        // One block of 8 dims, scale 1.0 (2^22) unless noted; key rows below, query all-ones × x.
        let hd = 8
        func score(q: Int32, k: [Int32], scale: Int32) -> [Int32] {
            let keys = k.count / hd
            return FixedEmulationFastPathTests.runnableISAs.map { isa in
                qkBatch(isa, q: [Int32](repeating: q, count: hd), ldq: hd, rows: [0], k: k, keys: keys, hd: hd,
                        scale: scale, lds: keys)
            }.reduce([]) { $0.isEmpty ? $1 : ($0 == $1 ? $0 : [Int32.min]) }
        }
        func key(_ x: Int32) -> [Int32] { [Int32](repeating: x, count: hd) }
        // q·k = −1: floor(−1/2^22) = −1 per product, S = −8, score = −8.
        XCTAssertEqual(score(q: -1, k: key(1), scale: 1 << 22), [-8])
        // q·k = 2^22 − 1 → 0; 2^22 → 1; −2^22 → −1; −2^22 − 1 → −2 (×8 products).
        XCTAssertEqual(score(q: 1, k: key((1 << 22) - 1) + key(1 << 22) + key(-(1 << 22)) + key(-(1 << 22) - 1),
                             scale: 1 << 22), [0, 8, -8, -16])
        // 1.0 × 1.5 = 1.5 per product: S = 12·2^22; × 1/8 = 1.5·2^22 = 6291456.
        XCTAssertEqual(score(q: 1 << 22, k: key(3 << 21), scale: 1 << 19), [6_291_456])
        // Scaled sum floored: S = −8 (q·k = −1), × 1/8 → floor(−1/2^22) = −1; × (−1.0) → 8.
        XCTAssertEqual(score(q: -1, k: key(1), scale: 1 << 19), [-1])
        XCTAssertEqual(score(q: -1, k: key(1), scale: -(1 << 22)), [8])
        // The largest block sum the contract allows, S = 2^31 (products of 2^28 each: q = 2^25,
        // k = 2^25), times scale = INT32_MIN (−512.0): floor(2^31·(−2^31)/2^22) = −2^40 ≡ 0 mod 2^32;
        // with scale = −(2^31 − 1): −2^40 + 2^9 ≡ 512.
        XCTAssertEqual(score(q: 1 << 25, k: key(1 << 25), scale: Int32.min), [0])
        XCTAssertEqual(score(q: 1 << 25, k: key(1 << 25), scale: -Int32.max), [512])
        // 2^10 blocks (hd = 8192) each adding −2^40 + 2^9: partial scores reach −2^50 + 2^19.
        let wide = 8192
        for isa in FixedEmulationFastPathTests.runnableISAs {
            let got = qkBatch(isa, q: [Int32](repeating: 1 << 25, count: wide), ldq: wide, rows: [0],
                              k: [Int32](repeating: 1 << 25, count: wide), keys: 1, hd: wide, scale: -Int32.max, lds: 1)
            XCTAssertEqual(got, [Int32(truncatingIfNeeded: 1024 * 512)], "form \(isa.rawValue)")
        }
    }

    func testAVBatchKnownAnswersAtTheExactLimit() {
        // 2047 keys of v·a / 2^22 = ±(2^40 − 2^9) (v = −2^31, a = ∓(2^31 − 1)): partial sums up to
        // 2047·2^40 < 2^51, the edge of the vector forms' exact range; and v·a = −1 → −1 per key.
        let keys = 2047, hd = 8
        let v = [Int32](repeating: Int32.min, count: keys * hd)
        for (a, expected) in [(-Int32.max, Int32(-1_048_064)), (Int32.max, Int32(1_048_064))] {
            for isa in FixedEmulationFastPathTests.runnableISAs {
                let got = avBatch(isa, a: [Int32](repeating: a, count: keys), lda: keys, rows: [0], v: v, keys: keys,
                                  hd: hd, ldo: hd)
                XCTAssertEqual(got, [Int32](repeating: expected, count: hd), "form \(isa.rawValue) a \(a)")
            }
        }
        for isa in FixedEmulationFastPathTests.runnableISAs {
            let got = avBatch(isa, a: [Int32](repeating: 1, count: keys), lda: keys, rows: [0],
                              v: [Int32](repeating: -1, count: keys * hd), keys: keys, hd: hd, ldo: hd)
            XCTAssertEqual(got, [Int32](repeating: -2047, count: hd), "form \(isa.rawValue)")
            // Products at a multiple of 2^22 (exact) and one below it: 3·2^22 → 3, 3·2^22 − 1 → 2.
            let vv = (0..<(3 * hd)).map { i -> Int32 in [3 << 20, (3 << 20) - 1, -(3 << 20)][i / hd] }
            let got2 = avBatch(isa, a: [4, 4, 4], lda: 3, rows: [0], v: vv, keys: 3, hd: hd, ldo: hd)
            XCTAssertEqual(got2, [Int32](repeating: 3 + 2 - 3, count: hd), "form \(isa.rawValue)")
        }
    }

    func testBatchKernelsEveryFormEqualExactIntegerSums() {
        var rng = LCG(state: 9001)
        func value(_ bits: Int) -> Int32 { Int32(truncatingIfNeeded: Int64(rng.next() % (1 << bits)) - (1 << (bits - 1))) }
        // Key counts around the panels (and an odd number of AVX-512 two-panel passes), head widths,
        // row subsets out of order and of every size modulo the group of 4.
        for (keys, hd) in [(1, 8), (5, 16), (8, 8), (17, 24), (129, 64), (197, 64)] {
            let queries = 11, ldq = hd + 3, lds = keys + 5, ldo = hd + 2
            // |q|, |k| <= 2^24: block sums within 8·2^26 (the contract's |S_b| <= 2^31).
            let q = (0..<(queries * ldq)).map { _ in value(25) }
            let k = (0..<(keys * hd)).map { _ in value(25) }
            let v = (0..<(keys * hd)).map { _ in value(31) }
            let a = (0..<(queries * keys)).map { _ in value(23) }   // weights in (−1, 1), any sign
            let scale = (Int32(1 << 19) + Int32(rng.next() % 4096)) * (keys % 2 == 0 ? -1 : 1)
            for rows: [Int32] in [[], [3], [10, 0, 7], [1, 2, 4, 5, 9], [Int32](0..<11).reversed()] {
                for isa in FixedEmulationFastPathTests.runnableISAs {
                    let label = "form \(isa.rawValue) keys \(keys) hd \(hd) rows \(rows)"
                    let scores = qkBatch(isa, q: q, ldq: ldq, rows: rows, k: k, keys: keys, hd: hd, scale: scale, lds: lds)
                    let out = avBatch(isa, a: a, lda: keys, rows: rows, v: v, keys: keys, hd: hd, ldo: ldo)
                    for i in 0..<queries {
                        let listed = rows.contains(Int32(i))
                        for t in 0..<lds {
                            let expected = listed && t < keys
                                ? Self.exactScore(q[(i * ldq)..<(i * ldq + hd)], k[(t * hd)..<(t * hd + hd)], scale: scale)
                                : 0x5A5A_5A5A
                            XCTAssertEqual(scores[i * lds + t], expected, "\(label) query \(i) key \(t)")
                        }
                        for d in 0..<ldo {
                            var expected: Int32 = 0x5A5A_5A5A
                            if listed && d < hd {
                                var sum: Int64 = 0
                                for t in 0..<keys { sum += (Int64(v[t * hd + d]) * Int64(a[i * keys + t])) >> 22 }
                                expected = Int32(truncatingIfNeeded: sum)
                            }
                            XCTAssertEqual(out[i * ldo + d], expected, "\(label) query \(i) dim \(d)")
                        }
                    }
                }
            }
        }
    }

    /// The AVX2 form rounds toward −∞ through MXCSR for the call only: afterwards the caller's
    /// round-to-nearest is back. 1 + 3·2^−53 lies halfway between 1 + 2^−52 and 1 + 2^−51: to
    /// nearest (ties to even) it is 1 + 2^−51, downward 1 + 2^−52. The addend comes from the
    /// kernel's output (score −1: q·k = −35 floors to −1, 8 of them times 1/8), so it is not folded.
    func testRoundingModeIsRestored() {
        let keys = 9, hd = 8
        for isa in FixedEmulationFastPathTests.runnableISAs {
            let scores = qkBatch(isa, q: [Int32](repeating: 5, count: hd), ldq: hd, rows: [0],
                                 k: [Int32](repeating: -7, count: keys * hd), keys: keys, hd: hd, scale: 1 << 19, lds: keys)
            XCTAssertEqual(scores, [Int32](repeating: -1, count: keys), "form \(isa.rawValue)")
            let halfway = -Double(scores[0]) * 3 * Double(sign: .plus, exponent: -53, significand: 1)
            XCTAssertEqual(1.0 + halfway, 1.0 + 2 * Double.ulpOfOne, "form \(isa.rawValue) after Q·K")
            let out = avBatch(isa, a: [Int32](repeating: 3, count: keys), lda: keys, rows: [0],
                              v: [Int32](repeating: -7, count: keys * hd), keys: keys, hd: hd, ldo: hd)
            XCTAssertEqual(out, [Int32](repeating: -9, count: hd), "form \(isa.rawValue)")
            XCTAssertEqual(1.0 + halfway, 1.0 + 2 * Double.ulpOfOne, "form \(isa.rawValue) after attn × V")
        }
    }
}
