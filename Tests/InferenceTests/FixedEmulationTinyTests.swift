import XCTest
import Foundation
import MoepackCore
import MoepackModel
import MoepackInference

/// End-to-end check of the fixed-point emulation on the seeded tiny M³ViT fixture
/// (Tests/Fixtures/tiny, made by scripts/make_fixtures.py): raw kernel arrays (AP_RND_CONV/AP_SAT
/// quantised), one frame, and the float32 forward of the dequantised model as reference.
final class FixedEmulationTinyTests: XCTestCase {
    static let tinyDir = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/tiny")

    struct Tiny {
        var arrays: KernelArrays
        var frame: [UInt8]
        var refOut: [Float]
        var refTop2: [Int32]     // [moe block, token, 2]
    }

    static func load() throws -> Tiny {
        let dir = tinyDir
        let metaURL = dir.appendingPathComponent("meta.json")
        guard FileManager.default.fileExists(atPath: metaURL.path) else {
            throw XCTSkip("tiny fixture absent at \(dir.path)")
        }
        let meta = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: metaURL)) as? [String: Any])
        let cfgJ = try XCTUnwrap(meta["config"] as? [String: Any])
        func int(_ k: String) throws -> Int { try XCTUnwrap(cfgJ[k] as? Int, k) }
        let cfg = M3ViTConfig(
            embedDim: try int("embed_dim"), depth: try int("depth"), heads: try int("heads"),
            moeBlocks: try XCTUnwrap(cfgJ["moe_blocks"] as? [Int]), experts: try int("experts"),
            expertHidden: try int("expert_hidden"), mlpHidden: try int("mlp_hidden"), tasks: try int("tasks"),
            topK: try int("top_k"), tokens: try int("tokens"), patchSize: try int("patch"),
            inChans: try int("in_chans"), imageHeight: try int("height"), imageWidth: try int("width"),
            layerNormEps: Float(try XCTUnwrap(cfgJ["layer_norm_eps"] as? Double)))
        let files = try XCTUnwrap(meta["files"] as? [String: Any])
        let conventions = try XCTUnwrap(meta["conventions"] as? [String: Any])
        let types = try XCTUnwrap(conventions["kernel_types"] as? [String: String])

        func bytes(_ name: String) throws -> Data { try Data(contentsOf: dir.appendingPathComponent(name)) }
        var arrays: [String: RawArray] = [:]
        for (name, type) in types {
            // "ap_fixed<W,I>"
            let nums = type.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
            XCTAssertEqual(nums.count, 2, type)
            let (w, i) = (nums[0], nums[1])
            let file = "kernel_\(name).\(w == 32 ? "i32" : "i16")"
            let info = try XCTUnwrap(files[file] as? [String: Any], file)
            let shape = try XCTUnwrap(info["shape"] as? [Int])
            let data = try bytes(file)
            var raw: [Int32] = []
            data.withUnsafeBytes { b in
                if w == 32 {
                    raw = (0..<(b.count / 4)).map { Int32(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
                } else {
                    raw = (0..<(b.count / 2)).map { Int32(Int16(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 2, as: Int16.self))) }
                }
            }
            arrays[name] = RawArray(raw: raw, shape: shape, fracBits: w - i, width: w, signed: true)
        }
        let frame = [UInt8](try bytes("frame.u8"))
        let refOut: [Float] = try bytes("ref_dequant_out_task0.f32").withUnsafeBytes { b in
            (0..<(b.count / 4)).map { Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
        let refTop2: [Int32] = try bytes("ref_dequant_top2_task0.i32").withUnsafeBytes { b in
            (0..<(b.count / 4)).map { Int32(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
        }
        return Tiny(arrays: KernelArrays(config: cfg, arrays: arrays), frame: frame, refOut: refOut, refTop2: refTop2)
    }

    func testTinyModelMatchesDequantisedFloatForward() throws {
        let tiny = try Self.load()
        let cfg = tiny.arrays.config
        let model = try FixedBackbone(arrays: tiny.arrays)
        let r = try model.forward(pixels: tiny.frame, recordBlocks: true)
        XCTAssertEqual(r.output.count, cfg.tokens * cfg.embedDim)
        XCTAssertEqual(r.outputRaw.count, r.output.count)
        XCTAssertEqual(r.blockOutputs.count, cfg.depth)
        XCTAssertEqual(r.blockOutputs.last ?? [], r.output)
        XCTAssertEqual(tiny.refOut.count, r.output.count)

        // Relative MSE against the float32 forward of the dequantised weights.
        let n = Double(r.output.count)
        let mean = tiny.refOut.reduce(0.0) { $0 + Double($1) } / n
        let variance = tiny.refOut.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / n
        var mse = 0.0, maxAbs = 0.0
        for i in 0..<r.output.count {
            let d = Double(r.output[i]) - Double(tiny.refOut[i])
            mse += d * d
            maxAbs = max(maxAbs, abs(d))
        }
        mse /= n
        let rel = mse / variance
        print("FixedEmulation tiny: mse \(mse), output variance \(variance), relative \(rel), max |diff| \(maxAbs)")
        XCTAssertLessThan(rel, 1e-3)

        // Routing agreement with the dequantised float forward, slot by slot.
        XCTAssertEqual(r.routing.map(\.block), cfg.moeBlocks)
        var agree = 0, total = 0
        for (b, routing) in r.routing.enumerated() {
            for i in 0..<(cfg.tokens * cfg.topK) {
                total += 1
                if routing.topExperts[i] == tiny.refTop2[b * cfg.tokens * cfg.topK + i] { agree += 1 }
            }
            // Queues: every token appears topK times overall, each queue in token order.
            XCTAssertEqual(routing.queues.reduce(0) { $0 + $1.count }, cfg.tokens * cfg.topK)
            for q in routing.queues { XCTAssertEqual(q, q.sorted()) }
            for w in routing.topWeights { XCTAssert(w > 0 && w <= 1, "gate weight \(w)") }
        }
        let agreement = Double(agree) / Double(total)
        print("FixedEmulation tiny: routing agreement \(agreement) (\(agree)/\(total)); overflow \(r.overflow)")
        XCTAssertGreaterThanOrEqual(agreement, 0.9)

        // Bit-exact against the independent loop-literal Python model
        // (Tests/Fixtures/emulation/make_emulation_ref.py, run on the same tiny fixture).
        let emu = Self.tinyDir.deletingLastPathComponent().appendingPathComponent("emulation")
        if let outData = try? Data(contentsOf: emu.appendingPathComponent("tiny_fixed_out.i32")),
           let topData = try? Data(contentsOf: emu.appendingPathComponent("tiny_fixed_top2.i32")) {
            let expected: [Int32] = outData.withUnsafeBytes { b in
                (0..<(b.count / 4)).map { Int32(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
            }
            let expectedTop: [Int32] = topData.withUnsafeBytes { b in
                (0..<(b.count / 4)).map { Int32(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
            }
            let mismatches = zip(expected, r.outputRaw).filter { $0 != $1 }.count
            XCTAssertEqual(expected.count, r.outputRaw.count)
            XCTAssertEqual(mismatches, 0, "raw fm_t outputs differing from the Python model")
            XCTAssertEqual(expectedTop, r.routing.flatMap(\.topExperts))
        } else {
            XCTFail("Tests/Fixtures/emulation/tiny_fixed_*.i32 missing")
        }

        // Deterministic: a second run gives the same bits.
        let r2 = try model.forward(pixels: tiny.frame, recordBlocks: false)
        XCTAssertEqual(r2.outputRaw, r.outputRaw)
        XCTAssertTrue(r2.blockOutputs.isEmpty)

        // Wrong frame size is refused.
        XCTAssertThrowsError(try model.forward(pixels: [0, 1, 2], recordBlocks: false))
    }
}

/// Timing of one forward pass on a synthetic full-size (Edge-MoE ZCU102, D = 192) model.
/// Runs only when MOEPACK_BENCH=1 (meant for `swift test -c release`); prints, asserts no timing.
final class FixedEmulationBenchTests: XCTestCase {
    func testFullSizeForwardTiming() throws {
        guard ProcessInfo.processInfo.environment["MOEPACK_BENCH"] == "1" else {
            throw XCTSkip("set MOEPACK_BENCH=1 to time the full-size fixed-point forward")
        }
        let c = M3ViTConfig.edgeMoE
        let model = try FixedBackbone(arrays: syntheticFullSizeArrays())
        let pixels = (0..<(3 * c.imageHeight * c.imageWidth)).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
        _ = try model.forward(pixels: pixels, recordBlocks: false)
        let runs = 5
        func cpuNow() -> Double {   // this thread's CPU time: robust against a loaded machine
            var ts = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
            return Double(ts.tv_sec) * 1e3 + Double(ts.tv_nsec) / 1e6
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let c0 = cpuNow()
        var last: FixedForwardResult?
        for _ in 0..<runs { last = try model.forward(pixels: pixels, recordBlocks: false) }
        let cpu = (cpuNow() - c0) / Double(runs)
        let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6 / Double(runs)
        print("FixedEmulation full-size forward: \(ms) ms/frame wall, \(cpu) ms/frame thread CPU; overflow \(last?.overflow ?? [])")
    }
}
