import Foundation
import MoepackCheckpoint
import MoepackCore
import XCTest

final class FormatsTestsSafetensors: XCTestCase {
    typealias F = FormatsFixtures

    func testTableOrderShapesAndMetadata() throws {
        let s = try SafetensorsSource(path: F.path("model.safetensors"))
        XCTAssertEqual(s.container, CheckpointContainer(rawValue: "safetensors"))
        // Python lays tensors out by dtype (I64, F64, F32, BF16, F16) then name; entries follow offsets.
        XCTAssertEqual(s.entries, [
            TensorEntry(name: "num_batches_tracked", dtype: .int64, shape: []),
            TensorEntry(name: "head.weight", dtype: .float64, shape: [3, 2]),
            TensorEntry(name: "blocks.0.attn.qkv.weight", dtype: .float32, shape: [6, 4]),
            TensorEntry(name: "empty", dtype: .float32, shape: [0, 3]),
            TensorEntry(name: "pos_embed", dtype: .float32, shape: [1, 3, 4]),
            TensorEntry(name: "special", dtype: .float32, shape: [16]),
            TensorEntry(name: "blocks.0.mlp.experts.htoh4.weight", dtype: .bfloat16, shape: [2, 3, 4]),
            TensorEntry(name: "blocks.0.norm1.bias", dtype: .float16, shape: [4]),
        ])
        XCTAssertEqual(s.metadata, ["format": "pt"])
        XCTAssertEqual(s.notes, [])
        XCTAssertEqual(s.skipped, [])
        XCTAssertEqual(s.headerByteCount % 8, 0)
    }

    func testValuesAreBitExact() throws {
        let s = try SafetensorsSource(path: F.path("model.safetensors"))
        for e in s.entries {
            XCTAssertEqual(F.bits(try s.readFloat32(e.name)), try F.expectedBits(e.name), e.name)
        }
        let t = try s.readTensor("pos_embed")
        XCTAssertEqual(t.shape, [1, 3, 4])
        // Raw F16 bytes: 2^-24 (smallest subnormal), -0, 0.333, -65504.
        let raw = try s.readRaw("blocks.0.norm1.bias")
        XCTAssertEqual(raw, [0x01, 0x00, 0x00, 0x80, 0x54, 0x35, 0xFF, 0xFB])
        // Raw BF16 bytes widen to the expected float32 bits.
        let bf = try s.readRaw("blocks.0.mlp.experts.htoh4.weight")
        let widened: [UInt32] = stride(from: 0, to: bf.count, by: 2).map { (i: Int) -> UInt32 in
            let lo = UInt32(bf[i]), hi = UInt32(bf[i + 1])
            return (lo | hi << 8) << 16
        }
        XCTAssertEqual(widened, try F.expectedBits("blocks.0.mlp.experts.htoh4.weight"))
        XCTAssertEqual(try s.readRaw("num_batches_tracked"), [7, 0, 0, 0, 0, 0, 0, 0])
        assertRefusal(try s.readFloat32("nope"), file: "model.safetensors", contains: ["'nope'", "no such tensor"])
    }

    func testSniffedAsSafetensors() throws {
        func kind(_ name: String) throws -> CheckpointContainer? {
            try CheckpointContainer.sniff(CheckpointProbe(path: F.path(name)))
        }
        XCTAssertEqual(try kind("model.safetensors"), .safetensors)
        XCTAssertEqual(try kind("gap.safetensors"), .safetensors)
        XCTAssertEqual(try kind("bad_huge_header.safetensors"), .safetensors)
        XCTAssertNil(try kind("empty.bin"))
        XCTAssertNil(try kind("text.txt"))
        XCTAssertEqual(try kind("npy/v1_f4.npy"), .npy)
        XCTAssertEqual(try kind("model.h5"), .hdf5)
    }

    func testHostileFilesAreRefusedWithTheProblemNamed() {
        let cases: [(String, [String], MoepackError.Kind)] = [
            ("bad_huge_header.safetensors", ["header length 4611686018427387904", "100000000-byte cap"], .badInput),
            ("bad_header_truncated.safetensors", ["header length", "truncated file"], .badInput),
            ("bad_oob.safetensors", ["'a'", "data_offsets [0,1000] out of bounds", "16 bytes"], .badInput),
            ("bad_truncated.safetensors", ["'blocks.0.mlp.experts.htoh4.weight'", "out of bounds", "truncated"], .badInput),
            ("bad_overlap.safetensors", ["'b'", "overlap tensor 'a'"], .badInput),
            ("bad_count.safetensors", ["'a'", "byte count mismatch", "span 12 bytes", "needs 16"], .badInput),
            ("bad_notjson.safetensors", ["not valid JSON"], .badInput),
            ("bad_array.safetensors", ["not a JSON object"], .badInput),
            ("bad_dtype.safetensors", ["'a'", "dtype 'F8_E4M3' is not supported"], .unsupported),
            ("bad_shape.safetensors", ["'a'", "shape holds a value that is not a non-negative integer"], .badInput),
            ("bad_duplicate.safetensors", ["'a'", "appears twice"], .badInput),
            ("bad_metadata.safetensors", ["'__metadata__.k'", "expected a string"], .badInput),
            ("empty.bin", ["too short"], .badInput),
            ("text.txt", ["header length", "cap"], .badInput),
        ]
        for (file, needles, kind) in cases {
            assertRefusal(try SafetensorsSource(path: F.path(file)), file: file, contains: needles, kind: kind)
        }
        assertRefusal(try SafetensorsSource(path: F.path("missing.safetensors")), file: "missing.safetensors",
                      contains: ["cannot open"], kind: .io)
    }

    func testGapsAndTrailingBytesAreNotesNotErrors() throws {
        let s = try SafetensorsSource(path: F.path("gap.safetensors"))
        XCTAssertEqual(try s.readFloat32("a"), [1.5])
        XCTAssertEqual(try s.readFloat32("b"), [-2.0])
        XCTAssertEqual(s.notes.count, 2)
        XCTAssertTrue(s.notes[0].contains("4 bytes between tensors"), s.notes[0])
        XCTAssertTrue(s.notes[1].contains("4 bytes after the last tensor"), s.notes[1])
    }

    func testConcurrentReads() throws {
        let s = try SafetensorsSource(path: F.path("model.safetensors"))
        let expected = try F.expectedBits("special")
        let good = FormatsCounter()
        DispatchQueue.concurrentPerform(iterations: 16) { _ in
            if (try? s.readFloat32("special")).map(F.bits) == expected { good.increment() }
        }
        XCTAssertEqual(good.value, 16)
    }
}
