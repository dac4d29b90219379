import XCTest
import Foundation

/// Inputs that `verify --board-output` and `board-sim` refuse on one line before doing anything:
/// non-finite board values, debug_id values the kernel does not define, and simulated-board
/// addresses or sizes that wrap or cannot hold the image.
final class BoardRefusalTests: XCTestCase {
    typealias S = BoardTestSupport
    var dir = ""
    var img: String { dir + "/img" }

    override func setUpWithError() throws {
        dir = try S.tempDir("refusal")
        let pack = try S.moepack(["pack", "Tests/Fixtures/tiny/model.pth", "-o", img, "--profile", "tiny-test", "--quiet"])
        XCTAssertEqual(pack.status, 0, pack.stderr)
        let r = try S.moepack(["image", "Tests/Fixtures/tiny/frame.u8", "--profile", "tiny-test", "-o", dir + "/frame.bin"])
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    private func assertOneLine(_ p: Proc, status: Int32, contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(p.status, status, p.stdout + p.stderr, file: file, line: line)
        XCTAssertEqual(p.stderr.split(separator: "\n").count, 1, p.stderr, file: file, line: line)
        XCTAssertTrue(p.stderr.contains(contains), p.stderr, file: file, line: line)
        XCTAssertFalse(p.stdout.contains("PASS"), p.stdout, file: file, line: line)
    }

    /// A version-1.0 .npy of float32 `[9, 32]` (the tiny model's tokens × embed_dim).
    private func writeNpy(_ values: [Float], to path: String) throws {
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (9, 32), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)]
        bytes += Array(header.utf8)
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    private func verify(_ output: String, _ extra: [String] = []) throws -> Proc {
        try S.moepack(["verify", img, "--board-output", output, "--image", dir + "/frame.bin"] + extra)
    }

    func testNonFiniteBoardOutputIsRefused() throws {
        let path = dir + "/out.npy"
        try writeNpy([Float](repeating: .nan, count: 288), to: path)
        assertOneLine(try verify(path), status: 2, contains: "non-finite value nan at image 0, token 0, channel 0")
        var one = [Float](repeating: 0, count: 288)
        one[5 * 32 + 7] = .nan
        try writeNpy(one, to: path)
        assertOneLine(try verify(path), status: 2, contains: "at image 0, token 5, channel 7")
        try writeNpy([Float](repeating: .infinity, count: 288), to: path)
        assertOneLine(try verify(path), status: 2, contains: "non-finite value inf at image 0, token 0, channel 0")
        // Finite but far outside fm_t: a difference, reported without a crash.
        try writeNpy([Float](repeating: 3e38, count: 288), to: path)
        let v = try verify(path)
        XCTAssertEqual(v.status, 1, v.stdout + v.stderr)
        XCTAssertTrue(v.stdout.contains("FAIL"), v.stdout)
    }

    func testVerifyRefusesUndefinedDebugID() throws {
        let path = dir + "/out.npy"
        try writeNpy([Float](repeating: 0, count: 288), to: path)
        for id in ["4000", "16", "65"] {
            assertOneLine(try verify(path, ["--debug-id", id]), status: 64, contains: "\(id) is not 0, 256 or layer*16+k with layer < 4")
        }
    }

    func testBoardSimRefusesWrappingAddressesAndSmallBuffers() throws {
        func sim(_ extra: [String]) throws -> Proc {
            try S.moepack(["board-sim", "--profile", "tiny-test", "--devmem", dir + "/devmem", "--dma", dir + "/dma", "--runs", "1", "--idle-timeout", "1"] + extra, timeout: 30)
        }
        for (args, item, says) in [(["--ctrl-base", "0xfffffffffffffff0"], "--ctrl-base", "past the largest file offset"),
                                   (["--ctrl-base", "0x7ffffffffffff000"], "--ctrl-base", "past the largest file offset"),
                                   (["--dma-phys", "0xfffffffffffff000"], "--dma-phys", "passes the end of the 64-bit address space"),
                                   (["--dma-bytes", "1000"], "--dma-bytes", "1000 bytes cannot hold the kernel's arguments for one image")] {
            let p = try sim(args)
            assertOneLine(p, status: 64, contains: item)
            XCTAssertTrue(p.stderr.contains(says), p.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/dma"), args.joined(separator: " "))
        }
    }
}
