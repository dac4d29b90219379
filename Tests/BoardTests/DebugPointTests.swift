import XCTest
import MoepackBoard
import MoepackCore
import MoepackInference

/// debug_id decoding against the early returns of ViT_compute.cpp (sharc-lab/Edge-MoE).
final class DebugPointTests: XCTestCase {
    func testKernelEarlyReturns() {
        let depth = 12
        XCTAssertEqual(DebugPoint(debugID: 0, depth: depth), .none)
        XCTAssertEqual(DebugPoint(debugID: 256, depth: depth).stopPoint, .patchEmbedding)
        // layer 0, steps 1…7 leave x = the patch embedding's output.
        XCTAssertEqual(DebugPoint(debugID: 1, depth: depth).stopPoint, .patchEmbedding)
        XCTAssertEqual(DebugPoint(debugID: 7, depth: depth).stopPoint, .patchEmbedding)
        // step 8 (attention residual add) … 11 leave x = input + attention.
        XCTAssertEqual(DebugPoint(debugID: 3 * 16 + 8, depth: depth).stopPoint, .attentionResidual(layer: 3))
        XCTAssertEqual(DebugPoint(debugID: 3 * 16 + 11, depth: depth).stopPoint, .attentionResidual(layer: 3))
        XCTAssertEqual(DebugPoint(debugID: 3 * 16 + 12, depth: depth).stopPoint, .layerOutput(layer: 3))
        XCTAssertEqual(DebugPoint(debugID: 3 * 16 + 2, depth: depth).stopPoint, .layerOutput(layer: 2))
        // k = 0, k > 12 and layers past the model match no `if (debug_id == …)`: a full run.
        XCTAssertEqual(DebugPoint(debugID: 16, depth: depth), .none)
        XCTAssertEqual(DebugPoint(debugID: 3 * 16 + 13, depth: depth), .none)
        XCTAssertEqual(DebugPoint(debugID: 12 * 16 + 12, depth: depth), .none)
        XCTAssertEqual(DebugPoint.layerOutputID(11), 188)
    }

    /// Only the ids ViT_compute.cpp returns early at (and 0) are accepted; the rule uses the depth.
    func testValidatingRefusesIDsTheKernelDoesNotDefine() throws {
        XCTAssertEqual(try DebugPoint(validating: 0, depth: 4), .none)
        XCTAssertEqual(try DebugPoint(validating: 256, depth: 4), .patchEmbedding)
        XCTAssertEqual(try DebugPoint(validating: 3 * 16 + 12, depth: 4), .step(layer: 3, step: 12))
        XCTAssertEqual(try DebugPoint(validating: 1, depth: 4), .step(layer: 0, step: 1))
        for id in [16, 3 * 16 + 13, 4 * 16 + 1, 4000, 99_999_999_999, -1] {
            XCTAssertThrowsError(try DebugPoint(validating: id, depth: 4), "\(id)") { e in
                let m = e as? MoepackError
                XCTAssertEqual(m?.kind, .usage)
                XCTAssertTrue(m?.description.contains("\(id) is not 0, 256 or layer*16+k with layer < 4") ?? false, "\(e)")
            }
        }
    }
}
