import XCTest
import Foundation
import TestSupport

/// `moepack heads` and `moepack run --heads` through the built binary.
final class HeadsCLITests: XCTestCase {
    private let repo = packageRoot()
    private var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "moepack-heads-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func moepack(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        guard let bin = builtMoepack(in: repo) else { throw XCTSkip("moepack not built (run `swift build` first)") }
        return try runProcess(bin, args, in: repo)
    }

    /// (shape, values) of a little-endian float32 .npy.
    private func npy(_ path: String) throws -> ([Int], [Float]) {
        let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let headerLen = Int(b[8]) | Int(b[9]) << 8
        let header = String(decoding: b[10..<(10 + headerLen)], as: UTF8.self)
        XCTAssertTrue(header.contains("'descr': '<f4'"), header)
        let shapeText = header.components(separatedBy: "'shape': (")[1].components(separatedBy: ")")[0]
        let shape = shapeText.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        let values = b[(10 + headerLen)...].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        return (shape, values)
    }

    /// A float32 .npy of `values` with `shape` (version 1.0 header, padded to 64 bytes).
    private func writeNpy(_ values: [Float], shape: [Int], to path: String) throws {
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(shape.map(String.init).joined(separator: ", ")),), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var b: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xff), UInt8(header.utf8.count >> 8)]
        b += Array(header.utf8)
        values.withUnsafeBytes { b += $0 }
        try Data(b).write(to: URL(fileURLWithPath: path))
    }

    /// Width and height from a PNG's IHDR, after checking the signature.
    private func pngSize(_ path: String) throws -> (Int, Int) {
        let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertEqual(Array(b.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        func be(_ o: Int) -> Int { b[o..<(o + 4)].reduce(0) { $0 << 8 | Int($1) } }
        return (be(16), be(20))
    }

    func testHeadsOnFeaturesMatchesPyTorchAndWritesPNGs() throws {
        let feats = try Data(contentsOf: repo.appendingPathComponent("Tests/Fixtures/bundled/ref_out_task0.f32"))
        let values = feats.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        try writeNpy(values, shape: [129, 192], to: dir + "/x.npy")
        let r = try moepack(["heads", "models/m3vit-tiny-edge-moe.pth", "--features", dir + "/x.npy", "--task", "semseg",
                             "--image", "models/demo-frame.png", "-o", dir + "/out", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"task\" : \"semseg\""), r.stdout)
        let (shape, out) = try npy(dir + "/out/semseg.npy")
        XCTAssertEqual(shape, [7, 128, 256])
        let ref = try Data(contentsOf: repo.appendingPathComponent("Tests/Fixtures/heads/full_semseg.f32")).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        let maxRef = ref.map(abs).max()!
        XCTAssertLessThanOrEqual(zip(out, ref).map { abs($0 - $1) }.max()!, 1e-5 * maxRef)
        let (w, h) = try pngSize(dir + "/out/semseg.png")
        XCTAssertGreaterThanOrEqual(w, 512)
        XCTAssertGreaterThan(h, 256, "picture at 2× plus title and legend")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out/depth.npy"), "only the decoder asked for")
    }

    func testRunWithHeadsFeedsEachDecoderItsTask() throws {
        let frame = "Tests/Fixtures/tiny/frame.u8"
        XCTAssertEqual(try moepack(["pack", "Tests/Fixtures/tiny/model.pth", "-o", dir + "/img", "--profile", "tiny-test", "--task", "all"]).status, 0)
        // Tasks follow M³ViT's list (semseg, normals, edge, depth): edge (2) and depth (3) have no
        // gates in a two-task image: refused, named.
        let refused = try moepack(["run", dir + "/img", "--image", frame, "--heads", "Tests/Fixtures/heads/tiny_heads.pth", "-o", dir + "/h"])
        XCTAssertEqual(refused.status, 64, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("decoder 'edge' is task 2, which is not in the image"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/h"))

        let r = try moepack(["run", dir + "/img", "--image", frame, "--heads", "Tests/Fixtures/heads/tiny_heads.pth",
                             "--task-map", "edge=1,depth=0", "--two-conv-upsampling", "2", "-o", dir + "/h"])
        XCTAssertEqual(r.status, 0, r.stderr)
        // The same decoders on each task's backbone output, run separately, give the same values.
        for (task, t) in [("semseg", 0), ("normals", 1), ("edge", 1), ("depth", 0)] {
            XCTAssertEqual(try moepack(["run", dir + "/img", "--image", frame, "--task", "\(t)", "-o", dir + "/x\(t).npy"]).status, 0)
            let one = try moepack(["heads", "Tests/Fixtures/heads/tiny_heads.pth", "--features", dir + "/x\(t).npy", "--profile", "tiny-test",
                                   "--task", task, "--two-conv-upsampling", "2", "-o", dir + "/s-\(task)"])
            XCTAssertEqual(one.status, 0, one.stderr)
            let (shapeA, a) = try npy(dir + "/h/\(task).npy")
            let (_, b) = try npy(dir + "/s-\(task)/\(task).npy")
            XCTAssertEqual(shapeA[1...], [32, 64])
            XCTAssertEqual(a, b, task)
            _ = try pngSize(dir + "/h/\(task).png")
        }
    }

    /// Issue 13: a safetensors export sorts its keys (depth, edge, normals, semseg); the decoders must
    /// still get M³ViT's task order (semseg 0, normals 1), giving the .pth's outputs bit for bit.
    func testSafetensorsExportFeedsTheSameTasksAsThePth() throws {
        let frame = "Tests/Fixtures/tiny/frame.u8", pth = "Tests/Fixtures/heads/tiny_heads.pth", st = dir + "/heads.safetensors"
        XCTAssertEqual(try moepack(["pack", "Tests/Fixtures/tiny/model.pth", "-o", dir + "/img", "--profile", "tiny-test", "--task", "all"]).status, 0)
        let e = try moepack(["export", pth, "-o", st, "--all", "--quiet"])
        XCTAssertEqual(e.status, 0, e.stderr)
        for (h, out) in [(pth, "/a"), (st, "/b")] {
            let r = try moepack(["run", dir + "/img", "--image", frame, "--heads", h, "--task-map", "edge=1,depth=0",
                                 "--two-conv-upsampling", "2", "-o", dir + out])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("semseg: [7,32,64] float32 from task 0's backbone output"), r.stdout)
            XCTAssertTrue(r.stdout.contains("normals: [3,32,64] float32 from task 1's backbone output"), r.stdout)
        }
        for task in ["semseg", "normals", "edge", "depth"] {
            XCTAssertEqual(try npy(dir + "/a/\(task).npy").1, try npy(dir + "/b/\(task).npy").1, task)
        }
    }

    func testVerifyHeadsReportsEachTaskAndFailsBelowThresholds() throws {
        let frame = "Tests/Fixtures/tiny/frame.u8", ckpt = "Tests/Fixtures/tiny/model.pth"
        XCTAssertEqual(try moepack(["pack", ckpt, "-o", dir + "/img", "--profile", "tiny-test", "--task", "all"]).status, 0)
        let base = ["verify", dir + "/img", "--checkpoint", ckpt, "--image", frame, "--heads", "Tests/Fixtures/heads/tiny_heads.pth",
                    "--task-map", "edge=1,depth=0", "--mode", "fixed"]
        let r = try moepack(base + ["--json", "--min-miou", "0", "--min-pixel-agreement", "0", "--max-abs-rel", "1e9", "--max-angular-error", "180"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let heads = try XCTUnwrap(json["heads"] as? [String: Any])
        let tasks = try XCTUnwrap(heads["tasks"] as? [[String: Any]])
        XCTAssertEqual(tasks.map { $0["task"] as? String }, ["semseg", "normals", "edge", "depth"])
        XCTAssertEqual(tasks.map { $0["kind"] as? String }, ["segmentation", "normals", "grey", "depth"])
        XCTAssertEqual(tasks.map { $0["backbone_task"] as? Int }, [0, 1, 1, 0])
        let agreement = try XCTUnwrap(tasks[0]["pixel_agreement"] as? Double)
        XCTAssertTrue((0...1).contains(agreement))
        XCTAssertNotNil(tasks[0]["miou"] as? Double)
        XCTAssertNotNil(tasks[3]["abs_rel"] as? Double)
        XCTAssertNotNil(tasks[3]["rmse"] as? Double)
        XCTAssertNotNil(tasks[1]["mean_angular_error_deg"] as? Double)
        // The fixed path moves depth a little: abs-rel 0 is out of reach, so exit 1 naming the task.
        let strict = try moepack(base + ["--max-abs-rel", "0"])
        XCTAssertEqual(strict.status, 1, strict.stderr)
        XCTAssertTrue(strict.stdout.contains("FAIL") && strict.stdout.contains("depth: abs-rel"), strict.stdout)
        XCTAssertTrue(strict.stdout.contains("semseg (task 0's gates): pixel agreement"), strict.stdout)
        let bad = try moepack(base + ["--min-miou", "2"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
    }

    func testBadFeaturesAreOneLineErrors() throws {
        try Data(count: 100).write(to: URL(fileURLWithPath: dir + "/x.bin"))
        let r = try moepack(["heads", "models/m3vit-tiny-edge-moe.pth", "--features", dir + "/x.bin", "-o", dir + "/out"])
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("x.bin: 'x': 100 bytes is not a whole number"), r.stderr)
        let noHeads = try moepack(["heads", "Tests/Fixtures/tiny/plain.pth", "--features", dir + "/x.bin", "--profile", "tiny-test", "-o", dir + "/out"])
        XCTAssertEqual(noHeads.status, 2, noHeads.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))
    }
}
