import Foundation
import MoepackCheckpoint
import MoepackCore
import XCTest

final class FormatsTestsNpy: XCTestCase {
    typealias F = FormatsFixtures

    private func open(_ name: String) throws -> NpySource { try NpySource(path: F.path("npy/\(name).npy")) }

    func testVersionsAndDtypes() throws {
        let v1 = try open("v1_f4")
        XCTAssertEqual(v1.container, CheckpointContainer(rawValue: "npy"))
        XCTAssertEqual(v1.entries, [TensorEntry(name: "v1_f4", dtype: .float32, shape: [6, 4])])
        XCTAssertTrue(v1.header.version == (1, 0))
        XCTAssertEqual(v1.header.headerBytes, 128)
        XCTAssertEqual(F.bits(try v1.readFloat32("v1_f4")), try F.expectedBits("blocks.0.attn.qkv.weight"))

        let v2 = try open("v2_f8")
        XCTAssertTrue(v2.header.version == (2, 0))
        XCTAssertEqual(v2.entries[0].dtype, .float64)
        XCTAssertEqual(F.bits(try v2.readFloat32("v2_f8")), try F.expectedBits("head.weight"))

        let v3 = try open("v3_f2")
        XCTAssertTrue(v3.header.version == (3, 0))
        XCTAssertEqual(v3.entries[0], TensorEntry(name: "v3_f2", dtype: .float16, shape: [4]))
        XCTAssertEqual(try v3.readRaw("v3_f2"), [0x01, 0x00, 0x00, 0x80, 0x54, 0x35, 0xFF, 0xFB])
        XCTAssertEqual(F.bits(try v3.readFloat32("v3_f2")), try F.expectedBits("blocks.0.norm1.bias"))

        let sc = try open("scalar_f4")
        XCTAssertEqual(sc.entries[0].shape, [])
        XCTAssertEqual(try sc.readFloat32("scalar_f4"), [3.5])

        let b1 = try open("b1")
        XCTAssertEqual(b1.entries[0].dtype, .bool)
        XCTAssertEqual(try b1.readRaw("b1"), [1, 0, 1])
        XCTAssertEqual(try b1.readFloat32("b1"), [1, 0, 1])
        assertRefusal(try b1.readRaw("other"), file: "b1.npy", contains: ["'other'", "no such tensor"])
    }

    func testBigEndianAndFortranOrderAreNormalized() throws {
        let be = try open("be_f4")
        XCTAssertTrue(be.header.bigEndian)
        let expected = try F.expectedBits("blocks.0.attn.qkv.weight")
        XCTAssertEqual(F.bits(try be.readFloat32("be_f4")), expected)
        XCTAssertEqual(try be.readRaw("be_f4"), F.leBytes(expected.map(Float.init(bitPattern:))))

        let fo = try open("fortran_f4")
        XCTAssertTrue(fo.header.fortranOrder)
        XCTAssertEqual(fo.entries[0].shape, [2, 3, 4])
        XCTAssertEqual(F.bits(try fo.readFloat32("fortran_f4")), try F.expectedBits("blocks.0.mlp.experts.htoh4.weight"))

        let bf = try open("be_fortran_f8")
        XCTAssertTrue(bf.header.bigEndian && bf.header.fortranOrder)
        XCTAssertEqual(F.bits(try bf.readFloat32("be_fortran_f8")), try F.expectedBits("head.weight"))

        let i2 = try open("be_i2")
        XCTAssertEqual(i2.entries[0].dtype, .int16)
        XCTAssertEqual(try i2.readRaw("be_i2"), [0x01, 0x00, 0xFE, 0xFF, 0x2C, 0x01, 0x00, 0x80])
        XCTAssertEqual(try i2.readFloat32("be_i2"), [1, -2, 300, -32768])
    }

    func testRefusals() throws {
        assertRefusal(try open("object"), file: "object.npy",
                      contains: ["object arrays are refused: unpickling is not allowed"], kind: .unsupported)
        assertRefusal(try open("structured"), file: "structured.npy", contains: ["structured dtypes are refused"], kind: .unsupported)
        assertRefusal(try open("complex"), file: "complex.npy", contains: ["'<c8' is not supported"], kind: .unsupported)
        assertRefusal(try open("truncated"), file: "truncated.npy", contains: ["'truncated'", "needs 96 bytes", "truncated file"])
        assertRefusal(try NpySource(path: F.path("text.txt")), file: "text.txt", contains: ["magic string"])
        assertRefusal(try NpySource(path: F.path("empty.bin")), file: "empty.bin", contains: ["magic string"])
        XCTAssertFalse(try CheckpointContainer.npy.sniffs(CheckpointProbe(path: F.path("text.txt"))))
        XCTAssertTrue(try CheckpointContainer.npy.sniffs(CheckpointProbe(path: F.path("npy/truncated.npy"))))
    }

    private func header(_ dict: String, major: UInt8 = 1) -> [UInt8] {
        let body = Array((dict + "\n").utf8)
        var out = NpyHeader.magic + [major, 0]
        if major == 1 {
            out += [UInt8(body.count & 0xFF), UInt8(body.count >> 8)]
        } else {
            out += [UInt8(body.count & 0xFF), UInt8(body.count >> 8), 0, 0]
        }
        return out + body
    }

    private func refused(_ dict: String, _ needle: String, line: UInt = #line) {
        do {
            _ = try NpyHeader.parse(bytes: header(dict))
            XCTFail("accepted \(dict)", line: line)
        } catch let e as MoepackError {
            XCTAssertTrue(e.description.contains(needle), e.description, line: line)
        } catch {
            XCTFail("\(error)", line: line)
        }
    }

    func testHeaderLiteralParser() throws {
        let h = try NpyHeader.parse(bytes: header("{'descr': '>f8', 'fortran_order': True, 'shape': (2, 3, 4), }"))
        XCTAssertEqual(h.dtype, .float64)
        XCTAssertEqual(h.shape, [2, 3, 4])
        XCTAssertTrue(h.bigEndian && h.fortranOrder)
        XCTAssertEqual(h.dataByteCount, 192)
        let dict2 = "{\"shape\": (5,), \"descr\": \"|u1\", \"fortran_order\": False}"
        let h2 = try NpyHeader.parse(bytes: header(dict2, major: 2))
        XCTAssertEqual(h2.dtype, .uint8)
        XCTAssertEqual(h2.shape, [5])
        XCTAssertFalse(h2.bigEndian)
        XCTAssertEqual(h2.headerBytes, 12 + dict2.utf8.count + 1)

        refused("{'descr': 'O', 'fortran_order': False, 'shape': (2,), }", "object arrays are refused")
        refused("{'descr': [('a', '|O')], 'fortran_order': False, 'shape': (2,), }", "object arrays are refused")
        refused("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", "structured dtypes are refused")
        refused("{'descr': '<f4', 'fortran_order': False}", "lacks one of the keys")
        refused("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", "unexpected or repeated key 'x'")
        refused("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", "non-negative integers")
        refused("{'descr': '<f4', 'fortran_order': 1, 'shape': (2,), }", "fortran_order")
        refused("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999), }", "overflows")
        refused("{'descr': '<f4', 'fortran_order': __import__('os'), 'shape': (2,), }", "not a valid dict literal")
        refused("{'descr': '<U8', 'fortran_order': False, 'shape': (2,), }", "'<U8' is not supported")
        XCTAssertThrowsError(try NpyHeader.parse(bytes: Array(header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }").prefix(20))))
        XCTAssertEqual(try NpyHeader.totalHeaderLength(prefix: try F.bytes("npy/v2_f8.npy").prefix(12).map { $0 }), 128)
    }

    func testNpzStyleDecodingFromBytes() throws {
        // The zip reader hands member bytes to NpyHeader; check the same path gives the same values.
        let bytes = try F.bytes("npy/be_fortran_f8.npy")
        let h = try NpyHeader.parse(bytes: bytes)
        let data = Array(bytes[h.headerBytes..<(h.headerBytes + h.dataByteCount)])
        XCTAssertEqual(F.bits(try h.decodeFloat32(data)), try F.expectedBits("head.weight"))
        XCTAssertThrowsError(try h.toLittleEndianCOrder(Array(data.dropLast())))
    }
}
