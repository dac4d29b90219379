import XCTest
import TestSupport
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint
@testable import MoepackPacking


let tinyFixtures = repoRoot.appendingPathComponent("Tests/Fixtures/tiny")

func readRawInts(_ path: String, elementBytes: Int) throws -> [Int64] {
    guard let d = FileManager.default.contents(atPath: path) else { throw XCTSkip("fixture \(path) missing") }
    return littleEndianInts(ArraySlice([UInt8](d)), elementBytes: elementBytes)
}

/// Packs with the tiny-test profile and returns the opened image.
func packTiny(_ checkpoint: String, quantization: Quantization = .AP_RND_CONV, overflow: Overflow = .AP_SAT,
              task: Int = 0) throws -> PackedImage {
    let profile = try KernelProfile.load("tiny-test")
    let src = try openCheckpoint(checkpoint)
    let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: src, expected: profile.model))
    let out = tempDir("tiny") + "/img"
    _ = try pack(kernel: k, options: PackOptions(profile: profile, task: task, quantization: quantization, overflow: overflow),
                 outputDirectory: out)
    return try PackedImage(directory: out)
}

final class PackingFixtureTests: XCTestCase {
    /// Every weight buffer of the tiny PyTorch checkpoint equals the raw kernel arrays the seeded
    /// Python reference (scripts/reference_m3vit.py) computed, for both mode pairs.
    func testTinyCheckpointMatchesPythonKernelArrays() throws {
        for (prefix, q, o) in [("kernel_", Quantization.AP_RND_CONV, Overflow.AP_SAT), ("kernel_trn_wrap_", .AP_TRN, .AP_WRAP)] {
            let image = try packTiny(tinyFixtures.appendingPathComponent("model.pth").path, quantization: q, overflow: o)
            for b in image.manifest.buffers where b.role == .weight {
                let ext = b.element_bytes == 4 ? "i32" : "i16"
                let expected = try readRawInts(tinyFixtures.appendingPathComponent("\(prefix)\(b.name).\(ext)").path, elementBytes: b.element_bytes)
                let got = littleEndianInts(try image.raw(b.name), elementBytes: b.element_bytes)
                XCTAssertEqual(got.count, expected.count, b.name)
                let diff = zip(got, expected).filter { $0 != $1 }.count
                XCTAssertEqual(diff, 0, "\(prefix)\(b.name): \(diff) elements differ")
            }
        }
    }

    /// The same model as an expert-parallel folder, float16, legacy format packs to the same bytes.
    func testContainersPackToSameImage() throws {
        let reference = try packTiny(tinyFixtures.appendingPathComponent("model.pth").path)
        for other in ["ep", "plain.pth", "legacy.pth", "model.safetensors", "model.h5", "model.npz", "model_deflated.npz"] {
            let path = tinyFixtures.appendingPathComponent(other).path
            let image: PackedImage
            do { image = try packTiny(path) } catch let e as MoepackError where e.kind == .unsupported {
                throw XCTSkip("\(other): \(e)")
            }
            for b in reference.manifest.buffers where b.role == .weight {
                XCTAssertEqual(image.manifest.buffer(b.name)?.sha256, b.sha256, "\(other): \(b.name)")
            }
            // Tensor digests are of the decoded float32 values: the container does not change them.
            XCTAssertEqual(image.manifest.source.tensors_sha256, reference.manifest.source.tensors_sha256, other)
        }
    }

    /// `source.tensors` of a pack equals the digests scripts/make_digest_fixture.py computed with
    /// torch + hashlib (SHA-256 of float32 little-endian values; the combined line-list digest); the
    /// image and buffer digests are SHA-256 of ddr.bin and of each buffer's bytes.
    func testSourceTensorDigestsMatchPython() throws {
        let path = tinyFixtures.appendingPathComponent("model.pth").path
        let image = try packTiny(path)
        let data = try XCTUnwrap(FileManager.default.contents(atPath: tinyFixtures.appendingPathComponent("tensor_sha256.json").path))
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let expected = try XCTUnwrap(json["tensors"] as? [[String: Any]])
        let src = image.manifest.source
        let got = try XCTUnwrap(src.tensors)
        XCTAssertEqual(got.count, expected.count)
        XCTAssertEqual(got.count, 54)
        for (g, e) in zip(got, expected) {
            XCTAssertEqual(g.name, e["name"] as? String)
            XCTAssertEqual(g.shape, e["shape"] as? [Int], g.name)
            XCTAssertEqual(g.sha256, e["sha256"] as? String, g.name)
            XCTAssertEqual(g.source_name, "module.backbone." + g.name)
        }
        XCTAssertEqual(src.tensors_sha256, json["tensors_sha256"] as? String)
        XCTAssertEqual(src.tensors_sha256, "e5b6221c2e2548c9f8b7e3d6c0348408f2b39ea25bb9b62903d533c7bfc2797d")
        XCTAssertEqual(src.bytes, (try FileManager.default.attributesOfItem(atPath: path))[.size] as? Int)
        XCTAssertNil(src.sha256, "the whole-file SHA-256 is opt-in (hashSourceFile)")
        let ddr = try Data(contentsOf: URL(fileURLWithPath: image.directory + "/ddr.bin"))
        XCTAssertEqual(image.manifest.image.sha256, hex(SHA256.hash(data: ddr)))
        for b in image.manifest.buffers {
            XCTAssertEqual(b.sha256, hex(SHA256.hash(data: ddr[b.offset..<(b.offset + b.bytes)])), b.name)
        }
    }

    /// With hashSourceFile the manifest also carries the SHA-256 of the checkpoint file's bytes.
    func testWholeFileHashOnRequest() throws {
        let path = tinyFixtures.appendingPathComponent("model.pth").path
        let profile = try KernelProfile.load("tiny-test")
        let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: try openCheckpoint(path), expected: profile.model))
        let out = tempDir("tiny-hash") + "/img"
        let r = try pack(kernel: k, options: PackOptions(profile: profile, hashSourceFile: true), outputDirectory: out)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertEqual(r.manifest.source.sha256, hex(SHA256.hash(data: bytes)))
        XCTAssertNotNil(r.manifest.source.tensors_sha256)
    }

    /// The already-folded Edge-MoE folder form of the tiny model gives the same bits (its folds were done
    /// by the Python reference; the patch weights may differ by one float32 ulp, hence ±1 LSB there).
    func testEdgeMoEFolderOfTinyModel() throws {
        let reference = try packTiny(tinyFixtures.appendingPathComponent("model.pth").path)
        let image = try packTiny(tinyFixtures.appendingPathComponent("edge-moe").path)
        for b in reference.manifest.buffers where b.role == .weight {
            let a = littleEndianInts(try reference.raw(b.name), elementBytes: b.element_bytes)
            let c = littleEndianInts(try image.raw(b.name), elementBytes: b.element_bytes)
            XCTAssertTrue(zip(a, c).allSatisfy { abs($0 - $1) <= 1 }, b.name)
        }
    }
}

/// "Done when" of the end-to-end issue: the real Edge-MoE float weights, completed with seeded expert
/// matrices, pack with AP_TRN/AP_WRAP to exactly floor(x·2^F) wrapped to W bits of the float files,
/// and with the defaults to round-half-even with saturation.
final class RealEdgeMoETests: XCTestCase {
    /// The published folder lacks the expert matrices: the refusal names the first missing one.
    func testRealFolderWithoutExpertsNamesTheMissingMatrix() throws {
        let weights = sharedEdgeMoE.appendingPathComponent("weights")
        guard FileManager.default.fileExists(atPath: weights.path) else { throw XCTSkip("../shared/edge-moe absent") }
        let profile = try KernelProfile.load("edge-moe-zcu102")
        XCTAssertThrowsError(try BackboneCheckpoint(source: try openCheckpoint(weights.path), expected: profile.model)) { e in
            XCTAssertTrue((e as! MoepackError).description.hasPrefix("\(weights.path): 'l1_htoh4_weight': missing tensor (expected shape [16,384,192]); the published Edge-MoE weights folder has no expert matrices"), "\(e)")
        }
    }

    func testRealWeightsPackBitExact() throws {
        let weights = sharedEdgeMoE.appendingPathComponent("weights")
        guard FileManager.default.fileExists(atPath: weights.path) else { throw XCTSkip("../shared/edge-moe absent") }
        // Copy the folder and add seeded expert matrices (std 0.05, like the dense MLP weights).
        let dir = tempDir("edge") + "/weights"
        try FileManager.default.copyItem(atPath: weights.path, toPath: dir)
        var rng = SplitMix64(seed: 2023)
        for l in stride(from: 1, to: 12, by: 2) {
            for (name, count) in [("htoh4_weight", 16 * 384 * 192), ("h4toh_weight", 16 * 192 * 384)] {
                var v = [Float](repeating: 0, count: count)
                for i in 0..<count { v[i] = Float(rng.normal() * 0.05) }
                try v.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: "\(dir)/l\(l)_\(name).float32.bin")) }
            }
        }
        func floats(_ file: String) throws -> [Float] {
            let d = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(file).float32.bin"))
            return d.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        }
        // The kernel arrays assembled straight from the files, as the published testbench reads them.
        var expected: [String: [Float]] = [:]
        expected["patch_embed_weights"] = try floats("patch_embed_weight")
        expected["patch_embed_bias"] = try floats("patch_embed_bias")
        expected["pos_embed"] = try floats("pos_embed")
        var aw: [Float] = [], ab: [Float] = [], nw: [Float] = [], nb: [Float] = []
        for l in 0..<12 {
            aw += try floats("l\(l)_qkv_weight") + floats("l\(l)_attn_proj_weight")
            ab += try floats("l\(l)_qkv_bias") + floats("l\(l)_attn_proj_bias")
            nw += try floats("l\(l)_norm1_weight") + floats("l\(l)_norm2_weight")
            nb += try floats("l\(l)_norm1_bias") + floats("l\(l)_norm2_bias")
        }
        expected["attn_weights"] = aw; expected["attn_bias"] = ab
        expected["norm_weights"] = nw; expected["norm_bias"] = nb
        for (buf, file, layers) in [("moe_w_gate", "w_gate_T_task0", stride(from: 1, to: 12, by: 2)),
                                    ("moe_weights_l1", "htoh4_weight", stride(from: 1, to: 12, by: 2)),
                                    ("moe_bias_l1", "htoh4_bias", stride(from: 1, to: 12, by: 2)),
                                    ("moe_weights_l2", "h4toh_weight", stride(from: 1, to: 12, by: 2)),
                                    ("moe_bias_l2", "h4toh_bias", stride(from: 1, to: 12, by: 2)),
                                    ("vit_weights_l1", "fc1_weight", stride(from: 0, to: 12, by: 2)),
                                    ("vit_bias_l1", "fc1_bias", stride(from: 0, to: 12, by: 2)),
                                    ("vit_weights_l2", "fc2_weight", stride(from: 0, to: 12, by: 2)),
                                    ("vit_bias_l2", "fc2_bias", stride(from: 0, to: 12, by: 2))] {
            expected[buf] = try layers.flatMap { try floats("l\($0)_\(file)") }
        }
        let profile = try KernelProfile.load("edge-moe-zcu102")
        for truncWrap in [true, false] {
            let src = try openCheckpoint(dir)
            let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: src, expected: profile.model))
            let out = tempDir("edge-out") + "/img"
            let r = try pack(kernel: k, options: PackOptions(profile: profile, quantization: truncWrap ? .AP_TRN : .AP_RND_CONV,
                                                             overflow: truncWrap ? .AP_WRAP : .AP_SAT), outputDirectory: out)
            let image = try PackedImage(directory: out)
            for b in r.manifest.buffers where b.role == .weight {
                let t = try FixedType(parsing: b.ctype)
                let want = expected[b.name]!.map { referenceRaw($0, width: t.width, integerBits: t.integerBits, truncWrap: truncWrap) }
                let got = littleEndianInts(try image.raw(b.name), elementBytes: b.element_bytes)
                XCTAssertEqual(got.count, want.count, b.name)
                XCTAssertTrue(got == want, "\(b.name) (\(truncWrap ? "AP_TRN/AP_WRAP" : "AP_RND_CONV/AP_SAT")): \(zip(got, want).filter { $0 != $1 }.count) elements differ")
            }
        }
    }
}
