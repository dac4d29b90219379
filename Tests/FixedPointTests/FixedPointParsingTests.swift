import XCTest
import Foundation
import MoepackCore
import MoepackFixedPoint

final class FixedPointParsingTests: XCTestCase {
    func testParsesVitisSpellings() throws {
        let a = try FixedType(parsing: "ap_fixed<16,2>")
        XCTAssertEqual(a, FixedType(width: 16, integerBits: 2, signed: true, quantization: .AP_TRN, overflow: .AP_WRAP))
        XCTAssertEqual(a.description, "ap_fixed<16,2,AP_TRN,AP_WRAP>")
        XCTAssertEqual(a.containerBytes, 2)

        let b = try FixedType(parsing: "ap_fixed<16,2,AP_RND_CONV,AP_SAT>")
        XCTAssertEqual(b.quantization, .AP_RND_CONV); XCTAssertEqual(b.overflow, .AP_SAT)

        let c = try FixedType(parsing: "ap_ufixed<8,0>")
        XCTAssertFalse(c.signed); XCTAssertEqual(c.width, 8); XCTAssertEqual(c.integerBits, 0)
        XCTAssertEqual(c.containerBytes, 1)

        let d = try FixedType(parsing: "  ap_fixed < 32 , 10 , AP_RND , AP_SAT_SYM >  ")
        XCTAssertEqual(d, FixedType(width: 32, integerBits: 10, quantization: .AP_RND, overflow: .AP_SAT_SYM))
        XCTAssertEqual(d.containerBytes, 4)

        XCTAssertEqual(try FixedType(parsing: "ap_fixed<8,-2>").integerBits, -2)
        XCTAssertEqual(try FixedType(parsing: "ap_fixed<4,8,AP_TRN_ZERO>").quantization, .AP_TRN_ZERO)
        XCTAssertEqual(try FixedType(parsing: "ap_fixed<64,32,AP_TRN,AP_WRAP,0>").containerBytes, 8)

        // description round-trips for every mode pair.
        for q in Quantization.allCases {
            for o in Overflow.allCases {
                for t in [FixedType(width: 12, integerBits: 5, signed: false, quantization: q, overflow: o),
                          FixedType(width: 1, integerBits: -7, signed: true, quantization: q, overflow: o)] {
                    XCTAssertEqual(try FixedType(parsing: t.description), t)
                }
            }
        }
        // with(quantization:overflow:)
        XCTAssertEqual(a.with(overflow: .AP_SAT).description, "ap_fixed<16,2,AP_TRN,AP_SAT>")
        XCTAssertEqual(a.with(quantization: .AP_RND).description, "ap_fixed<16,2,AP_RND,AP_WRAP>")
    }

    func testParseErrorsNameTheString() {
        let bad = [
            "ap_fixd<16,2>", "ap_fixed<16>", "ap_fixed<16,2", "ap_fixed16,2", "", "   ",
            "ap_fixed<0,2>", "ap_fixed<65,2>", "ap_fixed<16,2,AP_ROUND>", "ap_fixed<16,2,AP_TRN,AP_CLAMP>",
            "ap_fixed<16,x>", "ap_fixed<1 6,2>", "ap_fixed<16,2,AP_TRN,AP_WRAP,3>", "ap_fixed<16,2,,>",
            "ap_fixed<16,2,AP_TRN,AP_WRAP,0,1>", "ap_fixed<16,5000>", "ap_int<16>", "ap_fixed<16,2>x",
        ]
        for s in bad {
            XCTAssertThrowsError(try FixedType(parsing: s), "'\(s)' should not parse") { e in
                guard let m = e as? MoepackError else { return XCTFail("not a MoepackError: \(e)") }
                XCTAssertEqual(m.item, s)
                XCTAssertTrue(m.description.contains("'\(s)'"), m.description)
                XCTAssertFalse(m.description.contains("\n"))
            }
        }
        // One full message, for the record.
        XCTAssertThrowsError(try FixedType(parsing: "ap_fixed<16,2,AP_ROUND>")) { e in
            XCTAssertEqual("\(e)", "'ap_fixed<16,2,AP_ROUND>': not a fixed-point type: unknown quantization mode 'AP_ROUND' (expected ap_fixed<W,I[,Q[,O]]> or ap_ufixed<W,I[,Q[,O]]>)")
        }
        XCTAssertThrowsError(try FixedType(parsing: "ap_fixed<65,2>")) { e in
            XCTAssertEqual((e as? MoepackError)?.kind, .unsupported)
            XCTAssertTrue("\(e)".contains("W=65"), "\(e)")
        }
    }

    func testCodableValidates() throws {
        let t = FixedType(width: 16, integerBits: 5, quantization: .AP_RND, overflow: .AP_SAT)
        let data = try JSONEncoder().encode(t)
        XCTAssertEqual(try JSONDecoder().decode(FixedType.self, from: data), t)
        let bad = Data(#"{"width":0,"integerBits":2,"signed":true,"quantization":"AP_TRN","overflow":"AP_WRAP"}"#.utf8)
        XCTAssertThrowsError(try JSONDecoder().decode(FixedType.self, from: bad))
        XCTAssertThrowsError(try FixedType(width: 70, integerBits: 2).validate())
        XCTAssertNoThrow(try FixedType(width: 64, integerBits: -1024).validate())
    }
}
