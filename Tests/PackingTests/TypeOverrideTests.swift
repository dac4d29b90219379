import XCTest
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint
@testable import MoepackPacking

/// `pack --type NAME=TYPE` (``KernelProfile/overriding(typeAssignments:)``), the argument table
/// behind profiles, and `suggest`'s command line.
final class TypeOverrideTests: XCTestCase {
    func testOverriddenTypeIsPackedAndRecorded() throws {
        let src = smallTiny()
        let profile = try tinyProfile().overriding(typeAssignments: ["wt_linear_t=ap_fixed<8,1>", "wt_bias_t = ap_fixed<12,4>"])
        let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: src, expected: profile.model))
        let out = tempDir("type") + "/img"
        let r = try pack(kernel: k, options: PackOptions(profile: profile, tool: "moepack test"), outputDirectory: out)
        let image = try PackedImage(directory: out)
        XCTAssertTrue(image.check().ok)
        XCTAssertEqual(image.manifest.types["wt_linear_t"], "ap_fixed<8,1>")
        XCTAssertEqual(image.manifest.types["wt_bias_t"], "ap_fixed<12,4>")
        XCTAssertEqual(image.manifest.profile_definition?.types["wt_linear_t"], "ap_fixed<8,1>", "the changed profile is embedded")
        let expected: [String: (w: Int, i: Int, bytes: Int)] = [
            "attn_weights": (8, 1, 1), "moe_weights_l1": (8, 1, 1), "vit_weights_l2": (8, 1, 1), "moe_w_gate": (8, 1, 1),
            "moe_bias_l1": (12, 4, 2), "vit_bias_l1": (12, 4, 2), "norm_bias": (12, 4, 2), "attn_bias": (16, 7, 2),
        ]
        for (name, want) in expected {
            let b = try XCTUnwrap(r.manifest.buffer(name), name)
            XCTAssertEqual(b.ctype, "ap_fixed<\(want.w),\(want.i)>", name)
            XCTAssertEqual(b.element_bytes, want.bytes, name)
            let values = try k.array(name)
            XCTAssertEqual(b.bytes, values.count * want.bytes, name)
            // Independently quantized: clamp(round-half-even(x·2^(W−I))) in the W-bit range.
            let ref = values.map { referenceRaw($0, width: want.w, integerBits: want.i, truncWrap: false) }
            XCTAssertEqual(littleEndianInts(try image.raw(name), elementBytes: want.bytes), ref, name)
        }
    }

    func testTypeOverrideRefusals() throws {
        let p = try tinyProfile()
        for (arg, needle) in [("wt_lin=ap_fixed<8,1>", "no element type 'wt_lin'"), ("wt_linear_t=ap_fixd<8,1>", "wt_linear_t=ap_fixd<8,1>"),
                              ("wt_linear_t", "is not NAME=TYPE"), ("wt_linear_t=ap_fixed<8,1,AP_RND>", "conversion modes"),
                              ("=ap_fixed<8,1>", "is not NAME=TYPE")] {
            XCTAssertThrowsError(try p.overriding(typeAssignments: [arg]), arg) { e in
                let m = e as? MoepackError
                XCTAssertEqual(m?.kind, .usage, arg)
                XCTAssertTrue(m?.description.contains(needle) ?? false, "\(arg): \(String(describing: m))")
                XCTAssertFalse(m?.description.contains("\n") ?? true)
            }
        }
    }

    func testContainerBytesFollowTheWidth() throws {
        for (w, bytes) in [(1, 1), (8, 1), (9, 2), (16, 2), (17, 4), (32, 4), (33, 8), (64, 8)] {
            XCTAssertEqual(FixedType(width: w, integerBits: 1).containerBytes, bytes, "W=\(w)")
        }
    }

    func testProfilesAgreeWithTheArgumentTable() throws {
        for name in KernelProfile.builtinNames {
            let p = try XCTUnwrap(try KernelProfile.builtin(name))
            XCTAssertEqual(p.buffers.map(\.name), KernelArgument.allCases.map(\.name), name)
            for b in p.buffers {
                let arg = try XCTUnwrap(b.argument)
                XCTAssertEqual(b.role, arg.role, b.name)
                XCTAssertEqual(b.type, arg.typeName, b.name)
                if let s = arg.shape(p.model) { XCTAssertEqual(b.shape, s, b.name) }
            }
        }
        // A profile whose weight shape disagrees with the model is refused at load, naming the buffer.
        var p = try tinyProfile()
        p.buffers[p.buffers.firstIndex { $0.name == "moe_bias_l1" }!].shape = [2, 4, 17]
        XCTAssertThrowsError(try p.validate(file: "p.json")) { e in
            XCTAssertTrue("\(e)".contains("moe_bias_l1"), "\(e)")
        }
        var q = try tinyProfile()
        q.buffers[0].role = .scratch
        XCTAssertThrowsError(try q.validate(file: "p.json")) { e in XCTAssertTrue("\(e)".contains("images"), "\(e)") }
    }

    func testSuggestCommandLineAppliesTheChangedTypes() throws {
        let keep = TypeSuggestion(typeName: "fm_t", current: "ap_fixed<32,10>", suggested: "ap_fixed<32,10>", maxAbs: 1,
                                  currentSQNR: nil, suggestedSQNR: nil, overflowCurrent: 0, tensors: [])
        let lin = TypeSuggestion(typeName: "wt_linear_t", current: "ap_fixed<16,2>", suggested: "ap_fixed<16,1>", maxAbs: 0.8,
                                 currentSQNR: 60, suggestedSQNR: 66, overflowCurrent: 0, tensors: ["a"])
        let bias = TypeSuggestion(typeName: "wt_bias_t", current: "ap_fixed<16,5>", suggested: "ap_fixed<16,3>", maxAbs: 2,
                                  currentSQNR: 60, suggestedSQNR: 72, overflowCurrent: 0, tensors: ["b"])
        XCTAssertEqual(typeAssignments([keep, lin, bias]), ["wt_linear_t=ap_fixed<16,1>", "wt_bias_t=ap_fixed<16,3>"])
        XCTAssertEqual(packCommandLine(checkpoint: "my model.pth", suggestions: [keep, lin, bias], arguments: ["--profile", "tiny-test"]),
                       "moepack pack 'my model.pth' --profile tiny-test --type 'wt_linear_t=ap_fixed<16,1>' --type 'wt_bias_t=ap_fixed<16,3>' -o DIR")
        XCTAssertNil(packCommandLine(checkpoint: "m.pth", suggestions: [keep]))
        XCTAssertEqual(shellQuoted("it's"), "'it'\\''s'")
        // The assignments, applied, give exactly the suggested types.
        let p = try tinyProfile().overriding(typeAssignments: typeAssignments([keep, lin, bias]))
        XCTAssertEqual(p.types["wt_linear_t"], "ap_fixed<16,1>")
        XCTAssertEqual(p.types["wt_bias_t"], "ap_fixed<16,3>")
        XCTAssertEqual(p.types["fm_t"], "ap_fixed<32,10>")
    }
}
