import MoepackCore
import MoepackCheckpoint

/// How a checkpoint names the backbone's tensors.
public enum Naming: String, Sendable, Codable {
    /// M³ViT / timm names (`blocks.1.mlp.experts.htoh4.weight`) after prefix stripping; unfolded.
    case m3vit
    /// The Edge-MoE raw float32 folder (`l1_htoh4_weight`); already folded (normalisation, cls token,
    /// gate transposed), as described in the Edge-MoE README.
    case edgeMoE = "edge-moe"
}

/// One row of the name-mapping table: a canonical (M³ViT) name pattern and the Edge-MoE folder's
/// pattern for the same tensor. `{i}` stands for a block index, `{t}` for a task index.
///
/// The table is the single place that knows tensor names, in the manner of llama.cpp's GGUF
/// converter tables: supporting a new checkpoint naming means adding a column, not code.
public struct NameRow: Sendable {
    public var canonical: String
    public var edgeMoE: String?
    /// True when the Edge-MoE tensor is the transpose of the canonical one (gates).
    public var edgeTransposed: Bool
}

public enum NameTable {
    /// Canonical backbone tensors and their Edge-MoE folder names.
    public static let rows: [NameRow] = [
        NameRow(canonical: "patch_embed.proj.weight", edgeMoE: "patch_embed_weight", edgeTransposed: false),
        NameRow(canonical: "patch_embed.proj.bias", edgeMoE: "patch_embed_bias", edgeTransposed: false),
        NameRow(canonical: "cls_token", edgeMoE: nil, edgeTransposed: false),
        NameRow(canonical: "pos_embed", edgeMoE: "pos_embed", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.norm1.weight", edgeMoE: "l{i}_norm1_weight", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.norm1.bias", edgeMoE: "l{i}_norm1_bias", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.norm2.weight", edgeMoE: "l{i}_norm2_weight", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.norm2.bias", edgeMoE: "l{i}_norm2_bias", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.attn.qkv.weight", edgeMoE: "l{i}_qkv_weight", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.attn.qkv.bias", edgeMoE: "l{i}_qkv_bias", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.attn.proj.weight", edgeMoE: "l{i}_attn_proj_weight", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.attn.proj.bias", edgeMoE: "l{i}_attn_proj_bias", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.mlp.fc1.weight", edgeMoE: "l{i}_fc1_weight", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.mlp.fc1.bias", edgeMoE: "l{i}_fc1_bias", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.mlp.fc2.weight", edgeMoE: "l{i}_fc2_weight", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.mlp.fc2.bias", edgeMoE: "l{i}_fc2_bias", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.mlp.gate.{t}.w_gate", edgeMoE: "l{i}_w_gate_T_task{t}", edgeTransposed: true),
        NameRow(canonical: "blocks.{i}.mlp.experts.htoh4.weight", edgeMoE: "l{i}_htoh4_weight", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.mlp.experts.htoh4.bias", edgeMoE: "l{i}_htoh4_bias", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.mlp.experts.h4toh.weight", edgeMoE: "l{i}_h4toh_weight", edgeTransposed: false),
        NameRow(canonical: "blocks.{i}.mlp.experts.h4toh.bias", edgeMoE: "l{i}_h4toh_bias", edgeTransposed: false),
    ]

    /// Tensors that belong to an M³ViT checkpoint but not to what the kernel computes, with the reason
    /// reported by `inspect`.
    public static let ignoredCanonical: [(pattern: String, reason: String)] = [
        ("norm.weight", "final norm: the kernel's output is taken before it"),
        ("norm.bias", "final norm: the kernel's output is taken before it"),
        ("blocks.{i}.mlp.gate.{t}.w_noise", "gate noise: training only"),
        ("blocks.{i}.mlp.gate.w_noise", "gate noise: training only"),
        ("head.weight", "classification head: not part of the backbone"),
        ("head.bias", "classification head: not part of the backbone"),
    ]

    /// Prefixes stripped from state_dict keys (DistributedDataParallel `module.`, the multi-task
    /// wrapper's `backbone.`), repeatedly, in any order.
    public static let strippedPrefixes = ["module.", "backbone.", "encoder."]

    /// Strips the wrapper prefixes from a state_dict key.
    public static func stripPrefixes(_ name: String) -> String {
        var n = name
        var changed = true
        while changed {
            changed = false
            for p in strippedPrefixes where n.hasPrefix(p) {
                n = String(n.dropFirst(p.count))
                changed = true
            }
        }
        return n
    }

    /// Matches `name` against `pattern` (`{i}`, `{t}` match decimal integers); returns the bound values.
    public static func match(_ pattern: String, _ name: String) -> [String: Int]? {
        var bindings: [String: Int] = [:]
        var p = Substring(pattern)
        var n = Substring(name)
        while !p.isEmpty {
            if p.hasPrefix("{") , let close = p.firstIndex(of: "}") {
                let key = String(p[p.index(after: p.startIndex)..<close])
                p = p[p.index(after: close)...]
                let digits = n.prefix { $0.isASCII && $0.isNumber }
                guard !digits.isEmpty, digits.count < 7, let v = Int(digits) else { return nil }
                if digits.count > 1 && digits.first == "0" { return nil }
                bindings[key] = v
                n = n.dropFirst(digits.count)
            } else {
                guard let c = p.first, n.first == c else { return nil }
                p = p.dropFirst()
                n = n.dropFirst()
            }
        }
        return n.isEmpty ? bindings : nil
    }

    /// Substitutes `{i}`/`{t}` in a pattern.
    public static func fill(_ pattern: String, i: Int? = nil, t: Int? = nil) -> String {
        var s = pattern
        if let i { s = s.replacingAll("{i}", with: String(i)) }
        if let t { s = s.replacingAll("{t}", with: String(t)) }
        return s
    }

    /// Maps a (prefix-stripped) source name to its canonical name under `naming`, or nil when the
    /// tensor is not a backbone tensor.
    public static func canonicalName(_ name: String, naming: Naming) -> String? {
        for row in rows {
            let pattern: String
            switch naming {
            case .m3vit: pattern = row.canonical
            case .edgeMoE:
                guard let e = row.edgeMoE else { continue }
                pattern = e
            }
            if let b = match(pattern, name) {
                return fill(row.canonical, i: b["i"], t: b["t"])
            }
        }
        // single-gate checkpoints: blocks.{i}.mlp.gate.w_gate is task 0
        if naming == .m3vit, let b = match("blocks.{i}.mlp.gate.w_gate", name) {
            return fill("blocks.{i}.mlp.gate.{t}.w_gate", i: b["i"], t: 0)
        }
        return nil
    }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var result = ""
        var rest = Substring(self)
        while let r = rest.range(of: target) {
            result += rest[..<r.lowerBound]
            result += replacement
            rest = rest[r.upperBound...]
        }
        result += rest
        return result
    }
}

extension Substring {
    func range(of target: String) -> Range<Substring.Index>? {
        guard !target.isEmpty, count >= target.count else { return nil }
        var i = startIndex
        while i < endIndex {
            if self[i...].hasPrefix(target) {
                return i..<index(i, offsetBy: target.count)
            }
            i = index(after: i)
        }
        return nil
    }
}
