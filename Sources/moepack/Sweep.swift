import ArgumentParser
import Foundation
import MoepackCore
import MoepackModel
import MoepackFixedPoint
import MoepackCheckpoint
import MoepackPacking
import MoepackInference
import MoepackVerify
import MoepackHeads

struct Sweep: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Try element types: pack, emulate and compare every combination of --vary lists against the float model.",
        discussion: """
        For each candidate (the product of the --vary lists, e.g. --vary 'wt_linear_t=ap_fixed<8,1>,ap_fixed<10,2>,ap_fixed<12,2>') the checkpoint is packed with every task's gates into a temporary folder, run through the bit-accurate fixed-point emulation on every --image frame and task, and compared with the float model: image bytes, DDR bytes the MoE schedule fetches per frame, output MSE and cosine, routing agreement per MoE block and task. Types the emulation cannot reproduce are refused before any work. Candidates run in parallel on the cores. -o DIR writes DIR/sweep.html (error against bytes, Pareto front marked) and DIR/sweep.json, staged and moved into place when complete.
        """)

    @Argument(help: "Checkpoint file or folder.")
    var checkpoint: String

    @OptionGroup var frames: FrameOptions

    @Option(help: ArgumentHelp("An element type of the profile and the types to try for it: NAME=TYPE[,TYPE...]; repeatable (candidates are the product).", valueName: "NAME=TYPES"))
    var vary: [String] = []

    @OptionGroup var profileOptions: ProfileOptions
    @OptionGroup var checkpointOptions: CheckpointOptions

    @Option(help: "ap_fixed quantization mode for float → fixed conversion: \(Quantization.allCases.map(\.rawValue).joined(separator: ", ")).")
    var quantization: Quantization = .AP_RND_CONV

    @Option(help: "ap_fixed overflow mode: \(Overflow.allCases.map(\.rawValue).joined(separator: ", ")).")
    var overflow: Overflow = .AP_SAT

    @Option(help: "Checkpoint with M³ViT task decoders: also compare each decoder's output on every candidate with its output on the float model (pixel agreement for segmentations, MSE and cosine).")
    var heads: String?

    @Option(help: ArgumentHelp("With --heads: which backbone task feeds which decoder, e.g. semseg=0,depth=1 (default: decoder i gets task i's gates).", valueName: "map"))
    var taskMap: String?

    @OptionGroup var headOptions: HeadOptions

    @Option(name: .shortAndLong, help: "Output folder for sweep.html and sweep.json (created; those files replaced).")
    var output: String?

    @Flag(help: "JSON output (the report, with its candidates list) on stdout.")
    var json = false

    func run() throws {
        try guarded {
            guard !vary.isEmpty else {
                throw MoepackError(.usage, item: "--vary", "give at least one --vary NAME=TYPE[,TYPE...]")
            }
            let axes = try vary.map { try SweepAxis(parsing: $0) }
            let profile = try profileOptions.load()
            // Type names and emulation support checked before the checkpoint is read or anything written.
            _ = try sweepProfiles(profile: profile, candidates: try sweepCandidates(profile: profile, axes: axes))
            let staged = try output.map { try StagedDirectory(destination: $0) }
            let inputs = try frames.load(config: profile.model)
            let source = try openCheckpointIsolated(checkpoint, options: checkpointOptions.open)
            let kernel = try KernelTensors(checkpoint: try BackboneCheckpoint(source: source, expected: profile.model),
                                           folds: checkpointOptions.folds)
            var options = SweepOptions()
            options.quantization = quantization
            options.overflow = overflow
            options.checkpointPath = checkpoint
            // Candidates are packed inside the output's staging folder: removed with it, and a run
            // killed with SIGKILL leaves it to the next run's stale-staging cleanup, not in /tmp.
            if let staged { options.workDirectory = staged.staging }
            if let heads {
                let (ck, decoders) = try headOptions.load(heads, open: checkpointOptions.open, config: profile.model)
                options.heads = decoders
                let tasks = Array(0..<max(profile.model.tasks, 1))
                let overrides = try taskMap.map { try TaskMap.parse($0, heads: ck.heads, imageTasks: tasks) } ?? [:]
                options.taskMap = try TaskMap.resolve(heads: ck.heads, imageTasks: tasks, overrides: overrides)
            }
            let count = try sweepCandidates(profile: profile, axes: axes).count
            note("moepack: sweep: \(count) candidate(s) × \(inputs.count) frame(s) × \(max(profile.model.tasks, 1)) task(s), \(min(options.parallel, count)) at a time")
            let report = try sweep(kernel: kernel, profile: profile, axes: axes, frames: inputs, options: options,
                                   progress: progressReporter("sweep: candidates") ?? periodicProgress("moepack: sweep: candidates done"))
            if let staged {
                let enc = JSONEncoder()
                enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                try AtomicFileWriter.write(Array(sweepHTML(report).utf8), to: staged.path("sweep.html"))
                try AtomicFileWriter.write(Array(try enc.encode(report)) + [10], to: staged.path("sweep.json"))
                try staged.commit()
            }
            if json {
                try printJSON(report)
            } else {
                print(renderSweepTable(report))
                if let output { print("  page: \((output as NSString).appendingPathComponent("sweep.html"))") }
            }
        }
    }
}

/// Progress for a log (stderr not a terminal): one line `label k/n` at most every `interval` seconds
/// and at the end, so a long unattended run shows it is alive without flooding the log.
func periodicProgress(_ label: String, interval: TimeInterval = 5) -> @Sendable (Int, Int) -> Void {
    let last = NSLock(), start = Date()
    nonisolated(unsafe) var printed = start
    return { done, total in
        last.lock(); defer { last.unlock() }
        let now = Date()
        guard done == total || now.timeIntervalSince(printed) >= interval else { return }
        printed = now
        note("\(label) \(done)/\(total) (\(Int(now.timeIntervalSince(start))) s)")
    }
}
