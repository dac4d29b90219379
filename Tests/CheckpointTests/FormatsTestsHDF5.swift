import Foundation
import MoepackCheckpoint
import MoepackCore
import XCTest

final class FormatsTestsHDF5: XCTestCase {
    typealias F = FormatsFixtures

    func testWalkNamesDtypesAndSkipped() throws {
        let h = try HDF5Source(path: F.path("model.h5"))
        XCTAssertEqual(h.container, CheckpointContainer(rawValue: "hdf5"))
        XCTAssertEqual(h.entries, [
            TensorEntry(name: "be.weight", dtype: .float32, shape: [6, 4]),
            TensorEntry(name: "bf16.weight", dtype: .bfloat16, shape: [2, 3, 4]),
            TensorEntry(name: "blocks.0.attn.qkv.weight", dtype: .float32, shape: [6, 4]),
            TensorEntry(name: "blocks.0.mlp.experts.htoh4.weight", dtype: .float32, shape: [2, 3, 4]),
            TensorEntry(name: "blocks.0.norm1.bias", dtype: .float16, shape: [4]),
            TensorEntry(name: "empty", dtype: .float32, shape: [0, 3]),
            TensorEntry(name: "head.weight", dtype: .float64, shape: [3, 2]),
            TensorEntry(name: "pos_embed", dtype: .float32, shape: [1, 3, 4]),
            TensorEntry(name: "special", dtype: .float32, shape: [16]),
        ])
        XCTAssertEqual(h.skipped.map(\.name), ["alias", "meta.name", "num_batches_tracked"])
        XCTAssertEqual(h.skipped[0].reason, "soft link (not followed)")
        XCTAssertTrue(h.skipped[1].reason.hasPrefix("string dataset"))
        XCTAssertEqual(h.skipped[2].reason, "integer dataset (signed 64-bit), not a float weight")
        XCTAssertTrue(h.notes.contains { $0.contains("big-endian") }, "\(h.notes)")
        XCTAssertTrue(h.notes.contains { $0.contains("2 dataset(s) chunked") }, "\(h.notes)")
    }

    func testValuesBitExactIncludingChunkedGzipAndBigEndian() throws {
        let h = try HDF5Source(path: F.path("model.h5"))
        for e in h.entries where !["be.weight", "bf16.weight"].contains(e.name) {
            XCTAssertEqual(F.bits(try h.readFloat32(e.name)), try F.expectedBits(e.name), e.name)
        }
        XCTAssertEqual(F.bits(try h.readFloat32("be.weight")), try F.expectedBits("blocks.0.attn.qkv.weight"))
        XCTAssertEqual(F.bits(try h.readFloat32("bf16.weight")), try F.expectedBits("blocks.0.mlp.experts.htoh4.weight"))
    }

    func testRawBytesMatchSafetensors() throws {
        let h = try HDF5Source(path: F.path("model.h5"))
        let s = try SafetensorsSource(path: F.path("model.safetensors"))
        for name in ["blocks.0.attn.qkv.weight", "blocks.0.norm1.bias", "head.weight", "special", "pos_embed", "empty"] {
            XCTAssertEqual(try h.readRaw(name), try s.readRaw(name), name)
        }
        XCTAssertEqual(try h.readRaw("be.weight"), try s.readRaw("blocks.0.attn.qkv.weight"))
        XCTAssertEqual(try h.readRaw("bf16.weight"), try s.readRaw("blocks.0.mlp.experts.htoh4.weight"))
    }

    func testNonFloatDatasetsAreRefusedByName() throws {
        let h = try HDF5Source(path: F.path("model.h5"))
        assertRefusal(try h.readFloat32("num_batches_tracked"), file: "model.h5",
                      contains: ["'num_batches_tracked'", "integer dataset where a float weight is expected"], kind: .mismatch)
        assertRefusal(try h.readRaw("meta.name"), file: "model.h5",
                      contains: ["'meta.name'", "string dataset where a float weight is expected"])
        assertRefusal(try h.readFloat32("nope"), file: "model.h5", contains: ["'nope'", "no such dataset"])
    }

    func testNonHDF5FilesAreRefused() throws {
        assertRefusal(try HDF5Source(path: F.path("text.txt")), file: "text.txt", contains: ["not an HDF5 file"])
        assertRefusal(try HDF5Source(path: F.path("empty.bin")), file: "empty.bin", contains: ["not an HDF5 file"])
        assertRefusal(try HDF5Source(path: F.path("missing.h5")), file: "missing.h5", contains: ["no such file"], kind: .io)
        // A truncated HDF5 file: the library's complaint becomes one line.
        let dir = try F.tempDir(self)
        let cut = dir + "/cut.h5"
        try Data(try F.bytes("model.h5").prefix(3000)).write(to: URL(fileURLWithPath: cut))
        do {
            let h = try HDF5Source(path: cut)
            for e in h.entries { _ = try h.readFloat32(e.name) }
            XCTFail("truncated HDF5 file was read")
        } catch let e as MoepackError {
            XCTAssertTrue(e.description.contains("cut.h5"), e.description)
            XCTAssertFalse(e.description.contains("\n"))
        }
        XCTAssertTrue(try CheckpointContainer.hdf5.sniffs(CheckpointProbe(path: F.path("model.h5"))))
        XCTAssertFalse(try CheckpointContainer.hdf5.sniffs(CheckpointProbe(path: F.path("text.txt"))))
    }

    func testConcurrentReadsAreSerialized() throws {
        let h = try HDF5Source(path: F.path("model.h5"))
        let expected = try F.expectedBits("special")
        let good = FormatsCounter()
        DispatchQueue.concurrentPerform(iterations: 16) { _ in
            if (try? h.readFloat32("special")).map(F.bits) == expected { good.increment() }
        }
        XCTAssertEqual(good.value, 16)
    }
}
