import Foundation
import XCTest
import CZlib
import MoepackCore
@testable import MoepackCheckpoint

/// Issue 16, reproductions 3 and 6: an npz member is inflated only when its tensor is read (opening
/// the archive inflates at most the first 4 KiB of each member, its npy header); a safetensors header
/// nested too deeply is refused for that, not as an unknown container.
final class ReaderBoundsTests: XCTestCase {
    /// An npy v1.0 file's bytes for a float32 vector of `count` elements (header as numpy writes it).
    static func npyHeader(count: Int) -> [UInt8] {
        var h = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(count),), }"
        while (10 + h.utf8.count + 1) % 64 != 0 { h += " " }
        h += "\n"
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(h.utf8.count & 255), UInt8(h.utf8.count >> 8)] + Array(h.utf8)
    }

    /// Raw deflate (zlib `deflate`, windowBits -15) of `header` followed by `zeros` zero bytes.
    static func deflated(_ header: [UInt8], zeros: Int) -> [UInt8] {
        var s = z_stream()
        deflateInit2_(&s, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        defer { deflateEnd(&s) }
        var out = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        func pump(_ input: [UInt8], _ flush: Int32) {
            var input = input
            input.withUnsafeMutableBufferPointer { inp in
                s.next_in = inp.baseAddress; s.avail_in = uInt(inp.count)
                repeat {
                    chunk.withUnsafeMutableBufferPointer { c in
                        s.next_out = c.baseAddress; s.avail_out = uInt(c.count)
                        deflate(&s, flush)
                        out += c[0..<(c.count - Int(s.avail_out))]
                    }
                } while s.avail_out == 0
            }
        }
        pump(header, Z_NO_FLUSH)
        let block = [UInt8](repeating: 0, count: 1 << 20)
        var left = zeros
        while left > 0 { let n = min(left, block.count); pump(Array(block[0..<n]), Z_NO_FLUSH); left -= n }
        pump([], Z_FINISH)
        return out
    }

    static func crc(_ header: [UInt8], zeros: Int) -> UInt32 {
        var c = crc32(0, nil, 0)
        c = header.withUnsafeBufferPointer { crc32(c, $0.baseAddress, uInt($0.count)) }
        let block = [UInt8](repeating: 0, count: 1 << 20)
        var left = zeros
        while left > 0 { let n = min(left, block.count); c = block.withUnsafeBufferPointer { crc32(c, $0.baseAddress, uInt(n)) }; left -= n }
        return UInt32(c)
    }

    /// A zip (PKWARE APPNOTE 4.3: local headers, central directory, end record) of `members`.
    static func zip(_ members: [(name: String, method: UInt16, crc: UInt32, size: Int, data: [UInt8])]) -> [UInt8] {
        func le16(_ v: Int) -> [UInt8] { [UInt8(v & 255), UInt8(v >> 8 & 255)] }
        func le32(_ v: Int) -> [UInt8] { [UInt8(v & 255), UInt8(v >> 8 & 255), UInt8(v >> 16 & 255), UInt8(v >> 24 & 255)] }
        var out = [UInt8](), central = [UInt8]()
        for m in members {
            let name = Array(m.name.utf8)
            let common = le16(20) + le16(0) + le16(Int(m.method)) + le16(0) + le16(0) + le32(Int(m.crc))
                + le32(m.data.count) + le32(m.size) + le16(name.count) + le16(0)
            central += le32(0x02014b50) + le16(20) + common + le16(0) + le16(0) + le16(0) + le32(0) + le32(out.count) + name
            out += le32(0x04034b50) + common + name + m.data
        }
        let cdStart = out.count
        out += central
        out += le32(0x06054b50) + le16(0) + le16(0) + le16(members.count) + le16(members.count)
            + le32(central.count) + le32(cdStart) + le16(0)
        return out
    }

    func testUnusedMemberIsNeverInflated() throws {
        // "used": 4 float32 values, stored. "unused": 16 Mi float32 zeros (64 MiB) deflated to ~64 KiB.
        let usedValues: [Float] = [1, -2, 0.5, 3]
        let used = Self.npyHeader(count: 4) + usedValues.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian, Array.init) }
        let usedCRC = used.withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, uInt($0.count))) }
        let n = 16 << 20
        let header = Self.npyHeader(count: n)
        let bomb = Self.deflated(header, zeros: 4 * n)
        let bytes = Self.zip([("used.npy", 0, usedCRC, used.count, used),
                              ("unused.npy", 8, Self.crc(header, zeros: 4 * n), header.count + 4 * n, bomb)])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("moepack-npz-\(UUID().uuidString).npz").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }

        let src = try NpzSource(path: path)
        XCTAssertEqual(src.entries.map(\.name).sorted(), ["unused", "used"])
        XCTAssertEqual(src.entries.first { $0.name == "unused" }?.shape, [n])
        XCTAssertEqual(src.archive.recordReadCount, 0, "opening reads no whole record")
        XCTAssertEqual(try src.readFloat32("used"), usedValues)
        XCTAssertEqual(src.archive.recordsRead, ["used.npy"], "only the member used is inflated")
    }

    func testDeeplyNestedSafetensorsHeaderIsRefusedAsTooDeep() throws {
        for (header, message) in [
            ("[" + String(repeating: "[", count: 100) + String(repeating: "]", count: 101), "safetensors header is not valid JSON: JSON nested deeper than 64 levels at byte 64"),
            ("  {\"a\":" + String(repeating: "{\"a\":", count: 100) + "1" + String(repeating: "}", count: 101), "safetensors header is not valid JSON: JSON nested deeper than 64 levels at byte 322"),
            ("[1, 2]", "safetensors header is a JSON array, not a JSON object"),
        ] {
            let h = Array(header.utf8)
            var bytes = withUnsafeBytes(of: UInt64(h.count).littleEndian, Array.init) + h
            bytes += [0, 0]
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("moepack-nest-\(UUID().uuidString).safetensors").path
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            defer { try? FileManager.default.removeItem(atPath: path) }
            XCTAssertThrowsError(try openCheckpoint(path)) { e in
                XCTAssertEqual((e as? MoepackError)?.description, "\(path): \(message)")
            }
        }
    }
}
