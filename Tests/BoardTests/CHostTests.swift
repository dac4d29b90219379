import XCTest
import Foundation
import TestSupport

/// The generated C host (`DIR/host/moepack_host.c`), compiled with cc and cross-compiled for
/// aarch64, run end to end against `moepack board-sim` on the tiny fixture model; outputs compared
/// bit for bit with `moepack run --mode fixed`, and every host fault caught on one line.
final class CHostTests: XCTestCase {
    typealias S = BoardTestSupport
    var dir = ""
    var img: String { dir + "/img" }
    var host: String { img + "/host" }

    override func setUpWithError() throws {
        dir = try S.tempDir("c")
        let pack = try S.moepack(["pack", "Tests/Fixtures/tiny/model.pth", "-o", img, "--profile", "tiny-test", "--task", "all", "--quiet"])
        XCTAssertEqual(pack.status, 0, pack.stderr)
        for (src, name) in [("Tests/Fixtures/tiny/frame.u8", "frame0.bin"), ("models/demo-frame.png", "frame1.bin")] {
            let r = try S.moepack(["image", src, "--profile", "tiny-test", "-o", dir + "/" + name])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    private func make(_ extra: [String] = []) throws {
        let r = try S.run("/usr/bin/make", ["-s", "-B", "-C", host] + extra)
        XCTAssertEqual(r.status, 0, "make: \(r.stderr)")
        XCTAssertFalse(r.stderr.contains("warning"), r.stderr)
    }

    /// Runs the host against a fresh simulated board; returns (host, board).
    private func runOnBoard(_ args: [String], runs: Int = 1, hostTimeout: String = "20") throws -> (Proc, Proc) {
        let sim = try S.startBoard(dir, runs: runs, idleTimeout: 15)
        let h = try S.run(host + "/moepack_host", args + S.boardArgs(dir) + ["--timeout", hostTimeout], timeout: 60)
        return (h, sim.wait(timeout: 30))
    }

    private func fixedReference(_ frame: String, task: Int = 0) throws -> [Float] {
        let out = dir + "/ref-\(UUID().uuidString).npy"
        let r = try S.moepack(["run", img, "--image", frame, "--mode", "fixed", "--task", String(task), "-o", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        return try npyFloat32Values(out)
    }

    /// fm_t raw → the float32 `moepack run` writes (raw / 2^22 rounded to float32).
    private func values(_ raw: ArraySlice<Int32>) -> [Float] { raw.map { Float(Double($0) / 4_194_304) } }

    func testTwoFramesBitExactAgainstFixedEmulation() throws {
        try make()
        let (h, sim) = try runOnBoard(["--image", dir + "/frame0.bin", "--image", dir + "/frame1.bin", "--task", "1", "-o", dir + "/out.bin"])
        XCTAssertEqual(h.status, 0, h.stderr)
        XCTAssertEqual(sim.status, 0, sim.stderr)
        XCTAssertTrue(sim.stderr.contains("num_images 2, reload_one_time_weights 1, debug_id 0"), sim.stderr)
        XCTAssertFalse(sim.stderr.contains("ignored"), sim.stderr)
        // The last sync request (x: 2 × 9 × 32 int32) whole in the file standing for the attribute,
        // not written over the longer first one (the whole image).
        XCTAssertEqual(try String(contentsOfFile: dir + "/udmabuf0/sync_size", encoding: .utf8), "2304")
        let raw = try S.int32s(dir + "/out.bin")
        XCTAssertEqual(raw.count, 2 * 9 * 32)
        XCTAssertEqual(values(raw[0..<288]), try fixedReference(dir + "/frame0.bin", task: 1))
        XCTAssertEqual(values(raw[288...]), try fixedReference(dir + "/frame1.bin", task: 1))
        // The same through verify --board-output (raw containers, per image).
        let v = try S.moepack(["verify", img, "--board-output", dir + "/out.bin", "--image", dir + "/frame0.bin", "--image", dir + "/frame1.bin", "--task", "1"])
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
        XCTAssertTrue(v.stdout.contains("576/576 elements identical, largest error 0 LSB"), v.stdout)
        // One LSB off in the second image, token 5, channel 7: named, exit 1; within --max-lsb 1 it passes.
        var off = raw
        off[288 + 5 * 32 + 7] &+= 1
        try Data(off.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }).write(to: URL(fileURLWithPath: dir + "/off.bin"))
        let frames = ["--image", dir + "/frame0.bin", "--image", dir + "/frame1.bin", "--task", "1"]
        let bad = try S.moepack(["verify", img, "--board-output", dir + "/off.bin"] + frames)
        XCTAssertEqual(bad.status, 1, bad.stdout + bad.stderr)
        XCTAssertTrue(bad.stdout.contains("575/576 elements identical, largest error 1 LSB"), bad.stdout)
        let first: Int = 288 + 5 * 32 + 7
        XCTAssertTrue(bad.stdout.contains("first difference: image 1, token 5, channel 7: board \(off[first]), emulation \(raw[first])"), bad.stdout)
        let within = try S.moepack(["verify", img, "--board-output", dir + "/off.bin", "--max-lsb", "1", "--json"] + frames)
        XCTAssertEqual(within.status, 0, within.stdout + within.stderr)
        XCTAssertTrue(within.stdout.contains("\"max_error_lsb\" : 1"), within.stdout)
        // Task 0's gates give another output: the --task pointer switch reached the board.
        XCTAssertNotEqual(values(raw[0..<288]), try fixedReference(dir + "/frame0.bin", task: 0))
    }

    func testDebugIDReturnsEarly() throws {
        try make()
        // 256: after the patch embedding. Token 0 is pos_embed[0] (no computation): compare with ddr.bin.
        var (h, sim) = try runOnBoard(["--image", dir + "/frame0.bin", "--debug-id", "256", "-o", dir + "/pe.bin"])
        XCTAssertEqual(h.status, 0, h.stderr + sim.stderr)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: img + "/manifest.json"))) as! [String: Any]
        let pos = (manifest["buffers"] as! [[String: Any]]).first { $0["name"] as! String == "pos_embed" }!
        let ddr = try S.int32s(img + "/ddr.bin")
        let posStart = (pos["offset"] as! Int) / 4
        XCTAssertEqual(Array(try S.int32s(dir + "/pe.bin")[0..<32]), Array(ddr[posStart..<(posStart + 32)]))
        // The last layer's output (3*16+12) is the whole kernel's output; 2*16+3 leaves layer 1's output,
        // the same as 1*16+12.
        XCTAssertTrue(sim.stdout.contains("board-sim: 1 run(s) done"), sim.stdout)
        (h, sim) = try runOnBoard(["--image", dir + "/frame0.bin", "--debug-id", "60", "-o", dir + "/l3.bin"])
        XCTAssertEqual(h.status, 0, h.stderr + sim.stderr)
        XCTAssertEqual(values(try S.int32s(dir + "/l3.bin")[...]), try fixedReference(dir + "/frame0.bin"))
        (h, sim) = try runOnBoard(["--image", dir + "/frame0.bin", "--debug-id", "35", "-o", dir + "/a.bin"])
        XCTAssertEqual(h.status, 0, h.stderr + sim.stderr)
        (h, sim) = try runOnBoard(["--image", dir + "/frame0.bin", "--debug-id", "28", "-o", dir + "/b.bin"])
        XCTAssertEqual(h.status, 0, h.stderr + sim.stderr)
        XCTAssertEqual(try S.int32s(dir + "/a.bin"), try S.int32s(dir + "/b.bin"))
        XCTAssertNotEqual(try S.int32s(dir + "/a.bin"), try S.int32s(dir + "/l3.bin"))
        let v = try S.moepack(["verify", img, "--board-output", dir + "/b.bin", "--image", dir + "/frame0.bin", "--debug-id", "28"])
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
        XCTAssertTrue(v.stdout.contains("(layer 1 output): 288/288 elements identical"), v.stdout)
    }

    func testCrossCompilesForAarch64() throws {
        let cc = "/usr/bin/aarch64-linux-gnu-gcc"
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: cc), "\(cc) missing: install gcc-aarch64-linux-gnu (make deps)")
        try make(["CC=aarch64-linux-gnu-gcc"])
        let elf = [UInt8](try Data(contentsOf: URL(fileURLWithPath: host + "/moepack_host")))
        XCTAssertEqual(Array(elf[0..<4]), [0x7F, 0x45, 0x4C, 0x46])          // ELF
        XCTAssertEqual(elf[4], 2)                                              // 64-bit
        XCTAssertEqual(UInt16(elf[18]) | UInt16(elf[19]) << 8, 183)            // e_machine EM_AARCH64
    }

    // MARK: faults

    private func assertOneLine(_ s: String, contains: String, file: StaticString = #filePath, line: UInt = #line) {
        let lines = s.split(separator: "\n").filter { !$0.hasPrefix("board-sim: ready") && !$0.hasPrefix("moepack: board-sim: run") }
        XCTAssertEqual(lines.count, 1, s, file: file, line: line)
        XCTAssertTrue(s.contains(contains), s, file: file, line: line)
    }

    /// A host built from a changed moepack_host.c must make the board refuse the run: the board
    /// reports `boardSays` and exits 2, the host gives up after its timeout with one line.
    private func assertBoardFault(hostChange: (old: String, new: String), boardSays: String,
                                  file: StaticString = #filePath, line: UInt = #line) throws {
        try S.edit(host + "/moepack_host.c", replacing: hostChange.old, with: hostChange.new)
        try make()
        let (h, sim) = try runOnBoard(["--image", dir + "/frame0.bin", "-o", dir + "/out.bin"], hostTimeout: "1")
        XCTAssertEqual(sim.status, 2, sim.stderr, file: file, line: line)
        assertOneLine(sim.stderr, contains: boardSays, file: file, line: line)
        XCTAssertEqual(h.status, 1, h.stderr, file: file, line: line)
        assertOneLine(h.stderr, contains: "moepack_host: ViT_compute: no ap_done within 1 s", file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.bin"), file: file, line: line)
    }

    func testForgottenSyncIsCaught() throws {
        try assertBoardFault(hostChange: ("    udmabuf_sync(o.sysfs, 0, p.used, 1);\n", "\n"),
                             boardSays: "were never made visible to the device before ap_start")
    }

    func testWrongPointerIsCaught() throws {
        // A wrong high word: 4 GiB above the buffer.
        try assertBoardFault(hostChange: ("write_pointer(c, a->reg, d->phys + offset);", "write_pointer(c, a->reg, d->phys + offset + 0x100000000ull);"),
                             boardSays: "pointer 0x160000000 + 6144 bytes is outside the device memory [0x60000000, 0x60400000) (a wrong pointer)")
    }

    func testPointerToAnotherArgumentIsCaught() throws {
        // Every pointer at the image base: the arguments overlap.
        try assertBoardFault(hostChange: ("write_pointer(c, a->reg, d->phys + offset);", "write_pointer(c, a->reg, d->phys + 0 * offset);"),
                             boardSays: "(a wrong pointer)")
    }

    func testFirstRunWithoutReloadIsRefused() throws {
        try assertBoardFault(hostChange: ("write_reg(c, MOEPACK_REG_RELOAD_ONE_TIME_WEIGHTS, 1);", "write_reg(c, MOEPACK_REG_RELOAD_ONE_TIME_WEIGHTS, 0);"),
                             boardSays: "first ap_start with reload_one_time_weights = 0")
    }

    func testStartBeforeCopyIsCaught() throws {
        // ap_start first, the copy and the write-back only after the wait: the kernel starts on
        // memory that holds nothing of the image.
        try assertBoardFault(hostChange: ("""
            copy_inputs(&dma, image, frames, o.n_frames, &p);
            udmabuf_sync(o.sysfs, 0, p.used, 1);

            /* 3. Pointers and scalars, start, poll. */
            double t0 = now();
            program_registers(&ctrl, &dma, &p, o.n_frames, o.debug_id);
            start_kernel(&ctrl);
            wait_done(&ctrl, o.timeout);
        """, """
            double t0 = now();
            program_registers(&ctrl, &dma, &p, o.n_frames, o.debug_id);
            start_kernel(&ctrl);
            wait_done(&ctrl, o.timeout);
            copy_inputs(&dma, image, frames, o.n_frames, &p);
            udmabuf_sync(o.sysfs, 0, p.used, 1);
        """), boardSays: "were never made visible to the device before ap_start (no sync_for_device/flush, or ap_start before the copy)")
    }

    func testEditedManifestIsRefusedBeforeTheDevice() throws {
        try make()
        for (old, new) in [("\"register\" : 212", "\"register\" : 216"), ("\"offset\" : 0", "\"offset\" : 4096"),
                           ("\"ctype\" : \"ap_fixed<16,2>\"", "\"ctype\" : \"ap_fixed<16,3>\""), ("\n  \"task\" : 0,", "\n  \"task\" : 1,")] {
            let m = img + "/manifest.json"
            let original = try String(contentsOfFile: m, encoding: .utf8)
            guard let r = original.range(of: old) else { XCTFail("manifest has no '\(old)'"); continue }
            try original.replacingCharacters(in: r, with: new).write(toFile: m, atomically: true, encoding: .utf8)
            // No board: the host must stop before opening any device file.
            let h = try S.run(host + "/moepack_host", ["--image", dir + "/frame0.bin", "-o", dir + "/out.bin", "--timeout", "1"] + S.boardArgs(dir))
            XCTAssertEqual(h.status, 2, old)
            assertOneLine(h.stderr, contains: "manifest.json: SHA-256")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/devmem"))
            try original.write(toFile: m, atomically: true, encoding: .utf8)
        }
        // A damaged image likewise.
        let ddr = img + "/ddr.bin"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: ddr)))
        bytes[5000] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: ddr))
        let h = try S.run(host + "/moepack_host", ["--image", dir + "/frame0.bin", "-o", dir + "/out.bin"] + S.boardArgs(dir))
        XCTAssertEqual(h.status, 2)
        assertOneLine(h.stderr, contains: "ddr.bin: SHA-256")
    }

    func testTableOutsideImageOrOverlappingIsRefused() throws {
        let table = host + "/moepack_host_table.h"
        let original = try String(contentsOfFile: table, encoding: .utf8)
        guard let row = original.split(separator: "\n").first(where: { $0.contains("{\"norm_bias\"") }) else { return XCTFail("no norm_bias row") }
        let fields = row.split(separator: ",")
        for (new, says) in [("{\"norm_bias\", 999999999u", "'norm_bias': offset 999999999 + "), ("{\"norm_bias\", 0u", "'norm_bias' [0, ")] {
            try original.replacingOccurrences(of: fields[0] + "," + fields[1], with: new).write(toFile: table, atomically: true, encoding: .utf8)
            try make()
            let h = try S.run(host + "/moepack_host", ["--image", dir + "/frame0.bin", "-o", dir + "/out.bin"] + S.boardArgs(dir))
            XCTAssertEqual(h.status, 2, h.stderr)
            assertOneLine(h.stderr, contains: says)
        }
    }

    func testTimeoutWithoutBoard() throws {
        try make()
        // Device files that exist but no kernel behind them: ap_done never comes.
        let sim = try S.startBoard(dir, idleTimeout: 0.2)
        _ = sim.wait(timeout: 10)
        for fifo in ["sync_for_device", "sync_for_cpu"] {   // as sysfs attributes: plain files
            try? FileManager.default.removeItem(atPath: dir + "/udmabuf0/" + fifo)
            _ = FileManager.default.createFile(atPath: dir + "/udmabuf0/" + fifo, contents: nil)
        }
        let t0 = Date()
        let h = try S.run(host + "/moepack_host", ["--image", dir + "/frame0.bin", "-o", dir + "/out.bin", "--timeout", "0.5"] + S.boardArgs(dir), timeout: 20)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 10)
        XCTAssertEqual(h.status, 1, h.stderr)
        assertOneLine(h.stderr, contains: "no ap_done within 0.5 s (CTRL = 0x1)")
    }

    func testUsageErrors() throws {
        try make()
        for (args, says) in [([String](), "give at least one --image"), (["--image", dir + "/frame0.bin"], "give -o OUT.bin"),
                             (["--image", dir + "/frame0.bin", "-o", "x", "--task", "7"], "task 7 is not in this image (packed: 0,1"),
                             (["--bogus", "1"], "--bogus: unknown option"),
                             // The tiny model has 4 layers: no layer 250, no step 0, nothing past 32 bits.
                             (["--image", dir + "/frame0.bin", "-o", "x", "--debug-id", "4000"], "--debug-id: 4000 is not 0, 256 or layer*16+k with layer < 4"),
                             (["--image", dir + "/frame0.bin", "-o", "x", "--debug-id", "16"], "--debug-id: 16 is not 0, 256"),
                             (["--image", dir + "/frame0.bin", "-o", "x", "--debug-id", "99999999999"], "--debug-id: 99999999999 is not 0, 256")] {
            let h = try S.run(host + "/moepack_host", args)
            XCTAssertEqual(h.status, 64, args.joined(separator: " ") + h.stderr)
            assertOneLine(h.stderr, contains: says)
        }
    }

    func testUnwritableOutputIsRefusedBeforeTheDevice() throws {
        try make()
        // No board files exist: the output check must come first.
        let h = try S.run(host + "/moepack_host", ["--image", dir + "/frame0.bin", "-o", dir + "/no-such-folder/out.bin", "--timeout", "1"] + S.boardArgs(dir))
        XCTAssertEqual(h.status, 1, h.stderr)
        assertOneLine(h.stderr, contains: "no-such-folder/out.bin: cannot create the output beside it")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/devmem"), "the device was touched")
    }

    func testForgottenInvalidateOfXIsCaught() throws {
        try S.edit(host + "/moepack_host.c", replacing: "    udmabuf_sync(o.sysfs, p.x, x_bytes, 0);\n", with: "\n")
        try make()
        let (h, sim) = try runOnBoard(["--image", dir + "/frame0.bin", "-o", dir + "/out.bin"])
        XCTAssertEqual(h.status, 0, h.stderr)
        XCTAssertEqual(sim.status, 0, sim.stderr)
        // The CPU still holds x's stale lines: what the host wrote out is not the kernel's x.
        let v = try S.moepack(["verify", img, "--board-output", dir + "/out.bin", "--image", dir + "/frame0.bin"])
        XCTAssertEqual(v.status, 1, v.stdout + v.stderr)
        XCTAssertTrue(v.stdout.contains("FAIL"), v.stdout)
    }

    func testBoardRefusesUndefinedDebugIDRegister() throws {
        try S.edit(host + "/moepack_host.c", replacing: "write_reg(c, MOEPACK_REG_DEBUG_ID, debug_id);", with: "write_reg(c, MOEPACK_REG_DEBUG_ID, 4000 + 0 * debug_id);")
        try make()
        let (h, sim) = try runOnBoard(["--image", dir + "/frame0.bin", "-o", dir + "/out.bin"], hostTimeout: "1")
        XCTAssertEqual(sim.status, 64, sim.stderr)
        assertOneLine(sim.stderr, contains: "'debug_id': 4000 is not 0, 256 or layer*16+k with layer < 4")
        XCTAssertEqual(h.status, 1, h.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.bin"))
    }
}
