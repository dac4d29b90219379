import Foundation
import MoepackCore

/// The Edge-MoE raw float32 weight folder (the published ZCU102 testbench's inputs), container
/// `edge-moe-folder`: one file `<name>.float32.bin` per tensor, raw little-endian float32 in C order,
/// no header. Tensor names are the file stems (`l3_htoh4_bias`).
///
/// Shapes follow the folder's name patterns (kernel form: normalisation folded into the patch
/// embedding, cls token inside `pos_embed[0]`, gate stored transposed); sizes are inferred from file
/// sizes: embed dim D = bytes(`patch_embed_bias`)/4, experts E = floats(`l{i}_w_gate_T_task{t}`)/D,
/// hidden widths from the biases.
///
/// | stem | shape |
/// |---|---|
/// | `image` | [3, H, 2H] (channels, rows, columns; Cityscapes 1:2 frame) |
/// | `patch_embed_weight` / `_bias` | [D, 3, p, p] / [D] |
/// | `pos_embed` | [T, D] (tokens × features) |
/// | `l{i}_norm{1,2}_{weight,bias}` | [D] |
/// | `l{i}_qkv_weight` / `_bias` | [3D, D] / [3D] |
/// | `l{i}_attn_proj_weight` / `_bias` | [D, D] / [D] |
/// | `l{i}_fc1_weight` / `_bias`, `l{i}_fc2_weight` / `_bias` | [Hm, D] / [Hm], [D, Hm] / [D] |
/// | `l{i}_w_gate_T_task{t}` | [E, D] |
/// | `l{i}_htoh4_bias`, `l{i}_h4toh_bias` | [E, Hx], [E, D] |
/// | `l{i}_htoh4_weight`, `l{i}_h4toh_weight` | [E, Hx, D], [E, D, Hx] |
/// | `l{i}_x_post_moe` | [T, D] |
///
/// Files that match no pattern (or are not `*.float32.bin`) are skipped with a reason.
public final class EdgeMoEFolderSource: TensorSource {
    public let path: String
    public let container = CheckpointContainer.edgeMoEFolder
    public let entries: [TensorEntry]
    public let skipped: [SkippedEntry]
    public let notes: [String]
    private let files: [String: String]

    static let suffix = ".float32.bin"

    /// Opens the folder `path`.
    /// - Throws: ``MoepackError`` naming the folder and file: no `patch_embed_bias`, a size that is not a
    ///   multiple of 4, a size that does not match the pattern's shape, inconsistent expert counts.
    public init(path: String) throws {
        self.path = path
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: path) } catch {
            throw MoepackError(.io, file: path, "cannot list folder")
        }
        var skipped: [SkippedEntry] = []
        var counts: [String: Int] = [:]
        var files: [String: String] = [:]
        for n in names.sorted() {
            guard n.hasSuffix(Self.suffix), n.count > Self.suffix.count else {
                skipped.append(SkippedEntry(name: n, reason: "not a <name>.float32.bin file"))
                continue
            }
            let stem = String(n.dropLast(Self.suffix.count))
            let full = (path as NSString).appendingPathComponent(n)
            guard let attrs = try? FileManager.default.attributesOfItem(atPath: full),
                  let size = (attrs[.size] as? NSNumber)?.intValue, attrs[.type] as? FileAttributeType == .typeRegular else {
                skipped.append(SkippedEntry(name: n, reason: "not a regular file"))
                continue
            }
            guard size % 4 == 0 else {
                throw MoepackError(.badInput, file: path, item: n, "size \(size) bytes is not a multiple of 4 (float32)")
            }
            counts[stem] = size / 4
            files[stem] = full
        }
        func bad(_ stem: String, _ m: String) -> MoepackError {
            MoepackError(.badInput, file: path, item: stem + Self.suffix, m)
        }
        guard let d = counts["patch_embed_bias"], d > 0 else {
            throw MoepackError(.badInput, file: path, item: "patch_embed_bias" + Self.suffix, "missing or empty (it gives the embed dim)")
        }
        // Experts: every gate must agree.
        var experts: Int? = nil
        for (stem, n) in counts.sorted(by: { $0.key < $1.key }) where Self.layerPart(stem)?.1.hasPrefix("w_gate_T_task") == true {
            guard n % d == 0, n > 0 else { throw bad(stem, "\(n) floats is not a multiple of the embed dim \(d)") }
            if let e = experts, e != n / d { throw bad(stem, "gate has \(n / d) experts, other gates \(e)") }
            experts = n / d
        }
        let tokens = counts["pos_embed"].flatMap { $0 % d == 0 ? $0 / d : nil }
        var shapes: [(String, [Int])] = []
        for (stem, n) in counts {
            var shape: [Int]? = nil
            var unknown = false
            func per(_ k: Int) -> Int? { k > 0 && n % k == 0 ? n / k : nil }
            switch stem {
            case "image":
                if n % 3 == 0 {
                    let h = Int((Double(n / 6)).squareRoot().rounded())
                    if 3 * h * 2 * h == n { shape = [3, h, 2 * h] }
                }
                if shape == nil { skipped.append(SkippedEntry(name: stem, reason: "\(n) floats is not an image of shape [3,H,2H]")); continue }
            case "patch_embed_bias": shape = [d]
            case "patch_embed_weight":
                if let q = per(3 * d) {
                    let p = Int(Double(q).squareRoot().rounded())
                    if p * p == q { shape = [d, 3, p, p] }
                }
            case "pos_embed": shape = per(d).map { [$0, d] }
            default:
                guard let (layer, field) = Self.layerPart(stem) else { unknown = true; break }
                func hidden(_ bias: String) -> Int? { counts["l\(layer)_\(bias)"] }
                switch field {
                case "norm1_weight", "norm1_bias", "norm2_weight", "norm2_bias", "attn_proj_bias", "fc2_bias":
                    shape = [d]
                case "qkv_weight": shape = [3 * d, d]
                case "qkv_bias": shape = [3 * d]
                case "attn_proj_weight": shape = [d, d]
                case "fc1_weight": shape = per(d).map { [$0, d] }
                case "fc1_bias":
                    if let w = hidden("fc1_weight"), w != n * d {
                        throw bad(stem, "\(n) floats does not match fc1_weight (\(w) floats = hidden × \(d))")
                    }
                    shape = [n]
                case "fc2_weight":
                    let hm = hidden("fc1_bias") ?? per(d)
                    shape = hm.map { [d, $0] }
                case "w_gate_T_task0", "w_gate_T_task1":
                    shape = experts.map { [$0, d] }
                case "htoh4_bias": shape = experts.flatMap { e in per(e).map { [e, $0] } }
                case "h4toh_bias": shape = experts.map { [$0, d] }
                case "htoh4_weight":
                    shape = experts.flatMap { e in (hidden("htoh4_bias").map { $0 / e } ?? per(e * d)).map { [e, $0, d] } }
                case "h4toh_weight":
                    shape = experts.flatMap { e in (hidden("htoh4_bias").map { $0 / e } ?? per(e * d)).map { [e, d, $0] } }
                case "x_post_moe": shape = (tokens ?? per(d)).map { [$0, d] }
                default:
                    if field.hasPrefix("w_gate_T_task"), field.dropFirst("w_gate_T_task".count).allSatisfy(\.isNumber) {
                        shape = experts.map { [$0, d] }
                    } else { unknown = true }
                }
            }
            if unknown {
                skipped.append(SkippedEntry(name: stem, reason: "file name matches no Edge-MoE weight pattern"))
                files[stem] = nil
                continue
            }
            guard let s = shape, s.reduce(1, *) == n else {
                throw bad(stem, "\(n) floats does not fit the expected shape\(shape.map { " " + shapeString($0) } ?? "") for embed dim \(d)\(experts.map { ", \($0) experts" } ?? "")")
            }
            shapes.append((stem, s))
        }
        shapes.sort { a, b in
            let la = Self.layerPart(a.0)?.0 ?? -1, lb = Self.layerPart(b.0)?.0 ?? -1
            return la != lb ? la < lb : a.0 < b.0
        }
        for e in skipped { files[e.name] = nil }
        self.entries = shapes.map { TensorEntry(name: $0.0, dtype: .float32, shape: $0.1) }
        self.files = files
        self.skipped = skipped
        var notes = ["embed dim \(d) from patch_embed_bias"]
        if let experts { notes.append("\(experts) experts from the gate files") }
        if let tokens { notes.append("\(tokens) tokens from pos_embed") }
        self.notes = notes
    }

    /// Splits `l{i}_{field}` into (i, field).
    static func layerPart(_ stem: String) -> (Int, String)? {
        guard stem.hasPrefix("l"), let us = stem.firstIndex(of: "_") else { return nil }
        let num = stem[stem.index(after: stem.startIndex)..<us]
        guard !num.isEmpty, num.allSatisfy({ $0.isASCII && $0.isNumber }), let i = Int(num) else { return nil }
        return (i, String(stem[stem.index(after: us)...]))
    }

    public func readRaw(_ name: String) throws -> [UInt8] {
        guard let f = files[name], let e = entry(name) else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        let file = try RandomAccessFile(f)
        guard file.size == e.elementCount * 4 else {
            throw MoepackError(.badInput, file: path, item: name + Self.suffix, "file changed size since it was opened")
        }
        return try file.read(at: 0, count: file.size, what: name)
    }

    public func readFloat32(_ name: String) throws -> [Float] {
        TorchCheckpoint.toFloat32(try readRaw(name), dtype: .float32)
    }
}
