import ArgumentParser
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackPacking

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a checkpoint's tensors, what is skipped and why, and the inferred M³ViT configuration.")

    @Argument(help: "Checkpoint file or folder (any supported container).")
    var checkpoint: String

    @Option(help: "Key of the state_dict inside a training checkpoint.")
    var key: String?

    @Option(help: "Profile whose model supplies heads and image size (shapes cannot tell them); 'none' infers alone.")
    var profile: String = "none"

    @Flag(help: "JSON output.")
    var json = false

    struct Report: Encodable {
        struct T: Encodable { var name: String; var dtype: String; var shape: [Int]; var backbone: String? }
        var path: String
        var container: CheckpointContainer
        var notes: [String]
        var tensors: [T]
        var skipped: [SkippedEntry]
        var config: M3ViTConfig?
        var config_error: String?
        /// state_dict key the torch.save reader used (nil: top-level dict or not a torch.save file).
        var state_dict_key: String?
        // The inferred configuration again, in snake_case (absent when it could not be inferred).
        var embed_dim: Int?
        var depth: Int?
        var moe_blocks: [Int]?
        var experts: Int?
        var expert_hidden: Int?
        var mlp_hidden: Int?
        var tasks: Int?
        var tokens: Int?
        var patch_size: Int?
        var in_chans: Int?
    }

    func run() throws {
        try guarded {
            let source = try openCheckpointIsolated(checkpoint, options: OpenOptions(stateDictKey: key))
            try checkKeyApplies(key, to: source)
            let expected = profile == "none" ? nil : try KernelProfile.load(profile).model
            var config: M3ViTConfig?
            var configError: String?
            var skipped = source.skipped
            var reverse: [String: String] = [:]
            do {
                let b = try BackboneCheckpoint(source: source, expected: expected)
                config = b.config
                skipped = b.skipped
                for (k, v) in b.canonicalToSource { reverse[v] = k }
            } catch let e as MoepackError {
                configError = e.description
            }
            var report = Report(
                path: source.path, container: source.container, notes: source.notes,
                tensors: source.entries.map { .init(name: $0.name, dtype: $0.dtype.rawValue, shape: $0.shape, backbone: reverse[$0.name]) },
                skipped: skipped, config: config, config_error: configError,
                state_dict_key: source.stateDictKey)
            if let c = config {
                report.embed_dim = c.embedDim; report.depth = c.depth; report.moe_blocks = c.moeBlocks
                report.experts = c.experts; report.expert_hidden = c.expertHidden; report.mlp_hidden = c.mlpHidden
                report.tasks = c.tasks; report.tokens = c.tokens; report.patch_size = c.patchSize; report.in_chans = c.inChans
            }
            if json {
                try printJSON(report)
                return
            }
            print("\(source.path): \(source.container), \(source.entries.count) tensors")
            for n in source.notes { print("  note: \(n)") }
            var params = 0
            for t in report.tensors {
                let count = t.shape.reduce(1, *)
                if t.backbone != nil { params += count }
                print("  \(t.name.padding(toLength: max(t.name.count, 48), withPad: " ", startingAt: 0)) \(t.dtype.padding(toLength: 5, withPad: " ", startingAt: 0)) \(shapeString(t.shape))")
            }
            if !skipped.isEmpty {
                print("skipped (\(skipped.count)):")
                for s in skipped { print("  \(s.name): \(s.reason)") }
            }
            if let c = config {
                print("""
                configuration: embed_dim \(c.embedDim), depth \(c.depth), heads \(c.heads)\(expected == nil ? " (guessed: D/64)" : ""), \
                moe_blocks \(c.moeBlocks), experts \(c.experts) × hidden \(c.expertHidden), mlp_hidden \(c.mlpHidden), \
                tasks \(c.tasks), top-k \(c.topK), tokens \(c.tokens), patch \(c.patchSize), in_chans \(c.inChans), \
                image \(c.imageHeight)×\(c.imageWidth); backbone parameters \(params)
                """)
            } else if let configError {
                print("configuration: not an M³ViT backbone: \(configError)")
            }
        }
    }
}
