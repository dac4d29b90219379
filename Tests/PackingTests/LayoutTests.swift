import XCTest
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint
@testable import MoepackPacking

func packTinyWith(_ options: (inout PackOptions) -> Void) throws -> PackedImage {
    let profile = try KernelProfile.load("tiny-test")
    let src = try openCheckpoint(tinyFixtures.appendingPathComponent("model.pth").path)
    let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: src, expected: profile.model))
    var o = PackOptions(profile: profile)
    options(&o)
    let out = tempDir("layout") + "/img"
    _ = try pack(kernel: k, options: o, outputDirectory: out)
    return try PackedImage(directory: out)
}

final class LayoutTests: XCTestCase {
    func testExpertMajorRecordsAreAlignedOrderedAndEqualKernelSlices() throws {
        let kernel = try packTinyWith { _ in }
        let em = try packTinyWith { $0.layout = .expertMajor }
        XCTAssertEqual(em.manifest.layout, "expert-major")
        XCTAssertNil(em.manifest.buffer("moe_weights_l1"))
        let region = try XCTUnwrap(em.manifest.buffer("moe_experts"))
        let recs = try XCTUnwrap(em.manifest.expert_records)
        let c = em.manifest.model  // D=32, He=16, E=4, MoE blocks 1,3
        XCTAssertEqual(recs.count, 2 * 4)
        // Order: block by block, experts ascending; offsets strictly increasing.
        XCTAssertEqual(recs.map(\.block), [1, 1, 1, 1, 3, 3, 3, 3])
        XCTAssertEqual(recs.map(\.expert), [0, 1, 2, 3, 0, 1, 2, 3])
        XCTAssertEqual(recs.map(\.offset), recs.map(\.offset).sorted())
        let w1 = c.expertHidden * c.embedDim * 2, b1 = c.expertHidden * 2, w2 = w1
        for (i, r) in recs.enumerated() {
            XCTAssertEqual(r.offset % 4096, 0, "record on a 4 KiB boundary")
            for part in [r.w1, r.b1, r.w2, r.b2] { XCTAssertEqual(part % 64, 0, "part 64-byte aligned") }
            XCTAssertEqual(r.w1, r.offset)
            XCTAssertEqual(r.b1, r.offset + w1)              // 1024 B, already 64-aligned
            XCTAssertEqual(r.w2, r.offset + w1 + (b1 + 63) / 64 * 64)  // b1 (32 B) padded to 64
            XCTAssertEqual(r.b2, r.w2 + w2)
            XCTAssertEqual(r.offset, region.offset + i * 4096)
            // Each part's bytes equal the kernel layout's slice of the same expert.
            let e = r.expert, m = r.block == 1 ? 0 : 1
            for (name, start, count) in [("moe_weights_l1", r.w1, c.expertHidden * c.embedDim), ("moe_bias_l1", r.b1, c.expertHidden),
                                         ("moe_weights_l2", r.w2, c.embedDim * c.expertHidden), ("moe_bias_l2", r.b2, c.embedDim)] {
                let slice = try kernel.raw(name)
                let from = slice.startIndex + (m * c.experts + e) * count * 2
                XCTAssertEqual(Array(try em.raw(offset: start, count: count * 2)), Array(slice[from..<(from + count * 2)]), "\(name) block \(r.block) expert \(e)")
            }
        }
        // The kernel arrays reassembled from the records are the kernel layout's.
        for name in KernelArgument.experts.map(\.name) { XCTAssertEqual(Array(try em.raw(name)), Array(try kernel.raw(name)), name) }
        // Dense weights keep the kernel layout.
        XCTAssertEqual(em.manifest.buffer("vit_weights_l1")?.sha256, kernel.manifest.buffer("vit_weights_l1")?.sha256)
        XCTAssertTrue(em.check().ok)
        let header = try String(contentsOfFile: em.directory + "/moepack_ddr.h", encoding: .utf8)
        XCTAssertTrue(header.contains("MOEPACK_EXPERT_RECORDS[]"))
    }

    func testAllTasksGatesEqualSingleTaskImages() throws {
        let all = try packTinyWith { $0.allTasks = true }
        let t0 = try packTinyWith { $0.task = 0 }
        let t1 = try packTinyWith { $0.task = 1 }
        let gates = try XCTUnwrap(all.manifest.task_gates)
        XCTAssertEqual(gates.map(\.task), [0, 1])
        XCTAssertEqual(gates[0].offset, all.manifest.buffer("moe_w_gate")?.offset, "moe_w_gate points at task 0's copy")
        XCTAssertEqual(Array(try all.raw(offset: gates[0].offset, count: gates[0].bytes)), Array(try t0.raw("moe_w_gate")))
        XCTAssertEqual(Array(try all.raw(offset: gates[1].offset, count: gates[1].bytes)), Array(try t1.raw("moe_w_gate")))
        XCTAssertTrue(all.manifest.notes.contains { $0.contains("one register write") })
        // Weights rebuilt for task 1 from the all-task image equal those of the task-1 image.
        let wa = try all.backboneWeights(task: 1), w1 = try t1.backboneWeights()
        XCTAssertTrue(wa.patchEmbedWeight == w1.patchEmbedWeight && wa.posEmbed == w1.posEmbed)
        for (a, b) in zip(wa.blocks, w1.blocks) {
            if case .moe(let ga, let x1, _, _, _) = a.mlp, case .moe(let gb, let y1, _, _, _) = b.mlp {
                XCTAssertTrue(ga[wa.task] == gb[w1.task], "active gate equals the task-1 image's gate")
                XCTAssertTrue(x1 == y1)
            }
        }
        XCTAssertThrowsError(try t0.backboneWeights(task: 1)) { e in
            XCTAssertTrue((e as! MoepackError).description.contains("task 1 is not in this image"))
        }
    }

    /// SQNR = 10·log10(Σx² / Σ(x−q(x))²), checked on one small tensor by hand.
    func testReportNumbersMatchHandComputation() throws {
        let img = try packTinyWith { _ in }
        let rep = try XCTUnwrap(img.manifest.quantization.tensors.first { $0.name == "blocks.0.norm1.bias" })
        let src = try openCheckpoint(tinyFixtures.appendingPathComponent("plain.pth").path)
        let x = try src.readFloat32("blocks.0.norm1.bias").map(Double.init)
        let q = x.map { ($0 * 2048).rounded(.toNearestOrEven) / 2048 } // ap_fixed<16,5>: 11 fraction bits
        let sig = x.reduce(0) { $0 + $1 * $1 }
        let err = zip(x, q).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
        XCTAssertEqual(rep.sqnr_db!, 10 * log10(sig / err), accuracy: 0.001)
        XCTAssertEqual(rep.max_abs_error, zip(x, q).map { abs($0 - $1) }.max()!, accuracy: 1e-12)
        XCTAssertEqual(rep.min, x.min()!)
        XCTAssertEqual(rep.max, x.max()!)
        XCTAssertEqual(rep.overflow, 0)
        XCTAssertEqual(rep.type, "wt_bias_t")
    }
}
