import XCTest
import MoepackCore

/// The shared float decoding and the NaN/Inf scan every weight read goes through.
final class DecodeTests: XCTestCase {
    func testFirstNonFiniteIndexFindsEachKindAtEveryPosition() {
        // Positions around the 4096-element block boundaries and the tail.
        let n = 3 * 4096 + 37
        let finite: [Float] = [.greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude, -0.0, 1]
        var clean = [Float](repeating: 0, count: n)
        for i in 0..<n { clean[i] = finite[i % finite.count] }
        XCTAssertNil(clean.withUnsafeBufferPointer(firstNonFiniteIndex))
        for bad: Float in [.nan, -.nan, .infinity, -.infinity, Float(bitPattern: 0x7F80_0001), Float(bitPattern: 0xFFC0_0000)] {
            for pos in [0, 15, 16, 4095, 4096, 8191, 8192, n - 38, n - 1] {
                var v = clean
                v[pos] = bad
                if pos < n - 1 { v[n - 1] = .nan }   // a later one must not win
                XCTAssertEqual(v.withUnsafeBufferPointer(firstNonFiniteIndex), pos, "\(bad) at \(pos)")
            }
        }
        XCTAssertNil([Float]().withUnsafeBufferPointer(firstNonFiniteIndex))
    }

    func testFloat32DecodeIsBitExact() {
        let bits: [UInt32] = [0x0000_0000, 0x8000_0000, 0x0000_0001, 0x7F7F_FFFF, 0x3F80_0000, 0xBF80_0001, 0x7FC0_1234]
        var bytes = [UInt8]()
        for b in bits { withUnsafeBytes(of: b.littleEndian) { bytes += $0 } }
        var out = [Float](repeating: 1, count: bits.count)
        bytes.withUnsafeBytes { r in out.withUnsafeMutableBufferPointer { decodeToFloat32(r, dtype: .float32, count: bits.count, into: $0) } }
        XCTAssertEqual(out.map(\.bitPattern), bits)
    }
}
