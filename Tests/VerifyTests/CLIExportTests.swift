import XCTest
import Foundation
import TestSupport

/// Runs the built `moepack` binary (`<repo>/.build/debug/moepack`; skipped when absent) on the tiny
/// fixture model (Tests/Fixtures/tiny, scripts/make_fixtures.py).
final class CLIExportTests: XCTestCase {
    private let repo = packageRoot()

    private func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        guard let bin = builtMoepack(in: repo) else { throw XCTSkip("moepack not built (run `swift build` first)") }
        return try runProcess(bin, args, in: repo)
    }

    /// Header JSON of a safetensors file (u64 LE length, then JSON).
    private func header(_ path: String) throws -> [String: Any] {
        let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let n = b.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(b[8..<(8 + n)])) as? [String: Any])
    }

    func testExportFromHDF5AndExpertParallelFolderAgree() throws {
        let dir = NSTemporaryDirectory() + "moepack-cli-export-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let h5 = dir + "/h5.safetensors", ep = dir + "/ep.safetensors"
        let r1 = try run(["export", "Tests/Fixtures/tiny/model.h5", "-o", h5, "--no-metadata"])
        XCTAssertEqual(r1.status, 0, r1.stderr)
        XCTAssertTrue(r1.stdout.contains("exported 56 tensors (56 F32)"), r1.stdout)
        let r2 = try run(["export", "Tests/Fixtures/tiny/ep", "-o", ep, "--no-metadata", "--quiet"])
        XCTAssertEqual(r2.status, 0, r2.stderr)
        XCTAssertEqual(r2.stdout, "")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: h5)), try Data(contentsOf: URL(fileURLWithPath: ep)))

        let meta = dir + "/meta.safetensors"
        let r3 = try run(["export", "Tests/Fixtures/tiny/model.pth", "--key", "state_dict", "--dtype", "f16", "-o", meta, "--quiet"])
        XCTAssertEqual(r3.status, 0, r3.stderr)
        let h = try header(meta)
        let m = try XCTUnwrap(h["__metadata__"] as? [String: String])
        XCTAssertEqual(m["source"], "model.pth")
        XCTAssertEqual(m["container"], "pytorch-zip")
        XCTAssertEqual(m["dtype"], "F16")
        XCTAssertEqual(m["state_dict_key"], "state_dict")
        XCTAssertEqual((h["blocks.1.mlp.gate.0.w_gate"] as? [String: Any])?["dtype"] as? String, "F16")
        XCTAssertEqual((h["blocks.1.mlp.gate.0.w_gate"] as? [String: Any])?["shape"] as? [Int], [32, 4])
    }

    func testRefusalsAreOneLine() throws {
        let dir = NSTemporaryDirectory() + "moepack-cli-export-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/x.safetensors"

        let r1 = try run(["export", "Tests/Fixtures/tiny/meta.json", "-o", out])
        XCTAssertEqual(r1.status, 2)
        XCTAssertTrue(r1.stderr.hasPrefix("moepack: error: Tests/Fixtures/tiny/meta.json: not a checkpoint"), r1.stderr)
        XCTAssertEqual(r1.stderr.filter { $0 == "\n" }.count, 1, r1.stderr)

        let r2 = try run(["export", "Tests/Fixtures/tiny/model.pth", "--key", "optimizer", "-o", out])
        XCTAssertEqual(r2.status, 2)
        XCTAssertTrue(r2.stderr.contains("'optimizer': top-level entry holds no tensors, expected a state_dict"), r2.stderr)
        XCTAssertEqual(r2.stderr.filter { $0 == "\n" }.count, 1, r2.stderr)

        let r3 = try run(["export", "Tests/Fixtures/tiny/model.npz", "--key", "state_dict", "-o", out])
        XCTAssertEqual(r3.status, 64)
        XCTAssertTrue(r3.stderr.contains("--key 'state_dict' applies to torch.save checkpoints only"), r3.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], "no output after refusals")
    }

    /// `inspect --json` carries the snake_case configuration next to `config`, and the state_dict key.
    func testInspectJSONConfiguration() throws {
        let r = try run(["inspect", "--json", "Tests/Fixtures/tiny/ep"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(j["container"] as? String, "expert-parallel-folder")
        XCTAssertEqual(j["state_dict_key"] as? String, "state_dict")
        XCTAssertEqual(j["embed_dim"] as? Int, 32)
        XCTAssertEqual(j["depth"] as? Int, 4)
        XCTAssertEqual(j["moe_blocks"] as? [Int], [1, 3])
        XCTAssertEqual(j["experts"] as? Int, 4)
        XCTAssertEqual(j["expert_hidden"] as? Int, 16)
        XCTAssertEqual(j["mlp_hidden"] as? Int, 64)
        XCTAssertEqual(j["tasks"] as? Int, 2)
        XCTAssertEqual(j["tokens"] as? Int, 9)
        XCTAssertEqual(j["patch_size"] as? Int, 16)
        XCTAssertEqual(j["in_chans"] as? Int, 3)
        XCTAssertEqual((j["config"] as? [String: Any])?["embedDim"] as? Int, 32, "the camelCase config object stays")
        let tensors = try XCTUnwrap(j["tensors"] as? [[String: Any]])
        XCTAssertEqual(tensors.count, 58)
        XCTAssertTrue(tensors.contains { $0["name"] as? String == "module.backbone.blocks.1.mlp.experts.htoh4.weight"
            && $0["shape"] as? [Int] == [4, 16, 32] && $0["backbone"] as? String == "blocks.1.mlp.experts.htoh4.weight" })
        let skipped = try XCTUnwrap(j["skipped"] as? [[String: String]])
        XCTAssertTrue(skipped.contains { $0["name"] == "module.backbone.norm.weight" && ($0["reason"] ?? "").contains("final norm") })
    }
}
