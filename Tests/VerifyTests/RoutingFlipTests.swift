import XCTest
@testable import MoepackInference
@testable import MoepackVerify

/// Routing flips, their float-model margins and the `tie_margin` rule, on hand-made routings.
final class RoutingFlipTests: XCTestCase {
    /// 4 tokens, top-2, two MoE blocks (1 and 3). Token 1 flips in block 1 on a near-tie (margin
    /// 0.0005) and again in block 3 (margin 0.2, after its first flip); token 2 flips in block 3 with
    /// margin 0.3: a real disagreement.
    private func frames() -> (FrameResult, ForwardResult) {
        let ref1 = MoERouting(block: 1, topExperts: [0, 1, 2, 3, 0, 2, 1, 3], topWeights: Array(repeating: 0.25, count: 8),
                              queues: [], margins: [0.1, 0.0005, 0.2, 0.05])
        let got1 = MoERouting(block: 1, topExperts: [1, 0, 2, 1, 0, 2, 1, 3], topWeights: Array(repeating: 0.25, count: 8), queues: [])
        let ref3 = MoERouting(block: 3, topExperts: [0, 1, 2, 3, 0, 2, 1, 3], topWeights: Array(repeating: 0.25, count: 8),
                              queues: [], margins: [0.1, 0.2, 0.3, 0.05])
        let got3 = MoERouting(block: 3, topExperts: [0, 1, 3, 0, 0, 1, 3, 1], topWeights: Array(repeating: 0.25, count: 8), queues: [])
        let out: [Float] = [1, 2, 3, 4, 5, 6, 7, 8]   // 4 tokens × D = 2
        let got = FrameResult(output: out, blockOutputs: [], routing: [got1, got3], overflow: [])
        let want = ForwardResult(output: out, blockOutputs: [], routing: [ref1, ref3])
        return (got, want)
    }

    func testFlipsCarryTheFloatMarginAndWhetherTheyFollowAnEarlierFlip() {
        let (got, want) = frames()
        let r = compareFrame(name: "f", note: nil, got: got, want: want, k: 2)
        XCTAssertEqual(r.tokens_routed_differently, [1, 2])
        XCTAssertEqual(r.routing_flips, [
            RoutingFlip(block: 1, token: 1, reference_experts: [2, 3], experts: [2, 1], reference_margin: Double(Float(0.0005)), after_earlier_flip: false),
            RoutingFlip(block: 3, token: 1, reference_experts: [2, 3], experts: [3, 0], reference_margin: Double(Float(0.2)), after_earlier_flip: true),
            RoutingFlip(block: 3, token: 2, reference_experts: [0, 2], experts: [0, 1], reference_margin: Double(Float(0.3)), after_earlier_flip: false),
        ])
        // Token 0 [0,1] vs [1,0] is the same set: not a flip, but a top-1 difference.
        XCTAssertEqual(r.moe_blocks.map(\.routing_agreement), [0.75, 0.5])
        XCTAssertEqual(r.moe_blocks.map(\.top1_agreement), [0.75, 0.5])
        XCTAssertEqual(r.moe_blocks.map(\.near_tie_flips), [0, 0])
        XCTAssertEqual(r.moe_blocks.map(\.routing_agreement_checked), [nil, nil])
    }

    func testTieMarginCountsNearTiesAndTheirLaterFlipsAsAgreeing() {
        let (got, want) = frames()
        let r = compareFrame(name: "f", note: nil, got: got, want: want, k: 2, tieMargin: 0.001)
        XCTAssertEqual(r.moe_blocks.map(\.near_tie_flips), [1, 1])
        XCTAssertEqual(r.moe_blocks.map(\.routing_agreement_checked), [1.0, 0.75])
        // A margin threshold above token 2's margin makes every flip a near-tie.
        let all = compareFrame(name: "f", note: nil, got: got, want: want, k: 2, tieMargin: 0.5)
        XCTAssertEqual(all.moe_blocks.map(\.routing_agreement_checked), [1.0, 1.0])
    }
}

/// The summary over several frames takes each MoE block's figures from one frame, the worst.
final class WorstFrameTests: XCTestCase {
    private func frame(_ name: String, _ blocks: [(Double, Int, Double?)]) -> FrameReport {
        let metrics = ComparisonMetrics([1, 2], reference: [1, 2])
        return FrameReport(frame: name, note: nil, output: metrics, blocks: [],
                           moe_blocks: blocks.enumerated().map { i, b in
                               MoEBlockReport(block: 2 * i + 1, routing_agreement: b.0, top1_agreement: b.0,
                                              near_tie_flips: b.1, routing_agreement_checked: b.2) },
                           tokens_routed_differently: [], max_abs_error_same_routing: 0, routing_flips: [], overflow: nil)
    }

    func testEachBlockReportsOneFrameWhole() {
        // Block 1: frame a has the lower raw agreement, but b the lower checked one → b's figures.
        // Block 3: a is worst (ties with c on checked: the first wins).
        let a = frame("a", [(0.5, 3, 0.9), (0.7, 0, 0.7)])
        let b = frame("b", [(0.8, 0, 0.8), (0.9, 1, 1.0)])
        let c = frame("c", [(1.0, 0, 1.0), (0.7, 0, 0.7)])
        let w = worstPerMoEBlock([a, b, c])
        XCTAssertEqual(w, [
            MoEBlockReport(block: 1, routing_agreement: 0.8, top1_agreement: 0.8, near_tie_flips: 0, routing_agreement_checked: 0.8, frame: "b"),
            MoEBlockReport(block: 3, routing_agreement: 0.7, top1_agreement: 0.7, near_tie_flips: 0, routing_agreement_checked: 0.7, frame: "a"),
        ])
        // Without a tie margin the raw agreement decides; one frame names no frame.
        let d = frame("d", [(0.5, 0, nil)]), e = frame("e", [(0.4, 0, nil)])
        XCTAssertEqual(worstPerMoEBlock([d, e]).map(\.frame), ["e"])
        XCTAssertEqual(worstPerMoEBlock([d]).map(\.frame), [nil])
    }
}
