import Foundation
import MoepackCheckpoint
import MoepackCore
import XCTest

/// A source that lies about its bytes, to check the writer leaves no file behind.
private final class LyingSource: TensorSource {
    let path = "lying"
    let container = CheckpointContainer.memory
    let entries = [TensorEntry(name: "a", dtype: .float32, shape: [4])]
    let skipped: [SkippedEntry] = []
    let notes: [String] = []
    func readFloat32(_ name: String) throws -> [Float] { [1, 2, 3] }
    func readRaw(_ name: String) throws -> [UInt8] { [0, 0, 0] }
}

final class FormatsTestsWriters: XCTestCase {
    typealias F = FormatsFixtures

    private func leftovers(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    }

    func testStreamingCopyIsByteIdenticalToPython() throws {
        let src = try SafetensorsSource(path: F.path("model.safetensors"))
        let dir = try F.tempDir(self)
        let out = dir + "/copy.safetensors"
        // Selection order does not matter: the writer lays tensors out as Python does.
        let sel = src.entries.reversed().map { SafetensorsWriter.Selection(outName: $0.name, sourceName: $0.name) }
        try SafetensorsWriter.write(from: src, selecting: sel, metadata: src.metadata, to: out)
        XCTAssertEqual(try F.bytes("model.safetensors"), [UInt8](try Data(contentsOf: URL(fileURLWithPath: out))))
        XCTAssertEqual(try leftovers(dir), ["copy.safetensors"])
    }

    func testStreamingConversionMatchesTorch() throws {
        let src = try SafetensorsSource(path: F.path("model.safetensors"))
        let dir = try F.tempDir(self)
        let out = dir + "/converted.safetensors"
        let sel: [SafetensorsWriter.Selection] = [
            .init(outName: "q16", sourceName: "blocks.0.attn.qkv.weight", targetDType: .float16),
            .init(outName: "qbf16", sourceName: "blocks.0.attn.qkv.weight", targetDType: .bfloat16),
            .init(outName: "s16", sourceName: "special", targetDType: .float16),
            .init(outName: "sbf16", sourceName: "special", targetDType: .bfloat16),
            .init(outName: "h32", sourceName: "head.weight", targetDType: .float32),
            .init(outName: "n32", sourceName: "blocks.0.norm1.bias", targetDType: .float32),
            .init(outName: "e64", sourceName: "blocks.0.mlp.experts.htoh4.weight", targetDType: .float64),
            .init(outName: "keep", sourceName: "num_batches_tracked"),
        ]
        try SafetensorsWriter.write(from: src, selecting: sel, metadata: ["stage": "moepack-test"], to: out)
        XCTAssertEqual(try F.bytes("converted.safetensors"), [UInt8](try Data(contentsOf: URL(fileURLWithPath: out))))

        assertRefusal(try SafetensorsWriter.write(from: src, selecting: [.init(outName: "x", sourceName: "special", targetDType: .int8)],
                                                  to: dir + "/bad.safetensors"),
                      file: "bad.safetensors", contains: ["'x'", "cannot convert F32 to I8"], kind: .unsupported)
        assertRefusal(try SafetensorsWriter.write(from: src, selecting: [.init(outName: "x", sourceName: "missing")],
                                                  to: dir + "/bad.safetensors"),
                      file: "model.safetensors", contains: ["'missing'", "no such tensor"])
        XCTAssertEqual(try leftovers(dir), ["converted.safetensors"])
    }

    func testInMemoryWriteMatchesNumpySaveFile() throws {
        func le<T: FixedWidthInteger>(_ v: [T]) -> [UInt8] { v.flatMap { x in withUnsafeBytes(of: x.littleEndian) { Array($0) } } }
        let w = (0..<6).map { Float($0) * 0.25 - 1.0 }
        let items: [SafetensorsWriter.Item] = [
            ("w", .float32, [2, 3], F.leBytes(w)),
            ("b", .float16, [3], le([Float16(0.5), Float16(-1.5), Float16(2.0)].map(\.bitPattern))),
            ("i", .int8, [4], [0x80, 0xFF, 0x00, 0x7F]),
            ("u", .uint16, [2], le([UInt16(0), 65535])),
            ("m", .bool, [3], [1, 0, 1]),
            ("s", .int64, [], le([Int64(42)])),
            ("é/\"x\"", .float64, [1], le([(1.0 as Double).bitPattern])),
        ]
        let dir = try F.tempDir(self)
        let out = dir + "/mem.safetensors"
        try SafetensorsWriter.write(tensors: items, metadata: ["format": "np"], to: out)
        XCTAssertEqual(try F.bytes("writer_np.safetensors"), [UInt8](try Data(contentsOf: URL(fileURLWithPath: out))))

        // Round trip through the reader.
        let back = try SafetensorsSource(path: out)
        XCTAssertEqual(try back.readFloat32("w"), w)
        XCTAssertEqual(try back.readFloat32("é/\"x\""), [1.0])

        // Byte-count mismatch: refused, nothing written.
        assertRefusal(try SafetensorsWriter.write(tensors: [("a", .float32, [2], [0, 0, 0])], to: dir + "/bad.safetensors"),
                      file: "bad.safetensors", contains: ["'a'", "3 bytes given", "needs 8"])
        assertRefusal(try SafetensorsWriter.write(tensors: [("a", .uint8, [1], [0]), ("a", .uint8, [1], [0])], to: dir + "/bad.safetensors"),
                      file: "bad.safetensors", contains: ["'a'", "given twice"])
        assertRefusal(try SafetensorsWriter.write(from: LyingSource(), selecting: [.init(outName: "a", sourceName: "a")],
                                                  to: dir + "/bad.safetensors"),
                      file: "lying", contains: ["'a'", "source gave 3 bytes"])
        XCTAssertEqual(try leftovers(dir), ["mem.safetensors"])
    }

    func testHeaderDetails() throws {
        // Metadata keys sorted, serde_json escaping, space padding to a multiple of 8.
        let (h, order) = try SafetensorsWriter.layout([("z", .uint8, [1]), ("a\n\u{01}", .uint8, [2])],
                                                      metadata: ["b": "2", "a": "1\t"])
        let n = Int(h[0]) | Int(h[1]) << 8
        XCTAssertEqual(h.count, 8 + n)
        XCTAssertEqual(n % 8, 0)
        let text = String(decoding: h[8...], as: UTF8.self)
        XCTAssertTrue(text.hasPrefix(#"{"__metadata__":{"a":"1\t","b":"2"},"a\n\u0001":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"z":"#), text)
        XCTAssertTrue(text.hasSuffix("}    "), text)  // 108 JSON bytes + 4 spaces
        XCTAssertEqual(order.map(\.index), [1, 0])
        XCTAssertEqual(order.map(\.byteCount), [2, 1])
    }

    func testFloatConversions() {
        XCTAssertEqual(FloatConversion.bfloat16Bits(Float(bitPattern: 0x3F80_8000)), 0x3F80)  // tie → even
        XCTAssertEqual(FloatConversion.bfloat16Bits(Float(bitPattern: 0x3F81_8000)), 0x3F82)  // tie → even
        XCTAssertEqual(FloatConversion.bfloat16Bits(Float(bitPattern: 0x3F80_8001)), 0x3F81)
        XCTAssertEqual(FloatConversion.bfloat16Bits(.nan), 0x7FC0)
        XCTAssertEqual(FloatConversion.bfloat16Bits(-.infinity), 0xFF80)
        XCTAssertEqual(FloatConversion.bfloat16Bits(.greatestFiniteMagnitude), 0x7F80)  // rounds up to inf
        XCTAssertEqual(FloatConversion.float16Bits(1 + 0x1p-11), 0x3C00)
        XCTAssertEqual(FloatConversion.float16Bits(1 + 3 * 0x1p-11), 0x3C02)
        XCTAssertEqual(FloatConversion.float16Bits(65520), 0x7C00)
        XCTAssertEqual(FloatConversion.float16Bits(65519), 0x7BFF)
        XCTAssertEqual(FloatConversion.float16Bits(0x1p-24), 0x0001)
        XCTAssertEqual(FloatConversion.float(fromFloat16Bits: 0x0001), 0x1p-24)
        XCTAssertEqual(FloatConversion.float(fromBFloat16Bits: 0xC020), -2.5)
    }

    func testNpyWriterMatchesNumpySave() throws {
        let dir = try F.tempDir(self)
        func check(_ fixture: String, _ write: (String) throws -> Void, line: UInt = #line) throws {
            let out = dir + "/" + fixture
            try write(out)
            XCTAssertEqual(try F.bytes("npy/" + fixture), [UInt8](try Data(contentsOf: URL(fileURLWithPath: out))), fixture, line: line)
        }
        func le<T: FixedWidthInteger>(_ v: [T]) -> [UInt8] { v.flatMap { x in withUnsafeBytes(of: x.littleEndian) { Array($0) } } }
        let w = Tensor(shape: [2, 3], values: (0..<6).map { Float($0) * 0.25 - 1.0 })
        try check("w_f4.npy") { try NpyWriter.write(w, to: $0) }
        try check("w_scalar.npy") { try NpyWriter.write(Tensor(shape: [], values: [3.5]), to: $0) }
        try check("w_i1.npy") { try NpyWriter.writeRaw(bytes: [0x80, 0xFF, 0, 0x7F], dtype: .int8, shape: [4], to: $0) }
        try check("w_u2.npy") { try NpyWriter.writeRaw(bytes: le([UInt16(0), 65535]), dtype: .uint16, shape: [2], to: $0) }
        try check("w_i4.npy") { try NpyWriter.writeRaw(bytes: le([Int32(1), -2, 3, -4]), dtype: .int32, shape: [2, 2], to: $0) }
        try check("w_i8.npy") { try NpyWriter.writeRaw(bytes: le([-(Int64(1) << 40), 5]), dtype: .int64, shape: [2], to: $0) }
        try check("w_u1.npy") { try NpyWriter.writeRaw(bytes: [0, 255, 7], dtype: .uint8, shape: [1, 3], to: $0) }
        // Round trip through the reader.
        XCTAssertEqual(try NpySource(path: dir + "/w_f4.npy").readTensor("w_f4"), w)

        assertRefusal(try NpyWriter.writeRaw(bytes: [1, 2, 3], dtype: .int16, shape: [2], to: dir + "/bad.npy"),
                      file: "bad.npy", contains: ["3 bytes given", "needs 4"])
        assertRefusal(try NpyWriter.writeRaw(bytes: [1, 2], dtype: .bfloat16, shape: [1], to: dir + "/bad.npy"),
                      file: "bad.npy", contains: ["BF16 has no NumPy equivalent"], kind: .unsupported)
        assertRefusal(try NpyWriter.write(w, to: dir + "/no/such/folder/x.npy"), file: "x.npy",
                      contains: ["cannot create a temporary file"], kind: .io)
        XCTAssertFalse(try leftovers(dir).contains { $0.hasPrefix(".") || $0 == "bad.npy" })
    }
}
