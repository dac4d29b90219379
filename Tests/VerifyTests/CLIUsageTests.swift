import XCTest
import Foundation
import TestSupport

/// Command-line mistakes a new user made on 2026-12-03 (one line naming the option and the text, exit
/// 64 for usage, 2 for refused input) and where `run` puts its outputs, on the tiny fixture model.
final class CLIUsageTests: XCTestCase {
    private let repo = packageRoot()
    private var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "moepack-cli-usage-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        guard let bin = builtMoepack(in: repo) else { throw XCTSkip("moepack not built (run `swift build` first)") }
        return try runProcess(bin, args, in: repo)
    }

    private func assertOneLine(_ r: (status: Int32, stdout: String, stderr: String), status: Int32, contains: [String],
                               file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, status, r.stderr, file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr, file: file, line: line)
        for c in contains { XCTAssertTrue(r.stderr.contains(c), "\(c) not in \(r.stderr)", file: file, line: line) }
    }

    func testAFolderOfOneFrameGivesAFolderOfOutputs() throws {
        let img = dir + "/img"
        XCTAssertEqual(try run(["pack", "Tests/Fixtures/tiny/model.pth", "-o", img, "--profile", "tiny-test", "--quiet"]).status, 0)
        let frames = dir + "/one"
        try FileManager.default.createDirectory(atPath: frames, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: repo.path + "/Tests/Fixtures/tiny/frame.u8", toPath: frames + "/white.u8")
        let r = try run(["run", img, "--image", frames, "-o", dir + "/out"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/out"), ["white.npy"])
        XCTAssertEqual(try npyFloat32Values(dir + "/out/white.npy").count, 9 * 32)
        // -o ending in '/' asks for a folder, even for one frame file.
        let s = try run(["run", img, "--image", "Tests/Fixtures/tiny/frame.u8", "-o", dir + "/slash/"])
        XCTAssertEqual(s.status, 0, s.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/slash"), ["frame.npy"])
        // A folder of frames and an .npy output: refused before any work.
        assertOneLine(try run(["run", img, "--image", frames, "-o", dir + "/x.npy"]), status: 64,
                      contains: ["x.npy", "a folder of frames gives a folder of outputs"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.npy"))
    }

    func testTypeMistakesNameTheOptionAndTheText() throws {
        assertOneLine(try run(["pack", "Tests/Fixtures/tiny/model.pth", "-o", dir + "/img", "--profile", "tiny-test",
                               "--type", "wt_linear_t=ap_fixed<8,1>", "--type", "wt_linear_t=ap_fixed<12,2>"]),
                      status: 64, contains: ["'--type'", "'wt_linear_t' is given twice"])
        assertOneLine(try run(["sweep", "Tests/Fixtures/tiny/model.pth", "--profile", "tiny-test", "--image", "Tests/Fixtures/tiny/frame.u8",
                               "--vary", "wt_linear_t=ap_fixed<8,1>,garbage"]),
                      status: 64, contains: ["'--vary'", "wt_linear_t=garbage"])
        assertOneLine(try run(["quantize", "Tests/Fixtures/tiny/model.npz", "--type", "ap_fixed<16,2", "-o", dir + "/q.npy"]),
                      status: 64, contains: ["'--type'", "ap_fixed<16,2"])
        // swift-argument-parser's list of allowed values stays on the one line.
        assertOneLine(try run(["pack", "Tests/Fixtures/tiny/model.pth", "-o", dir + "/img", "--quantization", "AP_BOGUS"]),
                      status: 64, contains: ["AP_BOGUS", "one of the following: AP_TRN, AP_TRN_ZERO, AP_RND,", "AP_RND_CONV (see --help)"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], "nothing written")
    }

    /// int16 raws of ap_fixed<16,2> read back as ap_fixed<8,2>: 300 is no 8-bit code, so refused.
    func testDequantizeRefusesRawValuesWiderThanTheType() throws {
        var header = "{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count), 0] + Array(header.utf8)
        for v: Int16 in [5, -128, 300] { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/raw.npy"))
        assertOneLine(try run(["quantize", dir + "/raw.npy", "--type", "ap_fixed<8,2>", "--dequantize", "-o", dir + "/back.npy"]),
                      status: 2, contains: ["raw.npy", "raw value 300 at flat index 2", "-128…127"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/back.npy"))
        let ok = try run(["quantize", dir + "/raw.npy", "--type", "ap_fixed<16,2>", "--dequantize", "-o", dir + "/back.npy"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertEqual(try npyFloat32Values(dir + "/back.npy"), [5.0 / 16384, -128.0 / 16384, 300.0 / 16384])
    }
}
