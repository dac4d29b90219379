import Foundation
import MoepackCheckpoint
import MoepackCore
import MoepackModel
import XCTest

/// Hostile and broken inputs at library level: every refusal is a MoepackError whose one-line
/// description names the file, the tensor or record and the problem (fixtures from
/// scripts/make_hostile_fixtures.py, in Tests/Fixtures/hostile/).
final class HostileInputTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/hostile").path
    static let pwned = "/tmp/moepack-hostile-pwned"

    func fx(_ name: String) -> String { Self.root + "/" + name }

    /// The profile model of `tiny-test` (D=32, 4 blocks, MoE blocks 1 and 3, 4 experts, 9 tokens).
    static let tiny = M3ViTConfig(embedDim: 32, depth: 4, heads: 2, moeBlocks: [1, 3], experts: 4, expertHidden: 16,
                                  mlpHidden: 64, tasks: 2, topK: 2, tokens: 9, patchSize: 16, inChans: 3,
                                  imageHeight: 32, imageWidth: 64)

    /// Asserts a MoepackError whose description contains `file` and every exact substring, on one line.
    func refused<T>(_ body: @autoclosure () throws -> T, _ fixture: String, _ parts: [String],
                    kind: MoepackError.Kind? = nil, line: UInt = #line) {
        assertRefusal(try body(), file: fixture, contains: parts, kind: kind, line: line)
    }

    /// Reads every tensor (raw and float32).
    func drain(_ src: any TensorSource) throws {
        for e in src.entries {
            _ = try src.readRaw(e.name)
            _ = try src.readFloat32(e.name)
        }
    }

    override func setUp() {
        try? FileManager.default.removeItem(atPath: Self.pwned)
    }

    override func tearDown() {
        XCTAssertFalse(FileManager.default.fileExists(atPath: Self.pwned), "a pickle payload was executed")
    }

    // MARK: files that are not checkpoints, truncation

    func testTruncatedAtSeveralCutPoints() {
        refused(try openCheckpoint(fx("truncated_10.pth")), "truncated_10.pth",
                ["zip: file of 10 bytes is too short for an end-of-central-directory record (truncated)"], kind: .badInput)
        for cut in ["half", "cd", "tail"] {
            refused(try openCheckpoint(fx("truncated_\(cut).pth")), "truncated_\(cut).pth",
                    ["zip: no end-of-central-directory record (truncated or not a zip file)"], kind: .badInput)
        }
    }

    func testEmptyAndTextFiles() {
        refused(try openCheckpoint(fx("empty.pth")), "empty.pth", ["not a checkpoint: empty file"])
        refused(try openCheckpoint(fx("text.pth")), "text.pth",
                ["not a checkpoint: unknown container (first bytes 74 68 69 73)"])
    }

    // MARK: zip structure

    func testBadCRCNamesTensorAndRecordOthersStillRead() throws {
        let src = try openCheckpoint(fx("bad_crc.pth"))
        refused(try src.readFloat32("bias"), "bad_crc.pth",
                ["'bias': record 'archive/data/1': zip: CRC-32 mismatch (stored ", "record is corrupted"], kind: .badInput)
        XCTAssertEqual(try src.readFloat32("weight"), (0..<12).map { Float($0) * 0.5 })
    }

    func testLocalHeaderDisagreeingWithCentralDirectory() throws {
        let src = try openCheckpoint(fx("zip_local_mismatch.pth"))
        refused(try src.readFloat32("weight"), "zip_local_mismatch.pth",
                ["'weight': record 'archive/data/0': zip: local header name differs from the central directory"])
        let zip = try ZipArchive(path: fx("zip_local_mismatch.pth"))
        refused(try zip.read("archive/data/0"), "zip_local_mismatch.pth",
                ["'archive/data/0': zip: local header name differs from the central directory"])
    }

    func testZipBombsAreRefusedBeforeAnyAllocation() {
        refused(try openCheckpoint(fx("zip_bomb_1t.pth")), "zip_bomb_1t.pth",
                ["'archive/data/0': zip: declared size 1099511627776 bytes exceeds the 16 GiB limit"])
        refused(try ZipArchive(path: fx("zip_bomb_8g.pth")), "zip_bomb_8g.pth",
                ["'archive/data/0': zip: declared size 8589934592 bytes is more than ", " deflated bytes can inflate to (zip bomb)"])
    }

    func testInflatedSizeDifferentFromDeclared() throws {
        let short = try ZipArchive(path: fx("inflate_size_short.pth"))
        refused(try short.read("archive/data/0"), "inflate_size_short.pth",
                ["'archive/data/0': zip: inflated data exceeds the declared size 40"])
        let long = try ZipArchive(path: fx("inflate_size_long.pth"))
        refused(try long.read("archive/data/0"), "inflate_size_long.pth",
                ["'archive/data/0': zip: inflated 48 bytes, central directory declares 56"])
        // Through the PyTorch reader the declared size already disagrees with the storage.
        refused(try openCheckpoint(fx("inflate_size_short.pth")), "inflate_size_short.pth",
                ["'weight': storage record 'archive/data/0' holds 40 bytes, expected 12 × 4"])
    }

    func testOverlappingRecords() {
        refused(try openCheckpoint(fx("zip_overlap.pth")), "zip_overlap.pth",
                ["'archive/data/0': zip: record overlaps the next record or the central directory"])
    }

    // MARK: tensor views and records

    func testStorageViewOutOfBounds() {
        refused(try openCheckpoint(fx("view_oob.pth")), "view_oob.pth",
                ["'view': view (offset 5, shape [2,4], stride [4,1]) reaches element 12 of a storage with 12 elements"])
    }

    func testRecordShorterThanNumelTimesItemsize() {
        refused(try openCheckpoint(fx("short_record.pth")), "short_record.pth",
                ["'weight': storage record 'archive/data/0' holds 44 bytes, expected 12 × 4"])
    }

    func testSmallBaseReadsCorrectly() throws {
        let src = try openCheckpoint(fx("small.pth"))
        XCTAssertEqual(try src.readFloat32("view"), (4..<12).map { Float($0) + 100 })
        XCTAssertEqual(try src.readFloat32("bias"), [0.5, -0.5, 1.5])
    }

    // MARK: pickles

    func testMaliciousPicklesAreRefusedWithoutExecuting() {
        let cases: [(String, String, String)] = [
            ("evil_system.pth", "archive/data.pkl", "posix.system"),
            ("evil_eval.pth", "archive/data.pkl", "__builtin__.eval"),
            ("evil_popen.pth", "archive/data.pkl", "subprocess.Popen"),
            ("evil_nested.pth", "archive/data.pkl", "posix.system"),
            ("evil_legacy.pth", "pickle", "posix.system"),
            ("evil_user_class.pth", "archive/data.pkl", "__main__.Config"),
        ]
        for (file, record, global) in cases {
            refused(try openCheckpoint(fx(file)), file,
                    ["'\(record)': refused pickle global '\(global)' (not on the allow-list of tensor-rebuilding names; nothing was executed)"],
                    kind: .badInput)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: Self.pwned))
    }

    func testTrainingCheckpointWithNumpyScalarsAndArgparseOpens() throws {
        for file in ["training_numpy.pth", "training_numpy1.pth"] {
            let src = try openCheckpoint(fx(file))
            XCTAssertEqual(src.entries.map(\.name), ["w"], file)
            XCTAssertEqual(try src.readFloat32("w"), [0, 0.25, 0.5, 0.75, 1, 1.25], file)
            let skipped = Dictionary(uniqueKeysWithValues: src.skipped.map { ($0.name, $0.reason) })
            XCTAssertEqual(skipped["best_acc"], "top-level numpy.scalar outside the state_dict 'state_dict' (training state, not read)", file)
            XCTAssertEqual(skipped["acc_dtype"], "top-level numpy.dtype outside the state_dict 'state_dict' (training state, not read)", file)
            XCTAssertEqual(skipped["args"], "top-level argparse.Namespace outside the state_dict 'state_dict' (training state, not read)", file)
            XCTAssertEqual(skipped["epoch"], "top-level int outside the state_dict 'state_dict' (training state, not read)", file)
        }
    }

    func testNumpyAndArgparseNamesAreInterpretedNotCalled() throws {
        // numpy.dtype with a non-string argument, and argparse.Namespace with constructor arguments, are refused.
        let badDType = Array("cnumpy\ndtype\n(I1\ntR.".utf8)
        XCTAssertThrowsError(try RestrictedUnpickler(file: "x.pkl").load(badDType)) { e in
            XCTAssertEqual((e as? MoepackError)?.description, "x.pkl: numpy.dtype: first argument is not a type string")
        }
        let badNS = Array("cargparse\nNamespace\n(I1\ntR.".utf8)
        XCTAssertThrowsError(try RestrictedUnpickler(file: "x.pkl").load(badNS)) { e in
            XCTAssertEqual((e as? MoepackError)?.description, "x.pkl: argparse.Namespace: unexpected constructor arguments")
        }
        // Other numpy names stay refused.
        XCTAssertThrowsError(try RestrictedUnpickler(file: "x.pkl").load(Array("cnumpy\nload\n.".utf8))) { e in
            XCTAssertTrue((e as? MoepackError)?.description.contains("refused pickle global 'numpy.load'") ?? false)
        }
    }

    func testDeeplyNestedPickleDoesNotOverflowTheStack() {
        // NONE then a million TUPLE1: the value graph is a million levels deep.
        let deep: [UInt8] = [0x80, 2, 0x4e] + [UInt8](repeating: 0x85, count: 1_000_000) + [0x2e]
        XCTAssertThrowsError(try RestrictedUnpickler(file: "deep.pkl").load(deep)) { e in
            XCTAssertEqual((e as? MoepackError)?.description, "deep.pkl: pickle nesting deeper than 200 (or cyclic)")
        }
        // A list that contains itself (cycle through the memo).
        let cyc: [UInt8] = [0x80, 2, 0x5d, 0x71, 0, 0x68, 0, 0x61, 0x2e]
        XCTAssertThrowsError(try RestrictedUnpickler(file: "cyc.pkl").load(cyc)) { e in
            XCTAssertEqual((e as? MoepackError)?.description, "cyc.pkl: pickle nesting deeper than 200 (or cyclic)")
        }
        // A chain of 200 000 nested lists built through the memo (each list appended into the previous
        // one), whose root is then dropped by overwriting its memo slot: releasing it must not recurse.
        var chain: [UInt8] = [0x80, 2, 0x5d, 0x71, 0, 0x5d, 0x71, 1, 0x61, 0x30, 0x68, 1]
        for _ in 0..<200_000 { chain += [0x5d, 0x71, 1, 0x61, 0x30, 0x68, 1] } // EMPTY_LIST BINPUT 1 APPEND POP BINGET 1
        chain += [0x30, 0x4e, 0x71, 0, 0x2e] // POP, NONE, BINPUT 0 (drops the root), STOP
        XCTAssertNoThrow(try RestrictedUnpickler(file: "chain.pkl").load(chain))
        // The same chain returned as the result is refused by depth, not by a crash.
        var chain2: [UInt8] = [0x80, 2, 0x5d, 0x71, 0, 0x5d, 0x71, 1, 0x61, 0x30, 0x68, 1]
        for _ in 0..<200_000 { chain2 += [0x5d, 0x71, 1, 0x61, 0x30, 0x68, 1] }
        chain2 += [0x30, 0x68, 0, 0x2e] // POP, BINGET 0 (the root), STOP
        XCTAssertThrowsError(try RestrictedUnpickler(file: "chain.pkl").load(chain2)) { e in
            XCTAssertEqual((e as? MoepackError)?.description, "chain.pkl: pickle nesting deeper than 200 (or cyclic)")
        }
    }

    func testErrorDescriptionStaysOneLineWithControlCharactersInNames() {
        let e = MoepackError(.badInput, file: "a\nb.pth", item: "x\r\ny\u{1}", "bad\tthing")
        XCTAssertEqual(e.description, "a\\nb.pth: 'x\\r\\ny\\u{1}': bad\\tthing")
    }

    // MARK: safetensors

    func testSafetensorsOffsets() {
        refused(try openCheckpoint(fx("st_oob.safetensors")), "st_oob.safetensors",
                ["'w': data_offsets [0,16] out of bounds: data section holds 8 bytes (truncated file?)"])
        refused(try openCheckpoint(fx("st_overlap.safetensors")), "st_overlap.safetensors",
                ["'b': data_offsets [8,24] overlap tensor 'a' (which ends at 16)"])
        refused(try openCheckpoint(fx("st_count.safetensors")), "st_count.safetensors",
                ["'w': byte count mismatch: data_offsets [0,16] span 16 bytes, shape [2,3] × F32 needs 24"])
        refused(try openCheckpoint(fx("st_huge_header.safetensors")), "st_huge_header.safetensors",
                ["safetensors header length 4611686018427387904 exceeds the 100000000-byte cap"])
    }

    // MARK: npy

    func testObjectNpyIsRefused() {
        refused(try openCheckpoint(fx("object.npy")), "object.npy",
                ["object arrays are refused: unpickling is not allowed (descr '|O')"], kind: .unsupported)
    }

    func testBigEndianAndFortranNpyAreReadCorrectly() throws {
        let be = try openCheckpoint(fx("big_endian.npy"))
        XCTAssertEqual(be.entries, [TensorEntry(name: "big_endian", dtype: .float32, shape: [3, 4])])
        XCTAssertEqual(try be.readFloat32("big_endian"), (0..<12).map { Float($0) * 0.25 - 1 })
        let f = try openCheckpoint(fx("fortran.npy"))
        XCTAssertEqual(f.entries, [TensorEntry(name: "fortran", dtype: .float64, shape: [3, 4])])
        XCTAssertEqual(try f.readFloat32("fortran"), (0..<12).map { Float($0) * 0.5 - 2 })
        let bf = try openCheckpoint(fx("big_fortran.npy"))
        XCTAssertEqual(bf.entries, [TensorEntry(name: "big_fortran", dtype: .int16, shape: [2, 3, 4])])
        XCTAssertEqual(try bf.readFloat32("big_fortran"), (0..<24).map { Float($0 - 5) })
        // Raw bytes come back little-endian in C order.
        let raw = try bf.readRaw("big_fortran")
        XCTAssertEqual(Array(raw.prefix(4)), [0xfb, 0xff, 0xfc, 0xff])
    }

    // MARK: HDF5

    func testIntegerHDF5WeightsAreNotFloatWeights() throws {
        let h = try openCheckpoint(fx("int_weights.h5"))
        XCTAssertEqual(h.entries.map(\.name), ["dense.bias"])
        XCTAssertEqual(h.skipped.map(\.name), ["dense.weight"])
        refused(try h.readFloat32("dense.weight"), "int_weights.h5",
                ["'dense.weight': integer dataset where a float weight is expected (integer dataset (signed 32-bit), not a float weight)"],
                kind: .mismatch)
        XCTAssertEqual(try h.readFloat32("dense.bias"), [0, 1, 2, 3])
    }

    func testHDF5DatasetThatStoresNothingIsRefusedBeforeAllocation() throws {
        let h = try openCheckpoint(fx("fill_only.h5"))
        XCTAssertEqual(h.entries, [TensorEntry(name: "w", dtype: .float32, shape: [4096, 8192])])
        refused(try h.readFloat32("w"), "fill_only.h5",
                ["'w': dataset declares 33554432 elements but stores 0 bytes in the file (fill values or a corrupted extent)"])
    }

    // MARK: model stage (tiny M³ViT, profile tiny-test)

    func testTinyLeanOpensAgainstTheProfile() throws {
        let b = try BackboneCheckpoint(source: try openCheckpoint(fx("tiny_lean.pth")), expected: Self.tiny)
        XCTAssertEqual(b.config.experts, 4)
        XCTAssertEqual(try b.read("blocks.2.attn.proj.weight").count, 32 * 32)
    }

    func testNaNAndInfWeightsAreRefusedByNameAndIndex() throws {
        let b = try BackboneCheckpoint(source: try openCheckpoint(fx("nan_weight.pth")), expected: Self.tiny)
        refused(try b.read("blocks.2.attn.proj.weight"), "nan_weight.pth",
                ["'module.backbone.blocks.2.attn.proj.weight': nan at flat index 101; NaN/Inf weights are refused"], kind: .numeric)
        let i = try BackboneCheckpoint(source: try openCheckpoint(fx("inf_weight.pth")), expected: Self.tiny)
        refused(try i.read("blocks.2.attn.proj.weight"), "inf_weight.pth",
                ["'module.backbone.blocks.2.attn.proj.weight': -inf at flat index 1; NaN/Inf weights are refused"], kind: .numeric)
    }

    func testStructureMismatchesSayExpectedAndActual() throws {
        refused(try BackboneCheckpoint(source: try openCheckpoint(fx("wrong_experts.pth")), expected: Self.tiny), "wrong_experts.pth",
                ["'module.backbone.blocks.1.mlp.experts.htoh4.weight': shape [3,16,32] gives expert count = 3, the profile expects 4"],
                kind: .mismatch)
        refused(try BackboneCheckpoint(source: try openCheckpoint(fx("wrong_tokens.pth")), expected: Self.tiny), "wrong_tokens.pth",
                ["'module.backbone.pos_embed': shape [1,17,32] gives token count = 17, the profile expects 9"], kind: .mismatch)
        refused(try BackboneCheckpoint(source: try openCheckpoint(fx("wrong_expert_hidden.pth")), expected: Self.tiny),
                "wrong_expert_hidden.pth",
                ["'module.backbone.blocks.1.mlp.experts.htoh4.weight': shape [4,24,32] gives expert hidden size = 24, the profile expects 16"],
                kind: .mismatch)
    }

    func testMissingTensorIsRefusedByName() throws {
        refused(try BackboneCheckpoint(source: try openCheckpoint(fx("missing_tensor.pth")), expected: Self.tiny),
                "missing_tensor.pth", ["'blocks.2.attn.proj.weight': missing tensor (expected shape [32,32])"], kind: .badInput)
    }

    func testTinyBadCRCNamesTheTensor() throws {
        let b = try BackboneCheckpoint(source: try openCheckpoint(fx("tiny_bad_crc.pth")), expected: Self.tiny)
        refused(try b.read("blocks.0.norm1.bias"), "tiny_bad_crc.pth",
                ["'module.backbone.blocks.0.norm1.bias': record 'archive/data/1': zip: CRC-32 mismatch"])
    }

    func testExpertParallelFolderWithMissingRank() {
        refused(try openCheckpoint(fx("ep_missing_rank")), "ep_missing_rank",
                ["'1.pth': missing rank file (ranks must be 0…2)"], kind: .badInput)
    }

    // MARK: fuzzer regressions

    /// Every input a fuzz target once crashed on (Tests/Fixtures/hostile/regressions/<target>/) now
    /// opens and reads cleanly or is refused with a one-line MoepackError naming the file.
    func testFuzzerRegressionsFailCleanly() throws {
        let dir = fx("regressions")
        let targets = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        var n = 0
        for t in targets.sorted() {
            for f in try FileManager.default.contentsOfDirectory(atPath: dir + "/" + t).sorted() {
                let p = dir + "/" + t + "/" + f
                n += 1
                do {
                    if t == "pickle" {
                        _ = try RestrictedUnpickler(file: p, record: "data.pkl").load(
                            [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))) { _ in .none }
                    } else {
                        try drain(try openCheckpoint(p))
                    }
                } catch let e as MoepackError {
                    XCTAssertFalse(e.description.contains("\n"), "\(t)/\(f): \(e.description)")
                    XCTAssertTrue(e.description.hasPrefix(p), "\(t)/\(f): \(e.description)")
                }
            }
        }
        XCTAssertGreaterThan(n, 0)
    }
}
