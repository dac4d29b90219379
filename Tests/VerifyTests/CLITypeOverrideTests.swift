import XCTest
import Foundation
import TestSupport

/// `pack --type NAME=TYPE` and `suggest`'s command line through the built binary on the tiny model.
final class CLITypeOverrideTests: XCTestCase {
    private let repo = packageRoot()

    private func moepack(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        guard let bin = builtMoepack(in: repo) else { throw XCTSkip("moepack not built (run `swift build` first)") }
        return try runProcess(bin, args, in: repo)
    }

    private let ckpt = "Tests/Fixtures/tiny/model.pth", frame = "Tests/Fixtures/tiny/frame.u8"

    /// A new empty folder under the temporary directory.
    private func tempFolder() throws -> String {
        let dir = NSTemporaryDirectory() + "moepack-type-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func testPackWithEightBitLinearWeightsRunsFixed() throws {
        let dir = try tempFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pack = try moepack(["pack", ckpt, "-o", dir + "/img", "--profile", "tiny-test", "--type", "wt_linear_t=ap_fixed<8,1>", "--quiet"])
        XCTAssertEqual(pack.status, 0, pack.stderr)
        let m = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/img/manifest.json"))) as? [String: Any])
        XCTAssertEqual((m["types"] as? [String: String])?["wt_linear_t"], "ap_fixed<8,1>")
        let attn = try XCTUnwrap((m["buffers"] as? [[String: Any]])?.first { $0["name"] as? String == "attn_weights" })
        XCTAssertEqual(attn["ctype"] as? String, "ap_fixed<8,1>")
        XCTAssertEqual(attn["element_bytes"] as? Int, 1)
        XCTAssertEqual(try moepack(["check", dir + "/img"]).status, 0)
        let run = try moepack(["run", dir + "/img", "--image", frame, "--mode", "fixed", "-o", dir + "/out.npy"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out.npy"))
    }

    func testTypeUsageErrorsNameTheType() throws {
        let dir = try tempFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (arg, needle) in [("wt_lin=ap_fixed<8,1>", "no element type 'wt_lin'"), ("wt_linear_t=ap_fixd<8,1>", "wt_linear_t=ap_fixd<8,1>"),
                              ("wt_linear_t=ap_fixed<16,40>", "wt_linear_t (attn_weights): element type ap_fixed<16,40")] {
            let r = try moepack(["pack", ckpt, "-o", dir + "/img", "--profile", "tiny-test", "--type", arg])
            XCTAssertEqual(r.status, 64, arg)
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            XCTAssertTrue(r.stderr.contains("'--type'") && r.stderr.contains(needle), r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/img"), "nothing written")
        }
    }

    func testSuggestPrintsTheCommandThatAppliesIt() throws {
        let r = try moepack(["suggest", ckpt, "--profile", "tiny-test", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let suggestions = try XCTUnwrap(j["suggestions"] as? [[String: Any]])
        let changed = suggestions.filter { ($0["current"] as? String) != ($0["suggested"] as? String) }
            .map { "\($0["typeName"] as! String)=\($0["suggested"] as! String)" }
        XCTAssertFalse(changed.isEmpty, "the tiny model's weights are far inside the published types")
        XCTAssertEqual(j["types"] as? [String], changed)
        let command = try XCTUnwrap(j["command"] as? String)
        XCTAssertTrue(command.hasPrefix("moepack pack \(ckpt) --profile tiny-test --type "), command)
        for t in changed { XCTAssertTrue(command.contains("--type '\(t)'"), command) }
        let text = try moepack(["suggest", ckpt, "--profile", "tiny-test"])
        XCTAssertTrue(text.stdout.contains(command), text.stdout)
        // Applying it: the image carries every suggested type.
        let dir = try tempFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pack = try moepack(["pack", ckpt, "--profile", "tiny-test"] + changed.flatMap { ["--type", $0] } + ["-o", dir + "/img", "--quiet"])
        XCTAssertEqual(pack.status, 0, pack.stderr)
        let m = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/img/manifest.json"))) as? [String: Any])
        let types = try XCTUnwrap(m["types"] as? [String: String])
        for t in changed {
            let kv = t.split(separator: "=", maxSplits: 1).map(String.init)
            XCTAssertEqual(types[kv[0]], kv[1], t)
        }
    }
}
