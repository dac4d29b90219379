import XCTest
import Foundation
import TestSupport

/// The main job through the built binary on the tiny fixture model: pack → check → run → verify
/// (float and fixed), with values checked against the PyTorch reference of scripts/reference_m3vit.py.
final class CLIEndToEndTests: XCTestCase {
    private let repo = packageRoot()

    private func moepack(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        guard let bin = builtMoepack(in: repo) else { throw XCTSkip("moepack not built (run `swift build` first)") }
        return try runProcess(bin, args, in: repo)
    }

    private func rawFloats(_ name: String) throws -> [Float] {
        let d = try Data(contentsOf: repo.appendingPathComponent("Tests/Fixtures/tiny/\(name)"))
        return d.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    func testPackRunVerifyTinyModel() throws {
        let dir = NSTemporaryDirectory() + "moepack-e2e-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ckpt = "Tests/Fixtures/tiny/model.pth", frame = "Tests/Fixtures/tiny/frame.u8"

        let pack = try moepack(["pack", ckpt, "-o", dir + "/img", "--profile", "tiny-test", "--image", frame])
        XCTAssertEqual(pack.status, 0, pack.stderr)
        XCTAssertTrue(pack.stdout.contains("profile tiny-test, task 0, AP_RND_CONV/AP_SAT"), pack.stdout)
        XCTAssertEqual(pack.stderr, "", "no warnings for an in-range model")
        let check = try moepack(["check", dir + "/img"])
        XCTAssertEqual(check.status, 0, check.stderr)

        // run --mode float equals PyTorch's forward of the dequantized model (float32 tolerance).
        let run = try moepack(["run", dir + "/img", "--image", frame, "-o", dir + "/out.npy"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let out = try npyFloat32Values(dir + "/out.npy")
        let ref = try rawFloats("ref_dequant_out_task0.f32")
        XCTAssertEqual(out.count, 9 * 32)
        let maxErr = zip(out, ref).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(maxErr, 1e-4, "float path vs PyTorch on the dequantized weights")

        for mode in ["float", "fixed"] {
            let v = try moepack(["verify", dir + "/img", "--checkpoint", ckpt, "--image", frame, "--mode", mode, "--json"])
            XCTAssertEqual(v.status, 0, v.stderr)
            let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(v.stdout.utf8)) as? [String: Any])
            XCTAssertEqual(json["passed"] as? Bool, true)
            let moe = try XCTUnwrap(json["moe_blocks"] as? [[String: Any]])
            XCTAssertEqual(moe.map { $0["block"] as? Int }, [1, 3])
            for b in moe { XCTAssertGreaterThanOrEqual(b["routing_agreement"] as? Double ?? 0, 0.98) }
            let frames = try XCTUnwrap(json["frames"] as? [[String: Any]])
            let o = try XCTUnwrap(frames.first?["output"] as? [String: Any])
            XCTAssertLessThan(o["mse"] as? Double ?? 1, 1e-3)
            XCTAssertEqual((frames.first?["blocks"] as? [Any])?.count, 4)
        }

        // A threshold that cannot be met: exit 1 and a FAIL line.
        let strictV = try moepack(["verify", dir + "/img", "--checkpoint", ckpt, "--image", frame, "--min-cosine", "1"])
        XCTAssertEqual(strictV.status, 1)
        XCTAssertTrue(strictV.stdout.contains("FAIL: cosine"), strictV.stdout)
    }

    /// verify compares the tensors it reads with the manifest's digests: the same weights in another
    /// container pass silently; one flipped mantissa bit is named.
    func testVerifyNamesTensorsThatDifferFromThePackedOnes() throws {
        let dir = NSTemporaryDirectory() + "moepack-src-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let frame = "Tests/Fixtures/tiny/frame.u8"
        let pack = try moepack(["pack", "Tests/Fixtures/tiny/model.pth", "-o", dir + "/img", "--profile", "tiny-test", "--quiet"])
        XCTAssertEqual(pack.status, 0, pack.stderr)
        let same = try moepack(["verify", dir + "/img", "--checkpoint", "Tests/Fixtures/tiny/model.safetensors", "--image", frame])
        XCTAssertEqual(same.status, 0, same.stderr)
        XCTAssertFalse(same.stderr.contains("not the checkpoint"), same.stderr)

        // blocks.0.attn.proj.bias is the first tensor of the safetensors data (offsets [0, 128]).
        var st = [UInt8](try Data(contentsOf: repo.appendingPathComponent("Tests/Fixtures/tiny/model.safetensors")))
        let headerLen = st[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(st[8..<(8 + headerLen)])) as? [String: Any])
        let entry = try XCTUnwrap(header["blocks.0.attn.proj.bias"] as? [String: Any])
        XCTAssertEqual(entry["data_offsets"] as? [Int], [0, 128])
        st[8 + headerLen] ^= 1
        try Data(st).write(to: URL(fileURLWithPath: dir + "/changed.safetensors"))
        let expected = "\(dir)/changed.safetensors is not the checkpoint this image was packed from (Tests/Fixtures/tiny/model.pth): 1 of 54 tensor(s) differ: blocks.0.attn.proj.bias"
        let other = try moepack(["verify", dir + "/img", "--checkpoint", dir + "/changed.safetensors", "--image", frame])
        XCTAssertEqual(other.status, 0, "a different checkpoint is a warning by default")
        XCTAssertTrue(other.stdout.contains("  warning: " + expected + "\n"), other.stdout)
        XCTAssertTrue(same.stdout.contains("  source: the 54 tensors read from Tests/Fixtures/tiny/model.safetensors are the ones packed"), same.stdout)

        let json = try moepack(["verify", dir + "/img", "--checkpoint", dir + "/changed.safetensors", "--image", frame, "--json"])
        XCTAssertEqual(json.stderr, "moepack: warning: " + expected + "\n")
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let check = try XCTUnwrap(report["source_check"] as? [String: Any])
        XCTAssertEqual(check["method"] as? String, "tensors")
        XCTAssertEqual(check["compared"] as? Int, 54)
        XCTAssertEqual(check["differing"] as? [String], ["blocks.0.attn.proj.bias"])
        XCTAssertEqual(report["passed"] as? Bool, true)

        let strict = try moepack(["verify", dir + "/img", "--checkpoint", dir + "/changed.safetensors", "--image", frame, "--require-same-source"])
        XCTAssertEqual(strict.status, 1)
        XCTAssertTrue(strict.stdout.contains("FAIL: checkpoint differs from the one packed (1 tensor(s))"), strict.stdout)
    }

    func testQuantizeRoundTrip() throws {
        let dir = NSTemporaryDirectory() + "moepack-q-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A float32 .npy [4] = {0.5, -1.25, 1.99999, 3.0} written by hand (NPY v1.0).
        var header = Array("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }".utf8)
        while (10 + header.count + 1) % 64 != 0 { header.append(0x20) }
        header.append(0x0A)
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.count & 0xFF), UInt8(header.count >> 8)] + header
        for v: Float in [0.5, -1.25, 1.99999, 3.0] { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/w.npy"))
        let q = try moepack(["quantize", dir + "/w.npy", "--type", "ap_fixed<8,2,AP_RND_CONV,AP_SAT>", "-o", dir + "/raw.npy"])
        XCTAssertEqual(q.status, 0, q.stderr)
        XCTAssertTrue(q.stderr.contains("2 value(s) outside ap_fixed<8,2,AP_RND_CONV,AP_SAT> range [-2.0, 1.984375], largest |value| 3.0"), q.stderr)
        let raw = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/raw.npy")))
        let hl = Int(raw[8]) | Int(raw[9]) << 8
        XCTAssertTrue(String(decoding: raw[10..<(10 + hl)], as: UTF8.self).contains("'descr': '|i1'"))
        // ap_fixed<8,2>: 6 fraction bits, LSB 1/64, max 127/64 = 1.984375. 0.5 → 32; −1.25 → −80;
        // 1.99999·64 = 127.99936 → 128 > 127 → saturates to 127 (overflow); 3.0 → 127 (overflow).
        XCTAssertEqual(raw[(10 + hl)...].map { Int8(bitPattern: $0) }, [32, -80, 127, 127])
        let back = try moepack(["quantize", dir + "/raw.npy", "--type", "ap_fixed<8,2>", "--dequantize", "-o", dir + "/back.npy"])
        XCTAssertEqual(back.status, 0, back.stderr)
        XCTAssertEqual(try npyFloat32Values(dir + "/back.npy"), [0.5, -1.25, 1.984375, 1.984375])
    }

    /// libhdf5 1.10.8 dies with SIGSEGV on this fuzzer-found file; moepack must still answer in one line.
    func testHDF5LibraryCrashBecomesOneLineRefusal() throws {
        let bad = "fuzz/known-crashes/libhdf5/segv-H5F__accum_read-H5G__stab_iterate.h5"
        let r = try moepack(["inspect", bad])
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.stderr, "moepack: error: \(bad): corrupted HDF5 file: the HDF5 library crashed reading it (signal 11)\n")
        let ok = try moepack(["inspect", "Tests/Fixtures/tiny/model.h5"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
    }
}
