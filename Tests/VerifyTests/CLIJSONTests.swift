import XCTest
import Foundation
import TestSupport

/// `--json` of the subcommands that write files (pack, run, check, image, export, quantize), run as a
/// user would on the tiny fixture model (Tests/Fixtures/tiny, scripts/make_fixtures.py: D=32, depth 4,
/// MLP hidden 64, MoE blocks 1 and 3 with 4 experts of hidden 16, 2 tasks, 32×64 frames of 16-pixel
/// patches = 9 tokens). Values are checked against the fixture's shapes, sha256sum and hand arithmetic.
final class CLIJSONTests: XCTestCase {
    private let repo = packageRoot()
    private var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "moepack-cli-json-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        guard let bin = builtMoepack(in: repo) else { throw XCTSkip("moepack not built (run `swift build` first)") }
        return try runProcess(bin, args, in: repo)
    }

    private func json(_ r: (status: Int32, stdout: String, stderr: String)) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout + r.stderr)
    }

    private func sha256sum(_ path: String) throws -> String {
        let r = try runProcess("/usr/bin/sha256sum", [path], in: repo)
        XCTAssertEqual(r.status, 0, r.stderr)
        return String(r.stdout.prefix(64))
    }

    private func pack() throws -> String {
        let out = dir + "/img"
        let r = try run(["pack", "Tests/Fixtures/tiny/model.pth", "-o", out, "--profile", "tiny-test", "--quiet"])
        XCTAssertEqual(r.status, 0, r.stderr)
        return out
    }

    func testPackJSON() throws {
        let out = dir + "/img"
        let r = try run(["pack", "Tests/Fixtures/tiny/model.pth", "-o", out, "--profile", "tiny-test", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try json(r)
        XCTAssertEqual(j["format"] as? String, "moepack-pack/1")
        XCTAssertEqual(j["files"] as? [String], ["ddr.bin", "host", "manifest.json", "manifest.sha256", "moepack_ddr.h"])
        XCTAssertEqual(j["image_sha256"] as? String, try sha256sum(out + "/ddr.bin"))
        let size = try FileManager.default.attributesOfItem(atPath: out + "/ddr.bin")[.size] as? Int
        XCTAssertEqual(j["image_bytes"] as? Int, size)
        XCTAssertEqual(j["container"] as? String, "pytorch-zip")
        XCTAssertEqual(j["quantization"] as? String, "AP_RND_CONV")
        XCTAssertEqual(j["overflow"] as? String, "AP_SAT")
        // wt_linear_t: qkv + proj of 4 blocks, the dense MLPs of blocks 0 and 2, 4 experts in each of
        // blocks 1 and 3, and task 0's gates of both MoE blocks.
        let d = 32, hidden = 64, experts = 4, expertHidden = 16
        let linear = 4 * (d * 3 * d + d * d) + 2 * (2 * d * hidden) + 2 * experts * (2 * d * expertHidden) + 2 * d * experts
        let types = try XCTUnwrap(j["types"] as? [String: [String: Any]])
        XCTAssertEqual(types["wt_linear_t"]?["values"] as? Int, linear)
        XCTAssertEqual(types["wt_linear_t"]?["type"] as? String, "ap_fixed<16,2>")
        XCTAssertEqual(types.values.compactMap { $0["overflow"] as? Int }.reduce(0, +), 0)
        XCTAssertEqual((j["buffer_counts"] as? [String: Int])?["input"], 1)
        XCTAssertEqual((j["buffer_bytes"] as? [String: Int])?["input"], 3 * 32 * 64)
        XCTAssertNotNil(j["sqnr_db_worst"] as? Double)
    }

    func testRunJSONNamesEveryOutputAndItsNote() throws {
        let img = try pack()
        let frames = dir + "/frames"
        try FileManager.default.createDirectory(atPath: frames, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: repo.path + "/Tests/Fixtures/tiny/frame.u8", toPath: frames + "/a.u8")
        try FileManager.default.copyItem(atPath: repo.path + "/Tests/Fixtures/frames/small_rgb16.png", toPath: frames + "/b.png")
        let r = try run(["run", img, "--image", frames, "--mode", "fixed", "-o", dir + "/out", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try json(r)
        XCTAssertEqual(j["format"] as? String, "moepack-run/1")
        XCTAssertEqual(j["mode"] as? String, "fixed")
        XCTAssertEqual(j["task"] as? Int, 0)
        XCTAssertEqual(j["shape"] as? [Int], [9, 32])
        let outputs = try XCTUnwrap(j["outputs"] as? [[String: String]])
        XCTAssertEqual(outputs.map { $0["file"] }, [dir + "/out/a.npy", dir + "/out/b.npy"])
        XCTAssertNil(outputs[0]["note"])
        XCTAssertEqual(outputs[1]["note"], "resized 6×4 → 64×32 (area filter)")
        for o in outputs { XCTAssertEqual(try npyFloat32Values(o["file"]!).count, 9 * 32) }
    }

    func testCheckJSONReportsAFlippedByteAndExitsOne() throws {
        let img = try pack()
        let ok = try run(["check", img, "--json"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let j = try json(ok)
        XCTAssertEqual(j["ok"] as? Bool, true)
        XCTAssertEqual(j["problems"] as? [String], [])
        XCTAssertEqual(j["image_sha256"] as? String, try sha256sum(img + "/ddr.bin"))

        // One byte of the frame slot (images, the first buffer) changed, the size kept.
        let h = try XCTUnwrap(FileHandle(forUpdatingAtPath: img + "/ddr.bin"))
        try h.seek(toOffset: 100)
        let old = try XCTUnwrap(try h.read(upToCount: 1))
        try h.seek(toOffset: 100)
        try h.write(contentsOf: Data([old[0] ^ 0xFF]))
        try h.close()
        let bad = try run(["check", img, "--json"])
        XCTAssertEqual(bad.status, 1)
        let k = try json(bad)
        XCTAssertEqual(k["ok"] as? Bool, false)
        XCTAssertEqual(k["problems"] as? [String], ["ddr.bin (whole image)", "buffers images"])
        XCTAssertEqual(bad.stderr.filter { $0 == "\n" }.count, 1, bad.stderr)
    }

    func testImageJSON() throws {
        let r = try run(["image", "Tests/Fixtures/frames/small_rgb16.png", "--profile", "tiny-test", "-o", dir + "/f.u8", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try json(r)
        XCTAssertEqual(j["format"] as? String, "moepack-image/1")
        XCTAssertEqual(j["bytes"] as? Int, 3 * 32 * 64)
        XCTAssertEqual(j["shape"] as? [Int], [3, 32, 64])
        XCTAssertEqual(j["type"] as? String, "ap_ufixed<8,0>")
        XCTAssertEqual(j["note"] as? String, "resized 6×4 → 64×32 (area filter)")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/f.u8")).count, 3 * 32 * 64)
    }

    func testExportJSONListsTensorsAndSkippedEntries() throws {
        let out = dir + "/e.safetensors"
        let r = try run(["export", "Tests/Fixtures/tiny/model.pth", "-o", out, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try json(r)
        XCTAssertEqual(j["format"] as? String, "moepack-export/1")
        let size = try FileManager.default.attributesOfItem(atPath: out)[.size] as? Int
        XCTAssertEqual(j["bytes"] as? Int, size)
        let tensors = try XCTUnwrap(j["tensors"] as? [[String: Any]])
        XCTAssertEqual(tensors.count, 56)
        let gate = try XCTUnwrap(tensors.first { $0["name"] as? String == "blocks.1.mlp.gate.0.w_gate" })
        XCTAssertEqual(gate["shape"] as? [Int], [32, 4])
        XCTAssertEqual(gate["dtype"] as? String, "F32")
        let skipped = try XCTUnwrap(j["skipped"] as? [[String: String]]).compactMap { $0["name"] }
        XCTAssertTrue(skipped.contains("optimizer"), "\(skipped)")
        XCTAssertTrue(skipped.contains("module.backbone.norm.weight"), "\(skipped)")
        XCTAssertEqual((j["metadata"] as? [String: String])?["state_dict_key"], "state_dict")
    }

    /// float32 .npy (format 1.0) of `values` with `shape`, written by hand.
    private func writeNpy(_ values: [Float], shape: [Int], to path: String) throws {
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(shape.map(String.init).joined(separator: ", ")),), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)]
        bytes += Array(header.utf8)
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    func testQuantizeJSONCountsOverflowAndSQNR() throws {
        // ap_fixed<8,2> (AP_TRN, AP_WRAP by default): range [-2, 2 - 2^-6]; 3.0 and -5.0 wrap to -1.0.
        let x: [Float] = [0.5, 3.0, -5.0, 0.25]
        try writeNpy(x, shape: [2, 2], to: dir + "/x.npy")
        let r = try run(["quantize", dir + "/x.npy", "--type", "ap_fixed<8,2>", "-o", dir + "/raw.npy", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try json(r)
        XCTAssertEqual(j["format"] as? String, "moepack-quantize/1")
        XCTAssertEqual(j["direction"] as? String, "quantize")
        XCTAssertEqual(j["type"] as? String, "ap_fixed<8,2,AP_TRN,AP_WRAP>")
        XCTAssertEqual(j["dtype"] as? String, "I8")
        XCTAssertEqual(j["shape"] as? [Int], [2, 2])
        XCTAssertEqual(j["values"] as? Int, 4)
        XCTAssertEqual(j["overflow"] as? Int, 2)
        let decoded: [Double] = [0.5, -1.0, -1.0, 0.25]
        let signal = x.reduce(0) { $0 + Double($1) * Double($1) }
        let noise = zip(x, decoded).reduce(0) { $0 + (Double($1.0) - $1.1) * (Double($1.0) - $1.1) }
        XCTAssertEqual(try XCTUnwrap(j["sqnr_db"] as? Double), 10 * log10(signal / noise), accuracy: 1e-9)

        let back = try run(["quantize", dir + "/raw.npy", "--type", "ap_fixed<8,2>", "--dequantize", "-o", dir + "/back.npy", "--json"])
        XCTAssertEqual(back.status, 0, back.stderr)
        let k = try json(back)
        XCTAssertEqual(k["direction"] as? String, "dequantize")
        XCTAssertEqual(k["dtype"] as? String, "F32")
        XCTAssertNil(k["overflow"])
        XCTAssertEqual(try npyFloat32Values(dir + "/back.npy"), decoded.map { Float($0) })
    }
}
