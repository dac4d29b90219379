import ArgumentParser
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint
import MoepackPacking
import MoepackInference
import MoepackVerify

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Write a frame in the kernel's `images` layout (ap_ufixed<8,0> [3][H][W], byte/256) for the host to copy into the images buffer.",
        discussion: "Accepts PNG (8-bit RGB/RGBA/grey), .npy (uint8 or float in [0,1)) and raw uint8 [3,H,W]; other sizes are resized with an area filter.")

    @Argument(help: "Frame file.")
    var frame: String

    @Option(name: .shortAndLong, help: "Output file (raw bytes, 3·H·W).")
    var output: String

    @OptionGroup var profileOptions: ProfileOptions

    @Flag(help: "JSON summary on stdout (bytes, type, shape, what was done to the pixels).")
    var json = false

    func run() throws {
        try guarded {
            let profile = try profileOptions.load()
            let f = try FrameLoader.load(path: frame, config: profile.model)
            try AtomicFileWriter.write(f.bytes, to: output)
            if let n = f.note { note("moepack: \(frame): \(n)") }
            if json {
                return try printJSON(ImageSummary(frame: frame, output: output, bytes: f.bytes.count,
                                                  shape: [3, profile.model.imageHeight, profile.model.imageWidth], note: f.note))
            }
            print("wrote \(output): \(f.bytes.count) bytes, ap_ufixed<8,0> [3][\(profile.model.imageHeight)][\(profile.model.imageWidth)]")
        }
    }
}

struct Schedule: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print, per MoE block, the expert visit order, queue lengths and the DDR bytes fetched in that order for one frame.",
        discussion: "The numbers users need to size the kernel's double buffer: computed from the routing of the frame through the packed image (float datapath).")

    @Argument(help: "Folder written by `moepack pack`.")
    var directory: String

    @Option(help: "Frame to route (one frame).")
    var image: [String] = []

    @Option(parsing: .unconditional, help: "Task (default: the image's task).")
    var task: Int?

    @Option(help: "AXI burst length in bytes used to count bursts (256-bit × 16 beats = 512).")
    var burstBytes: Int = 512

    @Flag(help: "JSON output.")
    var json = false

    func run() throws {
        try guarded {
            guard burstBytes > 0 else { throw MoepackError(.usage, item: "--burst-bytes", "\(burstBytes) is not a positive byte count") }
            let img = try PackedImage(directory: directory)
            let c = img.manifest.model
            guard image.count == 1, let image = image.first else {
                throw MoepackError(.usage, item: "--image", "schedule routes one frame: give exactly one --image FRAME (got \(image.count))")
            }
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: image, isDirectory: &isDir), isDir.boolValue {
                throw MoepackError(.usage, file: image, "schedule routes one frame: give a frame file, not a folder")
            }
            let frame = try FrameLoader.load(path: image, config: c)
            let model = try ImageModel(image: img, mode: .float, task: task)
            let r = try model.run(frame)
            let out = try moeScheduleFetch(routing: r.routing, image: img, burstBytes: burstBytes)
            if json {
                try printJSON(out)
                return
            }
            print("schedule of \(directory) on \(image) (task \(model.task)): experts visited in ascending index, each over its whole token queue")
            for s in out {
                print("  block \(s.block): visits \(s.visit_order.count)/\(c.experts) experts \(s.visit_order), queue lengths \(s.queue_lengths), fetches \(s.bytes_fetched) bytes in \(s.bursts) bursts of ≤\(burstBytes) B")
            }
            let total = out.reduce(0) { $0 + $1.bytes_fetched }
            let perExpert = out.first?.largest_expert_bytes ?? 0
            print("  total expert bytes fetched per frame: \(total); double buffer needs 2 × \(perExpert) bytes (one expert's w1+b1+w2+b2)")
        }
    }
}

struct Suggest: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Propose, per kernel weight type, the ap_fixed<W,I> with the fewest integer bits that holds every value it carries, and the SQNR gain.",
        discussion: "Never changes a profile: rebuild the bitstream with the suggested typedefs, then pack with a profile that declares them.")

    @Argument(help: "Checkpoint file or folder.")
    var checkpoint: String

    @OptionGroup var profileOptions: ProfileOptions
    @OptionGroup var checkpointOptions: CheckpointOptions

    @Option(help: "Task whose gates are considered.")
    var task: Int = 0

    @Option(parsing: .unconditional, help: "Integer bits added to every suggestion beyond the fewest that hold this checkpoint's values (each doubles the range and the LSB), for checkpoints yet to come.")
    var headroomBits: Int = 0

    @Flag(help: "JSON output: suggestions, the --type assignments and the pack command line that applies them.")
    var json = false

    struct SuggestOutput: Encodable {
        var suggestions: [TypeSuggestion]
        /// `NAME=TYPE` for each type that changes (the values of `pack --type`).
        var types: [String]
        /// `moepack pack …` applying them, nil when nothing changes.
        var command: String?
    }

    /// The options of this run that `pack` needs too, repeated in the suggested command line.
    var packArguments: [String] {
        var a: [String] = []
        if profileOptions.profile != ProfileOptions.defaultProfile { a += ["--profile", profileOptions.profile] }
        if let hwh = profileOptions.hwh { a += ["--hwh", hwh] }
        if let key = checkpointOptions.key { a += ["--key", key] }
        if !checkpointOptions.mean.isEmpty { a += ["--mean"] + checkpointOptions.mean.map { "\($0)" } }
        if !checkpointOptions.std.isEmpty { a += ["--std"] + checkpointOptions.std.map { "\($0)" } }
        return a
    }

    func run() throws {
        try guarded {
            guard (0...8).contains(headroomBits) else {
                throw MoepackError(.usage, item: "--headroom-bits", "must be 0…8, got \(headroomBits)")
            }
            let profile = try profileOptions.load()
            let source = try openCheckpointIsolated(checkpoint, options: checkpointOptions.open)
            let kernel = try KernelTensors(checkpoint: try BackboneCheckpoint(source: source, expected: profile.model),
                                           folds: checkpointOptions.folds)
            let s = try suggestTypes(kernel: kernel, profile: profile, task: task, headroomBits: headroomBits)
            let command = packCommandLine(checkpoint: checkpoint, suggestions: s, arguments: packArguments)
            if json {
                try printJSON(SuggestOutput(suggestions: s, types: typeAssignments(s), command: command))
            } else {
                print(renderSuggestions(s), terminator: "")
                print(command.map { "apply (DIR: the output folder): \($0)" } ?? "apply: nothing to change")
            }
        }
    }
}
