import XCTest
import Foundation
import MoepackCore
import MoepackModel
import MoepackFixedPoint
@testable import MoepackInference

/// Which element types the emulation accepts, and that its general (any-type) path gives the fast
/// paths' bits wherever both apply.
final class FixedEmulationTypesTests: XCTestCase {
    func type(_ s: String) throws -> FixedType { try FixedType(parsing: s) }

    func testPublishedAndNarrowerTypesAreAccepted() throws {
        let ok: [String: String] = [
            "x": "ap_fixed<32,10>", "pos_embed": "ap_fixed<32,10,AP_TRN,AP_WRAP>", "images": "ap_ufixed<8,0>",
            "attn_weights": "ap_fixed<8,1>", "moe_weights_l1": "ap_fixed<12,2,AP_RND_CONV,AP_SAT>",
            "moe_weights_l2": "ap_fixed<20,3>", "attn_bias": "ap_fixed<8,5>", "moe_bias_l1": "ap_fixed<32,10>",
            "norm_weights": "ap_fixed<10,3>", "norm_bias": "ap_fixed<24,1>", "patch_embed_weights": "ap_fixed<12,0>",
            "moe_experts": "ap_fixed<64,3>",   // not a ViT_compute argument: not read by the emulation
        ]
        try FixedEmulation.supports(types: ok.mapValues { try type($0) })
    }

    func testRefusalsNameTheArgumentAndReason() throws {
        let cases: [(String, String, String)] = [
            ("pos_embed", "ap_fixed<32,12>", "fm_t"),
            ("x", "ap_fixed<32,10,AP_RND,AP_WRAP>", "fm_t"),
            ("images", "ap_ufixed<16,0>", "ap_ufixed<8,0>"),
            ("moe_weights_l1", "ap_ufixed<8,1>", "signed"),
            ("attn_weights", "ap_fixed<33,2>", "32 bits"),
            ("vit_weights_l2", "ap_fixed<8,9>", "negative fraction bits"),
            ("moe_bias_l2", "ap_fixed<16,11>", "wrap"),
            ("norm_weights", "ap_fixed<4,-60>", "fraction bits"),
        ]
        for (arg, spelled, why) in cases {
            XCTAssertThrowsError(try FixedEmulation.supports(types: [arg: try type(spelled)])) { e in
                let m = e as? MoepackError
                XCTAssertEqual(m?.kind, .unsupported, spelled)
                XCTAssertEqual(m?.item, arg, spelled)
                XCTAssertTrue(m?.message.contains(why) ?? false, "\(spelled): \(m?.message ?? "")")
            }
        }
    }

    /// Linear weights take the 16-bit fast form exactly when their values embed in ap_fixed<16,2>.
    func testFastFormOnlyForTypesThatEmbed() throws {
        let raw: [Int32] = (0..<32).map { Int32($0 % 7) - 3 }
        for (spelled, fast) in [("ap_fixed<16,2>", true), ("ap_fixed<8,1>", true), ("ap_fixed<12,2>", true),
                                ("ap_fixed<10,2,AP_RND_CONV,AP_SAT>", true), ("ap_fixed<16,1>", false),
                                ("ap_fixed<16,3>", false), ("ap_fixed<20,2>", false), ("ap_fixed<8,3>", false)] {
            let l = FixedLinear(outDim: 2, inDim: 16, raw: raw[...], type: try type(spelled), bias: [0, 0])
            XCTAssertEqual(l.isFast, fast, spelled)
        }
        // ap_fixed<8,1> code 3 (3·2^-7) is 3·2^7 in the fast form's 14 fraction bits.
        let l = FixedLinear(outDim: 1, inDim: 16, raw: [Int32](repeating: 3, count: 16)[...], type: try type("ap_fixed<8,1>"), bias: [0])
        XCTAssertEqual(l.w.first, 384)
    }

    /// The general path on the tiny fixture gives the fast path's bits: outputs, blocks, routing, wraps.
    func testGeneralPathEqualsFastPathOnTinyFixture() throws {
        let tiny = try FixedEmulationTinyTests.load()
        let fast = try FixedBackbone(arrays: tiny.arrays).forward(pixels: tiny.frame, recordBlocks: true)
        let general = try FixedBackbone(arrays: tiny.arrays, forceGeneral: true).forward(pixels: tiny.frame, recordBlocks: true)
        assertSame(fast, general)
    }

    /// The same on the synthetic full-size model, normal and ×6 weights (nearly every unit wraps, so
    /// the replay paths and wrap counts are compared too). MOEPACK_BENCH=1 only (a release build).
    func testGeneralPathEqualsFastPathFullSize() throws {
        guard ProcessInfo.processInfo.environment["MOEPACK_BENCH"] == "1" else {
            throw XCTSkip("set MOEPACK_BENCH=1 (release build) to compare the general path at full size")
        }
        let c = M3ViTConfig.edgeMoE
        let pixels = (0..<(3 * c.imageHeight * c.imageWidth)).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
        for scale in [1.0, 6.0] {
            let arrays = try syntheticFullSizeArrays(weightScale: scale)
            let fast = try FixedBackbone(arrays: arrays).forward(pixels: pixels, recordBlocks: true)
            let t0 = DispatchTime.now().uptimeNanoseconds
            let general = try FixedBackbone(arrays: arrays, forceGeneral: true).forward(pixels: pixels, recordBlocks: true)
            print("general path, weights ×\(scale): \(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6) ms/frame")
            assertSame(fast, general)
        }
    }

    func assertSame(_ a: FixedForwardResult, _ b: FixedForwardResult, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.outputRaw, b.outputRaw, file: file, line: line)
        XCTAssertEqual(a.blockOutputs, b.blockOutputs, file: file, line: line)
        XCTAssertEqual(a.routing.map(\.topExperts), b.routing.map(\.topExperts), file: file, line: line)
        XCTAssertEqual(a.routing.map(\.topWeights), b.routing.map(\.topWeights), file: file, line: line)
        XCTAssertEqual(a.overflow, b.overflow, file: file, line: line)
    }
}
