import Foundation
import XCTest
import CMoepackKernels
import MoepackCore
import MoepackModel
@testable import MoepackInference

/// Integration test against the PyTorch reference of the tiny seeded M³ViT
/// (Tests/Fixtures/tiny, made by scripts/reference_m3vit.py on the fixtures branch).
final class FloatForwardFixtureTests: XCTestCase {
    static let tinyDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/tiny")

    /// Raw little-endian float32 file → [Float], checking the element count.
    static func readF32(_ url: URL, count: Int) throws -> [Float] {
        let data = try Data(contentsOf: url)
        XCTAssertEqual(data.count, count * 4, url.lastPathComponent)
        return data.withUnsafeBytes { raw in
            (0..<data.count / 4).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
    }

    static func readI32(_ url: URL) throws -> [Int32] {
        let data = try Data(contentsOf: url)
        return data.withUnsafeBytes { raw in
            (0..<data.count / 4).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
        }
    }

    static let config = M3ViTConfig(embedDim: 32, depth: 4, heads: 2, moeBlocks: [1, 3], experts: 4, expertHidden: 16,
                                    mlpHidden: 64, tasks: 2, topK: 2, tokens: 9, patchSize: 16, inChans: 3,
                                    imageHeight: 32, imageWidth: 64, layerNormEps: 1e-6)

    /// Builds BackboneWeights from the Edge-MoE raw folder layout ({stem}.float32.bin).
    static func loadEdgeMoEFolder(_ dir: URL, config c: M3ViTConfig, task: Int) throws -> BackboneWeights {
        let D = c.embedDim
        func f(_ stem: String, _ n: Int) throws -> [Float] {
            try readF32(dir.appendingPathComponent(stem + ".float32.bin"), count: n)
        }
        var blocks: [BlockWeights] = []
        for i in 0..<c.depth {
            let qkv = try f("l\(i)_qkv_weight", 3 * D * D), qkvB = try f("l\(i)_qkv_bias", 3 * D)
            let mlp: MLPWeights
            if c.moeBlocks.contains(i) {
                let gates = try (0..<c.tasks).map { try f("l\(i)_w_gate_T_task\($0)", c.experts * D) }
                mlp = .moe(gates: gates,
                           w1: try f("l\(i)_htoh4_weight", c.experts * c.expertHidden * D),
                           b1: try f("l\(i)_htoh4_bias", c.experts * c.expertHidden),
                           w2: try f("l\(i)_h4toh_weight", c.experts * D * c.expertHidden),
                           b2: try f("l\(i)_h4toh_bias", c.experts * D))
            } else {
                mlp = .dense(fc1Weight: try f("l\(i)_fc1_weight", c.mlpHidden * D), fc1Bias: try f("l\(i)_fc1_bias", c.mlpHidden),
                             fc2Weight: try f("l\(i)_fc2_weight", D * c.mlpHidden), fc2Bias: try f("l\(i)_fc2_bias", D))
            }
            blocks.append(BlockWeights(
                norm1Weight: try f("l\(i)_norm1_weight", D), norm1Bias: try f("l\(i)_norm1_bias", D),
                norm2Weight: try f("l\(i)_norm2_weight", D), norm2Bias: try f("l\(i)_norm2_bias", D),
                qWeight: Array(qkv[0..<D * D]), kWeight: Array(qkv[D * D..<2 * D * D]), vWeight: Array(qkv[2 * D * D..<3 * D * D]),
                projWeight: try f("l\(i)_attn_proj_weight", D * D),
                qBias: Array(qkvB[0..<D]), kBias: Array(qkvB[D..<2 * D]), vBias: Array(qkvB[2 * D..<3 * D]),
                projBias: try f("l\(i)_attn_proj_bias", D), mlp: mlp))
        }
        return BackboneWeights(config: c, patchEmbedWeight: try f("patch_embed_weight", D * 3 * c.patchSize * c.patchSize),
                               patchEmbedBias: try f("patch_embed_bias", D), posEmbed: try f("pos_embed", c.tokens * D),
                               blocks: blocks, task: task)
    }

    private func requireFixture() throws -> URL {
        let dir = Self.tinyDir
        let needed = ["edge-moe/pos_embed.float32.bin", "frame.u8", "ref_out_task0.f32", "ref_top2_task0.i32",
                      "ref_folded_out_task0.f32", "ref_blocks_task0.f32", "ref_top2_prob_task0.f32"]
        for n in needed where !FileManager.default.fileExists(atPath: dir.appendingPathComponent(n).path) {
            throw XCTSkip("tiny PyTorch fixture absent (\(n)); produced by the fixtures branch")
        }
        return dir
    }

    func testTinyModelMatchesPyTorchReference() throws {
        let dir = try requireFixture()
        let c = Self.config
        let frame = try FrameLoader.load(path: dir.appendingPathComponent("frame.u8").path, config: c)
        // Every form of the float GEMM this CPU runs (they may differ in the last bits) against PyTorch.
        for isa in FloatForwardTests.floatForms {
        for task in 0..<2 {
            let weights = try Self.loadEdgeMoEFolder(dir.appendingPathComponent("edge-moe"), config: c, task: task)
            let result = try FloatBackbone(weights: weights, isa: isa).forward(pixels: frame.pixels, recordBlocks: true)
            let n = c.tokens * c.embedDim
            for refName in ["ref_folded_out_task\(task).f32", "ref_out_task\(task).f32"] {
                let ref = try Self.readF32(dir.appendingPathComponent(refName), count: n)
                let scale = ref.map { abs($0) }.max()!
                let err = zip(result.output, ref).map { abs($0 - $1) }.max()!
                XCTAssertLessThan(err / scale, 1e-4, "\(refName): max abs err \(err), output scale \(scale)")
                print("form \(isa.rawValue) task \(task) \(refName): max abs err \(err), output scale \(scale)")
            }
            let refBlocks = try Self.readF32(dir.appendingPathComponent("ref_blocks_task\(task).f32"), count: c.depth * n)
            XCTAssertEqual(result.blockOutputs.count, c.depth)
            for b in 0..<c.depth {
                let ref = refBlocks[b * n..<(b + 1) * n]
                let scale = ref.map { abs($0) }.max()!
                let err = zip(result.blockOutputs[b], ref).map { abs($0 - $1) }.max()!
                XCTAssertLessThan(err / scale, 1e-4, "block \(b) task \(task): err \(err)")
            }
            let top2 = try Self.readI32(dir.appendingPathComponent("ref_top2_task\(task).i32"))
            let probs = try Self.readF32(dir.appendingPathComponent("ref_top2_prob_task\(task).f32"), count: 2 * c.tokens * 2)
            XCTAssertEqual(result.routing.map(\.block), c.moeBlocks)
            for (m, routing) in result.routing.enumerated() {
                XCTAssertEqual(routing.topExperts, Array(top2[m * c.tokens * 2..<(m + 1) * c.tokens * 2]), "MoE \(m) task \(task)")
                for (a, b) in zip(routing.topWeights, probs[m * c.tokens * 2..<(m + 1) * c.tokens * 2]) {
                    XCTAssertEqual(a, b, accuracy: 1e-5)
                }
                // Queues are consistent with the top-k: token t is in queue e iff e is among its experts.
                for e in 0..<c.experts {
                    let expected = (0..<c.tokens).filter { t in routing.topExperts[t * 2..<t * 2 + 2].contains(Int32(e)) }
                    XCTAssertEqual(routing.queues[e], expected.map(Int32.init))
                }
            }
        }
        }
    }

    /// The folder's own kernel-semantics trace (l3_x_post_moe, task 0) as a second reference.
    func testTinyModelMatchesEdgeMoETrace() throws {
        let dir = try requireFixture()
        let trace = dir.appendingPathComponent("edge-moe/l3_x_post_moe.float32.bin")
        guard FileManager.default.fileExists(atPath: trace.path) else { throw XCTSkip("no l3_x_post_moe trace") }
        let c = Self.config
        let frame = try FrameLoader.load(path: dir.appendingPathComponent("edge-moe/image.float32.bin").path, config: c)
        let weights = try Self.loadEdgeMoEFolder(dir.appendingPathComponent("edge-moe"), config: c, task: 0)
        let out = try FloatBackbone(weights: weights).forward(pixels: frame.pixels, recordBlocks: false).output
        let ref = try Self.readF32(trace, count: c.tokens * c.embedDim)
        let scale = ref.map { abs($0) }.max()!
        let err = zip(out, ref).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(err / scale, 1e-4, "err \(err) scale \(scale)")
    }
}
