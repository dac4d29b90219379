import XCTest
import Foundation
import MoepackFixedPoint

/// Cross-check against Tests/Fixtures/fixedpoint/reference.bin, made by the independent
/// exact-rational implementation in scripts/make_fixedpoint_reference.py (format documented there).
final class FixedPointReferenceTests: XCTestCase {
    private static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/fixedpoint/reference.bin")

    private struct Reader {
        let data: [UInt8]
        var pos = 0
        mutating func bytes(_ n: Int) -> ArraySlice<UInt8> {
            defer { pos += n }
            return data[pos..<(pos + n)]
        }
        mutating func uint(_ n: Int) -> UInt64 {
            var v: UInt64 = 0
            for (j, b) in bytes(n).enumerated() { v |= UInt64(b) << (8 * j) }
            return v
        }
        mutating func int32() -> Int { Int(Int32(truncatingIfNeeded: uint(4))) }
    }

    func testAgainstExactRationalReference() throws {
        let data = try [UInt8](Data(contentsOf: Self.fixture))
        var r = Reader(data: data)
        XCTAssertEqual(String(decoding: r.bytes(8), as: UTF8.self), "FXREF001")
        let typeCount = Int(r.uint(4))
        XCTAssertEqual(typeCount, 10)
        var checked = 0, ties = 0, overflows = 0
        for _ in 0..<typeCount {
            let w = r.int32(), i = r.int32()
            let signed = r.uint(1) == 1
            let cb = Int(r.uint(1))
            _ = r.uint(2)
            let n = Int(r.uint(4))
            let base = FixedType(width: w, integerBits: i, signed: signed)
            XCTAssertNoThrow(try base.validate())
            XCTAssertEqual(base.containerBytes, cb)
            let xs = (0..<n).map { _ in Double(bitPattern: r.uint(8)) }
            var codes: [[UInt64]] = []
            for _ in 0..<n { codes.append((0..<28).map { _ in r.uint(cb) }) }
            let flags = (0..<n).map { _ in r.uint(4) }
            let mask: UInt64 = cb == 8 ? .max : (1 << (8 * UInt64(cb))) - 1
            for (k, x) in xs.enumerated() {
                if (x / base.lsb).truncatingRemainder(dividingBy: 1).magnitude == 0.5 { ties += 1 }
                for (qi, q) in Quantization.allCases.enumerated() {
                    for (oi, o) in Overflow.allCases.enumerated() {
                        let t = base.with(quantization: q, overflow: o)
                        let res = t.quantize(x)
                        let m = qi * 4 + oi
                        XCTAssertEqual(UInt64(bitPattern: res.raw) & mask, codes[k][m], "\(t) of \(x) (\(x.debugDescription))")
                        XCTAssertEqual(res.overflowed, flags[k] >> UInt64(m) & 1 == 1, "\(t) overflow flag of \(x)")
                        if res.overflowed { overflows += 1 }
                        // Inputs that are float32 values also go through the bulk encoder.
                        if let f = Float(exactly: x) {
                            let bytes = t.encode([f]).bytes
                            var bits: UInt64 = 0
                            for j in 0..<cb { bits |= UInt64(bytes[j]) << (8 * j) }
                            XCTAssertEqual(bits, codes[k][m], "encode \(t) of \(f)")
                        }
                        checked += 1
                    }
                }
            }
        }
        XCTAssertEqual(r.pos, data.count)
        XCTAssertEqual(checked, 2000 * 28)
        XCTAssertGreaterThan(ties, 200)       // the table really exercises ties…
        XCTAssertGreaterThan(overflows, 5000) // …and overflow
    }
}
