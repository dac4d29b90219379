import XCTest
import MoepackCore
@testable import MoepackFixedPoint

/// Hand-derived bit patterns for every quantization and overflow mode (UG1399 definitions:
/// y = x / LSB, quantize y to an integer q, then apply the overflow mode to q).
final class FixedPointModeTests: XCTestCase {
    private let q7 = Quantization.allCases  // AP_TRN, AP_TRN_ZERO, AP_RND, AP_RND_ZERO, AP_RND_MIN_INF, AP_RND_INF, AP_RND_CONV

    private func raw(_ t: FixedType, _ q: Quantization, _ o: Overflow = .AP_WRAP, _ x: Double) -> Int64 {
        t.with(quantization: q, overflow: o).quantize(x).raw
    }

    private func check(_ t: FixedType, _ x: Double, _ expected: [Int64], file: StaticString = #filePath, line: UInt = #line) {
        for (q, e) in zip(q7, expected) {
            let r = t.with(quantization: q).quantize(x)
            XCTAssertEqual(r.raw, e, "\(t.with(quantization: q)) of \(x)", file: file, line: line)
            XCTAssertFalse(r.overflowed, file: file, line: line)
        }
    }

    /// Ties at ±0.5, ±1.5, ±2.5 LSB. Columns: TRN, TRN_ZERO, RND, RND_ZERO, RND_MIN_INF, RND_INF, RND_CONV.
    /// y = +0.5: floor 0; toward 0 → 0; half up → 1; half to zero → 0; half to −∞ → 0; half away → 1; even → 0
    /// y = −0.5: floor −1; toward 0 → 0; half up → 0; half to zero → 0; half to −∞ → −1; away → −1; even → 0
    /// y = +1.5: 1; 1; 2; 1; 1; 2; even of {1,2} → 2
    /// y = −1.5: −2; −1; −1; −1; −2; −2; even of {−2,−1} → −2
    /// y = +2.5: 2; 2; 3; 2; 2; 3; even of {2,3} → 2
    /// y = −2.5: −3; −2; −2; −2; −3; −3; even of {−3,−2} → −2
    private let tieTable: [(Double, [Int64])] = [
        (0.5, [0, 0, 1, 0, 0, 1, 0]),
        (-0.5, [-1, 0, 0, 0, -1, -1, 0]),
        (1.5, [1, 1, 2, 1, 1, 2, 2]),
        (-1.5, [-2, -1, -1, -1, -2, -2, -2]),
        (2.5, [2, 2, 3, 2, 2, 3, 2]),
        (-2.5, [-3, -2, -2, -2, -3, -3, -2]),
        // Off-tie neighbours: nearest for every RND mode; TRN floors, TRN_ZERO truncates.
        (0.25, [0, 0, 0, 0, 0, 0, 0]),
        (0.75, [0, 0, 1, 1, 1, 1, 1]),
        (-0.25, [-1, 0, 0, 0, 0, 0, 0]),
        (-0.75, [-1, 0, -1, -1, -1, -1, -1]),
    ]

    func testTiesApFixed8_3() {
        // ap_fixed<8,3>: F = 5, LSB = 1/32; x = y/32, all in range [−128, 127].
        let t = FixedType(width: 8, integerBits: 3)
        XCTAssertEqual(t.lsb, 1.0 / 32)
        for (y, e) in tieTable { check(t, y / 32, e) }
        // Bit patterns: y = −2.5 under AP_TRN → −3 = 0b1111_1101 in 8 bits.
        let bytes = t.encode([Float(-2.5 / 32)]).bytes
        XCTAssertEqual(bytes, [0b1111_1101])
        // The bulk (fast) path gives the same codes for every mode.
        for (i, q) in q7.enumerated() {
            let xs = tieTable.map { Float($0.0 / 32) }
            let got = t.with(quantization: q).encode(xs).bytes.map { Int64(Int8(bitPattern: $0)) }
            XCTAssertEqual(got, tieTable.map { $0.1[i] }, "\(q)")
        }
    }

    func testTiesApFixed4_2() {
        // ap_fixed<4,2>: F = 2, LSB = 1/4; x = y/4 (±0.125, ±0.375, ±0.625 …), range raw [−8, 7].
        let t = FixedType(width: 4, integerBits: 2)
        XCTAssertEqual(t.lsb, 0.25)
        for (y, e) in tieTable { check(t, y / 4, e) }
        // 4-bit code in a 1-byte container is sign-extended: y = −2.5 → −3 → 0b1111_1101; y = 2.5 → 2.
        XCTAssertEqual(t.encode([-0.625, 0.625]).bytes, [0b1111_1101, 0b0000_0010])
        for (i, q) in q7.enumerated() {
            let xs = tieTable.map { Float($0.0 / 4) }
            let got = t.with(quantization: q).encode(xs).bytes.map { Int64(Int8(bitPattern: $0)) }
            XCTAssertEqual(got, tieTable.map { $0.1[i] }, "\(q)")
        }
    }

    func testRangeEdgesApFixed8_3() {
        let t = FixedType(width: 8, integerBits: 3)
        XCTAssertEqual(t.minRaw, -128); XCTAssertEqual(t.maxRaw, 127)
        XCTAssertEqual(t.maxValue, 3.96875); XCTAssertEqual(t.minValue, -4)
        let lsb = 1.0 / 32
        for o in Overflow.allCases {
            // max = 127/32: in range for every mode.
            XCTAssertEqual(t.with(overflow: o).quantize(3.96875).raw, 127)
            // max + LSB/2 (y = 127.5) with AP_TRN floors to 127: no overflow.
            XCTAssertEqual(t.with(overflow: o).quantize(3.96875 + lsb / 2).raw, 127)
            XCTAssertFalse(t.with(overflow: o).quantize(3.96875 + lsb / 2).overflowed)
        }
        // max + LSB/2 with AP_RND: 127.5 → 128 (rounding overflows). WRAP: 128 mod 256 → −128 (0x80);
        // SAT → 127; SAT_ZERO → 0; SAT_SYM → 127.
        let up = 3.96875 + lsb / 2
        XCTAssertEqual(raw(t, .AP_RND, .AP_WRAP, up), -128)
        XCTAssertEqual(raw(t, .AP_RND, .AP_SAT, up), 127)
        XCTAssertEqual(raw(t, .AP_RND, .AP_SAT_ZERO, up), 0)
        XCTAssertEqual(raw(t, .AP_RND, .AP_SAT_SYM, up), 127)
        XCTAssertTrue(t.with(quantization: .AP_RND).quantize(up).overflowed)
        // min = −4 (y = −128): in range for WRAP/SAT/SAT_ZERO; SAT_SYM clamps to −max = −127 (overflow).
        XCTAssertEqual(raw(t, .AP_TRN, .AP_WRAP, -4), -128)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT, -4), -128)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT_ZERO, -4), -128)
        XCTAssertFalse(t.with(overflow: .AP_SAT_ZERO).quantize(-4).overflowed)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT_SYM, -4), -127)
        XCTAssertTrue(t.with(overflow: .AP_SAT_SYM).quantize(-4).overflowed)
        XCTAssertEqual(t.with(overflow: .AP_SAT_SYM).quantized(-4), -3.96875)  // −max
        // min − LSB/2 (y = −128.5): AP_TRN → −129. WRAP: −129 mod 256 = 127; SAT → −128; SAT_ZERO → 0;
        // SAT_SYM → −127.
        let down = -4 - lsb / 2
        XCTAssertEqual(raw(t, .AP_TRN, .AP_WRAP, down), 127)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT, down), -128)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT_ZERO, down), 0)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT_SYM, down), -127)
        // With AP_RND (tie toward +∞) −128.5 → −128: in range, except SAT_SYM → −127.
        XCTAssertEqual(raw(t, .AP_RND, .AP_WRAP, down), -128)
        XCTAssertFalse(t.with(quantization: .AP_RND).quantize(down).overflowed)
        XCTAssertEqual(raw(t, .AP_RND, .AP_SAT_ZERO, down), -128)
        XCTAssertEqual(raw(t, .AP_RND, .AP_SAT_SYM, down), -127)
        // AP_RND_INF (tie away) → −129 → WRAP 127.
        XCTAssertEqual(raw(t, .AP_RND_INF, .AP_WRAP, down), 127)
        // The same edges through the bulk path (container = 1 byte).
        let edges: [Float] = [3.96875, Float(up), -4, Float(down)]
        XCTAssertEqual(t.encode(edges).bytes, [127, 127, 0x80, 127])
        XCTAssertEqual(t.with(quantization: .AP_RND, overflow: .AP_SAT_SYM).encode(edges).bytes, [127, 127, 0x81, 0x81])
        XCTAssertEqual(t.with(overflow: .AP_SAT_ZERO).encode(edges).bytes, [127, 127, 0x80, 0])
        XCTAssertEqual(t.with(overflow: .AP_SAT).encode(edges).bytes, [127, 127, 0x80, 0x80])
    }

    func testRangeEdgesApFixed4_2AndWrapAround() {
        // ap_fixed<4,2>: LSB 1/4, codes −8…7, values −2…1.75.
        let t = FixedType(width: 4, integerBits: 2)
        XCTAssertEqual(t.maxValue, 1.75); XCTAssertEqual(t.minValue, -2)
        // 2.0 → y = 8 → WRAP: 8 mod 16 = 8 → as 4-bit two's complement 0b1000 = −8 → −2.0.
        XCTAssertEqual(t.quantize(2.0).raw, -8)
        XCTAssertEqual(t.quantized(2.0), -2.0)
        XCTAssertEqual(t.encode([2.0]).bytes, [0b1111_1000])  // 0b1000 sign-extended to the byte
        // 4.0 → y = 16 → 16 mod 16 = 0 → 0.0 (overflowed).
        XCTAssertEqual(t.quantize(4.0).raw, 0)
        XCTAssertTrue(t.quantize(4.0).overflowed)
        // SAT/SAT_ZERO/SAT_SYM of 2.0: 7, 0, 7; of −2.25 (y = −9): −8, 0, −7.
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT, 2.0), 7)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT_ZERO, 2.0), 0)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT_SYM, 2.0), 7)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT, -2.25), -8)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT_ZERO, -2.25), 0)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT_SYM, -2.25), -7)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_WRAP, -2.25), 7)  // −9 mod 16 = 7
        // max + LSB/2 = 1.875 (y = 7.5): TRN → 7; RND → 8 → WRAP −8, SAT 7, SAT_ZERO 0, SAT_SYM 7;
        // RND_CONV → 8 (even) too; RND_ZERO → 7.
        XCTAssertEqual(raw(t, .AP_TRN, .AP_WRAP, 1.875), 7)
        XCTAssertEqual(raw(t, .AP_RND, .AP_WRAP, 1.875), -8)
        XCTAssertEqual(raw(t, .AP_RND, .AP_SAT, 1.875), 7)
        XCTAssertEqual(raw(t, .AP_RND, .AP_SAT_ZERO, 1.875), 0)
        XCTAssertEqual(raw(t, .AP_RND_CONV, .AP_SAT_SYM, 1.875), 7)
        XCTAssertEqual(raw(t, .AP_RND_ZERO, .AP_SAT_ZERO, 1.875), 7)
        // min − LSB/2 = −2.125 (y = −8.5): TRN → −9 → WRAP 7, SAT −8, SAT_ZERO 0, SAT_SYM −7;
        // RND_CONV → −8 (even) → in range; RND_MIN_INF → −9.
        XCTAssertEqual(raw(t, .AP_TRN, .AP_WRAP, -2.125), 7)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT, -2.125), -8)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT_ZERO, -2.125), 0)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_SAT_SYM, -2.125), -7)
        XCTAssertEqual(raw(t, .AP_RND_CONV, .AP_SAT_ZERO, -2.125), -8)
        XCTAssertEqual(raw(t, .AP_RND_MIN_INF, .AP_SAT, -2.125), -8)
        XCTAssertTrue(t.with(quantization: .AP_RND_MIN_INF).quantize(-2.125).overflowed)
        // ap_fixed<4,3>: LSB 1/2, range −4…3.5: 4.0 → y = 8 → wraps to 0b1000 = −4.0.
        let t43 = FixedType(width: 4, integerBits: 3)
        XCTAssertEqual(t43.quantize(4.0).raw, -8)
        XCTAssertEqual(t43.quantized(4.0), -4.0)
        // AP_SAT_SYM: min = −max = −3.5 (code −7, 0b1001).
        XCTAssertEqual(t43.with(overflow: .AP_SAT_SYM).quantize(-4.0).raw, -7)
        XCTAssertEqual(t43.with(overflow: .AP_SAT_SYM).quantize(-100).raw, -7)
        XCTAssertEqual(t43.with(overflow: .AP_SAT_SYM).quantized(-4.0), -3.5)
    }

    func testUnsignedApUfixed8_0() {
        // ap_ufixed<8,0>: LSB 1/256, codes 0…255, values 0…255/256.
        let t = FixedType(width: 8, integerBits: 0, signed: false)
        XCTAssertEqual(t.minRaw, 0); XCTAssertEqual(t.maxRaw, 255)
        XCTAssertEqual(t.maxValue, 255.0 / 256)
        // 0.99999 → y = 255.99744: TRN/TRN_ZERO → 255; every RND mode → 256 (not a tie) → overflow:
        // WRAP 256 mod 256 = 0; SAT 255; SAT_ZERO 0; SAT_SYM (unsigned = SAT) 255.
        for o in Overflow.allCases {
            XCTAssertEqual(raw(t, .AP_TRN, o, 0.99999), 255)
            XCTAssertEqual(raw(t, .AP_TRN_ZERO, o, 0.99999), 255)
        }
        for q in [Quantization.AP_RND, .AP_RND_ZERO, .AP_RND_MIN_INF, .AP_RND_INF, .AP_RND_CONV] {
            XCTAssertEqual(raw(t, q, .AP_WRAP, 0.99999), 0)
            XCTAssertEqual(raw(t, q, .AP_SAT, 0.99999), 255)
            XCTAssertEqual(raw(t, q, .AP_SAT_ZERO, 0.99999), 0)
            XCTAssertEqual(raw(t, q, .AP_SAT_SYM, 0.99999), 255)
            XCTAssertTrue(t.with(quantization: q).quantize(0.99999).overflowed)
        }
        // −0.1 → y = −25.6: TRN → −26 → WRAP 256 − 26 = 230 (0xE6); TRN_ZERO → −25 → WRAP 231;
        // RND modes → −26 (nearest) → WRAP 230. SAT / SAT_ZERO / SAT_SYM → 0.
        XCTAssertEqual(raw(t, .AP_TRN, .AP_WRAP, -0.1), 230)
        XCTAssertEqual(raw(t, .AP_TRN_ZERO, .AP_WRAP, -0.1), 231)
        for q in [Quantization.AP_RND, .AP_RND_ZERO, .AP_RND_MIN_INF, .AP_RND_INF, .AP_RND_CONV] {
            XCTAssertEqual(raw(t, q, .AP_WRAP, -0.1), 230)
        }
        for q in Quantization.allCases {
            for o in [Overflow.AP_SAT, .AP_SAT_ZERO, .AP_SAT_SYM] {
                XCTAssertEqual(raw(t, q, o, -0.1), 0)
                XCTAssertTrue(t.with(quantization: q, overflow: o).quantize(-0.1).overflowed)
            }
        }
        XCTAssertEqual(t.encode([-0.1]).bytes, [0xE6])
        // −0.001 → y = −0.256: TRN → −1 → WRAP 255 (!); RND → 0 (no overflow); TRN_ZERO → 0.
        XCTAssertEqual(raw(t, .AP_TRN, .AP_WRAP, -0.001), 255)
        XCTAssertEqual(raw(t, .AP_RND, .AP_WRAP, -0.001), 0)
        XCTAssertFalse(t.with(quantization: .AP_RND).quantize(-0.001).overflowed)
        XCTAssertEqual(raw(t, .AP_TRN_ZERO, .AP_WRAP, -0.001), 0)
    }

    func testSixtyFourBitWidths() {
        // ap_fixed<64,32>: LSB 2^−32, codes −2^63…2^63−1.
        let t = FixedType(width: 64, integerBits: 32)
        XCTAssertEqual(t.containerBytes, 8)
        XCTAssertEqual(t.quantize(1.5).raw, 6_442_450_944)            // 1.5·2^32
        XCTAssertEqual(t.quantize(-2147483648.0).raw, Int64.min)       // min = −2^31 → −2^63
        // 2^31 − 2^−21 = max − (2^11 − 1)·LSB → 2^63 − 2^11.
        XCTAssertEqual(t.quantize(2147483648.0 - 0x1p-21).raw, 9_223_372_036_854_773_760)
        // 2^31 → y = 2^63 → WRAP: 2^63 as 64-bit two's complement = −2^63; SAT → 2^63 − 1.
        XCTAssertEqual(t.quantize(2147483648.0).raw, Int64.min)
        XCTAssertTrue(t.quantize(2147483648.0).overflowed)
        XCTAssertEqual(t.with(overflow: .AP_SAT).quantize(2147483648.0).raw, Int64.max)
        XCTAssertEqual(t.with(overflow: .AP_SAT_SYM).quantize(-2147483648.0).raw, -Int64.max)
        // 2^−33 = LSB/2 tie: RND → 1, RND_CONV → 0, TRN → 0; −2^−33: TRN → −1.
        XCTAssertEqual(raw(t, .AP_RND, .AP_WRAP, 0x1p-33), 1)
        XCTAssertEqual(raw(t, .AP_RND_CONV, .AP_WRAP, 0x1p-33), 0)
        XCTAssertEqual(raw(t, .AP_TRN, .AP_WRAP, -0x1p-33), -1)
        XCTAssertEqual(t.value(raw: 6_442_450_944), 1.5)
        // ap_ufixed<64,64>: integer codes 0…2^64−1, the Int64 holds the bit pattern.
        let u = FixedType(width: 64, integerBits: 64, signed: false)
        XCTAssertEqual(u.maxRaw, -1)  // bit pattern of 2^64 − 1
        XCTAssertEqual(u.quantize(18446744073709549568.0).raw, -2048)  // 2^64 − 2048
        XCTAssertEqual(u.value(raw: -2048), 18446744073709549568.0)
        XCTAssertEqual(u.quantize(18446744073709551616.0).raw, 0)  // 2^64 wraps to 0
        XCTAssertEqual(u.with(overflow: .AP_SAT).quantize(18446744073709551616.0).raw, -1)
        XCTAssertEqual(u.with(quantization: .AP_RND).quantize(0.5).raw, 1)
        XCTAssertEqual(u.with(quantization: .AP_RND_CONV).quantize(2.5).raw, 2)
        // ap_fixed<64,0>: LSB 2^−64; 0.25 → 2^62; −0.5 → −2^63 = min.
        let f = FixedType(width: 64, integerBits: 0)
        XCTAssertEqual(f.quantize(0.25).raw, 1 << 62)
        XCTAssertEqual(f.quantize(-0.5).raw, Int64.min)
        XCTAssertEqual(f.encode([-0.5]).bytes, [0, 0, 0, 0, 0, 0, 0, 0x80])
        XCTAssertEqual(f.decode([0, 0, 0, 0, 0, 0, 0, 0x80], count: 1), [-0.5])
    }

    func testHugeValues() {
        // 1e30 (as a double) = 7105427357601002 · 2^47 exactly. In ap_fixed<16,2> (F = 14) it scales
        // to 7105427357601002 · 2^61: a multiple of 2^16, so AP_WRAP keeps 0; AP_SAT → 32767.
        let t = FixedType(width: 16, integerBits: 2)
        XCTAssertEqual(t.quantize(1e30).raw, 0)
        XCTAssertTrue(t.quantize(1e30).overflowed)
        XCTAssertEqual(t.with(overflow: .AP_SAT).quantize(1e30).raw, 32767)
        XCTAssertEqual(t.with(overflow: .AP_SAT_ZERO).quantize(1e30).raw, 0)
        // −1e300 = −m·2^944 for an integer m: scaled by 2^14 still a multiple of 2^16 → WRAP 0;
        // SAT → −32768; SAT_SYM → −32767.
        XCTAssertEqual(t.quantize(-1e300).raw, 0)
        XCTAssertEqual(t.with(overflow: .AP_SAT).quantize(-1e300).raw, -32768)
        XCTAssertEqual(t.with(overflow: .AP_SAT_SYM).quantize(-1e300).raw, -32767)
        // Non-trivial low bits: ap_fixed<32,80> has F = −48, so y = 1e30 / 2^48 = 7105427357601002 / 2
        // = 3552713678800501 exactly; its low 32 bits are 2630895221 = 0x9CCF5675, whose bit 31 is
        // set → −1664072075 as a signed 32-bit code.
        let h = FixedType(width: 32, integerBits: 80)
        XCTAssertEqual(h.quantize(1e30).raw, -1_664_072_075)
        XCTAssertEqual(h.with(overflow: .AP_SAT).quantize(1e30).raw, Int64(Int32.max))
        // ap_fixed<32,81>: y = 7105427357601002 / 4 = 1776356839400250.5, a tie on a huge value.
        // floor = 1776356839400250 (even), low 32 bits 1315447610. RND/RND_INF → +1 → 1315447611;
        // TRN, TRN_ZERO, RND_ZERO, RND_MIN_INF, RND_CONV (even) → 1315447610.
        let h2 = FixedType(width: 32, integerBits: 81)
        check(h2, 0, [0, 0, 0, 0, 0, 0, 0])
        let expected: [Int64] = [1315447610, 1315447610, 1315447611, 1315447610, 1315447610, 1315447611, 1315447610]
        for (q, e) in zip(q7, expected) { XCTAssertEqual(raw(h2, q, .AP_WRAP, 1e30), e, "\(q)") }
        // −1e30: y = −1776356839400250.5. TRN → −1776356839400251 → low 32 bits −1315447611;
        // TRN_ZERO → −…250; RND (tie to +∞) → −…250; RND_ZERO → −…250; RND_MIN_INF → −…251;
        // RND_INF → −…251; RND_CONV → −…250 (even).
        let expectedNeg: [Int64] = [-1315447611, -1315447610, -1315447610, -1315447610, -1315447611, -1315447611, -1315447610]
        for (q, e) in zip(q7, expectedNeg) { XCTAssertEqual(raw(h2, q, .AP_WRAP, -1e30), e, "\(q)") }
        // Tiny magnitudes far below the LSB: 1e-300 → TRN 0, −1e-300 → TRN −1, RND 0.
        XCTAssertEqual(t.quantize(1e-300).raw, 0)
        XCTAssertEqual(t.quantize(-1e-300).raw, -1)
        XCTAssertEqual(raw(t, .AP_RND, .AP_WRAP, -1e-300), 0)
        XCTAssertEqual(raw(t, .AP_RND_INF, .AP_WRAP, Double.leastNonzeroMagnitude), 0)
        XCTAssertEqual(t.quantize(-Double.leastNonzeroMagnitude).raw, -1)  // smallest subnormal, negative: floor → −1
        // The bulk path goes to the exact slow path for huge float32 values.
        let (bytes, stats) = t.encode([1e30, -3e38, 1.0])
        XCTAssertEqual(bytes, [0, 0, 0, 0, 0x00, 0x40])  // 1.0 = 16384 = 0x4000
        XCTAssertEqual(stats.overflowCount, 2)
        XCTAssertEqual(stats.maxOverflowMagnitude, Double(Float(-3e38)).magnitude)
    }

    func testNegativeAndLargeIntegerBits() {
        // ap_fixed<8,−2>: F = 10, LSB 2^−10, codes −128…127 → values −0.125…0.1240234375.
        let n = FixedType(width: 8, integerBits: -2)
        XCTAssertEqual(n.lsb, 0x1p-10)
        XCTAssertEqual(n.maxValue, 0.1240234375)
        XCTAssertEqual(n.quantize(0.1).raw, 102)                 // y = 102.4 → 102
        XCTAssertEqual(raw(n, .AP_RND, .AP_WRAP, 0.1), 102)
        XCTAssertEqual(n.quantize(0.125).raw, -128)              // y = 128 → wraps to −128
        XCTAssertEqual(raw(n, .AP_TRN, .AP_SAT, 0.125), 127)
        XCTAssertEqual(n.quantize(-0.05).raw, -52)               // y = −51.2 → floor −52
        XCTAssertEqual(raw(n, .AP_TRN_ZERO, .AP_WRAP, -0.05), -51)
        XCTAssertEqual(raw(n, .AP_RND, .AP_WRAP, -0.05), -51)
        // ap_fixed<4,8>: F = −4, LSB 16, codes −8…7 → values −128…112.
        let p = FixedType(width: 4, integerBits: 8)
        XCTAssertEqual(p.lsb, 16)
        XCTAssertEqual(p.minValue, -128); XCTAssertEqual(p.maxValue, 112)
        XCTAssertEqual(p.quantize(100).raw, 6)                   // y = 6.25 → 6 (96)
        XCTAssertEqual(p.quantized(100), 96)
        XCTAssertEqual(p.quantize(120).raw, 7)                   // y = 7.5 → TRN 7 (112)
        XCTAssertEqual(raw(p, .AP_RND, .AP_WRAP, 120), -8)       // → 8 → wraps to −8 (−128)
        XCTAssertEqual(raw(p, .AP_RND, .AP_SAT, 120), 7)
        XCTAssertEqual(p.quantize(-130).raw, 7)                  // y = −8.125 → −9 → wraps to 7
        XCTAssertEqual(raw(p, .AP_TRN, .AP_SAT, -130), -8)
        XCTAssertEqual(raw(p, .AP_RND, .AP_WRAP, 8), 1)          // y = 0.5 tie → up
        XCTAssertEqual(raw(p, .AP_RND_CONV, .AP_WRAP, 8), 0)     // → even 0
        XCTAssertEqual(raw(p, .AP_RND_CONV, .AP_WRAP, 24), 2)    // y = 1.5 → even 2
        XCTAssertEqual(p.encode([100, 120, -130]).bytes, [6, 7, 7])
        XCTAssertEqual(p.decode([6, 0xF8], count: 2), [96, -128])
    }

    func testNonFinite() {
        let t = FixedType(width: 16, integerBits: 2)
        XCTAssertEqual(t.quantize(Double.nan).raw, 0)
        XCTAssertTrue(t.quantize(Double.infinity).overflowed)
        XCTAssertThrowsError(try t.quantizeChecked(.nan, tensor: "blocks.0.attn.qkv.weight", file: "m.pth")) { e in
            let d = "\(e)"
            XCTAssertTrue(d.contains("blocks.0.attn.qkv.weight") && d.contains("m.pth") && d.contains("ap_fixed<16,2"), d)
            XCTAssertEqual((e as? MoepackError)?.kind, .numeric)
        }
        XCTAssertEqual(try t.quantizeChecked(0.5).raw, 8192)
    }

    func testConvertRaw() {
        // Product of two ap_fixed<16,2> codes (F = 14 each) has F = 28; assign to fm_t = ap_fixed<32,10>
        // (F = 22) with AP_TRN/AP_WRAP: floor(p / 2^6), low 32 bits.
        let w = FixedType(width: 16, integerBits: 2)
        let fm = FixedType(width: 32, integerBits: 10)
        let prod = FixedType(width: 32, integerBits: 4)  // full-width product type, F = 28
        let a = w.quantize(1.5).raw, b = w.quantize(-0.75).raw
        XCTAssertEqual(a, 24576); XCTAssertEqual(b, -12288)
        // p = −301989888 = −1.125·2^28 → −1.125·2^22 = −4718592 exactly.
        XCTAssertEqual(fm.convert(raw: a * b, from: prod).raw, -4_718_592)
        XCTAssertEqual(fm.convert(exact: a * b, fractionBits: 28).raw, -4_718_592)
        // p = 3·(−5) = −15 at F = 28 → y = −15/64 = −0.234375: TRN −1, TRN_ZERO 0, RND 0.
        XCTAssertEqual(fm.convert(exact: Int64(-15), fractionBits: 28).raw, -1)
        XCTAssertEqual(fm.with(quantization: .AP_TRN_ZERO).convert(exact: Int64(-15), fractionBits: 28).raw, 0)
        XCTAssertEqual(fm.with(quantization: .AP_RND).convert(exact: Int64(-15), fractionBits: 28).raw, 0)
        // ap_fixed<16,8> code 0x1234 (F = 8, 18.203125) → ap_fixed<8,3> (F = 5): y = 0x1234/8 = 582.5.
        // TRN → 582 → WRAP 582 mod 256 = 70; RND → 583 → 71; SAT → 127; CONV → 582 (even) → 70.
        let src = FixedType(width: 16, integerBits: 8)
        let dst = FixedType(width: 8, integerBits: 3)
        XCTAssertEqual(dst.convert(raw: 0x1234, from: src).raw, 70)
        XCTAssertTrue(dst.convert(raw: 0x1234, from: src).overflowed)
        XCTAssertEqual(dst.with(quantization: .AP_RND).convert(raw: 0x1234, from: src).raw, 71)
        XCTAssertEqual(dst.with(overflow: .AP_SAT).convert(raw: 0x1234, from: src).raw, 127)
        XCTAssertEqual(dst.with(quantization: .AP_RND_CONV).convert(raw: 0x1234, from: src).raw, 70)
        // Widening is exact: ap_fixed<8,3> code −3 (−3/32) → ap_fixed<16,2>: −3·2^9 = −1536.
        XCTAssertEqual(w.convert(raw: -3, from: dst).raw, -1536)
        // Source read as its own W bits: ap_ufixed<8,0> code 0xFF → ap_fixed<16,8>: 255/256 → 255.
        XCTAssertEqual(src.convert(raw: 255, from: FixedType(width: 8, integerBits: 0, signed: false)).raw, 255)
        XCTAssertEqual(src.convert(raw: -1, from: FixedType(width: 8, integerBits: 0, signed: false)).raw, 255)
        // Wide accumulators: 2^104 + 0x180 (= (2^100 + 0x18)·2^4) with F = 0 → ap_fixed<16,16>:
        // low 16 bits 0x0180 = 384 (overflowed); negative → −384; SAT → 32767 / −32768.
        if #available(macOS 15.0, *) {
            let big = (Int128(1) << 100) + 0x18
            let i16 = FixedType(width: 16, integerBits: 16)
            XCTAssertEqual(i16.convert(exact: big << 4, fractionBits: 0).raw, 384)
            XCTAssertEqual(i16.convert(exact: big, fractionBits: -4).raw, 384)
            XCTAssertEqual(i16.convert(exact: -(big << 4), fractionBits: 0).raw, -384)
            XCTAssertEqual(i16.with(overflow: .AP_SAT).convert(exact: big, fractionBits: -4).raw, 32767)
            XCTAssertEqual(i16.with(overflow: .AP_SAT).convert(exact: -big, fractionBits: -4).raw, -32768)
            // (2^100 + 0x18) / 2^4 → 2^96 + 1.5 → TRN: low 16 bits 1; RND → 2.
            XCTAssertEqual(i16.convert(exact: big, fractionBits: 4).raw, 1)
            XCTAssertEqual(i16.with(quantization: .AP_RND).convert(exact: big, fractionBits: 4).raw, 2)
            XCTAssertEqual(i16.wrap(big), 0x18)
        }
    }

    func testWrapAndSignExtend() {
        let t = FixedType(width: 12, integerBits: 4)
        XCTAssertEqual(t.wrap(Int64(0x800)), -2048)
        XCTAssertEqual(t.wrap(Int64(0x1FFF)), -1)
        XCTAssertEqual(t.wrap(Int64(4096 + 5)), 5)
        XCTAssertEqual(t.signExtend(0xFFF), -1)
        XCTAssertEqual(FixedType.signExtend(0x80, width: 8), -128)
        XCTAssertEqual(FixedType.signExtend(0x80, width: 8, signed: false), 128)
        XCTAssertEqual(FixedType(width: 12, integerBits: 4, signed: false).wrap(Int64(-1)), 4095)
        // 12-bit code −1 in a 2-byte container: sign-extended to 0xFFFF.
        XCTAssertEqual(t.encode([-0.00390625]).bytes, [0xFF, 0xFF])  // −1 LSB (2^−8)
        XCTAssertEqual(t.decode([0xFF, 0x0F], count: 1), [-0.00390625])  // only the low 12 bits count
    }
}
