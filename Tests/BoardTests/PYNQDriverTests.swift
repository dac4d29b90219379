import XCTest
import Foundation
import TestSupport
import MoepackPacking

/// The generated PYNQ driver (`DIR/host/moepack_pynq.py`) run by python3 against a test-only fake
/// `pynq` package (Tests/BoardTests/FakePYNQ) backed by `moepack board-sim`: bit-exact output, the
/// per-argument allocation fallback, --bisect with `verify`, and its refusals.
final class PYNQDriverTests: XCTestCase {
    typealias S = BoardTestSupport
    var dir = ""
    var img: String { dir + "/img" }
    let python = "/usr/bin/python3"
    let fakePYNQ = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("FakePYNQ").path

    override func setUpWithError() throws {
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: python), "python3 missing (make deps installs python3-numpy)")
        dir = try S.tempDir("pynq")
        let pack = try S.moepack(["pack", "Tests/Fixtures/tiny/model.pth", "-o", img, "--profile", "tiny-test", "--task", "all", "--quiet"])
        XCTAssertEqual(pack.status, 0, pack.stderr)
        let r = try S.moepack(["image", "Tests/Fixtures/tiny/frame.u8", "--profile", "tiny-test", "-o", dir + "/frame.bin"])
        XCTAssertEqual(r.status, 0, r.stderr)
        try writeOverlay(registers: try KernelProfile.load("tiny-test"))
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// `bitstream.bit` and, beside it, a `.hwh` giving the instance's s_axi_control block and
    /// register map (as Vivado writes them) for `profile`'s registers.
    private func writeOverlay(registers profile: KernelProfile, moving moved: String? = nil) throws {
        var regs = ""
        func reg(_ name: String, _ off: Int) { regs += "<REGISTER NAME=\"\(name)\"><PROPERTY NAME=\"ADDRESS_OFFSET\" VALUE=\"0x\(String(off, radix: 16))\"/></REGISTER>\n" }
        for (n, o) in profile.registers { reg(n, n == moved ? o + 0x100 : o) }
        for b in profile.buffers { if let r = b.register { reg(b.name + "_1", b.name == moved ? r + 0x100 : r); reg(b.name + "_2", r + 4) } }
        let hwh = """
        <MODULE FULLNAME="/ViT_compute_0" INSTANCE="ViT_compute_0" MODTYPE="ViT_compute" VLNV="xilinx.com:hls:ViT_compute:1.0">
        <PARAMETER NAME="C_S_AXI_CONTROL_BASEADDR" VALUE="0xA0000000"/>
        <PARAMETER NAME="C_S_AXI_CONTROL_HIGHADDR" VALUE="0xA000FFFF"/>
        \(regs)</MODULE>

        """
        try hwh.write(toFile: dir + "/bitstream.hwh", atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: dir + "/bitstream.bit", contents: Data([0]))
    }

    private func driver(_ args: [String], env extra: [String: String] = [:]) throws -> Proc {
        var env = ["PYTHONPATH": fakePYNQ, "MOEPACK_FAKE_DEVMEM": dir + "/devmem", "MOEPACK_FAKE_DMA": dir + "/dma",
                   "MOEPACK_FAKE_DMA_PHYS": "0x60000000", "MOEPACK_FAKE_SYSFS": dir + "/udmabuf0"]
        env.merge(extra) { $1 }
        return try S.run(python, [img + "/host/moepack_pynq.py", "--overlay", dir + "/bitstream.bit"] + args, env: env, timeout: 120)
    }

    private func runOnBoard(_ args: [String], runs: Int = 1, env: [String: String] = [:]) throws -> (Proc, Proc) {
        let sim = try S.startBoard(dir, runs: runs, idleTimeout: 15)
        let h = try driver(args, env: env)
        return (h, sim.wait(timeout: 30))
    }

    private func fixedReference(task: Int) throws -> [Float] {
        let out = dir + "/ref-\(task).npy"
        let r = try S.moepack(["run", img, "--image", dir + "/frame.bin", "--mode", "fixed", "--task", String(task), "-o", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        return try npyFloat32Values(out)
    }

    func testBitExactOneBufferAndPerArgumentBuffers() throws {
        // One buffer for the image.
        var (h, sim) = try runOnBoard(["--image", dir + "/frame.bin", "--task", "1", "-o", dir + "/out.npy"])
        XCTAssertEqual(h.status, 0, h.stderr + sim.stderr)
        XCTAssertEqual(sim.status, 0, sim.stderr)
        XCTAssertEqual(try npyFloat32Values(dir + "/out.npy"), try fixedReference(task: 1))
        var v = try S.moepack(["verify", img, "--board-output", dir + "/out.npy", "--image", dir + "/frame.bin", "--task", "1"])
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
        XCTAssertTrue(v.stdout.contains("288/288 elements identical"), v.stdout)
        // CMA without a block as large as the image: one buffer per argument, same output (raw).
        (h, sim) = try runOnBoard(["--image", dir + "/frame.bin", "--task", "1", "--raw", "-o", dir + "/raw.npy"],
                                  env: ["MOEPACK_FAKE_MAX_ALLOC": "65536"])
        XCTAssertEqual(h.status, 0, h.stderr + sim.stderr)
        XCTAssertTrue(h.stdout.contains("one buffer per argument"), h.stdout)
        v = try S.moepack(["verify", img, "--board-output", dir + "/raw.npy", "--image", dir + "/frame.bin", "--task", "1"])
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
        XCTAssertTrue(v.stdout.contains("288/288 elements identical"), v.stdout)
    }

    func testBisectNamesTheFirstDifferingLayer() throws {
        let (h, sim) = try runOnBoard(["--image", dir + "/frame.bin", "--bisect", "-o", dir + "/bisect"], runs: 4)
        XCTAssertEqual(h.status, 0, h.stderr + sim.stderr)
        XCTAssertTrue(sim.stderr.contains("reload_one_time_weights 0, debug_id 60"), sim.stderr)
        var v = try S.moepack(["verify", img, "--board-output", dir + "/bisect", "--image", dir + "/frame.bin"])
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
        XCTAssertTrue(v.stdout.contains("PASS: every layer's x identical"), v.stdout)
        // The last layer's x is the kernel's output.
        XCTAssertEqual(try npyFloat32Values(dir + "/bisect/debug_id_60.npy"), try fixedReference(task: 0))
        // One LSB off in layer 2's x, token 4, channel 9: named, and layer 3 still passes alone.
        let file = dir + "/bisect/debug_id_44.npy"
        var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        let headerLen = Int(b[8]) | Int(b[9]) << 8
        let at = 10 + headerLen + (4 * 32 + 9) * 4
        let f = b[at..<(at + 4)].withUnsafeBytes { $0.loadUnaligned(as: Float.self) }
        let next = Float(Double(f) + 1.0 / 4_194_304)
        withUnsafeBytes(of: next) { for k in 0..<4 { b[at + k] = $0[k] } }
        try Data(b).write(to: URL(fileURLWithPath: file))
        v = try S.moepack(["verify", img, "--board-output", dir + "/bisect", "--image", dir + "/frame.bin"])
        XCTAssertEqual(v.status, 1, v.stdout + v.stderr)
        XCTAssertTrue(v.stdout.contains("first difference: layer 2 (debug_id 44), token 4, channel 9"), v.stdout)
    }

    func testRefusalsBeforeTheDevice() throws {
        // An overlay whose register map differs from the image's.
        try writeOverlay(registers: try KernelProfile.load("tiny-test"), moving: "moe_bias_l2")
        var h = try driver(["--image", dir + "/frame.bin", "-o", dir + "/out.npy"])
        XCTAssertEqual(h.status, 2, h.stderr)
        XCTAssertEqual(h.stderr.split(separator: "\n").count, 1, h.stderr)
        XCTAssertTrue(h.stderr.contains("register 'moe_bias_l2_1' is at 0x1F8 in the overlay, the image was packed for 0xF8"), h.stderr)
        try writeOverlay(registers: try KernelProfile.load("tiny-test"))
        // Edited manifest fields, each named.
        let m = img + "/manifest.json"
        let original = try String(contentsOfFile: m, encoding: .utf8)
        for (old, new, says) in [("\"register\" : 212", "\"register\" : 216", "'moe_weights_l1': register 216, this driver was generated for 212"),
                                 ("\"ctype\" : \"ap_fixed<16,2>\"", "\"ctype\" : \"ap_fixed<16,3>\"", "ctype 'ap_fixed<16,3>', this driver was generated for 'ap_fixed<16,2>'"),
                                 ("\n  \"task\" : 0,", "\n  \"task\" : 1,", "task 1, this driver was generated for task 0"),
                                 ("\"notes\" : [", "\"notes\" : [\"x\", ", "manifest.json: SHA-256")] {
            guard let r = original.range(of: old) else { XCTFail("manifest has no '\(old)'"); continue }
            try original.replacingCharacters(in: r, with: new).write(toFile: m, atomically: true, encoding: .utf8)
            h = try driver(["--image", dir + "/frame.bin", "-o", dir + "/out.npy"])
            XCTAssertEqual(h.status, 2, h.stderr)
            XCTAssertEqual(h.stderr.split(separator: "\n").count, 1, h.stderr)
            XCTAssertTrue(h.stderr.contains(says), h.stderr)
        }
        try original.write(toFile: m, atomically: true, encoding: .utf8)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/devmem"), "the device was touched")
        // Usage and timeout.
        h = try driver(["--image", dir + "/frame.bin", "--task", "5", "-o", dir + "/out.npy"])
        XCTAssertEqual(h.status, 64, h.stderr)
        XCTAssertTrue(h.stderr.contains("task 5 is not in this image (packed: 0,1"), h.stderr)
        // debug_id values the kernel does not define for a 4-layer model (layer 250; k = 0; past 32 bits).
        for id in ["4000", "16", "99999999999"] {
            h = try driver(["--image", dir + "/frame.bin", "--debug-id", id, "-o", dir + "/out.npy"])
            XCTAssertEqual(h.status, 64, h.stderr)
            XCTAssertEqual(h.stderr.split(separator: "\n").count, 1, h.stderr)
            XCTAssertTrue(h.stderr.contains("--debug-id: \(id) is not 0, 256 or layer*16+k with layer < 4"), h.stderr)
        }
        let sim = try S.startBoard(dir, idleTimeout: 0.2)
        _ = sim.wait(timeout: 10)
        // A board whose kernel never answers: the cache requests succeed (plain files), ap_done never comes.
        for fifo in ["sync_for_device", "sync_for_cpu"] {
            try? FileManager.default.removeItem(atPath: dir + "/udmabuf0/" + fifo)
            _ = FileManager.default.createFile(atPath: dir + "/udmabuf0/" + fifo, contents: nil)
        }
        h = try driver(["--image", dir + "/frame.bin", "--timeout", "0.5", "-o", dir + "/out.npy"], env: ["MOEPACK_FAKE_SYNC_FILES": "1"])
        XCTAssertEqual(h.status, 1, h.stderr)
        XCTAssertEqual(h.stderr.split(separator: "\n").count, 1, h.stderr)
        XCTAssertTrue(h.stderr.contains("ViT_compute: no ap_done within 0.5 s (CTRL = 0x1)"), h.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.npy"))
    }
}
