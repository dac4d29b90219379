import XCTest
import Foundation
import MoepackCore
import MoepackCheckpoint
@testable import MoepackModel

/// `Tests/Fixtures/tiny` (made by scripts/make_fixtures.py, seed 7): the same tiny M³ViT (D=32, depth 4,
/// MoE blocks 1 and 3 with 4 experts × 16, dense hidden 64, 2 tasks, 9 tokens, patch 16, 3 channels)
/// written by PyTorch (zip, legacy, expert-parallel), the Python safetensors package, h5py and NumPy.
private let tinyDir: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("Fixtures/tiny").path
private func tiny(_ name: String) -> String { (tinyDir as NSString).appendingPathComponent(name) }

/// Every container of the tiny model that holds the unfolded float32 state_dict.
private let float32Containers = ["model.pth", "plain.pth", "legacy.pth", "ep", "model.safetensors",
                                 "model.h5", "model.npz", "model_deflated.npz"]

/// The 56 backbone tensor names of the tiny model (meta.json's `tensor_names` without the final norm).
private func backboneNames() -> [String] {
    var n = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in 0..<4 {
        n += ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
              "attn.proj.bias", "norm2.weight", "norm2.bias"].map { "blocks.\(i).\($0)" }
        if i % 2 == 1 {
            n += ["mlp.gate.0.w_gate", "mlp.gate.1.w_gate", "mlp.experts.htoh4.weight", "mlp.experts.htoh4.bias",
                  "mlp.experts.h4toh.weight", "mlp.experts.h4toh.bias"].map { "blocks.\(i).\($0)" }
        } else {
            n += ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"].map { "blocks.\(i).\($0)" }
        }
    }
    return n
}

private func tempDir() -> String {
    let d = NSTemporaryDirectory() + "moepack-export-\(UUID().uuidString)"
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

private func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

/// A safetensors file split into its `__metadata__`, its tensor header (JSON object without metadata)
/// and its data section (safetensors spec: u64 LE header length, JSON header, data).
private struct SplitSafetensors {
    var metadata: [String: String]?
    var header: NSDictionary
    var data: [UInt8]

    init(_ path: String) throws {
        let b = try bytes(path)
        let n = b.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        var h = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(b[8..<(8 + n)])) as? [String: Any])
        metadata = h.removeValue(forKey: "__metadata__") as? [String: String]
        header = h as NSDictionary
        data = Array(b[(8 + n)...])
    }

    var names: [String] { (header.allKeys as? [String] ?? []).sorted() }
    func dtype(_ name: String) -> String? { (header[name] as? [String: Any])?["dtype"] as? String }
    func shape(_ name: String) -> [Int]? { (header[name] as? [String: Any])?["shape"] as? [Int] }
}

final class ExportTests: XCTestCase {
    let options = ExportOptions(moepackVersion: "test")

    /// Exports fixture `name` to `<prefix><name>.safetensors`.
    private func export(_ name: String, _ options: ExportOptions, key: String? = nil, to prefix: String) throws -> (String, ExportResult) {
        let out = prefix + name + ".safetensors"
        let src = try openCheckpoint(tiny(name), options: OpenOptions(stateDictKey: key))
        return (out, try exportBackbone(source: src, options: options, to: out))
    }

    /// Every float32 container exports to the same bytes (metadata off), and with metadata to the same
    /// tensor header and data section with the metadata naming the source.
    func testEveryContainerExportsTheSameBackbone() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var plainOpts = options
        plainOpts.metadata = false
        let (ref, refResult) = try export("model.pth", plainOpts, to: dir + "/")
        XCTAssertEqual(refResult.tensors.map(\.name).sorted(), backboneNames().sorted())
        XCTAssertTrue(refResult.metadata.isEmpty)
        let refBytes = try bytes(ref)
        let refSplit = try SplitSafetensors(ref)
        XCTAssertNil(refSplit.metadata)
        let expectedKey: [String: String] = ["model.pth": "state_dict", "ep": "state_dict"]
        let expectedContainer = ["model.pth": "pytorch-zip", "plain.pth": "pytorch-zip", "legacy.pth": "pytorch-legacy",
                                 "ep": "expert-parallel-folder", "model.safetensors": "safetensors", "model.h5": "hdf5",
                                 "model.npz": "npz", "model_deflated.npz": "npz"]
        for c in float32Containers {
            let (plain, _) = try export(c, plainOpts, to: dir + "/plain-")
            XCTAssertEqual(try bytes(plain), refBytes, "\(c): export without metadata differs from model.pth's")
            let (withMeta, _) = try export(c, options, to: dir + "/meta-")
            let s = try SplitSafetensors(withMeta)
            XCTAssertEqual(s.header, refSplit.header, c)
            XCTAssertEqual(s.data, refSplit.data, c)
            var want = ["source": c, "container": expectedContainer[c] ?? "?", "moepack": "test", "naming": "m3vit",
                        "folded": "false", "dtype": "keep"]
            if let k = expectedKey[c] { want["state_dict_key"] = k }
            XCTAssertEqual(s.metadata, want, c)
        }
    }

    /// The export holds the values the Python safetensors package wrote (an independent writer): same
    /// names, dtypes, shapes and bytes for every backbone tensor; `--all` from plain.pth reproduces
    /// model.safetensors' tensor header and data section exactly.
    func testValuesEqualThePythonWrittenFile() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (out, _) = try export("model.h5", options, to: dir + "/")
        let exported = try openCheckpoint(out)
        let python = try openCheckpoint(tiny("model.safetensors"))
        XCTAssertEqual(exported.entries.map(\.name).sorted(), backboneNames().sorted())
        for e in exported.entries {
            let p = try XCTUnwrap(python.entry(e.name))
            XCTAssertEqual(e.shape, p.shape, e.name)
            XCTAssertEqual(e.dtype, .float32, e.name)
            XCTAssertEqual(try exported.readRaw(e.name), try python.readRaw(e.name), e.name)
        }
        XCTAssertEqual(exported.entry("blocks.1.mlp.experts.htoh4.weight")?.shape, [4, 16, 32])
        XCTAssertEqual(exported.entry("blocks.3.mlp.gate.1.w_gate")?.shape, [32, 4])

        var all = options
        all.all = true
        let (full, r) = try export("plain.pth", all, to: dir + "/all-")
        XCTAssertEqual(r.metadata["naming"], "stored")
        let mine = try SplitSafetensors(full), theirs = try SplitSafetensors(tiny("model.safetensors"))
        XCTAssertEqual(theirs.metadata, ["format": "pt"])
        XCTAssertEqual(mine.header, theirs.header)
        XCTAssertEqual(mine.data, theirs.data)
    }

    /// model_f16.pth holds float16(plain) (round to nearest even, including the exact ties the fixture
    /// script puts in blocks.0.attn.qkv.weight[0, :]): `keep` stores those halves unchanged, and
    /// `--dtype f16` from the float32 model.pth gives the same file byte for byte.
    func testFloat16KeepAndConversion() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var noMeta = options
        noMeta.metadata = false
        let (kept, r) = try export("model_f16.pth", noMeta, to: dir + "/k-")
        XCTAssertTrue(r.tensors.allSatisfy { $0.dtype == "F16" && $0.storedDType == "F16" })
        let src = try openCheckpoint(tiny("model_f16.pth"))
        let back = try openCheckpoint(kept)
        for t in r.tensors {
            XCTAssertEqual(back.entry(t.name)?.dtype, .float16)
            XCTAssertEqual(try back.readRaw(t.name), try src.readRaw(t.source), t.name)
        }
        noMeta.dtype = .f16
        let (converted, rc) = try export("model.pth", noMeta, to: dir + "/c-")
        XCTAssertTrue(rc.tensors.allSatisfy { $0.dtype == "F16" && $0.storedDType == "F32" })
        XCTAssertEqual(try bytes(converted), try bytes(kept))

        // F16 → F32 widens exactly.
        noMeta.dtype = .f32
        let (wide, _) = try export("model_f16.pth", noMeta, to: dir + "/w-")
        let w = try openCheckpoint(wide)
        for name in ["blocks.0.attn.qkv.weight", "pos_embed", "blocks.3.mlp.experts.h4toh.weight"] {
            XCTAssertEqual(w.entry(name)?.dtype, .float32)
            XCTAssertEqual(try w.readFloat32(name), try src.readFloat32(name), name)
        }
    }

    /// Known bits of the float conversions through export: bf16 ties to even, f16 max and overflow refusal.
    func testConversionBitsAndOverflow() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // 1+2^-8 ties to 1.0 (0x3F80); 1+3·2^-8 ties to 1+2^-6 (0x3F82); -2 is 0xC000.
        let src = MemorySource(path: "m.bin", container: .memory,
                               tensors: [("a", [3], [1.00390625, 1.01171875, -2]), ("big", [2], [65519, 65520])])
        let out = dir + "/bf.safetensors"
        _ = try exportBackbone(source: src, options: ExportOptions(all: true, dtype: .bf16, metadata: false), to: out)
        let b = try openCheckpoint(out)
        XCTAssertEqual(try b.readRaw("a"), [0x80, 0x3F, 0x82, 0x3F, 0x00, 0xC0])

        // float16: 65519 rounds down to 65504 (0x7BFF); 65520 rounds to inf → refused, no file left.
        let f16 = dir + "/f16.safetensors"
        XCTAssertThrowsError(try exportBackbone(source: src, options: ExportOptions(all: true, dtype: .f16), to: f16)) { e in
            let m = (e as? MoepackError)?.description ?? ""
            XCTAssertEqual((e as? MoepackError)?.kind, .numeric)
            XCTAssertTrue(m.contains("'big'") && m.contains("flat index 1") && m.contains("overflows F16"), m)
            XCTAssertFalse(m.contains("\n"))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: f16))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["bf.safetensors"], "temporary file left behind")
        let ok = MemorySource(tensors: [("big", [1], [65519])])
        _ = try exportBackbone(source: ok, options: ExportOptions(all: true, dtype: .f16, metadata: false), to: f16)
        XCTAssertEqual(try openCheckpoint(f16).readRaw("big"), [0xFF, 0x7B])
    }

    /// The Edge-MoE folder's tensors are folded: they keep their folder names, the metadata says so and
    /// records the transposed gate layout; `image` and `l3_x_post_moe` (not weights) need `all`.
    func testEdgeMoEFolderKeepsFolderNames() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (out, r) = try export("edge-moe", options, to: dir + "/")
        XCTAssertEqual(r.tensors.count, 55)
        XCTAssertEqual(r.metadata["folded"], "true")
        XCTAssertEqual(r.metadata["naming"], "edge-moe")
        XCTAssertEqual(r.metadata["source"], "edge-moe")
        XCTAssertEqual(r.metadata["container"], "edge-moe-folder")
        XCTAssertNotNil(r.metadata["gate_layout"])
        XCTAssertEqual(Set(r.skipped.map(\.name)), ["image", "l3_x_post_moe"])
        let s = try SplitSafetensors(out)
        XCTAssertEqual(s.metadata, r.metadata)
        XCTAssertEqual(s.shape("l1_w_gate_T_task0"), [4, 32])
        XCTAssertEqual(s.shape("pos_embed"), [9, 32])
        XCTAssertNil(s.shape("cls_token"))
        XCTAssertNil(s.shape("blocks.1.mlp.gate.0.w_gate"))
        let back = try openCheckpoint(out)
        for name in ["l1_w_gate_T_task0", "patch_embed_weight", "l3_h4toh_weight", "pos_embed"] {
            XCTAssertEqual(try back.readRaw(name), try bytes(tiny("edge-moe/\(name).float32.bin")), name)
        }
        var all = options
        all.all = true
        let (_, ra) = try export("edge-moe", all, to: dir + "/all-")
        XCTAssertEqual(ra.tensors.count, 57)
        XCTAssertEqual(ra.tensors.first { $0.name == "image" }?.shape, [3, 32, 64])
    }

    /// `--all` keeps stored names (prefixes, decoder head); the state_dict key can be given explicitly.
    func testAllAndStateDictKey() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var all = options
        all.all = true
        let (_, r) = try export("model.pth", all, to: dir + "/a-")
        XCTAssertEqual(r.tensors.count, 59)
        XCTAssertTrue(r.tensors.contains { $0.name == "module.decoders.semseg.conv.weight" && $0.shape == [3, 32, 1, 1] })
        XCTAssertTrue(r.tensors.contains { $0.name == "module.backbone.blocks.1.mlp.experts.htoh4.weight" })
        XCTAssertEqual(Set(r.skipped.map(\.name)).intersection(["epoch", "optimizer"]), ["epoch", "optimizer"])

        var noMeta = options
        noMeta.metadata = false
        let (a, _) = try export("model.pth", noMeta, to: dir + "/d-")
        let (b, rb) = try export("model.pth", noMeta, key: "state_dict", to: dir + "/k-")
        XCTAssertEqual(try bytes(a), try bytes(b))
        XCTAssertTrue(rb.skipped.contains { $0.name == "module.decoders.semseg.conv.weight" && $0.reason.contains("decoder") })

        // The optimizer dict holds no tensors of a state_dict: refused when opened, no file.
        for o in [options, all] {
            XCTAssertThrowsError(try export("model.pth", o, key: "optimizer", to: dir + "/o-")) { e in
                let m = (e as? MoepackError)?.description ?? ""
                XCTAssertTrue(m.contains("model.pth: 'optimizer': top-level entry holds no tensors, expected a state_dict"), m)
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o-model.pth.safetensors"))
    }

    /// Writing over the checkpoint itself is refused before anything is written.
    func testOutputIsInputRefused() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let copy = dir + "/plain.pth"
        try FileManager.default.copyItem(atPath: tiny("plain.pth"), toPath: copy)
        let before = try bytes(copy)
        XCTAssertThrowsError(try exportBackbone(source: try openCheckpoint(copy), options: options, to: copy)) { e in
            XCTAssertTrue(((e as? MoepackError)?.description ?? "").contains("output is the checkpoint itself"))
        }
        XCTAssertEqual(try bytes(copy), before)
    }

    /// The h5py and NumPy files of the tiny model map through BackboneCheckpoint to the canonical names
    /// one to one and give meta.json's configuration.
    func testH5AndNpzNamesMapThroughBackboneCheckpoint() throws {
        for c in ["model.h5", "model.npz", "model_deflated.npz"] {
            let b = try BackboneCheckpoint(source: try openCheckpoint(tiny(c)))
            XCTAssertEqual(b.naming, .m3vit, c)
            XCTAssertEqual(b.canonicalToSource.keys.sorted(), backboneNames().sorted(), c)
            for (canonical, stored) in b.canonicalToSource { XCTAssertEqual(canonical, stored, c) }
            XCTAssertEqual(Set(b.skipped.map(\.name)), ["norm.weight", "norm.bias"], c)
            let k = b.config
            XCTAssertEqual([k.embedDim, k.depth, k.experts, k.expertHidden, k.mlpHidden, k.tasks, k.tokens, k.patchSize, k.inChans],
                           [32, 4, 4, 16, 64, 2, 9, 16, 3], c)
            XCTAssertEqual(k.moeBlocks, [1, 3], c)
        }
    }
}
