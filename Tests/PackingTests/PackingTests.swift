import XCTest
import TestSupport
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint
@testable import MoepackPacking


let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let sharedEdgeMoE = repoRoot.deletingLastPathComponent().appendingPathComponent("shared/edge-moe")

func tempDir(_ tag: String) -> String {
    let p = NSTemporaryDirectory() + "moepack-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
    return p
}

/// Independent reference of ap_fixed<W,I> conversion for the two mode pairs the tests use:
/// AP_RND_CONV+AP_SAT: clamp(round-half-even(x·2^F)); AP_TRN+AP_WRAP: floor(x·2^F) mod 2^W, two's complement.
func referenceRaw(_ x: Float, width: Int, integerBits: Int, truncWrap: Bool) -> Int64 {
    let scaled = Double(x) * pow(2.0, Double(width - integerBits))
    if truncWrap {
        let f = scaled.rounded(.down)
        let m = Double(sign: .plus, exponent: width, significand: 1)
        var r = f.truncatingRemainder(dividingBy: m)
        if r < 0 { r += m }
        if r >= m / 2 { r -= m }
        return Int64(r)
    }
    let r = scaled.rounded(.toNearestOrEven)
    let hi = Double((Int64(1) << (width - 1)) - 1), lo = -Double(Int64(1) << (width - 1))
    return Int64(min(max(r, lo), hi))
}

func littleEndianInts(_ bytes: ArraySlice<UInt8>, elementBytes: Int) -> [Int64] {
    let b = Array(bytes)
    return stride(from: 0, to: b.count, by: elementBytes).map { i in
        var v: UInt64 = 0
        for k in 0..<elementBytes { v |= UInt64(b[i + k]) << (8 * k) }
        let shift = UInt64(64 - 8 * elementBytes)
        return Int64(bitPattern: v << shift) >> Int64(shift)
    }
}

final class ProfileTests: XCTestCase {
    func testBuiltInProfileMatchesKernelArgumentTable() throws {
        let p = try KernelProfile.load("edge-moe-zcu102")
        let plan = try DDRPlan(profile: p)
        let bytes = Dictionary(uniqueKeysWithValues: plan.buffers.map { ($0.buffer.name, $0.bytes) })
        // Sizes from the kernel argument table (../shared/edge-moe/README.md).
        XCTAssertEqual(bytes["images"], 3 * 128 * 256)
        XCTAssertEqual(bytes["tmp_hidden"], 396_288)
        XCTAssertEqual(bytes["attn"], 272_448)
        XCTAssertEqual(bytes["attn_softmax_info"], 4_128)
        XCTAssertEqual(bytes["pos_embed"], 129 * 192 * 4)
        XCTAssertEqual(bytes["moe_weights_l1"], 6 * 16 * 384 * 192 * 2)
        XCTAssertEqual(bytes["patch_embed_weights"], 192 * 3 * 16 * 16 * 2)
        for b in plan.buffers { XCTAssertEqual(b.offset % 4096, 0, b.buffer.name) }
        XCTAssertEqual(plan.buffers.map(\.buffer.name), [
            "images", "x", "tmp1", "tmp2", "tmp3", "tmp4", "tmp_hidden", "attn", "attn_softmax_info",
            "patch_embed_weights", "patch_embed_bias", "pos_embed", "attn_weights", "attn_bias", "moe_w_gate",
            "moe_weights_l1", "moe_bias_l1", "moe_weights_l2", "moe_bias_l2", "vit_weights_l1", "vit_bias_l1",
            "vit_weights_l2", "vit_bias_l2", "norm_weights", "norm_bias"])
        XCTAssertEqual(p.buffer("moe_weights_l1")?.register, 212)
        XCTAssertEqual(p.registers["CTRL"], 0)
        XCTAssertEqual(try p.fixedType("wt_linear_t"), FixedType(width: 16, integerBits: 2))
        XCTAssertEqual(try p.fixedType("pixel_t"), FixedType(width: 8, integerBits: 0, signed: false))
    }

    func testRegistersAgreeWithBitstreamHWH() throws {
        let hwh = sharedEdgeMoE.appendingPathComponent("bitstream.hwh").path
        guard FileManager.default.fileExists(atPath: hwh) else { throw XCTSkip("../shared/edge-moe absent") }
        let builtin = try KernelProfile.load("edge-moe-zcu102")
        var fromHWH = builtin
        for i in fromHWH.buffers.indices { fromHWH.buffers[i].register = nil }
        try fromHWH.applyHWH(path: hwh)
        XCTAssertEqual(fromHWH.buffers.map(\.register), builtin.buffers.map(\.register))
        let regs = try HWHRegisterMap.read(path: hwh)
        XCTAssertEqual(regs["moe_weights_l1_1"], 212)
        XCTAssertEqual(regs["moe_weights_l1_2"], 216)
        XCTAssertEqual(regs["debug_id"], 332)
    }

    /// A register map that cannot be the kernel's (shared offset, misaligned, missing high word) is refused.
    func testImplausibleHWHRefused() throws {
        let hwh = sharedEdgeMoE.appendingPathComponent("bitstream.hwh").path
        guard let text = try? String(contentsOfFile: hwh, encoding: .utf8) else { throw XCTSkip("../shared/edge-moe absent") }
        let low = "<PROPERTY NAME=\"ADDRESS_OFFSET\" VALUE=\"212\"/>"
        let cases: [(String, String)] = [
            (text.replacingOccurrences(of: low, with: "<PROPERTY NAME=\"ADDRESS_OFFSET\" VALUE=\"188\"/>"), "'moe_weights_l1_1': register offset 188 is also attn_bias_1's"),
            (text.replacingOccurrences(of: low, with: "<PROPERTY NAME=\"ADDRESS_OFFSET\" VALUE=\"213\"/>"), "'moe_weights_l1_1': register offset 213 is not word-aligned"),
            (text.replacingOccurrences(of: "REGISTER NAME=\"attn_bias_2\"", with: "REGISTER NAME=\"attn_bias_9\""), "no s_axi_control register for attn_bias_2"),
        ]
        let dir = tempDir("hwh")
        for (i, (t, message)) in cases.enumerated() {
            let path = dir + "/b\(i).hwh"
            try t.write(toFile: path, atomically: true, encoding: .utf8)
            var p = try KernelProfile.load("edge-moe-zcu102")
            XCTAssertThrowsError(try p.applyHWH(path: path)) { e in
                XCTAssertTrue((e as! MoepackError).description.contains(message), "\(e)")
            }
        }
    }

    /// Profiles (and the profile a manifest embeds) are JSON anyone can edit: a register map that
    /// could not be a real s_axi_control block, or sizes whose sum would overflow, are refused.
    func testImplausibleRegistersAndHugeLayoutsRefused() throws {
        let good = try KernelProfile.load("edge-moe-zcu102")
        func refusal(_ change: (inout KernelProfile) -> Void) -> String? {
            var p = good
            change(&p)
            do { try p.validate(file: "p.json"); _ = try DDRPlan(profile: p); return nil } catch let e as MoepackError { return e.description } catch { return "\(error)" }
        }
        XCTAssertNil(refusal { _ in })
        XCTAssertEqual(refusal { $0.registers["debug_id"] = 0xD6 }, "p.json: 'debug_id': register offset 214 is not a word-aligned offset in 0…0xFFFC")
        XCTAssertEqual(refusal { $0.registers["debug_id"] = 0xD8 }, "p.json: 'moe_weights_l1_2': register offset 216 is also debug_id's")
        XCTAssertEqual(refusal { $0.registers["debug_id"] = -4 }, "p.json: 'debug_id': register offset -4 is not a word-aligned offset in 0…0xFFFC")
        XCTAssertEqual(refusal { $0.alignment = 1 << 62 }, "p.json: 'alignment': 4611686018427387904 is not a power of two in 1…2^30")
        // Scratch sized by the kernel's tiling (no shape from the model dimensions): only the plan bounds it.
        XCTAssertEqual(refusal { p in for i in p.buffers.indices where p.buffers[i].role == .scratch && p.buffers[i].argument?.shape(p.model) == nil { p.buffers[i].shape = [1 << 30, 1 << 30] } },
                       "edge-moe-zcu102: 'tmp_hidden': the image would exceed 1099511627776 bytes")
        // Scratch whose shape the model gives is checked against it when the profile is validated.
        XCTAssertEqual(refusal { p in for i in p.buffers.indices where p.buffers[i].role == .scratch { p.buffers[i].shape = [1 << 30, 1 << 30] } },
                       "p.json: 'tmp1': shape [1073741824,1073741824], the model gives [129,192]")
    }

    func testBadProfileRefused() throws {
        let dir = tempDir("profile")
        let path = dir + "/p.json"
        try Data("{\"format\":\"moepack-profile/1\"}".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try KernelProfile.load(path)) { e in
            XCTAssertTrue((e as! MoepackError).description.hasPrefix("\(path): not a moepack profile: missing key"), "\(e)")
        }
    }
}

/// A profile for the 4-d tiny test model of ModelTests' shape (D=4, depth 2, E=2, He=3, Hm=5, T=3).
func tinyProfile() throws -> KernelProfile {
    var p = try KernelProfile.load("edge-moe-zcu102")
    p.name = "unit"
    p.model = M3ViTConfig(embedDim: 4, depth: 2, heads: 1, moeBlocks: [1], experts: 2, expertHidden: 3,
                          mlpHidden: 5, tasks: 2, tokens: 3, patchSize: 2, inChans: 3, imageHeight: 2, imageWidth: 4)
    let shapes: [String: [Int]] = [
        "images": [1, 3, 2, 4], "x": [1, 3, 4], "tmp1": [3, 4], "tmp2": [3, 4], "tmp3": [3, 4], "tmp4": [3, 4],
        "tmp_hidden": [3, 8], "attn": [2, 3, 4, 1], "attn_softmax_info": [3, 2],
        "patch_embed_weights": [4, 3, 2, 2], "patch_embed_bias": [4], "pos_embed": [3, 4],
        "attn_weights": [2, 4, 4, 4], "attn_bias": [2, 4, 4], "moe_w_gate": [1, 2, 4],
        "moe_weights_l1": [1, 2, 3, 4], "moe_bias_l1": [1, 2, 3], "moe_weights_l2": [1, 2, 4, 3], "moe_bias_l2": [1, 2, 4],
        "vit_weights_l1": [1, 5, 4], "vit_bias_l1": [1, 5], "vit_weights_l2": [1, 4, 5], "vit_bias_l2": [1, 4],
        "norm_weights": [2, 2, 4], "norm_bias": [2, 2, 4],
    ]
    for i in p.buffers.indices { p.buffers[i].shape = shapes[p.buffers[i].name]! }
    return p
}

/// A tiny state_dict with small values (inside every type's range) except where a test overrides.
func smallTiny(overrides: [String: [Float]] = [:]) -> MemorySource {
    let d = 4
    var specs: [(String, [Int])] = [("patch_embed.proj.weight", [d, 3, 2, 2]), ("patch_embed.proj.bias", [d]),
                                    ("cls_token", [1, 1, d]), ("pos_embed", [1, 3, d])]
    for i in 0..<2 {
        specs += [("blocks.\(i).norm1.weight", [d]), ("blocks.\(i).norm1.bias", [d]),
                  ("blocks.\(i).attn.qkv.weight", [3 * d, d]), ("blocks.\(i).attn.qkv.bias", [3 * d]),
                  ("blocks.\(i).attn.proj.weight", [d, d]), ("blocks.\(i).attn.proj.bias", [d]),
                  ("blocks.\(i).norm2.weight", [d]), ("blocks.\(i).norm2.bias", [d])]
    }
    specs += [("blocks.0.mlp.fc1.weight", [5, d]), ("blocks.0.mlp.fc1.bias", [5]),
              ("blocks.0.mlp.fc2.weight", [d, 5]), ("blocks.0.mlp.fc2.bias", [d]),
              ("blocks.1.mlp.gate.0.w_gate", [d, 2]), ("blocks.1.mlp.gate.1.w_gate", [d, 2]),
              ("blocks.1.mlp.experts.htoh4.weight", [2, 3, d]), ("blocks.1.mlp.experts.htoh4.bias", [2, 3]),
              ("blocks.1.mlp.experts.h4toh.weight", [2, d, 3]), ("blocks.1.mlp.experts.h4toh.bias", [2, d])]
    var rng = SplitMix64(seed: 7)
    let tensors: [(String, [Int], [Float])] = specs.map { name, shape in
        let n = shape.reduce(1, *)
        return ("module.backbone." + name, shape, overrides[name] ?? (0..<n).map { _ in Float(rng.uniform() * 0.2 - 0.1) })
    }
    return MemorySource(path: "small.pth", container: "pytorch-zip", tensors: tensors)
}

final class PackTests: XCTestCase {
    func packSmall(_ src: MemorySource, to out: String, options: (inout PackOptions) -> Void = { _ in }) throws -> PackResult {
        let profile = try tinyProfile()
        let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: src, expected: profile.model))
        var o = PackOptions(profile: profile, tool: "moepack test")
        options(&o)
        return try pack(kernel: k, options: o, outputDirectory: out)
    }

    func testEveryWeightBufferHoldsTheQuantizedKernelArray() throws {
        let src = smallTiny()
        let out = tempDir("pack") + "/img"
        let r = try packSmall(src, to: out) { $0.task = 1 }
        let image = try PackedImage(directory: out)
        XCTAssertTrue(image.check().ok)
        XCTAssertEqual(r.manifest.task, 1)
        let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: src, expected: try tinyProfile().model))
        for b in r.manifest.buffers where b.role == .weight {
            let t = try FixedType(parsing: b.ctype)
            let expected = try k.array(b.name, task: 1).map { referenceRaw($0, width: t.width, integerBits: t.integerBits, truncWrap: false) }
            XCTAssertEqual(littleEndianInts(try image.raw(b.name), elementBytes: b.element_bytes), expected, b.name)
            XCTAssertEqual(b.offset % 4096, 0)
        }
        // Non-weight buffers are zero.
        XCTAssertTrue(try image.raw("x").allSatisfy { $0 == 0 })
        // The header names the same offsets.
        let header = try String(contentsOfFile: out + "/moepack_ddr.h", encoding: .utf8)
        let mw = r.manifest.buffer("moe_weights_l1")!
        XCTAssertTrue(header.contains("#define MOEPACK_MOE_WEIGHTS_L1_OFFSET 0x\(String(mw.offset, radix: 16, uppercase: true))u"))
        XCTAssertTrue(header.contains("#define MOEPACK_MOE_WEIGHTS_L1_REG 0xD4u"))
    }

    func testTruncWrapModes() throws {
        // 2.5 in ap_fixed<16,2> wraps: floor(2.5·2^14) = 40960 → 40960 − 65536 = −24576.
        var w = [Float](repeating: 0.01, count: 16)
        w[0] = 2.5
        w[1] = -0.00001 // floor → −1 LSB under AP_TRN, 0 under AP_RND_CONV
        let src = smallTiny(overrides: ["blocks.0.attn.proj.weight": w])
        let out = tempDir("trn") + "/img"
        let r = try packSmall(src, to: out) { $0.quantization = .AP_TRN; $0.overflow = .AP_WRAP }
        let raw = littleEndianInts(try PackedImage(directory: out).raw("attn_weights"), elementBytes: 2)
        XCTAssertEqual(raw[48], -24576)
        XCTAssertEqual(raw[49], -1)
        XCTAssertEqual(r.warnings.count, 1)
        XCTAssertTrue(r.warnings[0].hasPrefix("blocks.0.attn.proj.weight: 1 value(s) outside wt_linear_t = ap_fixed<16,2> range [-2, 1.99994], largest |value| 2.5"), r.warnings[0])
        let out2 = tempDir("sat") + "/img"
        _ = try packSmall(src, to: out2)
        let sat = littleEndianInts(try PackedImage(directory: out2).raw("attn_weights"), elementBytes: 2)
        XCTAssertEqual(sat[48], 32767)
        XCTAssertEqual(sat[49], 0)
    }

    func testStrictOverflowIsAnErrorAndLeavesNothing() throws {
        var w = [Float](repeating: 0.01, count: 16)
        w[3] = -7
        let src = smallTiny(overrides: ["blocks.1.attn.proj.weight": w])
        let parent = tempDir("strict")
        let out = parent + "/img"
        XCTAssertThrowsError(try packSmall(src, to: out) { $0.strict = true }) { e in
            XCTAssertEqual((e as! MoepackError).description,
                           "small.pth: 'blocks.1.attn.proj.weight': 1 value(s) outside ap_fixed<16,2> range [-2, 1.99994], largest |value| 7 (--strict)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent), [], "no output and no temporary left")
    }

    func testNaNLeavesNoOutput() throws {
        var w = [Float](repeating: 0.01, count: 20)
        w[7] = .infinity
        let src = smallTiny(overrides: ["blocks.0.mlp.fc2.weight": w])
        let parent = tempDir("nan")
        XCTAssertThrowsError(try packSmall(src, to: parent + "/img")) { e in
            XCTAssertEqual((e as! MoepackError).description,
                           "small.pth: 'module.backbone.blocks.0.mlp.fc2.weight': inf at flat index 7; NaN/Inf weights are refused")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent), [])
    }

    func testDeterministic() throws {
        let a = tempDir("det") + "/a", b = tempDir("det") + "/a"
        _ = try packSmall(smallTiny(), to: a)
        _ = try packSmall(smallTiny(), to: b)
        for f in ["ddr.bin", "manifest.json", "moepack_ddr.h"] {
            XCTAssertEqual(FileManager.default.contents(atPath: a + "/" + f), FileManager.default.contents(atPath: b + "/" + f), f)
        }
    }

    /// Packing into an existing output folder replaces moepack's three files, keeps the user's other
    /// files, and leaves no staging folder or moved-aside file behind.
    func testRepackIntoExistingFolderReplacesOnlyItsFiles() throws {
        let parent = tempDir("repack"), out = parent + "/img"
        _ = try packSmall(smallTiny(), to: out)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: out + "/notes.txt"))
        let first = FileManager.default.contents(atPath: out + "/ddr.bin")
        var w = [Float](repeating: 0.02, count: 20)
        w[3] = -0.5
        let r = try packSmall(smallTiny(overrides: ["blocks.0.mlp.fc2.weight": w]), to: out)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out).sorted(),
                       ["ddr.bin", "manifest.json", "manifest.sha256", "moepack_ddr.h", "notes.txt"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent), ["img"])
        XCTAssertEqual(FileManager.default.contents(atPath: out + "/notes.txt"), Data("mine".utf8))
        XCTAssertNotEqual(FileManager.default.contents(atPath: out + "/ddr.bin"), first)
        let image = try PackedImage(directory: out)
        XCTAssertTrue(image.check().ok)
        XCTAssertEqual(image.manifest, r.manifest)
    }

    /// A folder where moepack writes a file is refused before anything moves; stale temporaries of
    /// dead processes are removed, a live process's are kept.
    func testRepackRefusesAFolderInTheWayAndCleansStaleTemporaries() throws {
        let parent = tempDir("inway"), out = parent + "/img"
        try FileManager.default.createDirectory(atPath: out + "/ddr.bin", withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: out + "/ddr.bin/keep.txt"))
        let dead = parent + "/.img.tmp-999999999-1", live = parent + "/.img.tmp-1-1"
        for d in [dead, live] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        XCTAssertThrowsError(try packSmall(smallTiny(), to: out)) { e in
            XCTAssertEqual((e as? MoepackError)?.description,
                           "\(out)/ddr.bin: is a folder where moepack writes its ddr.bin: move it away or choose another output folder")
        }
        XCTAssertEqual(FileManager.default.contents(atPath: out + "/ddr.bin/keep.txt"), Data("keep".utf8))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out), ["ddr.bin"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent).sorted(), [".img.tmp-1-1", "img"])
    }

    /// Manifests are JSON anyone can edit: sizes that would overflow or mean nothing are refused.
    func testEditedManifestsAreRefusedInOneLine() throws {
        let out = tempDir("edited") + "/img"
        _ = try packSmall(smallTiny(), to: out, options: { $0.allTasks = true })
        let path = out + "/manifest.json"
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        func edited(_ change: (inout [String: Any]) -> Void) throws -> String? {
            var m = try XCTUnwrap(JSONSerialization.jsonObject(with: original) as? [String: Any])
            change(&m)
            let data = try JSONSerialization.data(withJSONObject: m)
            try data.write(to: URL(fileURLWithPath: path))
            // The edit's own digest, so the field checks (not the digest check) refuse it.
            try Data(ImageValidation.manifestDigestText(data).utf8).write(to: URL(fileURLWithPath: out + "/manifest.sha256"))
            defer {
                try? original.write(to: URL(fileURLWithPath: path))
                try? Data(ImageValidation.manifestDigestText(original).utf8).write(to: URL(fileURLWithPath: out + "/manifest.sha256"))
            }
            do { _ = try PackedImage(directory: out); return nil } catch let e as MoepackError { return e.description }
        }
        func setModel(_ key: String, _ v: Any) -> (inout [String: Any]) -> Void {
            { m in var model = m["model"] as! [String: Any]; model[key] = v; m["model"] = model }
        }
        XCTAssertEqual(try edited(setModel("depth", 1 << 61)), "\(path): 'model.depth': 2305843009213693952 is outside 1…1023")
        XCTAssertEqual(try edited(setModel("heads", 3)), "\(path): 'model.heads': embedDim 4 is not divisible by 3 heads")
        XCTAssertEqual(try edited(setModel("tokens", 7)), "\(path): 'model.tokens': 7, expected patches + 1 = 3")
        XCTAssertEqual(try edited(setModel("topK", 9)), "\(path): 'model.topK': 9 is outside 1…2 experts")
        let last = try XCTUnwrap(PackedImage(directory: out).manifest.buffers.last)
        XCTAssertEqual(try edited { m in
            var b = m["buffers"] as! [[String: Any]]; b[b.count - 1]["bytes"] = Int.max; m["buffers"] = b
        }, "\(path): 'buffers.\(last.name).bytes': \(Int.max), the profile gives \(last.bytes)")
        let gates = try XCTUnwrap(PackedImage(directory: out).manifest.task_gates)
        XCTAssertEqual(try edited { m in
            var g = m["task_gates"] as! [[String: Any]]; g[1]["offset"] = Int.max - 10; m["task_gates"] = g
        }, "\(path): 'task_gates[1]': task 1 at offset \(Int.max - 10), \(gates[1].bytes) bytes; the layout gives task 1 at offset \(gates[1].offset), \(gates[1].bytes) bytes")
        XCTAssertEqual(try edited { m in
            var b = m["buffers"] as! [[String: Any]]; b[0]["shape"] = [1 << 40, 1 << 40]; m["buffers"] = b
        }, "\(path): 'buffers.images.shape': [1099511627776,1099511627776], the profile gives [1,3,2,4]")
        XCTAssertNil(try edited { _ in })
    }

    /// check's provenance rule: tensors and tensors_sha256 together, consistent, no name twice.
    func testSourceDigestsProblem() {
        let t = [Manifest.SourceTensor(name: "a", source_name: "a", shape: [2], sha256: String(repeating: "1", count: 64)),
                 Manifest.SourceTensor(name: "b", source_name: "b", shape: [], sha256: String(repeating: "2", count: 64))]
        let good = TensorDigests.combined(t)
        func problem(_ tensors: [Manifest.SourceTensor]?, _ digest: String?) -> String? {
            PackedImage.sourceDigestsProblem(Manifest.Source(path: "p", container: "c", tensors_sha256: digest, tensors: tensors, notes: []))
        }
        XCTAssertNil(problem(t, good))
        XCTAssertNil(problem(t.reversed(), good), "the digest is over name-sorted lines")
        XCTAssertNil(problem(nil, nil), "manifests from before source.tensors")
        XCTAssertEqual(problem(nil, good), "source.tensors_sha256 without source.tensors")
        XCTAssertEqual(problem(t, nil), "source.tensors without source.tensors_sha256")
        XCTAssertEqual(problem(t + [t[0]], TensorDigests.combined(t + [t[0]])), "source.tensors lists a twice")
        XCTAssertEqual(problem([], good), "source.tensors_sha256 (not the digest of source.tensors)")
        // The rule, spelled out: SHA-256 of "a 2 111…\nb  222…\n".
        XCTAssertEqual(good, hex(SHA256.hash(data: Array(("a 2 " + String(repeating: "1", count: 64) + "\nb  " + String(repeating: "2", count: 64) + "\n").utf8))))
    }

    func testCheckDetectsCorruption() throws {
        let out = tempDir("corrupt") + "/img"
        let r = try packSmall(smallTiny(), to: out)
        let off = r.manifest.buffer("moe_bias_l2")!.offset + 3
        let h = FileHandle(forUpdatingAtPath: out + "/ddr.bin")!
        try h.seek(toOffset: UInt64(off))
        let old = try h.read(upToCount: 1)![0]
        try h.seek(toOffset: UInt64(off))
        try h.write(contentsOf: [old ^ 0x40])
        try h.close()
        XCTAssertThrowsError(try PackedImage(directory: out)) { e in
            XCTAssertEqual((e as? MoepackError)?.description, "\(out)/ddr.bin: 'image.sha256': the image's SHA-256 differs from the manifest's (corrupted or modified; `moepack check` names the buffers)")
        }
        let c = try PackedImage(directory: out, verifyingDigests: false).check()
        XCTAssertFalse(c.imageOK)
        XCTAssertEqual(c.badBuffers, ["moe_bias_l2"])
    }
}
