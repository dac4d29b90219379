import Foundation
import MoepackCore
import MoepackCheckpoint

// `moepack export`: any supported checkpoint container → one safetensors file.
//
// Rules (safetensors spec: https://github.com/huggingface/safetensors#format; the writer is
// ``SafetensorsWriter``, byte-identical to the Python package):
// - Backbone export (default) writes every tensor ``BackboneCheckpoint`` maps, under its canonical
//   M³ViT name (`patch_embed.proj.weight`, `blocks.1.mlp.experts.htoh4.weight`,
//   `blocks.1.mlp.gate.0.w_gate`, …): wrapper prefixes (`module.`, `backbone.`, `encoder.`) are
//   stripped, a single-gate `blocks.{i}.mlp.gate.w_gate` becomes task 0, expert-parallel rank parts are
//   concatenated by the reader, decoder heads / final norm / gate noise are left out (reported).
// - The Edge-MoE raw float32 folder is *not* given canonical names: its tensors are already folded
//   (input normalisation in the patch embedding, cls token in `pos_embed` row 0, gates stored
//   transposed [experts, embed_dim]) so they are not the M³ViT tensors of the same role. They are
//   exported under their folder names (file stems, e.g. `l1_htoh4_weight`, `l1_w_gate_T_task0`) and the
//   metadata says `"folded": "true"`, `"naming": "edge-moe"`, `"gate_layout": "[experts,embed_dim]"`.
//   The folder's non-weight files (`image`, `l{i}_x_post_moe`) are exported only with `all`.
// - `all` writes every tensor of the container under its stored name (no prefix stripping, nothing
//   skipped except what the reader itself skips).
// - Values are the stored bytes unless a float dtype is asked for (see ``ExportDType``).

/// Element type of the exported float tensors.
public enum ExportDType: String, Sendable, CaseIterable, Codable {
    /// Stored dtype and stored bytes, unchanged (float16 stays float16).
    case keep
    /// IEEE binary32. Exact from F16/BF16; F64 rounds to nearest even.
    case f32
    /// IEEE binary16, round to nearest, ties to even (as `torch.Tensor.half()`).
    case f16
    /// bfloat16, round to nearest, ties to even (as `torch.Tensor.bfloat16()`).
    case bf16

    /// The safetensors dtype this choice converts float tensors to; nil for ``keep``.
    public var target: DType? {
        switch self {
        case .keep: return nil
        case .f32: return .float32
        case .f16: return .float16
        case .bf16: return .bfloat16
        }
    }
}

/// Options of ``exportBackbone(source:options:to:)``.
public struct ExportOptions: Sendable, Equatable {
    /// False (default): the M³ViT backbone tensors under canonical names. True: every tensor under its
    /// stored name.
    public var all: Bool
    /// Element type of float tensors; integer and BOOL tensors (only reachable with `all`) always keep
    /// their stored dtype.
    public var dtype: ExportDType
    /// Write the `__metadata__` map (source, container, moepack version, naming, folded, dtype, …).
    /// Without it, exports of the same tensors from different containers are byte-identical files.
    public var metadata: Bool
    /// Version recorded as `"moepack"` in the metadata (the CLI passes its own version).
    public var moepackVersion: String

    public init(all: Bool = false, dtype: ExportDType = .keep, metadata: Bool = true, moepackVersion: String = "unknown") {
        self.all = all
        self.dtype = dtype
        self.metadata = metadata
        self.moepackVersion = moepackVersion
    }
}

/// One tensor written by ``exportBackbone(source:options:to:)``.
public struct ExportedTensor: Sendable, Equatable, Codable {
    /// Name in the output file.
    public var name: String
    /// Name in the source container.
    public var source: String
    /// Stored dtype in the source and written dtype (safetensors strings, `F32`, `F16`, …).
    public var storedDType: String
    public var dtype: String
    /// Axis sizes, outermost first (unchanged by export).
    public var shape: [Int]
}

/// What ``exportBackbone(source:options:to:)`` wrote.
public struct ExportResult: Sendable, Equatable {
    /// Output file path.
    public var path: String
    /// Tensors written, in the source's order.
    public var tensors: [ExportedTensor]
    /// Source entries not written, with the reason (decoder heads, final norm, optimizer state, …).
    public var skipped: [SkippedEntry]
    /// The `__metadata__` map written (empty when ``ExportOptions/metadata`` is false).
    public var metadata: [String: String]
    /// Output file size in bytes.
    public var bytes: Int
}

/// Exports `source` to the safetensors file `path`, one tensor in memory at a time.
///
/// - Parameters:
///   - source: an opened checkpoint (``openCheckpoint(_:options:)``; its state_dict key is already chosen).
///   - options: backbone or all tensors, float dtype, metadata.
///   - path: output file; written through a temporary file in the same folder and renamed into place
///     only when complete (an error leaves no file).
/// - Returns: what was written.
/// - Throws: ``MoepackError``: `badInput` when the source is not an M³ViT backbone (the line names the
///   missing or misshapen tensor and suggests `--all`), when there is nothing to export, when `path` is
///   the checkpoint itself; `numeric` when a finite value overflows the target dtype (tensor, flat
///   index, value); the source's read errors (file + tensor); `io` when the output cannot be written.
public func exportBackbone(source: any TensorSource, options: ExportOptions, to path: String) throws -> ExportResult {
    if sameFile(path, source.path) {
        throw MoepackError(.badInput, file: path, "output is the checkpoint itself; choose another output path")
    }
    // (output name, source name) pairs.
    var pairs: [(String, String)] = []
    var skipped: [SkippedEntry]
    var naming: String
    var folded = false
    if options.all {
        naming = "stored"
        skipped = source.skipped
        var seen = Set<String>()
        for e in source.entries {
            guard seen.insert(e.name).inserted else {
                throw MoepackError(.badInput, file: source.path, item: e.name, "tensor name appears twice in the container")
            }
            pairs.append((e.name, e.name))
        }
    } else {
        let backbone: BackboneCheckpoint
        do {
            backbone = try BackboneCheckpoint(source: source)
        } catch var e as MoepackError {
            e.message += " (not an M³ViT backbone; --all exports every tensor under its stored name)"
            throw e
        }
        skipped = backbone.skipped
        let folder = backbone.naming == .edgeMoE
        folded = folder
        naming = folder ? "edge-moe" : "m3vit"
        var sourceToCanonical: [String: String] = [:]
        for (c, s) in backbone.canonicalToSource { sourceToCanonical[s] = c }
        for e in source.entries {
            guard let c = sourceToCanonical[e.name] else { continue }
            pairs.append((folder ? e.name : c, e.name))
        }
    }
    guard !pairs.isEmpty else {
        throw MoepackError(.badInput, file: source.path, "no tensors to export")
    }

    var metadata: [String: String] = [:]
    if options.metadata {
        metadata["source"] = URL(fileURLWithPath: source.path).standardizedFileURL.lastPathComponent
        metadata["container"] = source.container.rawValue
        metadata["moepack"] = options.moepackVersion
        metadata["naming"] = naming
        metadata["folded"] = folded ? "true" : "false"
        metadata["dtype"] = options.dtype == .keep ? "keep" : (options.dtype.target?.rawValue ?? "keep")
        if folded {
            metadata["gate_layout"] = "[experts,embed_dim] (M3ViT w_gate [embed_dim,experts] transposed)"
        }
        if let k = source.stateDictKey { metadata["state_dict_key"] = k }
    }

    let reader: any TensorSource = options.dtype.target.map { ConvertingSource(source, to: $0) } ?? source
    let selections = pairs.map { SafetensorsWriter.Selection(outName: $0.0, sourceName: $0.1) }
    try SafetensorsWriter.write(from: reader, selecting: selections,
                                metadata: options.metadata ? metadata : nil, to: path)

    var tensors: [ExportedTensor] = []
    for (out, src) in pairs {
        guard let stored = source.entry(src), let written = reader.entry(src) else { continue }
        tensors.append(ExportedTensor(name: out, source: src, storedDType: stored.dtype.rawValue,
                                      dtype: written.dtype.rawValue, shape: stored.shape))
    }
    let size = ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
    return ExportResult(path: path, tensors: tensors, skipped: skipped, metadata: metadata, bytes: size)
}

/// True when `a` and `b` name the same existing file (device and inode).
func sameFile(_ a: String, _ b: String) -> Bool {
    var sa = stat(), sb = stat()
    guard stat(a, &sa) == 0, stat(b, &sb) == 0 else { return false }
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
}

/// A view of a source whose float tensors read as `target` (integer and BOOL tensors unchanged).
///
/// Conversion goes through float32 (``TensorSource/readFloat32(_:)``), so F64 → F16/BF16 rounds twice
/// (F64 → F32 → target). A finite value that
/// becomes ±inf in `target` is refused; stored NaN/Inf are kept.
final class ConvertingSource: TensorSource, @unchecked Sendable {
    let base: any TensorSource
    let target: DType
    let entries: [TensorEntry]
    private let stored: [String: DType]

    init(_ base: any TensorSource, to target: DType) {
        self.base = base
        self.target = target
        var stored: [String: DType] = [:]
        self.entries = base.entries.map { e in
            if stored[e.name] == nil { stored[e.name] = e.dtype }
            var c = e
            if e.dtype.isFloatingPoint { c.dtype = target }
            return c
        }
        self.stored = stored
    }

    var path: String { base.path }
    var container: CheckpointContainer { base.container }
    var stateDictKey: String? { base.stateDictKey }
    var skipped: [SkippedEntry] { base.skipped }
    var notes: [String] { base.notes }

    func readFloat32(_ name: String) throws -> [Float] { try base.readFloat32(name) }

    func readRaw(_ name: String) throws -> [UInt8] {
        guard let s = stored[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        if s == target || !s.isFloatingPoint { return try base.readRaw(name) }
        var values: [Float]
        if s == .float64 {
            // Decoded here (not through readFloat32) to catch finite float64 values beyond float32's range.
            let raw = try base.readRaw(name)
            let count = raw.count / 8
            values = [Float](repeating: 0, count: count)
            let bad: (Int, Double)? = raw.withUnsafeBytes { r in
                for k in 0..<count {
                    let d = Double(bitPattern: UInt64(littleEndian: r.loadUnaligned(fromByteOffset: k * 8, as: UInt64.self)))
                    let f = Float(d)
                    if d.isFinite && !f.isFinite { return (k, d) }
                    values[k] = f
                }
                return nil
            }
            if let (k, d) = bad {
                throw MoepackError(.numeric, file: path, item: name, "value \(d) at flat index \(k) overflows F32")
            }
        } else {
            values = try base.readFloat32(name)
        }
        if target != .float32, let i = values.firstIndex(where: { $0.isFinite && !roundsToFinite($0) }) {
            throw MoepackError(.numeric, file: path, item: name,
                               "value \(values[i]) at flat index \(i) overflows \(target.rawValue)")
        }
        return try FloatConversion.encode(values, as: target)
    }

    /// True when `x` rounds to a finite value of `target` (float16 values just above 65504 round down).
    private func roundsToFinite(_ x: Float) -> Bool {
        switch target {
        case .float16: return Float16(x).isFinite
        case .bfloat16: return FloatConversion.float(fromBFloat16Bits: FloatConversion.bfloat16Bits(x)).isFinite
        default: return true
        }
    }
}
