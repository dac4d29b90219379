import Foundation
import XCTest
import CMoepackKernels
@testable import MoepackInference

/// moepack's fused attention (`moepack_attention_f32`) against PyTorch in float64 on seeded operands
/// (Tests/Fixtures/attention, made by scripts/make_attention_fixture.py), for every form this CPU runs.
final class FloatAttentionTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/attention")

    struct Case {
        let name: String, tokens: Int, heads: Int, headDim: Int, scale: Float
        let qkv: [Float]
        let expected: [Double]
    }

    static func loadCases() throws -> [Case] {
        let meta = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtures.appendingPathComponent("cases.json")))
            as! [String: [String: Any]]
        return try meta.keys.sorted().map { name in
            let m = meta[name]!
            let qkv = try Data(contentsOf: fixtures.appendingPathComponent(m["qkv"] as! String))
            let out = try Data(contentsOf: fixtures.appendingPathComponent(m["out"] as! String))
            return Case(name: name, tokens: m["tokens"] as! Int, heads: m["heads"] as! Int, headDim: m["head_dim"] as! Int,
                        scale: Float(m["scale"] as! Double),
                        qkv: qkv.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) },
                        expected: out.withUnsafeBytes { Array($0.bindMemory(to: Double.self)) })
        }
    }

    /// Runs every head of `c` with the operands read in place from the stacked Q|K|V rows.
    static func run(_ c: Case, isa: moepack_isa) -> [Float] {
        let D = c.heads * c.headDim, hd = c.headDim
        var out = [Float](repeating: .nan, count: c.tokens * D)
        var work = [Float](repeating: .nan, count: moepack_attention_work_count(c.tokens, hd))
        c.qkv.withUnsafeBufferPointer { qkv in
            out.withUnsafeMutableBufferPointer { o in
                for h in 0..<c.heads {
                    let q = qkv.baseAddress! + h * hd
                    moepack_attention_f32(isa, c.tokens, hd, c.scale, q, q + D, q + 2 * D, 3 * D,
                                          o.baseAddress! + h * hd, D, &work)
                }
            }
        }
        return out
    }

    /// |out − PyTorch float64| < 8e-6 everywhere. Outputs are O(1) (values N(0, 1.5²)); the error is
    /// float32 rounding of scores up to |scale·q·k| ≈ 10 (relative 2⁻²⁴ per term over 64 terms), a
    /// 2-ulp exp and sums over 129 tokens: measured 4.0e-6 (portable) and 3.5e-6 (AVX2) on the
    /// bundled shape (three blocks of query rows, MOEPACK_ATTENTION_ROWS), under 2e-6 on the odd one.
    func testMatchesPyTorchFloat64() throws {
        let cases = try Self.loadCases()
        XCTAssertEqual(cases.map(\.name), ["bundled", "odd"])
        XCTAssertTrue(FloatForwardTests.floatForms.contains(MOEPACK_ISA_PORTABLE))
        for c in cases {
            XCTAssertEqual(c.qkv.count, c.tokens * 3 * c.heads * c.headDim)
            XCTAssertEqual(c.expected.count, c.tokens * c.heads * c.headDim)
            for isa in FloatForwardTests.floatForms {
                let out = Self.run(c, isa: isa)
                let maxErr = zip(out, c.expected).map { abs(Double($0) - $1) }.max()!
                XCTAssertLessThan(maxErr, 8e-6, "\(c.name) form \(isa.rawValue)")
                // The reference is not trivial: outputs spread well beyond the tolerance.
                XCTAssertGreaterThan(c.expected.map(abs).max()!, 0.5)
            }
        }
    }

    /// A head's result does not depend on where its operands sit (row stride, neighbouring heads)
    /// nor on what the work area held: contiguous copies give the same bits.
    func testSameBitsFromContiguousOperands() throws {
        let c = try Self.loadCases().first { $0.name == "odd" }!
        let D = c.heads * c.headDim, hd = c.headDim, T = c.tokens
        for isa in FloatForwardTests.floatForms {
            let inPlace = Self.run(c, isa: isa)
            for h in 0..<c.heads {
                func slice(_ part: Int) -> [Float] {
                    var out: [Float] = []
                    for t in 0..<T {
                        let start: Int = t * 3 * D + part * D + h * hd
                        out += c.qkv[start..<(start + hd)]
                    }
                    return out
                }
                let q = slice(0), k = slice(1), v = slice(2)
                var out = [Float](repeating: 0, count: T * hd)
                var work = [Float](repeating: 1e30, count: moepack_attention_work_count(T, hd))
                moepack_attention_f32(isa, T, hd, c.scale, q, k, v, hd, &out, hd, &work)
                for t in 0..<T {
                    XCTAssertEqual(Array(out[(t * hd)...].prefix(hd)), Array(inPlace[(t * D + h * hd)...].prefix(hd)),
                                   "form \(isa.rawValue) head \(h) token \(t)")
                }
            }
        }
    }

    /// Keys all equal: every attention weight is 1/T, so each output row is the mean of V's rows.
    func testEqualKeysAverageValues() {
        let T = 7, hd = 3
        let q: [Float] = (0..<T * hd).map { Float($0 % 5) - 2 }
        let k = [Float](repeating: 0.5, count: T * hd)
        let v: [Float] = (0..<T * hd).map { Float($0) }  // V[t][d] = 3t + d: mean over t = 9 + d
        for isa in FloatForwardTests.floatForms {
            var out = [Float](repeating: 0, count: T * hd)
            var work = [Float](repeating: 0, count: moepack_attention_work_count(T, hd))
            moepack_attention_f32(isa, T, hd, 0.25, q, k, v, hd, &out, hd, &work)
            for t in 0..<T {
                for d in 0..<hd { XCTAssertEqual(out[t * hd + d], Float(9 + d), accuracy: 4e-6, "form \(isa.rawValue)") }
            }
        }
    }
}
