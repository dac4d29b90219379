import Foundation
import XCTest
@testable import MoepackCheckpoint
import MoepackCore

/// Fixtures: Tests/Fixtures/checkpoint, made by scripts/make_checkpoint_fixtures.py (seeded).
private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("Fixtures/checkpoint")
private func fx(_ p: String) -> String { fixtures.appendingPathComponent(p).path }

private struct ExpectedTensor: Decodable { var name: String; var dtype: String; var shape: [Int] }
private struct ExpectedSet: Decodable {
    var tensors: [ExpectedTensor]
    var skipped: [String]?
    var badcrc_record: String?
    var optimizer_records: Int?
}
private let expected: [String: ExpectedSet] = {
    guard let d = try? Data(contentsOf: URL(fileURLWithPath: fx("expected.json"))),
          let e = try? JSONDecoder().decode([String: ExpectedSet].self, from: d) else { return [:] }
    return e
}()

/// Independent trivial reader: raw little-endian float32.
private func readF32(_ path: String) throws -> [Float] {
    let d = try Data(contentsOf: URL(fileURLWithPath: path))
    let b = [UInt8](d)
    var out: [Float] = []
    for i in stride(from: 0, to: b.count, by: 4) {
        var u = UInt32(b[i])
        u |= UInt32(b[i + 1]) << 8
        u |= UInt32(b[i + 2]) << 16
        u |= UInt32(b[i + 3]) << 24
        out.append(Float(bitPattern: u))
    }
    return out
}

private func bits(_ a: [Float]) -> [UInt32] { a.map(\.bitPattern) }

private func message(_ f: () throws -> Any) -> String {
    do { _ = try f(); return "<no error>" } catch { return String(describing: error) }
}

final class CheckpointTests: XCTestCase {
    func checkTensors(_ src: any TensorSource, tag: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let exp = try XCTUnwrap(expected[tag], "expected.json lacks \(tag)")
        XCTAssertEqual(src.entries.map(\.name), exp.tensors.map(\.name), file: file, line: line)
        for (e, x) in zip(src.entries, exp.tensors) {
            XCTAssertEqual(e.dtype.rawValue, x.dtype, "\(e.name)", file: file, line: line)
            XCTAssertEqual(e.shape, x.shape, "\(e.name)", file: file, line: line)
            let want = try readF32(fx("expected/\(tag)/\(e.name).f32"))
            XCTAssertEqual(bits(try src.readFloat32(e.name)), bits(want), "\(e.name)", file: file, line: line)
            let rawPath = fx("expected/\(tag)/\(e.name).raw")
            if FileManager.default.fileExists(atPath: rawPath) {
                XCTAssertEqual(try src.readRaw(e.name), [UInt8](try Data(contentsOf: URL(fileURLWithPath: rawPath))), "\(e.name) raw", file: file, line: line)
            }
        }
        if let sk = exp.skipped {
            XCTAssertEqual(Set(src.skipped.map(\.name)), Set(sk), file: file, line: line)
        }
    }

    // MARK: PyTorch zip / legacy

    func testZipBasic() throws {
        let src = try openCheckpoint(fx("basic_zip.pth"))
        XCTAssertEqual(src.container, CheckpointContainer(rawValue: "pytorch-zip"))
        try checkTensors(src, tag: "basic")
        XCTAssertTrue(src.notes.contains("state_dict is the top-level dict"), "\(src.notes)")
        XCTAssertEqual(src.entry("sliced_t")?.shape, [3, 4])
        XCTAssertEqual(src.entry("2.num_batches_tracked")?.shape, [])
        XCTAssertEqual(src.entry("2.num_batches_tracked")?.dtype, .int64)
        XCTAssertEqual(src.skipped.first { $0.name == "step" }?.reason, "int value, not a tensor")
    }

    /// Issue 16, reproduction 5: tensors that are views of one storage ('sliced' and 'sliced_t' of
    /// `base`) read its record once, not once per view (testZipBasic checks their values).
    func testSharedStorageRecordIsReadOnce() throws {
        let src = try XCTUnwrap(try openCheckpoint(fx("basic_zip.pth")) as? PyTorchZipSource)
        for e in src.entries { _ = try src.readFloat32(e.name) }
        let read = src.archive.recordsRead.filter { $0.hasPrefix(src.prefix + "data/") }
        XCTAssertEqual(read.count, Set(read).count, "a record read twice: \(read)")
        XCTAssertEqual(read.count, src.entries.count - 1, "15 tensors, 14 storages")
    }

    func testLegacyBasic() throws {
        let src = try openCheckpoint(fx("basic_legacy.pth"))
        XCTAssertEqual(src.container, CheckpointContainer(rawValue: "pytorch-legacy"))
        try checkTensors(src, tag: "basic")
    }

    func testDeflatedAndZip64() throws {
        let d = try openCheckpoint(fx("basic_deflated.pth"))
        XCTAssertEqual((d as? PyTorchZipSource)?.archive.entries.allSatisfy { $0.method == 8 }, true)
        try checkTensors(d, tag: "basic")
        let z = try openCheckpoint(fx("basic_zip64.pth"))
        try checkTensors(z, tag: "basic")
    }

    func testBadCRCNamesRecordAndOtherTensorsStillRead() throws {
        let src = try openCheckpoint(fx("basic_badcrc.pth"))
        let rec = try XCTUnwrap(expected["basic"]?.badcrc_record)
        let m = message { try src.readFloat32("half") }
        XCTAssertTrue(m.contains("CRC-32 mismatch") && m.contains(rec), m)
        XCTAssertEqual(bits(try src.readFloat32("0.weight")), bits(try readF32(fx("expected/basic/0.weight.f32"))))
    }

    func testTruncatedFile() {
        let m = message { try openCheckpoint(fx("truncated.pth")) }
        XCTAssertTrue(m.contains("truncated.pth") && m.contains("end-of-central-directory"), m)
    }

    func testTrainingCheckpointIsLazy() throws {
        let src = try XCTUnwrap(try openCheckpoint(fx("training.pth")) as? PyTorchZipSource)
        XCTAssertTrue(src.notes.contains("state_dict found under key 'state_dict'"), "\(src.notes)")
        XCTAssertEqual(src.stateDictKey, "state_dict")
        let opt = try XCTUnwrap(src.skipped.first { $0.name == "optimizer" })
        XCTAssertTrue(opt.reason.contains("not read"), opt.reason)
        let before = src.archive.recordsRead
        XCTAssertTrue(before.allSatisfy { !$0.contains("/data/") }, "\(before)")
        try checkTensors(src, tag: "training")
        let dataReads = src.archive.recordsRead.filter { $0.contains("/data/") }
        XCTAssertEqual(dataReads.count, src.entries.count)
        // Every optimizer-only storage record is corrupted; the state_dict still reads.
        let bad = try openCheckpoint(fx("training_badopt.pth"))
        XCTAssertGreaterThan(expected["training"]?.optimizer_records ?? 0, 0)
        try checkTensors(bad, tag: "training")
    }

    func testStateDictKeyOption() throws {
        let m = message { try openCheckpoint(fx("training.pth"), options: OpenOptions(stateDictKey: "nope")) }
        XCTAssertTrue(m.contains("'nope'") && m.contains("no such top-level key"), m)
        let src = try openCheckpoint(fx("training.pth"), options: OpenOptions(stateDictKey: "state_dict"))
        XCTAssertEqual(src.entries.map(\.name), expected["training"]?.tensors.map(\.name))
    }

    func testHostilePicklesAreRefused() {
        let s = message { try openCheckpoint(fx("evil_system.pth")) }
        XCTAssertTrue(s.contains("refused pickle global 'posix.system'"), s)
        let e = message { try openCheckpoint(fx("evil_eval.pth")) }
        XCTAssertTrue(e.contains("refused pickle global 'builtins.eval'"), e)
        let l = message { try openCheckpoint(fx("evil_legacy.pth")) }
        XCTAssertTrue(l.contains("refused pickle global 'posix.system'") && l.contains("evil_legacy.pth"), l)
    }

    func testUnknownContainer() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ckpt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let p = dir.appendingPathComponent("x.pth").path
        try Data("{\n  \"a\": 1}".utf8).write(to: URL(fileURLWithPath: p))
        let m = message { try openCheckpoint(p) }
        XCTAssertEqual(m, "\(p): not a checkpoint: unknown container (first bytes 7b 0a 20 20)")
        let f = message { try openCheckpoint(dir.path) }
        XCTAssertTrue(f.contains("not a checkpoint folder"), f)
    }

    // MARK: expert parallel

    func testExpertParallelConcatenation() throws {
        let src = try openCheckpoint(fx("ep"))
        XCTAssertEqual(src.container, CheckpointContainer(rawValue: "expert-parallel-folder"))
        try checkTensors(src, tag: "ep")
        XCTAssertEqual(src.entry("blocks.1.mlp.experts.w")?.shape, [4, 3, 4])
        let miss = message { try openCheckpoint(fx("ep_missing")) }
        XCTAssertTrue(miss.contains("'1.pth'") && miss.contains("missing rank file"), miss)
        let shp = message { try openCheckpoint(fx("ep_badshape")) }
        XCTAssertTrue(shp.contains("'w'") && shp.contains("rank 1") && shp.contains("[2,3,5]") && shp.contains("[2,3,4]"), shp)
    }

    // MARK: Edge-MoE folder

    func testEdgeMoETinyFolder() throws {
        let src = try openCheckpoint(fx("edge"))
        XCTAssertEqual(src.container, CheckpointContainer(rawValue: "edge-moe-folder"))
        let exp = try XCTUnwrap(expected["edge"])
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: src.entries.map { ($0.name, $0.shape) }),
                       Dictionary(uniqueKeysWithValues: exp.tensors.map { ($0.name, $0.shape) }))
        XCTAssertEqual(Set(src.skipped.map(\.name)), Set(exp.skipped ?? []))
        for e in src.entries {
            XCTAssertEqual(bits(try src.readFloat32(e.name)), bits(try readF32(fx("edge/\(e.name).float32.bin"))), e.name)
        }
        XCTAssertEqual(src.entries.first?.name, "image")
    }

    func testEdgeMoEBadSizes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("edge-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func put(_ n: String, _ bytes: Int) throws {
            try Data(count: bytes).write(to: dir.appendingPathComponent(n + ".float32.bin"))
        }
        try put("patch_embed_bias", 16)
        try put("l0_qkv_bias", 20)
        let m = message { try openCheckpoint(dir.path) }
        XCTAssertTrue(m.contains("l0_qkv_bias.float32.bin") && m.contains("[12]"), m)
        try put("l0_qkv_bias", 6)
        let m2 = message { try openCheckpoint(dir.path) }
        XCTAssertTrue(m2.contains("not a multiple of 4"), m2)
    }

    func testRealEdgeMoEWeights() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared/edge-moe/weights").path
        guard FileManager.default.fileExists(atPath: dir) else {
            throw XCTSkip("real Edge-MoE weights not present at \(dir)")
        }
        let src = try openCheckpoint(dir)
        XCTAssertEqual(src.container, CheckpointContainer(rawValue: "edge-moe-folder"))
        XCTAssertEqual(src.entries.count, 149)
        XCTAssertEqual(src.skipped, [])
        let shapes = Dictionary(uniqueKeysWithValues: src.entries.map { ($0.name, $0.shape) })
        XCTAssertEqual(shapes["image"], [3, 128, 256])
        XCTAssertEqual(shapes["patch_embed_weight"], [192, 3, 16, 16])
        XCTAssertEqual(shapes["pos_embed"], [129, 192])
        XCTAssertEqual(shapes["l0_qkv_weight"], [576, 192])
        XCTAssertEqual(shapes["l0_fc1_weight"], [768, 192])
        XCTAssertEqual(shapes["l0_fc2_weight"], [192, 768])
        XCTAssertEqual(shapes["l1_w_gate_T_task0"], [16, 192])
        XCTAssertEqual(shapes["l11_htoh4_bias"], [16, 384])
        XCTAssertEqual(shapes["l11_h4toh_bias"], [16, 192])
        XCTAssertEqual(shapes["l11_x_post_moe"], [129, 192])
        let bias = try src.readFloat32("patch_embed_bias")
        let direct = try readF32(dir + "/patch_embed_bias.float32.bin")
        XCTAssertEqual(bias.first?.bitPattern, direct.first?.bitPattern)
        XCTAssertEqual(bits(bias), bits(direct))
    }

    // MARK: npz

    func testNpz() throws {
        let src = try openCheckpoint(fx("tiny.npz"))
        XCTAssertEqual(src.container, CheckpointContainer(rawValue: "npz"))
        try checkTensors(src, tag: "npz")
    }

    // MARK: unpickler

    func testProtocol0And2PicklesWithCodecsEncode() throws {
        let p0: [UInt8] = [40, 100, 112, 48, 10, 86, 97, 10, 112, 49, 10, 40, 108, 112, 50, 10, 73, 49, 10, 97, 70, 50, 46, 53, 10, 97, 86, 120, 233, 10, 112, 51, 10, 97, 78, 97, 73, 48, 49, 10, 97, 40, 76, 49, 48, 57, 57, 53, 49, 49, 54, 50, 55, 55, 55, 54, 76, 10, 73, 45, 51, 10, 116, 112, 52, 10, 97, 115, 86, 98, 10, 112, 53, 10, 99, 95, 99, 111, 100, 101, 99, 115, 10, 101, 110, 99, 111, 100, 101, 10, 112, 54, 10, 40, 86, 104, 105, 10, 112, 55, 10, 86, 108, 97, 116, 105, 110, 49, 10, 112, 56, 10, 116, 112, 57, 10, 82, 112, 49, 48, 10, 115, 46]
        let p2: [UInt8] = [128, 2, 125, 113, 0, 40, 88, 1, 0, 0, 0, 97, 113, 1, 93, 113, 2, 40, 75, 1, 71, 64, 4, 0, 0, 0, 0, 0, 0, 88, 3, 0, 0, 0, 120, 195, 169, 113, 3, 78, 136, 138, 6, 0, 0, 0, 0, 0, 1, 74, 253, 255, 255, 255, 134, 113, 4, 101, 88, 1, 0, 0, 0, 98, 113, 5, 99, 95, 99, 111, 100, 101, 99, 115, 10, 101, 110, 99, 111, 100, 101, 10, 113, 6, 88, 2, 0, 0, 0, 104, 105, 113, 7, 88, 6, 0, 0, 0, 108, 97, 116, 105, 110, 49, 113, 8, 134, 113, 9, 82, 113, 10, 117, 46]
        for bytes in [p0, p2] {
            let v = try RestrictedUnpickler().load(bytes)
            guard case .dict(let items, _) = v, items.count == 2 else { return XCTFail("not a dict: \(v)") }
            XCTAssertEqual(items[0].key.stringValue, "a")
            guard case .list(let l) = items[0].value, l.count == 6 else { return XCTFail("a is not a 6-list") }
            XCTAssertEqual(l[0].intValue, 1)
            if case .float(let f) = l[1] { XCTAssertEqual(f, 2.5) } else { XCTFail("not float") }
            XCTAssertEqual(l[2].stringValue, "xé")
            if case .none = l[3] {} else { XCTFail("not None") }
            if case .bool(true) = l[4] {} else { XCTFail("not True") }
            XCTAssertEqual(l[5].sequence?.compactMap(\.intValue), [1 << 40, -3])
            if case .bytes(let b) = items[1].value { XCTAssertEqual(b, Array("hi".utf8)) } else { XCTFail("b is not bytes: \(items[1].value)") }
        }
    }

    func testPickleLimits() {
        // 300 × MARK, EMPTY_LIST, 300 × LIST.
        let deep: [UInt8] = [0x80, 2] + [UInt8](repeating: 0x28, count: 300) + [0x5d] + [UInt8](repeating: 0x6c, count: 300) + [0x2e]
        let m = message { try RestrictedUnpickler().load(deep) }
        XCTAssertTrue(m.contains("nesting deeper than 200"), m)
        // Billion laughs: L(k+1) = [L(k), L(k)] through the memo, 40 levels.
        var laughs: [UInt8] = [0x80, 2, 0x5d, 0x71, 0]
        for k in 1...40 { laughs += [0x30, 0x68, UInt8(k - 1), 0x68, UInt8(k - 1), 0x86, 0x71, UInt8(k)] }
        laughs += [0x2e]
        var lim = PickleLimits(); lim.maxTotalValues = 100_000
        let b = message { try RestrictedUnpickler(limits: lim).load(laughs) }
        XCTAssertTrue(b.contains("more than 100000 values"), b)
        let t = message { try RestrictedUnpickler().load([0x80, 2, 0x5d]) }
        XCTAssertTrue(t.contains("no STOP"), t)
        let s = message { try RestrictedUnpickler().load([0x80, 2, 0x58, 0xff, 0xff, 0xff, 0x7f]) }
        XCTAssertTrue(s.contains("exceeds the limit"), s)
        let g = message { try RestrictedUnpickler().load(Array("cos\nsystem\n(S'x'\ntR.".utf8)) }
        XCTAssertTrue(g.contains("refused pickle global 'os.system'"), g)
        let ld = message { try RestrictedUnpickler().load(Array("ctorch.storage\n_load_from_bytes\n.".utf8)) }
        XCTAssertTrue(ld.contains("refused pickle global 'torch.storage._load_from_bytes'"), ld)
    }

    func testStridedViewBoundsAreValidated() {
        let s = StorageRef(key: "0", dtype: .float32, numel: 6, location: "cpu")
        XCTAssertNoThrow(try TorchCheckpoint.validate(TensorRef(storage: s, offset: 1, shape: [2, 2], stride: [3, 1]), name: "v", file: "f"))
        let m = message { try TorchCheckpoint.validate(TensorRef(storage: s, offset: 2, shape: [2, 2], stride: [3, 1]), name: "v", file: "f") }
        XCTAssertTrue(m.contains("'v'") && m.contains("reaches element 6"), m)
        let o = message { try TorchCheckpoint.validate(TensorRef(storage: s, offset: 0, shape: [1 << 40, 1 << 40], stride: [0, 0]), name: "v", file: "f") }
        XCTAssertTrue(o.contains("overflows"), o)
        let raw: [UInt8] = (0..<24).map(UInt8.init)
        let t = TensorRef(storage: s, offset: 1, shape: [2, 2], stride: [1, 3]) // elements 1,4,2,5
        XCTAssertEqual(TorchCheckpoint.gather(raw, t), [4, 5, 6, 7, 16, 17, 18, 19, 8, 9, 10, 11, 20, 21, 22, 23])
    }
}
