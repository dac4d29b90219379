import Foundation
import MoepackCore
import MoepackCheckpoint

/// A checkpoint seen as an M³ViT backbone: canonical tensor names, the inferred configuration, and
/// what was left out. Nothing is read here but the tensor table.
public final class BackboneCheckpoint: @unchecked Sendable {
    public let source: any TensorSource
    public let naming: Naming
    /// Inferred configuration (heads and image size come from `expected` when given, since shapes do
    /// not determine them).
    public let config: M3ViTConfig
    /// Canonical name → source tensor name.
    public let canonicalToSource: [String: String]
    /// Source entries not used by the backbone, with reasons (decoder heads, final norm, …), plus the
    /// source's own skipped entries.
    public let skipped: [SkippedEntry]

    /// Called with every tensor ``read(_:)`` returns: canonical name and float32 values.
    public typealias ReadObserver = @Sendable (_ canonical: String, _ values: [Float]) -> Void
    private let observerLock = NSLock()
    private var observer: ReadObserver?

    /// Installs (or with `nil` removes) the function called with every tensor ``read(_:)`` returns,
    /// on the reading thread, after the NaN/Inf check. `pack` and `verify` use it to fingerprint the
    /// tensors they read without reading them twice.
    public func observeReads(_ f: ReadObserver?) {
        observerLock.withLock { observer = f }
    }

    /// Wraps `source`, maps names, infers the configuration and checks it against `expected` (the
    /// hardware profile's model).
    /// - Throws: ``MoepackError`` `.mismatch` naming the tensor, its shape and the expected shape;
    ///   `.badInput` when a required tensor is missing or a name is duplicated.
    public init(source: any TensorSource, expected: M3ViTConfig? = nil) throws {
        self.source = source
        let naming: Naming = source.container == .edgeMoEFolder ? .edgeMoE : .m3vit
        self.naming = naming
        var map: [String: String] = [:]
        var skipped = source.skipped
        for e in source.entries {
            let stripped = naming == .m3vit ? NameTable.stripPrefixes(e.name) : e.name
            if let canonical = NameTable.canonicalName(stripped, naming: naming) {
                if let prev = map[canonical] {
                    throw MoepackError(.badInput, file: source.path, item: e.name,
                                       "maps to backbone tensor '\(canonical)' already given by '\(prev)'")
                }
                map[canonical] = e.name
            } else {
                skipped.append(SkippedEntry(name: e.name, reason: Self.skipReason(stripped, original: e.name)))
            }
        }
        self.canonicalToSource = map
        self.skipped = skipped
        self.config = try Self.inferConfig(source: source, map: map, naming: naming, expected: expected)
    }

    static func skipReason(_ stripped: String, original: String) -> String {
        for (pattern, reason) in NameTable.ignoredCanonical where NameTable.match(pattern, stripped) != nil {
            return reason
        }
        if stripped.hasPrefix("decoders.") || stripped.hasPrefix("decoder.") || stripped.hasPrefix("heads.")
            || original.contains("decoder") || original.contains("head") {
            return "decoder head: not part of the backbone"
        }
        if stripped == "image" || stripped.hasSuffix("x_post_moe") {
            return "test data, not a weight"
        }
        return "not a backbone tensor"
    }

    /// The source entry behind a canonical name.
    public func entry(_ canonical: String) -> TensorEntry? {
        guard let s = canonicalToSource[canonical] else { return nil }
        return source.entry(s)
    }

    /// Reads a canonical tensor as float32, refusing NaN/Inf.
    /// - Throws: ``MoepackError`` `.badInput` when missing, `.numeric` naming the tensor and the first
    ///   non-finite index.
    public func read(_ canonical: String) throws -> [Float] {
        guard let s = canonicalToSource[canonical] else {
            throw MoepackError(.badInput, file: source.path, item: canonical, "missing tensor")
        }
        let v = try source.readFloat32(s)
        if let bad = v.withUnsafeBufferPointer(firstNonFiniteIndex) {
            throw MoepackError(.numeric, file: source.path, item: s,
                               "\(v[bad]) at flat index \(bad); NaN/Inf weights are refused")
        }
        observerLock.withLock { observer }?(canonical, v)
        return v
    }

    // MARK: configuration inference

    static func shape(_ source: any TensorSource, _ map: [String: String], _ canonical: String) -> [Int]? {
        guard let s = map[canonical] else { return nil }
        return source.entry(s)?.shape
    }

    static func inferConfig(source: any TensorSource, map: [String: String], naming: Naming,
                            expected: M3ViTConfig?) throws -> M3ViTConfig {
        let path = source.path
        func need(_ canonical: String) throws -> [Int] {
            guard let s = shape(source, map, canonical) else {
                let shown = naming == .edgeMoE ? (NameTable.rows.first { $0.canonical == canonical }?.edgeMoE ?? canonical) : canonical
                throw MoepackError(.badInput, file: path, item: shown, "missing tensor")
            }
            return s
        }
        let pw = try need("patch_embed.proj.weight")
        guard pw.count == 4, pw[2] == pw[3] else {
            throw MoepackError(.mismatch, file: path, item: map["patch_embed.proj.weight"],
                               "shape \(shapeString(pw)), expected [D,C,p,p]")
        }
        let d = pw[0], inChans = pw[1], patch = pw[2]
        var depth = 0
        while map["blocks.\(depth).norm1.weight"] != nil { depth += 1 }
        guard depth > 0 else {
            throw MoepackError(.badInput, file: path, item: "blocks.0.norm1.weight", "missing tensor (no transformer blocks found)")
        }
        var moe: [Int] = []
        var experts = 0, expertHidden = 0, mlpHidden = 0, tasks = 0
        for i in 0..<depth {
            // A block is MoE when any of its expert or gate tensors is present (a folder may lack the
            // expert matrices, as the published Edge-MoE weights do: they are then reported missing).
            let w1 = shape(source, map, "blocks.\(i).mlp.experts.htoh4.weight")
            let b1 = shape(source, map, "blocks.\(i).mlp.experts.htoh4.bias")
            let isMoE = w1 != nil || b1 != nil || map["blocks.\(i).mlp.gate.0.w_gate"] != nil
            if isMoE {
                moe.append(i)
                if let s = w1, s.count == 3, experts == 0 { experts = s[0]; expertHidden = s[1] }
                if let s = b1, s.count == 2, experts == 0 { experts = s[0]; expertHidden = s[1] }
                if tasks == 0 {
                    while map["blocks.\(i).mlp.gate.\(tasks).w_gate"] != nil { tasks += 1 }
                }
            } else if mlpHidden == 0, let s = shape(source, map, "blocks.\(i).mlp.fc1.weight"), s.count == 2 {
                mlpHidden = s[0]
            }
        }
        let pos = try need("pos_embed")
        let tokens = pos.count >= 2 ? pos[pos.count - 2] : 0
        let heads = expected?.heads ?? max(1, d / 64)
        let h = expected?.imageHeight ?? 0
        let w = expected?.imageWidth ?? 0
        var cfg = M3ViTConfig(embedDim: d, depth: depth, heads: heads, moeBlocks: moe, experts: experts,
                              expertHidden: expertHidden, mlpHidden: mlpHidden, tasks: tasks,
                              topK: expected?.topK ?? 2, tokens: tokens, patchSize: patch, inChans: inChans,
                              imageHeight: h, imageWidth: w, layerNormEps: expected?.layerNormEps ?? 1e-6)
        if expected == nil {
            // Without a profile: guess a 1:2 image with the right patch count (Edge-MoE's 128×256).
            let patches = tokens - 1
            var rows = 1
            while rows * rows * 2 < patches { rows += 1 }
            if rows * rows * 2 == patches { cfg.imageHeight = rows * patch; cfg.imageWidth = 2 * rows * patch }
        }
        try checkShapes(cfg, source: source, map: map, naming: naming, expected: expected)
        return cfg
    }

    /// Every backbone tensor's shape against the configuration (the profile's when given).
    static func checkShapes(_ inferred: M3ViTConfig, source: any TensorSource, map: [String: String],
                            naming: Naming, expected: M3ViTConfig?) throws {
        let c = expected ?? inferred
        let path = source.path
        if let e = expected {
            // Structure must match the profile exactly.
            func mism(_ what: String, _ got: Any, _ want: Any, _ tensor: String) -> MoepackError {
                let shown = map[tensor] ?? tensor
                let s = source.entry(shown)?.shape ?? []
                return MoepackError(.mismatch, file: path, item: shown,
                                    "shape \(shapeString(s)) gives \(what) = \(got), the profile expects \(want)\(epHint(source, shown))")
            }
            if inferred.depth != e.depth {
                throw MoepackError(.mismatch, file: path, item: "blocks.*",
                                   "checkpoint has \(inferred.depth) blocks, the profile expects \(e.depth)")
            }
            if inferred.moeBlocks != e.moeBlocks {
                throw MoepackError(.mismatch, file: path, item: "blocks.*.mlp.experts",
                                   "MoE blocks \(inferred.moeBlocks), the profile expects \(e.moeBlocks)")
            }
            if inferred.tasks < 1 && !e.moeBlocks.isEmpty {
                throw MoepackError(.badInput, file: path, item: "blocks.\(e.moeBlocks[0]).mlp.gate.0.w_gate", "missing tensor")
            }
            // Named structural counts first, so the line says which hyper-parameter differs (expected vs
            // actual); every shape is still checked tensor by tensor below.
            if inferred.embedDim != e.embedDim {
                throw mism("hidden size (embed dim)", inferred.embedDim, e.embedDim, "patch_embed.proj.weight")
            }
            if inferred.tokens > 0, inferred.tokens != e.tokens {
                throw mism("token count", inferred.tokens, e.tokens, "pos_embed")
            }
            if let first = e.moeBlocks.first, inferred.experts > 0 {
                let htoh4 = "blocks.\(first).mlp.experts.htoh4.weight"
                if inferred.experts != e.experts { throw mism("expert count", inferred.experts, e.experts, htoh4) }
                if inferred.expertHidden != e.expertHidden { throw mism("expert hidden size", inferred.expertHidden, e.expertHidden, htoh4) }
            }
            if inferred.mlpHidden > 0, e.mlpHidden > 0, inferred.mlpHidden != e.mlpHidden,
               let dense = (0..<e.depth).first(where: { !e.moeBlocks.contains($0) }) {
                throw mism("MLP hidden size", inferred.mlpHidden, e.mlpHidden, "blocks.\(dense).mlp.fc1.weight")
            }
        }
        var expectedShapes: [(String, [Int])] = [
            ("patch_embed.proj.weight", [c.embedDim, c.inChans, c.patchSize, c.patchSize]),
            ("patch_embed.proj.bias", [c.embedDim]),
        ]
        if naming == .m3vit {
            expectedShapes.append(("cls_token", [1, 1, c.embedDim]))
            expectedShapes.append(("pos_embed", [1, c.tokens, c.embedDim]))
        } else {
            expectedShapes.append(("pos_embed", [c.tokens, c.embedDim]))
        }
        let d = c.embedDim
        for i in 0..<c.depth {
            for n in ["norm1", "norm2"] {
                expectedShapes.append(("blocks.\(i).\(n).weight", [d]))
                expectedShapes.append(("blocks.\(i).\(n).bias", [d]))
            }
            expectedShapes.append(("blocks.\(i).attn.qkv.weight", [3 * d, d]))
            expectedShapes.append(("blocks.\(i).attn.qkv.bias", [3 * d]))
            expectedShapes.append(("blocks.\(i).attn.proj.weight", [d, d]))
            expectedShapes.append(("blocks.\(i).attn.proj.bias", [d]))
            if c.moeBlocks.contains(i) {
                let tasks = max(inferred.tasks, 1)
                for t in 0..<tasks {
                    expectedShapes.append(("blocks.\(i).mlp.gate.\(t).w_gate",
                                           naming == .edgeMoE ? [c.experts, d] : [d, c.experts]))
                }
                expectedShapes.append(("blocks.\(i).mlp.experts.htoh4.weight", [c.experts, c.expertHidden, d]))
                expectedShapes.append(("blocks.\(i).mlp.experts.htoh4.bias", [c.experts, c.expertHidden]))
                expectedShapes.append(("blocks.\(i).mlp.experts.h4toh.weight", [c.experts, d, c.expertHidden]))
                expectedShapes.append(("blocks.\(i).mlp.experts.h4toh.bias", [c.experts, d]))
            } else {
                expectedShapes.append(("blocks.\(i).mlp.fc1.weight", [c.mlpHidden, d]))
                expectedShapes.append(("blocks.\(i).mlp.fc1.bias", [c.mlpHidden]))
                expectedShapes.append(("blocks.\(i).mlp.fc2.weight", [d, c.mlpHidden]))
                expectedShapes.append(("blocks.\(i).mlp.fc2.bias", [d]))
            }
        }
        for (canonical, want) in expectedShapes {
            guard let srcName = map[canonical], let entry = source.entry(srcName) else {
                let shown = naming == .edgeMoE ? edgeName(canonical) : canonical
                var hint = ""
                if naming == .edgeMoE && canonical.contains(".mlp.experts.") && canonical.hasSuffix(".weight") {
                    hint = "; the published Edge-MoE weights folder has no expert matrices: add l{i}_htoh4_weight / l{i}_h4toh_weight files (raw float32) for every MoE block"
                }
                throw MoepackError(.badInput, file: path, item: shown, "missing tensor (expected shape \(shapeString(want)))\(hint)")
            }
            // pos_embed may come as [T,D] too
            let gotShape: [Int] = entry.shape, wantShape: [Int] = want
            let gotCount: Int = gotShape.reduce(1, *), wantCount: Int = wantShape.reduce(1, *)
            if canonical == "pos_embed", gotCount == wantCount, gotShape.suffix(2).elementsEqual(wantShape.suffix(2)) { continue }
            if entry.shape != want {
                throw MoepackError(.mismatch, file: path, item: srcName,
                                   "shape \(shapeString(entry.shape)), expected \(shapeString(want))\(epHint(source, srcName))")
            }
            if !entry.dtype.isFloatingPoint {
                throw MoepackError(.badInput, file: path, item: srcName,
                                   "dtype \(entry.dtype.rawValue) where a float weight is expected")
            }
        }
    }

    /// For expert-parallel folders: a tensor found in ranks > 0 was concatenated along dim 0, which is
    /// right for expert tensors only; say so when a shape comes out wrong.
    static func epHint(_ source: any TensorSource, _ name: String) -> String {
        guard source.container == .expertParallelFolder, !name.contains(".experts.") else { return "" }
        return " (in an expert-parallel folder, tensors that appear in ranks > 0 are concatenated along dim 0; only expert tensors may be saved by every rank)"
    }

    static func edgeName(_ canonical: String) -> String {
        for row in NameTable.rows {
            if let b = NameTable.match(row.canonical, canonical), let e = row.edgeMoE {
                return NameTable.fill(e, i: b["i"], t: b["t"])
            }
        }
        return canonical
    }
}
