import Foundation
import XCTest
import MoepackCore
import MoepackCheckpoint
import MoepackModel
@testable import MoepackHeads

/// The Swift decoders against scripts/make_heads_reference.py (PyTorch, written from M³ViT's
/// VisionTransformerUpHead): Tests/Fixtures/heads.
final class HeadForwardTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    static let headsDir = root.appendingPathComponent("Fixtures/heads")
    static let bundledDir = root.appendingPathComponent("Fixtures/bundled")
    static let bundledCheckpoint = root.deletingLastPathComponent().appendingPathComponent("models/m3vit-tiny-edge-moe.pth").path

    static func floats(_ url: URL) throws -> [Float] {
        let d = try Data(contentsOf: url)
        return d.withUnsafeBytes { raw in (0..<(d.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) } }
    }

    /// max |a − b| ≤ 1e-5 · max |b|: the relative tolerance of issue 13 (float32 sums in another order).
    func assertClose(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        guard a.count == b.count else { return }
        var maxDiff: Float = 0, maxRef: Float = 0
        for i in 0..<a.count { maxDiff = max(maxDiff, abs(a[i] - b[i])); maxRef = max(maxRef, abs(b[i])) }
        XCTAssertGreaterThan(maxRef, 0.1, "\(what): reference is not trivial", file: file, line: line)
        XCTAssertLessThanOrEqual(maxDiff, 1e-5 * maxRef, "\(what): max |Δ| \(maxDiff), max |ref| \(maxRef)", file: file, line: line)
    }

    func testTinyHeadsMatchPyTorch() throws {
        let source = try openCheckpoint(Self.headsDir.appendingPathComponent("tiny_heads.pth").path)
        let ck = try TaskHeadsCheckpoint(source: source)
        // Stored semseg, depth, normals, edge; task order is M³ViT's list (depth last).
        XCTAssertEqual(ck.heads.map(\.task), ["semseg", "normals", "edge", "depth"])
        XCTAssertEqual(ck.heads.map(\.numConv), [4, 2, 2, 4])
        XCTAssertEqual(ck.heads.map(\.outChannels), [7, 3, 1, 1])
        XCTAssertEqual(ck.heads.map(\.conv0Kernel), [3, 3, 1, 3])
        XCTAssertEqual(ck.heads.map(\.channels), [16, 16, 16, 16])
        let features = try Self.floats(Self.headsDir.appendingPathComponent("tiny_features.f32"))
        let upsampling: [String: TwoConvUpsampling] = ["normals": .one, "edge": .two]
        for info in ck.heads {
            let w = try TaskHeadWeights(checkpoint: ck, task: info.task, twoConvUpsampling: upsampling[info.task] ?? .one)
            let head = TaskHead(weights: w, imageHeight: 32, imageWidth: 64)
            let out = try head.run(tokens: features)
            assertClose(out, try Self.floats(Self.headsDir.appendingPathComponent("tiny_\(info.task).f32")), info.task)
            if info.task == "semseg" {
                let resized = try head.run(tokens: features, outHeight: 48, outWidth: 80)
                assertClose(resized, try Self.floats(Self.headsDir.appendingPathComponent("tiny_semseg_48x80.f32")), "semseg 48x80")
            }
        }
    }

    func testBundledHeadsMatchPyTorch() throws {
        let ck = try TaskHeadsCheckpoint(source: try openCheckpoint(Self.bundledCheckpoint))
        XCTAssertEqual(ck.heads.map(\.task), ["semseg", "depth"])
        XCTAssertEqual(ck.heads.map(\.outChannels), [7, 1])
        XCTAssertEqual(ck.heads.map(\.channels), [256, 256])
        let heads = try TaskHeads(checkpoint: ck, imageHeight: 128, imageWidth: 256)
        for (t, head) in heads.heads.enumerated() {
            let features = try Self.floats(Self.bundledDir.appendingPathComponent("ref_out_task\(t).f32"))
            let out = try head.run(tokens: features)
            XCTAssertEqual(out.count, head.outChannels * 128 * 256)
            assertClose(out, try Self.floats(Self.headsDir.appendingPathComponent("full_\(head.task).f32")), head.task)
        }
    }

    /// F.interpolate(bilinear, align_corners=False) on a 2×2 map to 4×4: known values
    /// (PyTorch: [[1, 1.25, 1.75, 2], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5], [3, 3.25, 3.75, 4]]).
    func testBilinearKnownValues() {
        let out = bilinear([1, 2, 3, 4], channels: 1, inH: 2, inW: 2, outH: 4, outW: 4)
        XCTAssertEqual(out, [1, 1.25, 1.75, 2, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3, 3.25, 3.75, 4])
    }

    // MARK: refusals

    static func memoryHead(dropping: String? = nil, adding: String? = nil) -> MemorySource {
        let d = 4, ch = 2
        var t: [(String, [Int], [Float])] = [("module.decoders.semseg.norm.weight", [d], .init(repeating: 1, count: d)),
                                             ("module.decoders.semseg.norm.bias", [d], .init(repeating: 0, count: d))]
        for i in 0...4 {
            let shape = i == 0 ? [ch, d, 3, 3] : (i == 4 ? [3, ch, 1, 1] : [ch, ch, 3, 3])
            t.append(("module.decoders.semseg.conv_\(i).weight", shape, .init(repeating: 0.1, count: shape.reduce(1, *))))
            t.append(("module.decoders.semseg.conv_\(i).bias", [shape[0]], .init(repeating: 0, count: shape[0])))
            if i < 4 {
                for p in ["weight", "bias", "running_mean", "running_var"] {
                    t.append(("module.decoders.semseg.syncbn_fc_\(i).\(p)", [ch], .init(repeating: 1, count: ch)))
                }
            }
        }
        t.removeAll { $0.0 == dropping }
        if let adding { t.append((adding, [3, ch, 1, 1], .init(repeating: 0, count: 3 * ch))) }
        return MemorySource(path: "heads.pth", tensors: t)
    }

    /// Decoders `tasks` (each a copy of ``memoryHead``) with keys sorted as safetensors stores them.
    static func memoryHeads(_ tasks: [String], container: CheckpointContainer) -> MemorySource {
        let one = memoryHead().entries.map(\.name)
        let values = memoryHead()
        var t: [(String, [Int], [Float])] = []
        for task in tasks {
            for n in one {
                let e = values.entries.first { $0.name == n }!
                t.append((n.replacingOccurrences(of: ".semseg.", with: ".\(task)."), e.shape, try! values.readFloat32(n)))
            }
        }
        return MemorySource(path: "heads.\(container)", container: container, tensors: t.sorted { $0.0 < $1.0 })
    }

    /// Issue 13: task indices follow M³ViT's task list (utils/config.py: semseg before depth), not the
    /// key order of the file; a safetensors export lists `decoders.depth.*` first.
    func testTaskIndicesFollowM3ViTTaskListNotKeyOrder() throws {
        let ck = try TaskHeadsCheckpoint(source: Self.memoryHeads(["depth", "semseg"], container: .safetensors))
        XCTAssertEqual(ck.heads.map(\.task), ["semseg", "depth"])
        XCTAssertEqual(ck.heads.map(\.index), [0, 1])
        XCTAssertEqual(try TaskMap.resolve(heads: ck.heads, imageTasks: [0, 1]), ["semseg": 0, "depth": 1])
        let pascal = try TaskHeadsCheckpoint(source: Self.memoryHeads(["edge", "human_parts", "normals", "sal", "semseg"], container: .safetensors))
        XCTAssertEqual(pascal.heads.map(\.task), ["semseg", "human_parts", "sal", "normals", "edge"])
        XCTAssertEqual(pascal.heads.map(\.index), [0, 1, 2, 3, 4])
    }

    /// Unknown decoder names: a pickle's stored order is kept; an order-less container needs --task-map.
    func testUnknownDecoderNamesInAnOrderlessContainerNeedATaskMap() throws {
        let pickled = try TaskHeadsCheckpoint(source: Self.memoryHeads(["zeta", "alpha"], container: .pytorchZip))
        XCTAssertEqual(pickled.heads.map(\.indexSource), [.storedOrder, .storedOrder])
        let st = try TaskHeadsCheckpoint(source: Self.memoryHeads(["zeta", "alpha"], container: .safetensors))
        XCTAssertEqual(st.heads.map(\.indexSource), [.unordered, .unordered])
        XCTAssertThrowsError(try TaskMap.resolve(heads: st.heads, imageTasks: [0, 1])) { e in
            let m = e as! MoepackError
            XCTAssertEqual(m.kind, .usage)
            XCTAssertTrue(m.description.contains("--task-map"), m.description)
            XCTAssertTrue(m.description.contains("ambiguous"), m.description)
        }
        XCTAssertEqual(try TaskMap.resolve(heads: st.heads, imageTasks: [0, 1], overrides: ["zeta": 0, "alpha": 1]), ["zeta": 0, "alpha": 1])
        XCTAssertEqual(try TaskMap.resolve(heads: st.heads, imageTasks: [1]), ["zeta": 1, "alpha": 1])
    }

    func testCompleteMemoryHeadIsAccepted() throws {
        let ck = try TaskHeadsCheckpoint(source: Self.memoryHead())
        let h = try XCTUnwrap(ck.heads.first)
        XCTAssertEqual(ck.heads.count, 1)
        XCTAssertEqual([h.index, h.numConv, h.outChannels, h.channels, h.embedDim, h.conv0Kernel], [0, 4, 3, 2, 4, 3])
    }

    func testMissingBatchNormStatisticIsNamed() {
        XCTAssertThrowsError(try TaskHeadsCheckpoint(source: Self.memoryHead(dropping: "module.decoders.semseg.syncbn_fc_2.running_var"))) { e in
            XCTAssertEqual("\(e)", "heads.pth: 'decoders.semseg.syncbn_fc_2.running_var': missing tensor (a num_conv=4 VisionTransformerUpHead decoder needs it)")
        }
    }

    func testMultiLevelHeadIsRefused() {
        XCTAssertThrowsError(try TaskHeadsCheckpoint(source: Self.memoryHead(adding: "module.decoders.semseg.output_level_0.weight"))) { e in
            XCTAssertEqual((e as? MoepackError)?.kind, .unsupported)
            XCTAssertTrue("\(e)".contains("'module.decoders.semseg.output_level_0.weight'"), "\(e)")
        }
    }

    func testNoDecodersIsRefused() {
        let s = MemorySource(path: "b.pth", tensors: [("module.backbone.cls_token", [1, 1, 4], [0, 0, 0, 0])])
        XCTAssertThrowsError(try TaskHeadsCheckpoint(source: s)) { e in
            XCTAssertTrue("\(e)".hasPrefix("b.pth: 'decoders.*': no task decoders"), "\(e)")
        }
    }

    func testWrongTokenCountIsRefused() throws {
        let ck = try TaskHeadsCheckpoint(source: Self.memoryHead())
        let head = TaskHead(weights: try TaskHeadWeights(checkpoint: ck, task: "semseg"), imageHeight: 32, imageWidth: 64)
        XCTAssertThrowsError(try head.run(tokens: [Float](repeating: 0, count: 4 * 10))) { e in
            XCTAssertEqual((e as? MoepackError)?.kind, .mismatch)
        }
    }
}
