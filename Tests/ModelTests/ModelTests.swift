import XCTest
import MoepackCore
import MoepackCheckpoint
@testable import MoepackModel

/// A tiny M³ViT state_dict: D=4, 1 head, depth 2 (block 1 MoE, E=2, He=3), Hm=5, 2 tasks, patch 2,
/// 3 channels, image 2×4 → 2 patches, T=3. Values are i·0.01 + tensor offset, so every element is known.
func tinyStateDict(prefix: String = "module.backbone.", extra: [(String, [Int], [Float])] = [],
                   drop: Set<String> = [], override: [String: [Int]] = [:]) -> MemorySource {
    let d = 4, e = 2, he = 3, hm = 5
    var specs: [(String, [Int])] = [
        ("patch_embed.proj.weight", [d, 3, 2, 2]), ("patch_embed.proj.bias", [d]),
        ("cls_token", [1, 1, d]), ("pos_embed", [1, 3, d]),
    ]
    for i in 0..<2 {
        specs += [("blocks.\(i).norm1.weight", [d]), ("blocks.\(i).norm1.bias", [d]),
                  ("blocks.\(i).attn.qkv.weight", [3 * d, d]), ("blocks.\(i).attn.qkv.bias", [3 * d]),
                  ("blocks.\(i).attn.proj.weight", [d, d]), ("blocks.\(i).attn.proj.bias", [d]),
                  ("blocks.\(i).norm2.weight", [d]), ("blocks.\(i).norm2.bias", [d])]
    }
    specs += [("blocks.0.mlp.fc1.weight", [hm, d]), ("blocks.0.mlp.fc1.bias", [hm]),
              ("blocks.0.mlp.fc2.weight", [d, hm]), ("blocks.0.mlp.fc2.bias", [d])]
    specs += [("blocks.1.mlp.gate.0.w_gate", [d, e]), ("blocks.1.mlp.gate.1.w_gate", [d, e]),
              ("blocks.1.mlp.experts.htoh4.weight", [e, he, d]), ("blocks.1.mlp.experts.htoh4.bias", [e, he]),
              ("blocks.1.mlp.experts.h4toh.weight", [e, d, he]), ("blocks.1.mlp.experts.h4toh.bias", [e, d]),
              ("norm.weight", [d]), ("norm.bias", [d])]
    var tensors: [(String, [Int], [Float])] = []
    for (k, (name, shape0)) in specs.enumerated() where !drop.contains(name) {
        let shape = override[name] ?? shape0
        let n = shape.reduce(1, *)
        tensors.append((prefix + name, shape, (0..<n).map { Float($0) * 0.01 + Float(k) }))
    }
    tensors.append(("module.decoders.semseg.weight", [19, d], [Float](repeating: 0, count: 19 * d)))
    return MemorySource(path: "tiny.pth", container: .pytorchZip, tensors: tensors + extra)
}

let tinyConfig = M3ViTConfig(embedDim: 4, depth: 2, heads: 1, moeBlocks: [1], experts: 2, expertHidden: 3,
                             mlpHidden: 5, tasks: 2, tokens: 3, patchSize: 2, inChans: 3, imageHeight: 2, imageWidth: 4)

final class NameTableTests: XCTestCase {
    func testStripPrefixes() {
        XCTAssertEqual(NameTable.stripPrefixes("module.backbone.blocks.1.norm1.weight"), "blocks.1.norm1.weight")
        XCTAssertEqual(NameTable.stripPrefixes("backbone.module.pos_embed"), "pos_embed")
        XCTAssertEqual(NameTable.stripPrefixes("pos_embed"), "pos_embed")
    }

    func testCanonicalNames() {
        XCTAssertEqual(NameTable.canonicalName("blocks.11.mlp.experts.h4toh.bias", naming: .m3vit), "blocks.11.mlp.experts.h4toh.bias")
        XCTAssertEqual(NameTable.canonicalName("l7_w_gate_T_task1", naming: .edgeMoE), "blocks.7.mlp.gate.1.w_gate")
        XCTAssertEqual(NameTable.canonicalName("l10_fc2_weight", naming: .edgeMoE), "blocks.10.mlp.fc2.weight")
        XCTAssertEqual(NameTable.canonicalName("blocks.3.mlp.gate.w_gate", naming: .m3vit), "blocks.3.mlp.gate.0.w_gate")
        XCTAssertNil(NameTable.canonicalName("decoders.semseg.weight", naming: .m3vit))
        XCTAssertNil(NameTable.canonicalName("blocks.01.norm1.weight", naming: .m3vit), "leading zeros are not block indices")
        XCTAssertNil(NameTable.canonicalName("image", naming: .edgeMoE))
    }
}

final class BackboneCheckpointTests: XCTestCase {
    func testInfersConfigAndSkipsNonBackbone() throws {
        let b = try BackboneCheckpoint(source: tinyStateDict())
        XCTAssertEqual(b.config.embedDim, 4)
        XCTAssertEqual(b.config.depth, 2)
        XCTAssertEqual(b.config.moeBlocks, [1])
        XCTAssertEqual(b.config.experts, 2)
        XCTAssertEqual(b.config.expertHidden, 3)
        XCTAssertEqual(b.config.mlpHidden, 5)
        XCTAssertEqual(b.config.tasks, 2)
        XCTAssertEqual(b.config.tokens, 3)
        XCTAssertEqual(b.config.patchSize, 2)
        let skipped = Dictionary(uniqueKeysWithValues: b.skipped.map { ($0.name, $0.reason) })
        XCTAssertEqual(skipped["module.decoders.semseg.weight"], "decoder head: not part of the backbone")
        XCTAssertEqual(skipped["module.backbone.norm.weight"], "final norm: the kernel's output is taken before it")
        XCTAssertEqual(b.canonicalToSource["blocks.1.mlp.gate.1.w_gate"], "module.backbone.blocks.1.mlp.gate.1.w_gate")
    }

    func testAgainstProfileMismatchNamesTensorAndShapes() {
        var wrong = tinyConfig
        wrong.experts = 4
        XCTAssertThrowsError(try BackboneCheckpoint(source: tinyStateDict(), expected: wrong)) { error in
            let e = error as! MoepackError
            XCTAssertEqual(e.kind, .mismatch)
            XCTAssertEqual(e.description, "tiny.pth: 'module.backbone.blocks.1.mlp.experts.htoh4.weight': shape [2,3,4] gives expert count = 2, the profile expects 4")
        }
        XCTAssertNoThrow(try BackboneCheckpoint(source: tinyStateDict(), expected: tinyConfig))
    }

    func testMissingTensorIsNamed() {
        XCTAssertThrowsError(try BackboneCheckpoint(source: tinyStateDict(drop: ["blocks.1.mlp.experts.h4toh.bias"]), expected: tinyConfig)) { error in
            XCTAssertEqual((error as! MoepackError).description,
                           "tiny.pth: 'blocks.1.mlp.experts.h4toh.bias': missing tensor (expected shape [2,4])")
        }
    }

    func testWrongExpertCountRefused() {
        let src = tinyStateDict(override: ["blocks.1.mlp.experts.htoh4.weight": [3, 3, 4]])
        XCTAssertThrowsError(try BackboneCheckpoint(source: src, expected: tinyConfig)) { error in
            XCTAssertEqual((error as! MoepackError).description,
                           "tiny.pth: 'module.backbone.blocks.1.mlp.experts.htoh4.weight': shape [3,3,4] gives expert count = 3, the profile expects 2")
        }
    }

    func testNaNRefusedWithIndex() throws {
        var v = [Float](repeating: 0.5, count: 4)
        v[2] = .nan
        let src = tinyStateDict(extra: [("module.backbone.blocks.0.norm1.bias", [4], v)], drop: ["blocks.0.norm1.bias"])
        let b = try BackboneCheckpoint(source: src, expected: tinyConfig)
        XCTAssertThrowsError(try b.read("blocks.0.norm1.bias")) { error in
            XCTAssertEqual((error as! MoepackError).description,
                           "tiny.pth: 'module.backbone.blocks.0.norm1.bias': nan at flat index 2; NaN/Inf weights are refused")
        }
    }
}

final class FoldTests: XCTestCase {
    func testPatchEmbedFold() throws {
        let src = tinyStateDict()
        let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: src, expected: tinyConfig))
        let w = try src.readFloat32("module.backbone.patch_embed.proj.weight")
        let b = try src.readFloat32("module.backbone.patch_embed.proj.bias")
        let (wf, bf) = try k.patchEmbed()
        let mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225]
        // W' = W·256/(255·std_c); b' = b − Σ W·mean_c/std_c (per output channel o, over c,y,x)
        for o in 0..<4 {
            var shift = 0.0
            for c in 0..<3 {
                for j in 0..<4 {
                    let idx = (o * 3 + c) * 4 + j
                    XCTAssertEqual(wf[idx], Float(Double(w[idx]) * 256 / (255 * std[c])), accuracy: 1e-6)
                    shift += Double(w[idx]) * mean[c] / std[c]
                }
            }
            XCTAssertEqual(bf[o], Float(Double(b[o]) - shift), accuracy: 1e-5)
        }
        // Equivalence on one patch: training conv on (byte/255 − m)/s equals folded conv on byte/256.
        let bytes: [Double] = (0..<12).map { Double(($0 * 37) % 256) }
        for o in 0..<4 {
            var train = Double(b[o]), kernel = Double(bf[o])
            for c in 0..<3 {
                for j in 0..<4 {
                    let idx = (o * 3 + c) * 4 + j
                    train += Double(w[idx]) * ((bytes[c * 4 + j] / 255 - mean[c]) / std[c])
                    kernel += Double(wf[idx]) * (bytes[c * 4 + j] / 256)
                }
            }
            XCTAssertEqual(kernel, train, accuracy: 1e-4)
        }
    }

    func testClsQkvGateFolds() throws {
        let src = tinyStateDict()
        let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: src, expected: tinyConfig))
        let pos = try src.readFloat32("module.backbone.pos_embed")
        let cls = try src.readFloat32("module.backbone.cls_token")
        let kpos = try k.array("pos_embed")
        XCTAssertEqual(Array(kpos[0..<4]), (0..<4).map { pos[$0] + cls[$0] })
        XCTAssertEqual(Array(kpos[4...]), Array(pos[4...]))

        let qkv = try src.readFloat32("module.backbone.blocks.1.attn.qkv.weight")
        let proj = try src.readFloat32("module.backbone.blocks.1.attn.proj.weight")
        let aw = try k.array("attn_weights")
        XCTAssertEqual(aw.count, 2 * 4 * 16)
        let block1 = Array(aw[(4 * 16)...])
        XCTAssertEqual(Array(block1[0..<16]), Array(qkv[0..<16]), "Q = rows 0..<D")
        XCTAssertEqual(Array(block1[16..<32]), Array(qkv[16..<32]), "K = rows D..<2D")
        XCTAssertEqual(Array(block1[32..<48]), Array(qkv[32..<48]), "V = rows 2D..<3D")
        XCTAssertEqual(Array(block1[48..<64]), proj)

        let g1 = try src.readFloat32("module.backbone.blocks.1.mlp.gate.1.w_gate") // [D=4, E=2]
        let kg = try k.array("moe_w_gate", task: 1) // [1, E=2, D=4]
        for e in 0..<2 { for d in 0..<4 { XCTAssertEqual(kg[e * 4 + d], g1[d * 2 + e]) } }
        XCTAssertThrowsError(try k.array("moe_w_gate", task: 2)) { error in
            XCTAssertTrue((error as! MoepackError).description.contains("task 2 out of range: the checkpoint has 2 task gate(s)"))
        }
    }

    func testBackboneWeightsRoundTrip() throws {
        let k = try KernelTensors(checkpoint: try BackboneCheckpoint(source: tinyStateDict(), expected: tinyConfig))
        let w = try k.backboneWeights(task: 1)
        XCTAssertEqual(w.blocks.count, 2)
        guard case .moe(let gates, let w1, _, _, _) = w.blocks[1].mlp else { return XCTFail("block 1 is MoE") }
        XCTAssertEqual(gates.count, 2)
        XCTAssertEqual(gates[1], try k.gate(block: 1, task: 1).values)
        XCTAssertEqual(w1, try k.array("moe_weights_l1"))
        XCTAssertEqual(w.task, 1)
        guard case .dense(let fc1, _, _, _) = w.blocks[0].mlp else { return XCTFail("block 0 is dense") }
        XCTAssertEqual(fc1, try k.array("vit_weights_l1"))
    }
}
