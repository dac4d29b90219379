import XCTest
import Foundation
import MoepackCore
import MoepackModel
import TestSupport
@testable import MoepackInference

/// Hand-worked checks of the Edge-MoE fixed-point datapath emulation. Raw values are fm_t
/// (ap_fixed<32,10>, 22 fraction bits: 1.0 = 4194304) unless stated otherwise.
final class FixedEmulationTests: XCTestCase {

    // MARK: linear (linear.cpp): bias first, each product floored to fm_t, then accumulated

    func testLinearBlockTruncatesEachProduct() {
        // 2 tokens × 16 inputs → 2 outputs. Weights wt_linear_t (14 fraction bits).
        // Row 0: all w = 8192 (0.5), bias = attn bias raw 1 (2^-9) = 8192 in fm_t.
        // Row 1: all w = −8192 (−0.5), bias 0.
        let w = [Int16](repeating: 8192, count: 16) + [Int16](repeating: -8192, count: 16)
        let layer = FixedLinear(outDim: 2, inDim: 16, w: w, bias: [1 << 13, 0])
        // Token 0: x = 3 (3·2^-22) everywhere.
        //   row 0: 3·8192 = 24576 at 36 fraction bits = 1.5 LSB → floor 1; out = 8192 + 16·1 = 8208
        //          (float: 8192 + 16·1.5 = 8216)
        //   row 1: −24576 → −1.5 LSB → floor −2; out = 16·(−2) = −32 (float: −24)
        // Token 1: x alternates +1258291, −1258291 (±0.3).
        //   row 0 (w 0.5): ±1258291·8192/16384 = ±629145.5 → 629145 and −629146; 8 pairs → −8;
        //          out = 8192 − 8 = 8184 (float: 8192)
        //   row 1 (w −0.5): ∓629145.5 → −629146 and 629145 → −8 (float: 0)
        var x = [Int32](repeating: 3, count: 16)
        for i in 0..<16 { x.append(i % 2 == 0 ? 1_258_291 : -1_258_291) }
        var out = [Int32](repeating: 0, count: 4)
        var scratch = [Int16](repeating: 0, count: 48)
        var wraps = 0, gw = 0
        linearForward(layer, input: x, rows: 2, output: &out, gelu: false, scratch: &scratch,
                      wraps: &wraps, geluWraps: &gw)
        XCTAssertEqual(out, [8208, -32, 8184, -8])
        XCTAssertEqual(wraps, 0)
        // The step-by-step replay gives the same values.
        var w2 = 0
        XCTAssertEqual(dotReplay(x: x, w: w, n: 16, start: 8192, shift: 14, form: .perProduct, wraps: &w2), 8208)
        XCTAssertEqual(Array(x[16...]).withUnsafeBufferPointer { xb in
            Array(w[16...]).withUnsafeBufferPointer { wb in
                dotReplay(x: xb.baseAddress!, w: wb.baseAddress!, n: 16, start: 0, shift: 14, form: .perProduct, wraps: &w2)
            }
        }, -8)
        XCTAssertEqual(w2, 0)
    }

    func testLinearNonTrivialWeightFloor() {
        // x = 0.3 → raw 1258291, w = 0.7 → raw 11468 (14 bits): 1258291·11468/2^14 = 880742.26 → 880742;
        // with x negated: −880742.26 → −880743.
        let layer = FixedLinear(outDim: 1, inDim: 16, w: [Int16](repeating: 11468, count: 16), bias: [0])
        var x = [Int32](repeating: 0, count: 16)
        x[0] = 1_258_291; x[1] = -1_258_291
        var out: [Int32] = [0]
        var scratch = [Int16](repeating: 0, count: 48)
        var w = 0, g = 0
        linearForward(layer, input: x, rows: 1, output: &out, gelu: false, scratch: &scratch, wraps: &w, geluWraps: &g)
        XCTAssertEqual(out, [880742 - 880743])
    }

    func testFastDotPathsEqualStepByStepReplay() {
        // Seeded LCG values: rows with |x| < 128 (two-part split) and rows with large |x| (three-part
        // split); the vectorised wrapped sums must equal the exact replay modulo 2^32.
        var lcg = MMIXLCG(state: 12345)
        func next() -> UInt64 { lcg.next() >> 33 }
        let n = 48
        var scratch = [Int16](repeating: 0, count: 3 * n)
        for trial in 0..<200 {
            let big = trial % 2 == 1
            let x: [Int32] = (0..<n).map { _ in
                let r = Int32(truncatingIfNeeded: next())
                return big ? r : r >> 3          // >> 3: |x| < 2^28
            }
            let w: [Int16] = (0..<n).map { _ in Int16(truncatingIfNeeded: next()) }
            let bias = Int32(truncatingIfNeeded: next()) >> 8
            var ignored = 0
            let exact = dotReplay(x: x, w: w, n: n, start: bias, shift: 14, form: .perProduct, wraps: &ignored)
            let fast: Int32 = scratch.withUnsafeMutableBufferPointer { sb in
                let p = sb.baseAddress!
                let (_, small) = splitRow(x, n: n, xc: p, xd: p + n, xb: p + 2 * n)
                XCTAssertEqual(small, !big)
                return bias &+ (small ? dotWrapped14Small(xa: p + n, xb: p + 2 * n, w: w, n: n)
                                      : dotWrapped14(xc: p, xd: p + n, xb: p + 2 * n, w: w, n: n))
            }
            XCTAssertEqual(fast, exact, "trial \(trial)")
        }
    }

    // MARK: wrap-around counting

    func testWrapAroundIsCounted() {
        // (a) One product out of range: x = 500.0 (raw 500·2^22), w = 1.5 (raw 24576): exact 750.0 →
        //     raw 3145728000 > 2^31 − 1 → wraps to 3145728000 − 2^32 = −1149239296 (−274.0). 1 wrap.
        // (b) Partial sums out of range: x = [200, 200, −200], w = 1.5: products 300, 300, −300 fit;
        //     300 + 300 = 600 → wraps to −424 (1), −424 − 300 = −724 → wraps to 300 (2). Final 300 = exact.
        let one: Int32 = 1 << 22
        var wa = [Int16](repeating: 0, count: 16); wa[0] = 24576
        let layer = FixedLinear(outDim: 1, inDim: 16, w: wa, bias: [0])
        var x = [Int32](repeating: 0, count: 16); x[0] = 500 * one
        var out: [Int32] = [0]
        var scratch = [Int16](repeating: 0, count: 48)
        var wraps = 0, g = 0
        linearForward(layer, input: x, rows: 1, output: &out, gelu: false, scratch: &scratch, wraps: &wraps, geluWraps: &g)
        XCTAssertEqual(out, [-1_149_239_296])
        XCTAssertEqual(wraps, 1)

        var wb = [Int16](repeating: 0, count: 16); wb[0] = 24576; wb[1] = 24576; wb[2] = 24576
        let layer2 = FixedLinear(outDim: 1, inDim: 16, w: wb, bias: [0])
        var x2 = [Int32](repeating: 0, count: 16); x2[0] = 200 * one; x2[1] = 200 * one; x2[2] = -200 * one
        wraps = 0
        linearForward(layer2, input: x2, rows: 1, output: &out, gelu: false, scratch: &scratch, wraps: &wraps, geluWraps: &g)
        XCTAssertEqual(out, [300 * one])
        XCTAssertEqual(wraps, 2)

        // Residual add: 300 + 300 wraps once.
        var m = 0
        XCTAssertEqual(addFm(Int64(300 * one), Int64(300 * one), &m), -424 * one)
        XCTAssertEqual(m, 1)
    }

    // MARK: GELU (gelu.cpp)

    func testGeluTableAndInterpolation() {
        // Table = round(2^22·(x − x·Φ(x))) at x = i/32: entries 0…3 = 0, 63902, 124540, 181923
        // (2^22·0.0152354… = 63902.198, 2^22·0.0296926… = 124539.98, 2^22·0.0433738… = 181922.91);
        // the last three (x = 5.4375, 5.46875, 5.5) are 1, 1, 0; sum of all 177 entries 33548970
        // (every entry equals the kernel's literal table).
        XCTAssertEqual(geluDeltaTable.count, 177)
        XCTAssertEqual(Array(geluDeltaTable[0..<4]), [0, 63902, 124540, 181923])
        XCTAssertEqual(Array(geluDeltaTable[174...]), [1, 1, 0])
        XCTAssertEqual(geluDeltaTable.reduce(0) { $0 + Int($1) }, 33_548_970)

        var w = 0
        // Knot x = 1/32 (raw 131072): index 1, t = 0 → 131072 − 63902 = 67170.
        XCTAssertEqual(geluFm(131_072, &w), 67170)
        // Midpoint x = 3/64 (raw 196608): index 1, t = ½ → delta = 63902 + ⌊(124540 − 63902)/2⌋ = 94221;
        // 196608 − 94221 = 102387. Negative: relu 0 → −94221.
        XCTAssertEqual(geluFm(196_608, &w), 102_387)
        XCTAssertEqual(geluFm(-196_608, &w), -94221)
        // Midpoint x = 5/64 (raw 327680): odd difference 181923 − 124540 = 57383 → ⌊57383/2⌋ = 28691;
        // delta = 153231; 327680 − 153231 = 174449.
        XCTAssertEqual(geluFm(327_680, &w), 174_449)
        // x = 0 → 0.
        XCTAssertEqual(geluFm(0, &w), 0)
        // Just below 5.5 (raw 23068671): index 175, t = 4194272/2^22, delta = 1 + ⌊t·(0 − 1)⌋ = 0 → x.
        XCTAssertEqual(geluFm(23_068_671, &w), 23_068_671)
        // |x| ≥ 5.5: exact relu.
        XCTAssertEqual(geluFm(23_068_672, &w), 23_068_672)
        XCTAssertEqual(geluFm(-6 << 22, &w), 0)
        XCTAssertEqual(w, 0)
    }

    // MARK: running softmax (attention.cpp finalize_attn)

    func testRunningSoftmaxWithNewMaximumInTheMiddle() {
        // Scores 1.0, 3.0, 2.0, 3.0 (raw ·2^22). e^-2 → ⌊567637.32⌋ = 567637; e^-1 → ⌊1542998.21⌋ = 1542998.
        //  1.0: first step → sum = 0·exp(..) + 1 = 4194304, bias = 1.0
        //  3.0: new maximum → sum = ⌊4194304·567637/2^22⌋ + 4194304 = 4761941, bias = 3.0
        //  2.0: sum += e^-1 → 6304939
        //  3.0: equal to bias (not new; strict) → sum += e^0 = 4194304 → 10499243
        // recip = ⌊2^44 / 10499243⌋ = 1675567 (0.39949).
        // weights = ⌊exp(s − 3)·recip / 2^22⌋: 1.0 → ⌊567637·1675567/2^22⌋ = 226763 (0.054065),
        // 3.0 → 1675567, 2.0 → 616406 (0.146963); float softmax: 0.0540646, 0.3994863, 0.1469628.
        let one: Int32 = 1 << 22
        var rs = RunningSoftmax()
        var w = 0
        rs.update(1 * one, &w)
        XCTAssertEqual(rs.sum, 4_194_304); XCTAssertEqual(rs.bias, one)
        rs.update(3 * one, &w)
        XCTAssertEqual(rs.sum, 4_761_941); XCTAssertEqual(rs.bias, 3 * one)
        rs.update(2 * one, &w)
        XCTAssertEqual(rs.sum, 6_304_939)
        rs.update(3 * one, &w)
        XCTAssertEqual(rs.sum, 10_499_243); XCTAssertEqual(rs.bias, 3 * one)
        XCTAssertEqual(w, 0)   // the first step's −512 − 1.0 argument wrap is harmless and not counted
        let recip = recipFm(rs.sum, &w)
        XCTAssertEqual(recip, 1_675_567)
        func weight(_ s: Int32) -> Int32 { mulFm(expFm(wrapFm(Int64(s) - Int64(rs.bias)), &w), recip, &w) }
        XCTAssertEqual(weight(1 * one), 226_763)
        XCTAssertEqual(weight(3 * one), 1_675_567)
        XCTAssertEqual(weight(2 * one), 616_406)
        XCTAssertEqual(w, 0)
    }

    // MARK: top-k (moe.cpp top_k)

    func testTopTwoTieKeepsLowerIndex() {
        let one: Int32 = 1 << 20   // 0.25
        var idx = [0, 0], vals: [Int32] = [0, 0]
        func top(_ s: [Int32]) -> [Int] {
            s.withUnsafeBufferPointer { topKFixed($0, k: 2, indices: &idx, values: &vals) }
            return idx
        }
        // 0.5, 0.7, 0.7, 0.1 → expert 1 first (the later equal 0.7 is not strictly greater), then 2.
        XCTAssertEqual(top([2 * one, 3 * one, 3 * one, one]), [1, 2])
        // Three-way tie: the first two indices win, in order.
        XCTAssertEqual(top([3 * one, 3 * one, 3 * one, one]), [0, 1])
        // A later larger score pushes the earlier best down one slot.
        XCTAssertEqual(top([3 * one, one, 4 * one, 2 * one]), [2, 0])
        XCTAssertEqual(vals, [4 * one, 3 * one])
        // Every score at the fm_t minimum never beats the initial slots: both stay expert 0.
        XCTAssertEqual(top([Int32.min, Int32.min, Int32.min]), [0, 0])
    }

    // MARK: LayerNorm (layernorm.cpp) on a row with a large mean

    func testLayerNormLargeMean() {
        // D = 192, x alternates 21, 19 (mean 20, true variance 1). fm_t(1/192) = ⌊2^22/192⌋ = 21845.
        //  terms: 21·21845 = 458745, 19·21845 = 415055; mean = 96·(458745 + 415055) = 83884800 (19.99969)
        //  E[x²] terms: 21·458745 = 9633645, 19·415055 = 7886045; mean_sq = 96·17519690 = 1681890240 (400.9939)
        //  mean² = ⌊83884800²/2^22⌋ = 1677670400 (399.9879); variance = 1681890240 − 1677670400 + 4
        //  (fm_t(1e-6) = ⌊4.19⌋) = 4219844 (1.00609 instead of 1.000001: the E[x²] − mean² form loses
        //  the truncated 1/D factor twice).
        //  sqrt: ⌊√(4219844·2^22)⌋ = 4207054; rstd = ⌊2^44/4207054⌋ = 4181592 (0.99697)
        //  x = 21: (88080384 − 83884800) = 4195584; ·rstd → ⌊4195584·4181592/2^22⌋ = 4182868 (0.99727)
        //  x = 19: −3193344·... → −4180316 (−0.99667). γ = 1.0 (2048 at 11 bits), β = 0.
        let D = 192
        let x: [Int32] = (0..<D).map { $0 % 2 == 0 ? 21 << 22 : 19 << 22 }
        var out = [Int32](repeating: 0, count: D)
        var w = 0
        layerNormRow(x, out: &out, n: D, invDim: 21845, eps: 4,
                     weight: [Int32](repeating: 2048, count: D), weightFrac: 11, bias: [Int32](repeating: 0, count: D), wraps: &w)
        XCTAssertEqual(out[0], 4_182_868)
        XCTAssertEqual(out[1], -4_180_316)
        XCTAssertEqual(out[190], 4_182_868)
        XCTAssertEqual(w, 0)
        // With β = 0.5 (1024 at 11 bits → 2097152) and γ = −1.0 (−2048): −4182868 + 2097152 = −2085716.
        layerNormRow(x, out: &out, n: D, invDim: 21845, eps: 4,
                     weight: [Int32](repeating: -2048, count: D), weightFrac: 11, bias: [Int32](repeating: 2_097_152, count: D), wraps: &w)
        XCTAssertEqual(out[0], -2_085_716)
    }

    func testSqrtAndRecipFloor() {
        var w = 0
        // √(1.0 + 4·2^-22): ⌊√((2^22 + 4)·2^22)⌋ = 2^22 + 1 (exact value 2^22 + 1.99999…).
        XCTAssertEqual(sqrtFm(4_194_308, &w), 4_194_305)
        // 1 / (1 + 2^-22) → ⌊2^44/4194305⌋ = 4194303.
        XCTAssertEqual(recipFm(4_194_305, &w), 4_194_303)
        XCTAssertEqual(w, 0)
        // 1/2^-22 = 2^22 is outside fm_t: wraps.
        _ = recipFm(1, &w)
        XCTAssertEqual(w, 1)
    }

    // MARK: configuration checks

    func testMissingArrayThrows() {
        let cfg = M3ViTConfig(embedDim: 32, depth: 1, heads: 2, moeBlocks: [], experts: 4, expertHidden: 16,
                              mlpHidden: 64, tasks: 1, topK: 2, tokens: 9, patchSize: 16, inChans: 3,
                              imageHeight: 32, imageWidth: 64)
        XCTAssertThrowsError(try FixedBackbone(arrays: KernelArrays(config: cfg, arrays: [:]))) { e in
            XCTAssertEqual((e as? MoepackError)?.item, "patch_embed_weights")
        }
    }
}
