import ArgumentParser
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint
import MoepackPacking
import MoepackInference
import MoepackVerify
import MoepackHeads
import MoepackBoard

extension Quantization: ExpressibleByArgument {}
extension Overflow: ExpressibleByArgument {}
extension DDRLayout: ExpressibleByArgument {}

extension Pack {
    /// The report's task section: the decoders on the fixed path against the float model, on `frame`.
    func packTaskSection(image: PackedImage, kernel: KernelTensors, heads: String, frame: Frame) throws -> TaskReportSection {
        let c = image.manifest.model
        let named = NamedFrame(name: self.image ?? "frame", frame: frame)
        let (report, outputs) = try compareHeads(image: image, kernel: kernel, checkpoint: heads, frames: [named], mode: .fixed,
                                                 thresholds: .defaults(for: .fixed), taskMap: taskMap, headOptions: headOptions,
                                                 open: checkpointOptions.open)
        return TaskReportSection(frame: frame.bytes, height: c.imageHeight, width: c.imageWidth, patch: c.patchSize,
                                 experts: c.experts, mode: .fixed, outputs: outputs[0], fidelity: report.tasks, taskMap: report.task_map)
    }
}

/// Options shared by every command that opens a checkpoint.
struct CheckpointOptions: ParsableArguments {
    @Option(help: "Key of the state_dict inside a training checkpoint (default: search state_dict, model, model_state, net, ema, top level).")
    var key: String?

    @Option(name: .long, parsing: .upToNextOption, help: ArgumentHelp("Training input mean per channel, space separated (input = (byte/255 - mean)/std; default ImageNet 0.485 0.456 0.406).", valueName: "m"))
    var mean: [Double] = []

    @Option(name: .long, parsing: .upToNextOption, help: ArgumentHelp("Training input std per channel, space separated (default ImageNet 0.229 0.224 0.225).", valueName: "s"))
    var std: [Double] = []

    /// True when the user gave --mean or --std.
    var foldsGiven: Bool { !mean.isEmpty || !std.isEmpty }
    var folds: FoldOptions {
        let d = FoldOptions()
        return FoldOptions(mean: mean.isEmpty ? d.mean : mean, std: std.isEmpty ? d.std : std)
    }
    var open: OpenOptions { OpenOptions(stateDictKey: key) }
}

struct ProfileOptions: ParsableArguments {
    @Option(help: "Hardware profile: a built-in name (\(KernelProfile.builtinNames.joined(separator: ", "))) or a profile JSON file.")
    var profile: String = Self.defaultProfile
    static let defaultProfile = "edge-moe-zcu102"

    @Option(help: "Read control-register offsets from a Vivado .hwh file instead of the profile's.")
    var hwh: String?

    func load() throws -> KernelProfile {
        var p = try KernelProfile.load(profile)
        if let hwh { try p.applyHWH(path: hwh) }
        return p
    }
}

struct Pack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pack a checkpoint into a DDR image (ddr.bin + manifest.json + moepack_ddr.h + manifest.sha256) with the host programs in host/.",
        discussion: """
        Reads CHECKPOINT lazily (PyTorch .pth zip or legacy, expert-parallel folder of N.pth, safetensors, HDF5, .npz, or an Edge-MoE raw float32 folder), folds input normalisation, the cls token, qkv and the gates into the kernel's form, converts every weight to its ap_fixed type and writes every argument of the kernel at a 4096-byte aligned offset. Values outside a type's range are warned about (one line per tensor); --strict makes them errors. Output files appear only when complete.
        """)

    @Argument(help: "Checkpoint file or folder.")
    var checkpoint: String

    @Option(name: .shortAndLong, help: "Output folder (created; existing files of the same names are replaced).")
    var output: String

    @OptionGroup var profileOptions: ProfileOptions
    @OptionGroup var checkpointOptions: CheckpointOptions

    @Option(parsing: .unconditional, help: "Task whose gates go into moe_w_gate, or 'all' to pack every task's gates (switch on the board with one register write).")
    var task: String = "0"

    @Option(help: "DDR layout: kernel (what the published bitstream reads) or expert-major (expert records in MoE schedule order, for kernels with one expert base pointer).")
    var layout: DDRLayout = .kernel

    @Option(help: "Write a self-contained HTML quantization report (ranges vs types, SQNR, and with --image the routing heat maps).")
    var report: String?

    @Option(help: "With --report and --image: also run this checkpoint's task decoders on the fixed path and the float model and show their renderings, the pixels that differ and the expert choice per patch.")
    var heads: String?

    @Option(help: ArgumentHelp("With --heads: which backbone task feeds which decoder, e.g. semseg=0,depth=1 (default: decoder i gets task i).", valueName: "map"))
    var taskMap: String?

    @OptionGroup var headOptions: HeadOptions

    @Option(help: "ap_fixed quantization mode for float → fixed conversion: \(Quantization.allCases.map(\.rawValue).joined(separator: ", ")).")
    var quantization: Quantization = .AP_RND_CONV

    @Option(help: "ap_fixed overflow mode: \(Overflow.allCases.map(\.rawValue).joined(separator: ", ")).")
    var overflow: Overflow = .AP_SAT

    @Flag(help: "Treat values outside a type's range as errors.")
    var strict = false

    @Option(help: "Frame to place in the images slot (raw uint8 [3,H,W], .npy, PNG).")
    var image: String?

    @Flag(help: "Also record the SHA-256 of the whole checkpoint file in the manifest (source.sha256, as sha256sum prints it; a folder: its files in name order, each as name, NUL, bytes). Reads every byte, optimizer state included; by default only the tensors used are read, and fingerprinted in source.tensors.")
    var sourceSha256 = false

    @Option(name: .customLong("type"), help: ArgumentHelp("Override one of the profile's element types, e.g. 'wt_linear_t=ap_fixed<8,1>' (repeatable); the manifest records the profile so changed.", valueName: "NAME=TYPE"))
    var types: [String] = []

    @Flag(help: "Print nothing but warnings and errors.")
    var quiet = false

    @Flag(help: "JSON summary on stdout (files, image size and SHA-256, values and overflow per element type, SQNR).")
    var json = false

    func run() throws {
        try guarded {
            guard !output.isEmpty else { throw MoepackError(.usage, item: "--output", "empty output folder name") }
            // Open the report's temporary file first, so an unwritable --report fails before any output.
            var reportWriter: AtomicFileWriter? = nil
            if let report {
                var isDir: ObjCBool = false
                if FileManager.default.fileExists(atPath: report, isDirectory: &isDir), isDir.boolValue {
                    throw MoepackError(.usage, file: report, "--report names a folder; give an .html file path")
                }
                reportWriter = try AtomicFileWriter(path: report)
            }
            let base = try profileOptions.load()
            let profile = try base.overriding(typeAssignments: types)
            try FixedEmulation.supports(profile: profile, overridden: Set(profile.types.keys.filter { profile.types[$0] != base.types[$0] }),
                                        option: "--type")
            let source = try openCheckpointIsolated(checkpoint, options: checkpointOptions.open)
            let backbone = try BackboneCheckpoint(source: source, expected: profile.model)
            let kernel = try KernelTensors(checkpoint: backbone, folds: checkpointOptions.folds)
            var frame: Frame? = nil
            if let image { frame = try FrameLoader.load(path: image, config: profile.model) }
            let allTasks = task == "all"
            guard allTasks || Int(task) != nil else {
                throw MoepackError(.usage, item: "--task", "'\(task)' is neither a task index nor 'all'")
            }
            let options = PackOptions(profile: profile, task: Int(task) ?? 0, allTasks: allTasks, layout: layout,
                                      quantization: quantization, overflow: overflow,
                                      strict: strict, frame: frame?.bytes, hashSourceFile: sourceSha256, tool: "moepack \(Moepack.version)")
            if layout == .expertMajor {
                note("moepack: note: --layout expert-major is for kernels rebuilt with one expert base pointer; the published Edge-MoE bitstream reads --layout kernel")
            }
            // The image and its report are put in place together (one uninterruptible step) or not at all.
            let staged = try stagePack(kernel: kernel, options: options, outputDirectory: output) { note("moepack: warning: \($0)") }
            try HostFolder.write(into: staged.stagingPath, manifest: staged.result.manifest, control: profile.control, tool: options.tool)
            if let reportWriter {
                var heatmap: RoutingHeatmap? = nil
                if let frame {
                    heatmap = try routingHeatmap(kernel: kernel, image: try PackedImage(directory: staged.stagingPath), frame: frame)
                }
                var section: TaskReportSection? = nil
                if let heads, let frame {
                    section = try packTaskSection(image: try PackedImage(directory: staged.stagingPath), kernel: kernel, heads: heads, frame: frame)
                }
                try reportWriter.write(Array(QuantReport.html(manifest: staged.result.manifest, routing: heatmap, tasks: section).utf8))
            }
            try staged.commit(alongside: reportWriter.map { [$0] } ?? [])
            let summary = PackSummary(staged.result, output: output, report: report)
            if json { try printJSON(summary) } else if !quiet { print(summary.text) }
        }
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
