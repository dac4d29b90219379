import XCTest
import TestSupport
import Foundation
import MoepackCore
import MoepackFixedPoint

final class FixedPointBulkTests: XCTestCase {
    private static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    func testEncodeContainersAndStats() {
        // ap_fixed<16,2>: F = 14. −1.5 → −24576 = 0xA000; 0.25 → 4096 = 0x1000; 3.0 → 49152 wraps
        // to −16384 = 0xC000 (overflow); NaN → 0 and recorded.
        let t = FixedType(width: 16, integerBits: 2)
        let (bytes, s) = t.encode([-1.5, 0.25, 3.0, .nan, 0x1p-15])
        XCTAssertEqual(bytes, [0x00, 0xA0, 0x00, 0x10, 0x00, 0xC0, 0x00, 0x00, 0x00, 0x00])
        XCTAssertEqual(s.count, 5)
        XCTAssertEqual(s.nonFiniteCount, 1)
        XCTAssertEqual(s.firstNonFiniteIndex, 3)
        XCTAssertEqual(s.overflowCount, 1)
        XCTAssertEqual(s.maxOverflowMagnitude, 3.0)
        XCTAssertEqual(s.min, -1.5); XCTAssertEqual(s.max, 3.0)
        // Errors: 3.0 − (−1.0) = 4; 2^−15 − 0 = 2^−15 (half an LSB, floored away).
        XCTAssertEqual(s.maxAbsError, 4.0)
        XCTAssertEqual(s.sumSquares, 2.25 + 0.0625 + 9 + 0x1p-30)
        XCTAssertEqual(s.sumSquaredError, 16 + 0x1p-30)
        XCTAssertEqual(s.sqnrDB, 10 * log10((2.25 + 0.0625 + 9 + 0x1p-30) / (16 + 0x1p-30)), accuracy: 1e-12)
        XCTAssertThrowsError(try s.checkFinite(tensor: "pos_embed", file: "ckpt.pth")) { e in
            XCTAssertEqual("\(e)", "ckpt.pth: 'pos_embed': 1 NaN/Inf value(s), first at flat index 3; refusing to convert to fixed point")
        }
        // Exactly representable input: zero error, SQNR +∞.
        let exact = t.encode([0.5, -0.25, 1.75]).stats
        XCTAssertEqual(exact.sqnrDB, .infinity)
        XCTAssertNoThrow(try exact.checkFinite(tensor: "x"))

        // ap_fixed<32,10> (fm_t): 4-byte sign-extended container. −1.0 → −2^22 = 0xFFC00000.
        let fm = FixedType(width: 32, integerBits: 10)
        XCTAssertEqual(fm.encode([-1.0, 1.0]).bytes, [0x00, 0x00, 0xC0, 0xFF, 0x00, 0x00, 0x40, 0x00])
        // ap_ufixed<8,0> pixel: 200/256 → 200.
        XCTAssertEqual(FixedType(width: 8, integerBits: 0, signed: false).encode([200.0 / 256]).bytes, [200])
    }

    func testStatsMergeKeepsGlobalIndices() {
        let t = FixedType(width: 8, integerBits: 3)
        let xs: [Float] = [0.1, -5, 2, .infinity, 0.3, .nan, 7]
        let whole = t.encode(xs).stats
        var chunked = QuantizationStats()
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 8)
        defer { out.deallocate() }
        xs.withUnsafeBufferPointer { p in
            t.encode(UnsafeBufferPointer(rebasing: p[0..<3]), into: out, stats: &chunked)
            t.encode(UnsafeBufferPointer(rebasing: p[3..<7]), into: out, stats: &chunked)
        }
        XCTAssertEqual(chunked.firstNonFiniteIndex, 3)
        XCTAssertEqual(chunked.count, whole.count)
        XCTAssertEqual(chunked.overflowCount, whole.overflowCount)
        XCTAssertEqual(chunked.min, whole.min); XCTAssertEqual(chunked.max, whole.max)
        XCTAssertEqual(chunked.maxAbsError, whole.maxAbsError)
        XCTAssertEqual(chunked.sumSquares, whole.sumSquares, accuracy: 1e-12)  // summation order differs
        XCTAssertEqual(chunked.sumSquaredError, whole.sumSquaredError, accuracy: 1e-12)
        XCTAssertEqual(whole.nonFiniteCount, 2)
        XCTAssertEqual(whole.overflowCount, 2)  // −5 and 7 are outside [−4, 3.96875]
        XCTAssertEqual(whole.maxOverflowMagnitude, 7)
        // JSON has no ±∞: empty stats encode min/max as absent and decode back.
        let data = try! JSONEncoder().encode(QuantizationStats())
        XCTAssertEqual(try! JSONDecoder().decode(QuantizationStats.self, from: data), QuantizationStats())
        XCTAssertEqual(try! JSONDecoder().decode(QuantizationStats.self, from: JSONEncoder().encode(whole)), whole)
    }

    /// The fast path (W ≤ 32, in range) must agree with the exact conversion for every mode.
    func testFastPathMatchesExactPath() {
        var rng = SplitMix64(seed: 7)
        let types = ["ap_fixed<16,2>", "ap_fixed<8,3>", "ap_ufixed<8,0>", "ap_fixed<32,10>", "ap_fixed<16,0>",
                     "ap_fixed<4,8>", "ap_fixed<8,-2>", "ap_ufixed<20,4>", "ap_fixed<24,24>"]
        for spec in types {
            let base = try! FixedType(parsing: spec)
            let span = base.maxValue - base.minValue
            var xs: [Float] = []
            for _ in 0..<3000 {
                let u = Double(rng.next() >> 11) * 0x1p-53
                xs.append(Float(base.minValue - span * 0.25 + u * span * 1.5))
            }
            // ties and edges
            for k in -6...6 { xs.append(Float(Double(k) * 0.5 * base.lsb)) }
            xs += [Float(base.maxValue), Float(base.minValue), Float(base.maxValue + base.lsb / 2), Float(base.minValue - base.lsb / 2)]
            for q in Quantization.allCases {
                for o in Overflow.allCases {
                    let t = base.with(quantization: q, overflow: o)
                    let (bytes, stats) = t.encode(xs)
                    let back = t.decode(bytes, count: xs.count)
                    var ovf = 0
                    for (i, x) in xs.enumerated() {
                        let r = t.quantize(Double(x))
                        if r.overflowed { ovf += 1 }
                        let cb = t.containerBytes
                        var bits: UInt64 = 0
                        for j in 0..<cb { bits |= UInt64(bytes[i * cb + j]) << (8 * j) }
                        XCTAssertEqual(t.signExtend(bits), r.raw, "\(t) \(x)")
                        XCTAssertEqual(back[i], Float(t.value(raw: r.raw)), "\(t) decode \(x)")
                    }
                    XCTAssertEqual(stats.overflowCount, ovf, "\(t)")
                }
            }
        }
    }

    /// Vitis testbench conversion (plain assignment = AP_TRN, AP_WRAP) of a real weight file.
    func testEdgeMoEQKVWeightToApFixed16_2() throws {
        let file = Self.repo.deletingLastPathComponent().appendingPathComponent("shared/edge-moe/weights/l0_qkv_weight.float32.bin")
        guard FileManager.default.fileExists(atPath: file.path) else {
            throw XCTSkip("\(file.path) absent (real Edge-MoE data not available)")
        }
        let data = try Data(contentsOf: file)
        XCTAssertEqual(data.count, 576 * 192 * 4)
        let xs: [Float] = data.withUnsafeBytes { raw in
            (0..<(raw.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
        let t = try FixedType(parsing: "ap_fixed<16,2>")
        let (bytes, stats) = t.encode(xs)
        XCTAssertEqual(stats.count, 110_592)
        XCTAssertEqual(stats.overflowCount, 0)   // weights lie in (−0.58, 0.58), inside [−2, 2)
        XCTAssertNil(stats.firstNonFiniteIndex)
        XCTAssertLessThanOrEqual(stats.maxAbsError, 0x1p-14)
        XCTAssertGreaterThan(stats.sqnrDB, 60)
        func code(_ i: Int) -> UInt16 { UInt16(bytes[2 * i]) | UInt16(bytes[2 * i + 1]) << 8 }
        // Worked by hand from the float bits: code = floor(x·2^14) mod 2^16.
        // [0] = −0x1.69033cp−4 = −0.08813785…: ·16384 = −1444.0505… → floor −1445 → 0xFA5B
        // [1] = 0x1.48241ep−4 = 0.08011256…: ·16384 = 1312.5643… → 1312 → 0x0520
        // [2] = −0x1.4ece0cp−4: ·16384 = −1339.2194… → −1340 → 0xFAC4
        // [191] = −0x1.76712cp−6: ·16384 = −374.4420… → −375 → 0xFE89
        // [192] = 0x1.b423d2p−7 (first K row): ·16384 = 218.0699… → 218 → 0x00DA
        // [50000] = −0x1.1126dap−5: ·16384 = −546.3035… → −547 → 0xFDDD
        // [110591] = −0x1.5af726p−5 (last): ·16384 = −693.9308… → −694 → 0xFD4A
        let expected: [(Int, Float, UInt16)] = [
            (0, -0x1.69033cp-4, 0xFA5B), (1, 0x1.48241ep-4, 0x0520), (2, -0x1.4ece0cp-4, 0xFAC4),
            (191, -0x1.76712cp-6, 0xFE89), (192, 0x1.b423d2p-7, 0x00DA), (50000, -0x1.1126dap-5, 0xFDDD),
            (110_591, -0x1.5af726p-5, 0xFD4A),
        ]
        for (i, x, c) in expected {
            XCTAssertEqual(xs[i], x, "element \(i)")
            XCTAssertEqual(code(i), c, "element \(i)")
        }
        // And every element against the plain formula floor(x·2^14) wrapped to 16 bits.
        for i in 0..<xs.count {
            let f = Int64((Double(xs[i]) * 16384).rounded(.down))
            if UInt16(truncatingIfNeeded: f) != code(i) { XCTFail("element \(i)"); break }
        }
    }
}
