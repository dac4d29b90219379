import XCTest
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint
@testable import MoepackPacking

final class SuggestTests: XCTestCase {
    func suggestions(_ src: MemorySource, task: Int = 0) throws -> [String: TypeSuggestion] {
        let profile = try tinyProfile()
        let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: src, expected: profile.model))
        let before = profile
        let s = try suggestTypes(kernel: k, profile: profile, task: task)
        XCTAssertEqual(profile, before)
        return Dictionary(uniqueKeysWithValues: s.map { ($0.typeName, $0) })
    }

    func testMinimumIntegerBitsEdges() {
        // Signed ap_fixed<16,I>: range [−2^(I−1), 2^(I−1) − 2^(I−16)] (UG1399).
        XCTAssertEqual(minimumIntegerBits(min: -0.5, max: 0.25, width: 16, signed: true), 0)   // −0.5 is the minimum of <16,0>
        XCTAssertEqual(minimumIntegerBits(min: 0, max: 0.5, width: 16, signed: true), 1)       // 0.5 > 0.5 − 2^-16
        XCTAssertEqual(minimumIntegerBits(min: 0, max: 0.5 - 0x1p-16, width: 16, signed: true), 0)
        XCTAssertEqual(minimumIntegerBits(min: -0.39, max: 0.39, width: 16, signed: true), 0)
        XCTAssertEqual(minimumIntegerBits(min: -0.1, max: 0.1, width: 16, signed: true), -2)   // [−0.125, 0.125)
        XCTAssertEqual(minimumIntegerBits(min: -1, max: 3.1, width: 16, signed: true), 3)
        XCTAssertEqual(minimumIntegerBits(min: -4, max: 0, width: 16, signed: true), 3)
        XCTAssertEqual(minimumIntegerBits(min: -4.0001, max: 0, width: 16, signed: true), 4)
        // Unsigned ap_ufixed<8,I>: [0, 2^I − 2^(I−8)].
        XCTAssertEqual(minimumIntegerBits(min: 0, max: 255.0 / 256, width: 8, signed: false), 0)
        XCTAssertEqual(minimumIntegerBits(min: 0, max: 1, width: 8, signed: false), 1)
        XCTAssertNil(minimumIntegerBits(min: -1, max: 1, width: 8, signed: false))
        XCTAssertNil(minimumIntegerBits(min: 0, max: 0, width: 16, signed: true))
        XCTAssertNil(minimumIntegerBits(min: 0, max: .infinity, width: 16, signed: true))
    }

    func testOutlierWidensLinearType() throws {
        var w = [Float](repeating: 0.01, count: 16)
        w[5] = 3.1
        let s = try suggestions(smallTiny(overrides: ["blocks.0.attn.proj.weight": w]))
        let lin = try XCTUnwrap(s["wt_linear_t"])
        XCTAssertEqual(lin.current, "ap_fixed<16,2>")
        XCTAssertEqual(lin.suggested, "ap_fixed<16,3>")
        XCTAssertEqual(lin.maxAbs, Double(Float(3.1)))
        XCTAssertEqual(lin.overflowCurrent, 1)
        XCTAssertTrue(lin.tensors.contains("blocks.0.attn.proj.weight"))
        XCTAssertTrue(lin.tensors.contains("blocks.1.mlp.experts.htoh4.weight"))
        XCTAssertTrue(lin.tensors.contains("blocks.1.mlp.gate.0.w_gateᵀ"))
        // attn_weights: 2 blocks × (q,k,v,proj); gate: 1; experts: 2; dense MLP: 2.
        XCTAssertEqual(lin.tensors.count, 8 + 1 + 2 + 2)
        // Widening removes the overflow, so SQNR rises although the LSB doubles.
        XCTAssertGreaterThan(try XCTUnwrap(lin.suggestedSQNR), try XCTUnwrap(lin.currentSQNR))
        // ap_fixed<16,3> holds up to 4 − 2^−13: headroom over 3.1.
        XCTAssertEqual(try XCTUnwrap(lin.headroom), (4 - 0x1p-13) / Double(Float(3.1)), accuracy: 1e-12)
        XCTAssertTrue(renderSuggestions([lin]).contains(String(format: "%.2f×", (4 - 0x1p-13) / Double(Float(3.1)))))
        // One headroom bit: ap_fixed<16,4>, range ±8.
        let profile = try tinyProfile()
        let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: smallTiny(overrides: ["blocks.0.attn.proj.weight": w]), expected: profile.model))
        let wider = try XCTUnwrap(try suggestTypes(kernel: k, profile: profile, task: 0, headroomBits: 1).first { $0.typeName == "wt_linear_t" })
        XCTAssertEqual(wider.suggested, "ap_fixed<16,4>")
        XCTAssertEqual(try XCTUnwrap(wider.headroom), (8 - 0x1p-12) / Double(Float(3.1)), accuracy: 1e-12)
        // Every type is in the list, once, in argument-table order.
        let order = try suggestTypes(kernel: KernelTensors(checkpoint: BackboneCheckpoint(source: smallTiny(), expected: tinyProfile().model)),
                                     profile: tinyProfile(), task: 0).map(\.typeName)
        XCTAssertEqual(order, ["wt_patch_embed_t", "wt_bias_t", "fm_t", "wt_linear_t", "wt_attn_bias_t", "wt_norm_t"])
    }

    func testSmallWeightsNarrowToZeroIntegerBits() throws {
        // All |w| < 0.4 (smallTiny draws ±0.1) with two near the bound: signed I′ = 0 holds [−0.5, 0.5).
        var w1 = [Float](repeating: 0.02, count: 24)
        w1[0] = 0.39
        w1[9] = -0.38
        let s = try suggestions(smallTiny(overrides: ["blocks.1.mlp.experts.htoh4.weight": w1]))
        let lin = try XCTUnwrap(s["wt_linear_t"])
        XCTAssertEqual(lin.suggested, "ap_fixed<16,0>")
        XCTAssertEqual(lin.maxAbs, Double(Float(0.39)))
        XCTAssertEqual(lin.overflowCurrent, 0)
        XCTAssertTrue(lin.changes)
        // fm_t also types the activations x, tmp1…: never narrowed from pos_embed alone.
        let fm = try XCTUnwrap(s["fm_t"])
        XCTAssertEqual(fm.suggested, fm.current)
        XCTAssertTrue(fm.notes.first?.hasPrefix("also carries activations (x, tmp1") ?? false, "\(fm.notes)")
        let table = renderSuggestions(Array(s.values).sorted { $0.typeName < $1.typeName })
        XCTAssertTrue(table.contains("wt_linear_t"))
        XCTAssertTrue(table.contains("ap_fixed<16,0>"))
        XCTAssertTrue(table.hasPrefix("type "), table)
    }

    func testSQNRMatchesHandComputation() throws {
        // wt_norm_t = ap_fixed<16,5> carries only norm_weights: blocks.{0,1}.norm{1,2}.weight, 16 values.
        // 14 ones (exact), a = 1 + 3·2^-15, b = −(1.5 + 2^-16).
        let a: Float = 1 + 3 * 0x1p-15, b: Float = -(1.5 + 0x1p-16)
        var n1 = [Float](repeating: 1, count: 4); n1[0] = a
        var n2 = [Float](repeating: 1, count: 4); n2[3] = b
        let s = try suggestions(smallTiny(overrides: ["blocks.0.norm1.weight": n1, "blocks.0.norm2.weight": [1, 1, 1, 1],
                                                       "blocks.1.norm1.weight": [1, 1, 1, 1], "blocks.1.norm2.weight": n2]))
        let norm = try XCTUnwrap(s["wt_norm_t"])
        XCTAssertEqual(norm.current, "ap_fixed<16,5>")
        // max |x| = 1.5000153 → I′ = 2 ([−2, 2 − 2^-14]).
        XCTAssertEqual(norm.suggested, "ap_fixed<16,2>")
        XCTAssertEqual(norm.tensors, ["blocks.0.norm1.weight", "blocks.0.norm2.weight", "blocks.1.norm1.weight", "blocks.1.norm2.weight"])
        let signal = 14.0 + Double(a) * Double(a) + Double(b) * Double(b)
        // Current LSB 2^-11, AP_RND_CONV: a·2^11 = 2048.1875 → 2048, error 3·2^-15; b·2^11 = −3072.03125 → −3072, error 2^-16.
        let currentNoise = 9 * 0x1p-30 + 0x1p-32
        // Suggested LSB 2^-14: a·2^14 = 16385.5 → 16386 (tie to even), error 2^-15; b·2^14 = −24576.25 → −24576, error 2^-16.
        let suggestedNoise = 0x1p-30 + 0x1p-32
        XCTAssertEqual(try XCTUnwrap(norm.currentSQNR), 10 * log10(signal / currentNoise), accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(norm.suggestedSQNR), 10 * log10(signal / suggestedNoise), accuracy: 1e-9)
        XCTAssertEqual(norm.suggestedSQNR! - norm.currentSQNR!, 10 * log10(37.0 / 5.0), accuracy: 1e-9)
        XCTAssertEqual(norm.overflowCurrent, 0)
    }

    func testExactTypeHasNoSQNRAndCodableRoundTrip() throws {
        let s = TypeSuggestion(typeName: "t", current: "ap_fixed<8,1>", suggested: "ap_fixed<8,1>", maxAbs: 0.5,
                               currentSQNR: nil, suggestedSQNR: nil, overflowCurrent: 0, tensors: ["x"])
        let back = try JSONDecoder().decode(TypeSuggestion.self, from: JSONEncoder().encode(s))
        XCTAssertEqual(back, s)
        XCTAssertFalse(s.changes)
        XCTAssertTrue(renderSuggestions([s]).contains("(keep)"))
        XCTAssertTrue(renderSuggestions([s]).contains("exact"))
    }
}
