import ArgumentParser
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel

extension ExportDType: ExpressibleByArgument {}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a checkpoint's M³ViT backbone tensors (or all tensors) to one safetensors file.",
        discussion: """
        Reads CHECKPOINT (PyTorch .pth zip or legacy, expert-parallel folder of N.pth, safetensors, HDF5, \
        .npy/.npz, or an Edge-MoE raw float32 folder) one tensor at a time and writes one safetensors file.

        Default: the backbone tensors under their canonical M³ViT names (patch_embed.proj.weight, \
        blocks.1.mlp.experts.htoh4.weight, blocks.1.mlp.gate.0.w_gate, …); prefixes module./backbone./encoder. \
        are stripped, expert-parallel parts concatenated, decoder heads and the final norm left out. \
        --all writes every tensor under its stored name.

        An Edge-MoE folder's tensors are already folded (normalisation in the patch embedding, cls token in \
        pos_embed row 0, gates transposed to [experts, embed_dim]); they keep their folder names and the \
        metadata says "folded": "true".

        Values are the stored bytes unless --dtype converts float tensors (round to nearest even; integer \
        tensors keep their dtype; a value the target cannot hold is refused). __metadata__ records the source \
        file name, container, naming, folded, dtype, state_dict key and moepack version (no paths, no times). \
        The file appears only when complete.
        """)

    @Argument(help: "Checkpoint file or folder.")
    var checkpoint: String

    @Option(name: .shortAndLong, help: "Output .safetensors file.")
    var output: String

    @Flag(help: "Every tensor under its stored name (not only the backbone under canonical names).")
    var all = false

    @Option(help: "Float dtype written: \(ExportDType.allCases.map(\.rawValue).joined(separator: ", ")) (keep = as stored).")
    var dtype: ExportDType = .keep

    @Option(help: "Key of the state_dict inside a training checkpoint (default: search state_dict, model, model_state, net, ema, top level).")
    var key: String?

    @Flag(help: "Write no __metadata__ (exports of the same tensors from any container are then byte-identical).")
    var noMetadata = false

    @Flag(help: "Print nothing but errors.")
    var quiet = false

    @Flag(help: "JSON summary on stdout (every tensor written with its dtype and shape, the entries left out and why, the metadata).")
    var json = false

    func run() throws {
        try guarded {
            let source = try openCheckpointIsolated(checkpoint, options: OpenOptions(stateDictKey: key))
            try checkKeyApplies(key, to: source)
            let options = ExportOptions(all: all, dtype: dtype, metadata: !noMetadata, moepackVersion: Moepack.version)
            let r = try exportBackbone(source: source, options: options, to: output)
            if json { return try printJSON(ExportSummary(r, source: source)) }
            if !quiet {
                var byType: [String: Int] = [:]
                for t in r.tensors { byType[t.dtype, default: 0] += 1 }
                let types = byType.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
                print("exported \(r.tensors.count) tensors (\(types)) from \(source.path) (\(source.container)) → \(output): \(r.bytes) bytes; \(r.skipped.count) entries not exported")
            }
        }
    }
}

/// Refuses `--key` for a container that has no state_dict keys (it would otherwise be ignored silently).
/// - Throws: ``MoepackError`` `.usage` naming the checkpoint and its container.
func checkKeyApplies(_ key: String?, to source: any TensorSource) throws {
    if let key, !source.container.hasStateDictKey {
        throw MoepackError(.usage, file: source.path,
                           "--key '\(key)' applies to torch.save checkpoints only; this is a \(source.container) container")
    }
}
