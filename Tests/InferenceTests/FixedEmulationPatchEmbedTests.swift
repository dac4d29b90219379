import XCTest
@testable import MoepackInference
import CMoepackKernels

/// CMoepackKernels `moepack_patch_embed`, every form this CPU runs, against conv.cpp's statements
/// replayed here one product at a time (pixel·weight floored to 22 fraction bits, each row sum and
/// each addition assigned to fm_t with its wrap counted), on extreme weights and pixels and on
/// biases and position embeddings near fm_t's ends so that both kinds of addition wrap.
final class FixedEmulationPatchEmbedTests: XCTestCase {
    typealias LCG = FixedEmulationFastPathTests.LCG

    func testPatchEmbedEveryFormEqualsReplay() {
        var rng = LCG(state: 777)
        // D = 112 and 192: the kernel's blocks of 96 dims, with and without a block of 16 after them.
        for (C, p, gh, gw, D) in [(3, 16, 2, 3, 32), (1, 4, 3, 2, 16), (2, 8, 1, 1, 48), (3, 16, 1, 2, 112), (1, 8, 2, 1, 192)] {
            let H = gh * p, W = gw * p, T = gh * gw + 1, patchLen = C * p * p
            let pixels = (0..<(C * H * W)).map { i -> UInt8 in i % 5 == 0 ? 255 : UInt8(truncatingIfNeeded: rng.next()) }
            // [D][C][p][p]: rows 0 and 1 all at the Int16 ends, the rest random.
            let w = (0..<(D * patchLen)).map { i -> Int32 in
                switch i / patchLen {
                case 0: return -32768
                case 1: return 32767
                default: return Int32(Int16(truncatingIfNeeded: rng.next()))
                }
            }
            let bias = (0..<D).map { d -> Int32 in d % 3 == 0 ? Int32.max - 5 : (d % 3 == 1 ? Int32.min + 5 : Int32(truncatingIfNeeded: rng.next()) >> 4) }
            let pos = (0..<(T * D)).map { i -> Int32 in i % 4 == 0 ? Int32.max : Int32(truncatingIfNeeded: rng.next() << 31 | rng.next()) >> 1 }
            var expected = [Int32](repeating: 0, count: T * D)
            var rowWraps = 0, posWraps = 0
            for d in 0..<D { expected[d] = pos[d] }
            for py in 0..<gh {
                for px in 0..<gw {
                    let token = 1 + py * gw + px
                    for d in 0..<D {
                        var acc = bias[d]
                        for ch in 0..<C {
                            for yy in 0..<p {
                                var addend: Int32 = 0
                                for xx in 0..<p {
                                    let pixel = Int64(pixels[(ch * H + py * p + yy) * W + px * p + xx])
                                    let prod = (pixel * Int64(w[d * patchLen + (ch * p + yy) * p + xx])) >> 2
                                    addend = addFm(Int64(addend), prod, &rowWraps)
                                }
                                acc = addFm(Int64(acc), Int64(addend), &rowWraps)
                            }
                        }
                        expected[token * D + d] = addFm(Int64(acc), Int64(pos[token * D + d]), &posWraps)
                    }
                }
            }
            XCTAssertGreaterThan(rowWraps, 0)
            XCTAssertGreaterThan(posWraps, 0)
            let wT = FixedBackbone.transposed16(w, rows: D, columns: patchLen)
            for isa in FixedEmulationFastPathTests.runnableISAs {
                var out = [Int32](repeating: 7, count: T * D)
                var scratch = [Int32](repeating: 0, count: D)
                var pw: Int64 = -1
                let wraps = moepack_patch_embed(isa, pixels, C, H, W, p, wT, D, bias, pos, &out, &scratch, &pw)
                let label = "form \(isa.rawValue) C \(C) p \(p) D \(D)"
                XCTAssertEqual(out, expected, label)
                XCTAssertEqual(Int(wraps), rowWraps, label)
                XCTAssertEqual(Int(pw), posWraps, label)
            }
        }
    }
}
