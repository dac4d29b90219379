import Foundation
import XCTest
import CMoepackKernels
import MoepackCore
import MoepackModel
@testable import MoepackInference
import TestSupport

/// moepack's float32 GEMM on packed weights (`PackedLinear`, float_gemm.c) against a plain triple
/// loop in double precision, for every form this CPU runs, on shapes that are not multiples of the
/// tile (6 rows × 16 outputs on AVX2), and the independence of a row's (a frame's) result from the
/// rows (frames) computed with it.
final class PackedLinearTests: XCTestCase {
    /// Seeded values in [-1, 1) (64-bit LCG, Knuth's MMIX constants): reproducible without a fixture.
    struct Values {
        var lcg: MMIXLCG
        init(state: UInt64) { lcg = MMIXLCG(state: state) }
        mutating func next() -> Float { Float(Int64(bitPattern: lcg.next()) >> 40) / Float(1 << 23) }
        mutating func array(_ n: Int) -> [Float] { (0..<n).map { _ in next() } }
    }

    static let shapes: [(m: Int, inDim: Int, outDim: Int)] = [
        (1, 1, 1), (1, 5, 17), (7, 33, 21), (6, 16, 16), (13, 50, 37), (19, 97, 35), (5, 192, 48),
    ]

    /// For every form, epilogue and shape: |y − ref| ≤ 1e-6 + 2·in·2⁻²⁴·(Σₖ|x·w| + |b|) for the
    /// product (the float32 summation bound), and for GELU that bound + 1.5e-7·|v| + 1e-7 (erf's
    /// 1.5e-7 and float rounding).
    func testMatchesDoubleTripleLoopOnOddShapes() {
        XCTAssertTrue(FloatForwardTests.floatForms.contains(MOEPACK_ISA_PORTABLE))
        var values = Values(state: 20_261_203)
        for isa in FloatForwardTests.floatForms {
            for (m, inDim, outDim) in Self.shapes {
                let x = values.array(m * inDim), w = values.array(outDim * inDim), b = values.array(outDim)
                let y0 = values.array(m * outDim), scale = values.array(m)
                let layer = PackedLinear(weight: w, bias: b, outDim: outDim, inDim: inDim, isa: isa)
                for epilogue in [PackedLinear.Epilogue.store, .gelu, .accumulate, .accumulateScaled] {
                    var y = y0
                    x.withUnsafeBufferPointer { xp in scale.withUnsafeBufferPointer { sp in
                        y.withUnsafeMutableBufferPointer { yp in
                            layer.apply(rows: m, x: xp.baseAddress!, epilogue, rowScale: sp.baseAddress!, y: yp.baseAddress!)
                        }
                    }}
                    for r in 0..<m {
                        for o in 0..<outDim {
                            var v = Double(b[o]), mag = abs(Double(b[o]))
                            for k in 0..<inDim {
                                v += Double(x[r * inDim + k]) * Double(w[o * inDim + k])
                                mag += abs(Double(x[r * inDim + k]) * Double(w[o * inDim + k]))
                            }
                            var tol = 1e-6 + 2 * Double(inDim) * 0x1p-24 * mag
                            let old = Double(y0[r * outDim + o])
                            let expected: Double
                            switch epilogue {
                            case .store: expected = v
                            case .gelu:
                                expected = 0.5 * v * (1 + erf(v / 2.0.squareRoot()))
                                tol += 1.5e-7 * abs(v) + 1e-7
                            case .accumulate: expected = old + v
                            case .accumulateScaled: expected = old + Double(scale[r]) * v
                            }
                            XCTAssertEqual(Double(y[r * outDim + o]), expected, accuracy: tol,
                                           "form \(isa.rawValue) \(epilogue) m \(m) in \(inDim) out \(outDim) [\(r), \(o)]")
                        }
                    }
                }
            }
        }
    }

    /// A row's outputs are the same bits whether it is computed alone, among other rows, or gathered
    /// through a row index (the MoE token queues), and rows outside the index are not touched.
    func testRowResultIndependentOfOtherRows() {
        var values = Values(state: 7)
        let m = 23, inDim = 70, outDim = 45
        let x = values.array(m * inDim), w = values.array(outDim * inDim), b = values.array(outDim)
        for isa in FloatForwardTests.floatForms {
            let layer = PackedLinear(weight: w, bias: b, outDim: outDim, inDim: inDim, isa: isa)
            for epilogue in [PackedLinear.Epilogue.store, .gelu] {
                var all = [Float](repeating: 0, count: m * outDim)
                x.withUnsafeBufferPointer { xp in all.withUnsafeMutableBufferPointer { yp in
                    layer.apply(rows: m, x: xp.baseAddress!, epilogue, y: yp.baseAddress!)
                }}
                // Rows 3, 11, 22, 0 gathered in that order and scattered back to the same rows.
                let queue: [Int32] = [3, 11, 22, 0]
                var gathered = [Float](repeating: -7, count: m * outDim)
                x.withUnsafeBufferPointer { xp in gathered.withUnsafeMutableBufferPointer { yp in
                    queue.withUnsafeBufferPointer { q in
                        layer.apply(rows: q.count, x: xp.baseAddress!, xRows: q.baseAddress, epilogue,
                                    y: yp.baseAddress!, yRows: q.baseAddress)
                    }
                }}
                for r in 0..<m {
                    var alone = [Float](repeating: 0, count: outDim)
                    x.withUnsafeBufferPointer { xp in alone.withUnsafeMutableBufferPointer { yp in
                        layer.apply(rows: 1, x: xp.baseAddress! + r * inDim, epilogue, y: yp.baseAddress!)
                    }}
                    let row = Array(all[r * outDim..<(r + 1) * outDim])
                    XCTAssertEqual(alone.map(\.bitPattern), row.map(\.bitPattern), "form \(isa.rawValue) row \(r)")
                    let g = Array(gathered[r * outDim..<(r + 1) * outDim])
                    if queue.contains(Int32(r)) {
                        XCTAssertEqual(g.map(\.bitPattern), row.map(\.bitPattern), "form \(isa.rawValue) gathered row \(r)")
                    } else {
                        XCTAssertEqual(g, [Float](repeating: -7, count: outDim), "row \(r) outside the queue written")
                    }
                }
            }
        }
    }

    /// No bias packs zeros: y = x·Wᵀ exactly for products that are exact in float32.
    func testNilBiasAndKnownProduct() {
        // x = [1, 2, 3], W = [[1, 0, 0], [0, 1, 0], [1, 1, 1], ... 17 rows of k·[1, 1, 1]] → 1, 2, 6, 6k
        let w: [Float] = [1, 0, 0, 0, 1, 0] + (1...15).flatMap { k in [Float](repeating: Float(k), count: 3) }
        let layer = PackedLinear(weight: w, bias: nil, outDim: 17, inDim: 3, isa: moepack_kernels_isa())
        var y = [Float](repeating: 9, count: 17)
        [Float(1), 2, 3].withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
            layer.apply(rows: 1, x: xp.baseAddress!, .store, y: yp.baseAddress!)
        }}
        XCTAssertEqual(y, [1, 2] + (1...15).map { Float(6 * $0) })
    }

    /// Frames run alone, one after another, or concurrently on several threads give the same bits
    /// (the float path's result depends only on the frame), on a backbone with MoE blocks whose
    /// shapes are not multiples of the tile.
    func testFrameResultIndependentOfFramesRunWithIt() throws {
        let c = M3ViTConfig(embedDim: 24, depth: 2, heads: 2, moeBlocks: [1], experts: 5, expertHidden: 19,
                            mlpHidden: 37, tasks: 1, topK: 2, tokens: 9, patchSize: 4, inChans: 3,
                            imageHeight: 8, imageWidth: 16, layerNormEps: 1e-6)
        var values = Values(state: 15)
        func a(_ n: Int, _ s: Float = 0.3) -> [Float] { values.array(n).map { $0 * s } }
        let D = c.embedDim, K = c.inChans * c.patchSize * c.patchSize
        func block(_ mlp: MLPWeights) -> BlockWeights {
            BlockWeights(norm1Weight: a(D).map { 1 + $0 }, norm1Bias: a(D), norm2Weight: a(D).map { 1 + $0 },
                         norm2Bias: a(D), qWeight: a(D * D), kWeight: a(D * D), vWeight: a(D * D),
                         projWeight: a(D * D), qBias: a(D), kBias: a(D), vBias: a(D), projBias: a(D), mlp: mlp)
        }
        let E = c.experts, He = c.expertHidden
        let weights = BackboneWeights(
            config: c, patchEmbedWeight: a(D * K), patchEmbedBias: a(D), posEmbed: a(c.tokens * D),
            blocks: [block(.dense(fc1Weight: a(c.mlpHidden * D), fc1Bias: a(c.mlpHidden),
                                  fc2Weight: a(D * c.mlpHidden), fc2Bias: a(D))),
                     block(.moe(gates: [a(E * D, 1)], w1: a(E * He * D), b1: a(E * He), w2: a(E * D * He), b2: a(E * D)))],
            task: 0)
        let frames = (0..<4).map { _ in values.array(c.inChans * c.imageHeight * c.imageWidth).map { ($0 + 1) / 2 } }
        for isa in FloatForwardTests.floatForms {
            let backbone = FloatBackbone(weights: weights, isa: isa)
            let alone = try frames.map { try backbone.forward(pixels: $0).output.map(\.bitPattern) }
            // Each expert gets some tokens, so the experts' gather/scatter path is exercised.
            let routing = try backbone.forward(pixels: frames[0]).routing[0]
            XCTAssertGreaterThan(routing.queues.filter { !$0.isEmpty }.count, 1)
            // In reverse order after the others, and 3 rounds of all frames on concurrent threads.
            for f in frames.indices.reversed() {
                XCTAssertEqual(try backbone.forward(pixels: frames[f]).output.map(\.bitPattern), alone[f])
            }
            // Batched (the experts then see the tokens of several frames in one product), in any
            // order and with repeats: every frame's output, per-block outputs and routing unchanged.
            let aloneFull = try frames.map { try backbone.forward(pixels: $0, recordBlocks: true) }
            for order in [[0, 1, 2, 3], [2, 0, 3], [3, 3, 1, 0, 2, 1]] {
                let batch = try backbone.forward(batch: order.map { frames[$0] }, recordBlocks: true)
                XCTAssertEqual(batch.count, order.count)
                for (r, f) in zip(batch, order) {
                    XCTAssertEqual(r.output.map(\.bitPattern), alone[f], "form \(isa.rawValue) batch \(order) frame \(f)")
                    XCTAssertEqual(r.blockOutputs.map { $0.map(\.bitPattern) }, aloneFull[f].blockOutputs.map { $0.map(\.bitPattern) })
                    XCTAssertEqual(r.routing, aloneFull[f].routing)
                }
            }
            XCTAssertEqual(try backbone.forward(batch: []).count, 0)
            XCTAssertThrowsError(try backbone.forward(batch: [frames[0], [0, 1]])) { e in
                XCTAssertEqual((e as? MoepackError)?.item, "pixels[1]")
            }
            final class Results: @unchecked Sendable {
                let lock = NSLock()
                var bits: [Int: [UInt32]] = [:]
            }
            let rounds = 3, results = Results()
            DispatchQueue.concurrentPerform(iterations: rounds * frames.count) { i in
                let out = (try? backbone.forward(pixels: frames[i % frames.count]).output.map(\.bitPattern)) ?? []
                results.lock.lock(); results.bits[i] = out; results.lock.unlock()
            }
            for i in 0..<rounds * frames.count {
                XCTAssertEqual(results.bits[i], alone[i % frames.count], "form \(isa.rawValue) run \(i)")
            }
        }
    }

    /// Batches for `moepack run`: consecutive, covering every frame once, at most `atMost` frames,
    /// a multiple of the workers, and equal shares per worker (within one frame per batch).
    func testBalancedBatches() {
        XCTAssertEqual(balancedBatches(0, workers: 2, atMost: 4), [])
        XCTAssertEqual(balancedBatches(1, workers: 2, atMost: 4), [0..<1])
        XCTAssertEqual(balancedBatches(3, workers: 2, atMost: 4), [0..<2, 2..<3])
        XCTAssertEqual(balancedBatches(20, workers: 2, atMost: 4), [0..<4, 4..<8, 8..<11, 11..<14, 14..<17, 17..<20])
        XCTAssertEqual(balancedBatches(40, workers: 2, atMost: 4).map(\.count), [Int](repeating: 4, count: 10))
        XCTAssertEqual(balancedBatches(5, workers: 2, atMost: 1), (0..<5).map { $0..<$0 + 1 })
        for count in 1...50 {
            for workers in 1...3 {
                let b = balancedBatches(count, workers: workers, atMost: 4)
                XCTAssertEqual(b.first?.lowerBound, 0)
                XCTAssertEqual(b.last?.upperBound, count)
                XCTAssertTrue(zip(b, b.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
                XCTAssertTrue(b.allSatisfy { (1...4).contains($0.count) })
                XCTAssertTrue(b.count % workers == 0 || b.count == count, "count \(count) workers \(workers)")
                let shares = (0..<workers).map { w in stride(from: w, to: b.count, by: workers).map { b[$0].count }.reduce(0, +) }
                XCTAssertLessThanOrEqual(shares.max()! - shares.min()!, (b.count + workers - 1) / workers, "count \(count) workers \(workers)")
            }
        }
    }
}
