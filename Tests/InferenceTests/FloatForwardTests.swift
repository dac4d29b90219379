import Foundation
import XCTest
import CMoepackKernels
import MoepackCore
import MoepackModel
@testable import MoepackInference

/// Hand-computable checks of the float reference (LayerNorm, GELU, 2-token attention, top-k ties,
/// a 2-expert MoE) and shape validation.
final class FloatForwardTests: XCTestCase {

    // MARK: LayerNorm

    func testLayerNormKnownRow() {
        // x = [1,2,3,4]: mean 2.5, biased variance 1.25, so (x-2.5)/sqrt(1.25+eps).
        let x: [Float] = [1, 2, 3, 4, 10, 10, 10, 10]
        var out = [Float](repeating: 0, count: 8)
        x.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                layerNorm(xp.baseAddress!, rows: 2, dim: 4, weight: [1, 2, 1, 1], bias: [0, 0, 1, 0],
                          eps: 1e-6, out: op.baseAddress!)
            }
        }
        let r = 1 / (1.25 + 1e-6).squareRoot()
        let expected: [Double] = [-1.5 * r, -0.5 * r * 2, 0.5 * r + 1, 1.5 * r, 0, 0, 1, 0]
        for (o, e) in zip(out, expected) { XCTAssertEqual(Double(o), e, accuracy: 1e-6) }
        XCTAssertEqual(Double(out[0]), -1.3416402, accuracy: 1e-6)  // -1.5/sqrt(1.250001)
    }

    func testLayerNormLongRowUsesSIMDAndTail() {
        // dim 19 = 2·8 + 3 exercises the vector loop and the tail; x = 0..18: mean 9, var 30.
        let x = (0..<19).map(Float.init)
        var out = [Float](repeating: 0, count: 19)
        x.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                layerNorm(xp.baseAddress!, rows: 1, dim: 19, weight: [Float](repeating: 1, count: 19),
                          bias: [Float](repeating: 0, count: 19), eps: 0, out: op.baseAddress!)
            }
        }
        for i in 0..<19 { XCTAssertEqual(Double(out[i]), (Double(i) - 9) / 30.0.squareRoot(), accuracy: 1e-6) }
    }

    // MARK: GELU

    /// The forms of the float kernels this CPU runs (AVX2 needs FMA too).
    static var floatForms: [moepack_isa] {
        [MOEPACK_ISA_PORTABLE, MOEPACK_ISA_AVX2, MOEPACK_ISA_AVX512].filter { moepack_sgemm_runnable($0) == $0 }
    }

    func testExactGELUAtKnownPoints() {
        // 0.5·x·(1+erf(x/√2)): erf(1/√2)=0.6826894921370859, erf(2/√2)=0.9544997361036416,
        // erf(3/√2)=0.9973002039367398. erf is A&S 7.1.26 (|error| ≤ 1.5e-7), as PyTorch's CPU kernel.
        let xs: [Double] = [0, 1, -1, 2, -3, 0.5]
        let expected: [Double] = [0, 0.8413447460685429, -0.15865525393145707, 1.9544997361036416,
                                  -0.0040496940948907, 0.34573123063700656]
        for isa in Self.floatForms {
            var v = xs.map(Float.init)
            v.withUnsafeMutableBufferPointer { moepack_gelu_f32(isa, $0.baseAddress!, $0.count) }
            for (i, (a, e)) in zip(v, expected).enumerated() {
                XCTAssertEqual(Double(a), e, accuracy: 1e-7 + 0.75e-7 * abs(xs[i]), "form \(isa.rawValue) x = \(xs[i])")
            }
        }
    }

    func testVectorErfAgainstLibm() {
        XCTAssertTrue(Self.floatForms.contains(MOEPACK_ISA_PORTABLE))
        // -8 ..< 8 in steps of 0.0005 (an odd count, so every form's tail is exercised).
        let xs = (0..<32_001).map { -8 + Float($0) * 0.0005 }
        for isa in Self.floatForms {
            var e = xs
            e.withUnsafeMutableBufferPointer { moepack_erf_f32(isa, $0.baseAddress!, $0.count) }
            let maxErfErr = zip(xs, e).map { abs(Double($1) - erf(Double($0))) }.max()!
            XCTAssertLessThan(maxErfErr, 3e-7, "form \(isa.rawValue)")  // A&S 1.5e-7 plus float rounding
        }
    }

    func testVectorExpAgainstLibm() {
        var maxExpRel = 0.0
        for i in 0..<2000 {
            let base = -8 + Float(i) * 0.008
            let x = SIMD16<Float>((0..<16).map { base + Float($0) * 0.0005 })
            let ex = exp16(x * 10)
            for k in 0..<16 {
                let ref = exp(Double(x[k] * 10))
                maxExpRel = max(maxExpRel, abs(Double(ex[k]) - ref) / ref)
            }
        }
        XCTAssertLessThan(maxExpRel, 3e-7)
        XCTAssertEqual(exp16(SIMD16(repeating: -100))[0], 0)
        XCTAssertEqual(exp16(SIMD16(repeating: 0))[0], 1)
    }

    // MARK: Softmax / top-k

    func testSoftmaxRows() {
        var v: [Float] = [0, log(3), 1000, 1000]
        v.withUnsafeMutableBufferPointer { softmaxRows($0.baseAddress!, rows: 2, cols: 2) }
        XCTAssertEqual(v[0], 0.25, accuracy: 1e-7)
        XCTAssertEqual(v[1], 0.75, accuracy: 1e-7)
        XCTAssertEqual(v[2], 0.5); XCTAssertEqual(v[3], 0.5)
    }

    func testTop2TieRuleKeepsLowerIndex() {
        let probs: [Float] = [
            0.25, 0.25, 0.25, 0.25,   // all equal → 0, 1
            0.1, 0.4, 0.1, 0.4,       // tie on top → 1, 3
            0.3, 0.1, 0.3, 0.3,       // three-way tie → 0, 2
            0.1, 0.2, 0.6, 0.1,       // distinct → 2, 1
        ]
        let r = probs.withUnsafeBufferPointer { route(probs: $0, tokens: 4, experts: 4, topK: 2) }
        XCTAssertEqual(r.top, [0, 1, 1, 3, 0, 2, 2, 1])
        XCTAssertEqual(r.weights, [0.25, 0.25, 0.4, 0.4, 0.3, 0.3, 0.6, 0.2])
        XCTAssertEqual(r.queues, [[0, 2], [0, 1, 3], [2, 3], [1]])
        // Second choice minus best left out: ties give 0, the last row 0.2 − 0.1.
        XCTAssertEqual(r.margins, [0, 0.4 - 0.1, 0, Float(0.2) - Float(0.1)])
    }

    // MARK: Tiny models

    /// D = 2, 1 head, one 1×1 patch (tokens = cls + 1), one block.
    private func tinyConfig(moe: Bool, experts: Int = 2, topK: Int = 2) -> M3ViTConfig {
        M3ViTConfig(embedDim: 2, depth: 1, heads: 1, moeBlocks: moe ? [0] : [], experts: experts,
                    expertHidden: 1, mlpHidden: 1, tasks: 1, topK: topK, tokens: 2, patchSize: 1,
                    inChans: 3, imageHeight: 1, imageWidth: 1, layerNormEps: 1e-6)
    }

    /// x0 (cls) = [1, 0], x1 = patch [0, 1] (zero conv, pos [0, 1]); LN of a 2-vector is ±r with
    /// r = 0.5/√(0.25 + eps).
    private func tinyWeights(mlp: MLPWeights, q: [Float], k: [Float], v: [Float], qb: [Float], kb: [Float],
                             vb: [Float], proj: [Float], projBias: [Float], moe: Bool, topK: Int = 2) -> BackboneWeights {
        let block = BlockWeights(norm1Weight: [1, 1], norm1Bias: [0, 0], norm2Weight: [1, 1], norm2Bias: [0, 0],
                                 qWeight: q, kWeight: k, vWeight: v, projWeight: proj,
                                 qBias: qb, kBias: kb, vBias: vb, projBias: projBias, mlp: mlp)
        return BackboneWeights(config: tinyConfig(moe: moe, topK: topK), patchEmbedWeight: [0, 0, 0, 0, 0, 0],
                               patchEmbedBias: [0, 0], posEmbed: [1, 0, 0, 1], blocks: [block], task: 0)
    }

    private let zeroDense = MLPWeights.dense(fc1Weight: [0, 0], fc1Bias: [0], fc2Weight: [0, 0], fc2Bias: [0, 0])

    func testSoftmaxAttentionOnTwoTokens() throws {
        let w = tinyWeights(mlp: zeroDense, q: [1, 0, 0, 1], k: [2, 0, 0, 1], v: [1, 2, 3, 4],
                            qb: [0, 0], kb: [0, 0.5], vb: [0.1, -0.1], proj: [1, 0, 0, 1], projBias: [0.01, 0.02],
                            moe: false)
        let result = try FloatBackbone(weights: w).forward(pixels: [0.5, 0.25, 0.75], recordBlocks: true)
        // Hand computation in Double.
        let r = 0.5 / (0.25 + 1e-6).squareRoot()
        let h = [[r, -r], [-r, r]]
        let q = h, k = h.map { [2 * $0[0], $0[1] + 0.5] }
        let v = h.map { [$0[0] + 2 * $0[1] + 0.1, 3 * $0[0] + 4 * $0[1] - 0.1] }
        let scale = 1 / 2.0.squareRoot()
        let x0 = [[1.0, 0.0], [0.0, 1.0]]
        var expected: [Double] = []
        for i in 0..<2 {
            let s = (0..<2).map { j in (q[i][0] * k[j][0] + q[i][1] * k[j][1]) * scale }
            let m = s.max()!, e = s.map { exp($0 - m) }, z = e.reduce(0, +)
            for d in 0..<2 {
                expected.append(x0[i][d] + (e[0] * v[0][d] + e[1] * v[1][d]) / z + [0.01, 0.02][d])
            }
        }
        // With r ≈ 1: q0·k0 = 2.5, q0·k1 = −3.5, so token 0 puts a = 1/(1 + e^(6/√2)) ≈ 0.0142 on
        // token 1; v0 = [−0.9, −1.1], v1 = [1.1, 0.9] → x0[0] = 1 − 0.9 + 2a + 0.01 ≈ 0.1383.
        XCTAssertEqual(expected[0], 0.11 + 2 / (1 + exp(6 / 2.0.squareRoot())), accuracy: 1e-5)
        XCTAssertEqual(Double(result.output[0]), 0.13833, accuracy: 1e-4)
        for (a, e) in zip(result.output, expected) { XCTAssertEqual(Double(a), e, accuracy: 1e-5) }
        XCTAssertEqual(result.blockOutputs, [result.output])
        XCTAssertTrue(result.routing.isEmpty)
    }

    /// Attention contributes nothing (V = 0, proj = 0), so h = LN2(x) = [r,−r] for cls and [−r,r]
    /// for the patch token; the gate is the identity: logits = h.
    private func twoExpertMoE(topK: Int) throws -> (ForwardResult, [[Double]], [[Double]]) {
        let w1: [Float] = [1, 2, -1, 0.5]      // [E=2, He=1, D=2]
        let b1: [Float] = [0.5, -0.25]         // [2, 1]
        let w2: [Float] = [2, -1, 0.5, 3]      // [E=2, D=2, He=1]
        let b2: [Float] = [0.1, 0.2, -0.3, 0.4] // [2, 2]
        let mlp = MLPWeights.moe(gates: [[1, 0, 0, 1]], w1: w1, b1: b1, w2: w2, b2: b2)
        let zero4: [Float] = [0, 0, 0, 0]
        let w = tinyWeights(mlp: mlp, q: zero4, k: zero4, v: zero4, qb: [0, 0], kb: [0, 0], vb: [0, 0],
                            proj: zero4, projBias: [0, 0], moe: true, topK: topK)
        let result = try FloatBackbone(weights: w).forward(pixels: [0, 0, 0], recordBlocks: false)
        let r = 0.5 / (0.25 + 1e-6).squareRoot()
        let h = [[r, -r], [-r, r]]
        func gelu(_ x: Double) -> Double { 0.5 * x * (1 + erf(x / 2.0.squareRoot())) }
        var experts: [[Double]] = []   // experts[t·2+e] = expert_e(h_t)
        var probs: [[Double]] = []
        for t in 0..<2 {
            let z = exp(h[t][0]) + exp(h[t][1])
            probs.append([exp(h[t][0]) / z, exp(h[t][1]) / z])
            for e in 0..<2 {
                let a = gelu(Double(w1[2 * e]) * h[t][0] + Double(w1[2 * e + 1]) * h[t][1] + Double(b1[e]))
                experts.append([Double(w2[2 * e]) * a + Double(b2[2 * e]), Double(w2[2 * e + 1]) * a + Double(b2[2 * e + 1])])
            }
        }
        return (result, experts, probs)
    }

    func testTwoExpertMoETop2ByHand() throws {
        let (result, experts, probs) = try twoExpertMoE(topK: 2)
        let x0 = [[1.0, 0.0], [0.0, 1.0]]
        for t in 0..<2 {
            for d in 0..<2 {
                let mix = probs[t][0] * experts[t * 2][d] + probs[t][1] * experts[t * 2 + 1][d]
                XCTAssertEqual(Double(result.output[t * 2 + d]), x0[t][d] + mix, accuracy: 1e-5)
            }
        }
        // p(cls) = softmax([r,−r]) ≈ [0.8808, 0.1192].
        XCTAssertEqual(probs[0][0], 0.8807970779778823, accuracy: 1e-5)
        XCTAssertEqual(result.routing.count, 1)
        let routing = result.routing[0]
        XCTAssertEqual(routing.block, 0)
        XCTAssertEqual(routing.topExperts, [0, 1, 1, 0])
        XCTAssertEqual(Double(routing.topWeights[0]), probs[0][0], accuracy: 1e-6)
        XCTAssertEqual(Double(routing.topWeights[3]), probs[1][0], accuracy: 1e-6)
        XCTAssertEqual(routing.queues, [[0, 1], [0, 1]])
    }

    func testTwoExpertMoETop1NotRenormalised() throws {
        let (result, experts, probs) = try twoExpertMoE(topK: 1)
        let x0 = [[1.0, 0.0], [0.0, 1.0]]
        // cls → expert 0 with p ≈ 0.88 (not renormalised to 1); patch token → expert 1.
        for d in 0..<2 {
            XCTAssertEqual(Double(result.output[d]), x0[0][d] + probs[0][0] * experts[0][d], accuracy: 1e-5)
            XCTAssertEqual(Double(result.output[2 + d]), x0[1][d] + probs[1][1] * experts[3][d], accuracy: 1e-5)
        }
        XCTAssertEqual(result.routing[0].topExperts, [0, 1])
        XCTAssertEqual(result.routing[0].queues, [[0], [1]])
    }

    // MARK: Validation

    func testWrongPixelCountThrows() {
        let w = tinyWeights(mlp: zeroDense, q: [1, 0, 0, 1], k: [1, 0, 0, 1], v: [1, 0, 0, 1], qb: [0, 0],
                            kb: [0, 0], vb: [0, 0], proj: [1, 0, 0, 1], projBias: [0, 0], moe: false)
        XCTAssertThrowsError(try FloatBackbone(weights: w).forward(pixels: [0, 0], recordBlocks: false)) { e in
            XCTAssertEqual((e as? MoepackError)?.kind, .mismatch)
            XCTAssertTrue("\(e)".contains("pixels"), "\(e)")
        }
    }

    func testBadWeightShapeNamesTensor() {
        var w = tinyWeights(mlp: zeroDense, q: [1, 0, 0, 1], k: [1, 0, 0, 1], v: [1, 0, 0, 1], qb: [0, 0],
                            kb: [0, 0], vb: [0, 0], proj: [1, 0, 0, 1], projBias: [0, 0], moe: false)
        w.blocks[0].kWeight = [1, 0, 0]
        XCTAssertThrowsError(try FloatBackbone(weights: w).forward(pixels: [0, 0, 0], recordBlocks: false)) { e in
            XCTAssertEqual("\(e)", "'blocks[0].kWeight': 3 values, expected 4 (shape [2,2])")
        }
        w = tinyWeights(mlp: zeroDense, q: [1, 0, 0, 1], k: [1, 0, 0, 1], v: [1, 0, 0, 1], qb: [0, 0],
                        kb: [0, 0], vb: [0, 0], proj: [1, 0, 0, 1], projBias: [0, 0], moe: true)
        XCTAssertThrowsError(try FloatBackbone(weights: w).forward(pixels: [0, 0, 0], recordBlocks: false)) { e in
            XCTAssertTrue("\(e)".contains("dense MLP but config lists block 0 as MoE"), "\(e)")
        }
    }

    // MARK: OpenBLAS core choice

    func testPreferredOpenBLASCore() {
        func flags(_ s: String) -> Set<Substring> { Set(s.split(separator: " ")) }
        XCTAssertEqual(BLAS.preferredCore(flags: flags("sse2 avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512cd")), "SkylakeX")
        XCTAssertEqual(BLAS.preferredCore(flags: flags("sse2 avx avx2 fma avx512f")), "Haswell")
        XCTAssertEqual(BLAS.preferredCore(flags: flags("sse2 avx")), "Sandybridge")
        XCTAssertNil(BLAS.preferredCore(flags: flags("sse2 ssse3")))
        XCTAssertGreaterThan(BLAS.threads, 0)
        XCTAssertFalse(BLAS.coreName.isEmpty)
    }
}
