import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackPacking

// What `--json` prints on stdout, one type per subcommand that writes files (inspect, verify, heads,
// schedule, suggest, sweep and board-sim have their own reports). Keys are snake_case like the
// manifest's; `format` names the schema and its version.

/// `pack --json`: the image written and how its weights fared, per kernel element type.
struct PackSummary: Encodable {
    struct TypeCounts: Encodable {
        /// The ap_fixed spelling, e.g. `ap_fixed<16,2,AP_RND_CONV,AP_SAT>`.
        var type: String
        /// Values converted to this type, and how many of them were outside its range.
        var values: Int
        var overflow: Int
    }
    var format = "moepack-pack/1"
    /// The output folder and the files in it.
    var output: String
    var files: [String]
    var source: String
    var container: String
    var profile: String
    /// Task whose gates sit in moe_w_gate, and with `--task all` every task whose gates the image holds.
    var task: Int
    var task_gates: [Int]?
    var layout: String
    var quantization: String
    var overflow: String
    var image_bytes: Int
    var image_sha256: String
    var buffers: Int
    /// Bytes and buffer count per role (weight, input, output, scratch).
    var buffer_bytes: [String: Int]
    var buffer_counts: [String: Int]
    /// Per kernel type name (wt_linear_t, …).
    var types: [String: TypeCounts]
    /// Median and worst SQNR over the weight tensors (dB; nil when no tensor has one).
    var sqnr_db_median: Double?
    var sqnr_db_worst: Double?
    var sqnr_worst_tensor: String?
    /// Checkpoint tensors read (fingerprinted in the manifest's source.tensors) and their digest.
    var source_tensors: Int?
    var source_tensors_sha256: String?
    var source_sha256: String?
    var warnings: [String]
    var report: String?

    init(_ r: PackResult, output: String, report: String?) {
        let m = r.manifest
        self.output = output
        files = (try? FileManager.default.contentsOfDirectory(atPath: output).filter { !$0.hasPrefix(".") }.sorted()) ?? []
        source = m.source.path
        container = m.source.container.rawValue
        profile = m.profile
        task = m.task
        task_gates = m.task_gates?.map(\.task)
        layout = m.layout
        quantization = m.quantization.mode
        overflow = m.quantization.overflow
        image_bytes = m.image.bytes
        image_sha256 = m.image.sha256
        buffers = m.buffers.count
        var bytes: [String: Int] = [:], counts: [String: Int] = [:]
        for b in m.buffers {
            bytes[b.role.rawValue, default: 0] += b.bytes
            counts[b.role.rawValue, default: 0] += 1
        }
        buffer_bytes = bytes
        buffer_counts = counts
        var types: [String: TypeCounts] = [:]
        for t in m.quantization.tensors {
            var c = types[t.type] ?? TypeCounts(type: m.types[t.type] ?? "", values: 0, overflow: 0)
            c.values += t.count
            c.overflow += t.overflow
            types[t.type] = c
        }
        self.types = types
        let rated = m.quantization.tensors.filter { $0.sqnr_db != nil }
        let sorted = rated.compactMap(\.sqnr_db).sorted()
        sqnr_db_median = sorted.isEmpty ? nil : sorted[sorted.count / 2]
        let worst = rated.min { $0.sqnr_db! < $1.sqnr_db! }
        sqnr_db_worst = worst?.sqnr_db
        sqnr_worst_tensor = worst?.name
        source_tensors = m.source.tensors?.count
        source_tensors_sha256 = m.source.tensors_sha256
        source_sha256 = m.source.sha256
        warnings = r.warnings
        self.report = report
    }

    /// The lines `pack` prints without `--json`.
    var text: String {
        var s = "packed \(source) (\(container)) → \(output)/ddr.bin: \(image_bytes) bytes, \(buffers) buffers, profile \(profile), task \(task), \(quantization)/\(overflow)\n"
        s += "  buffers: " + KernelArgumentRole.allCases.map(\.rawValue).compactMap { role in
            buffer_bytes[role].map { "\(role) \(String(format: "%.2f", Double($0) / 1_048_576)) MiB in \(buffer_counts[role] ?? 0)" }
        }.joined(separator: ", ") + " (each 4096-byte aligned)\n"
        s += "  " + "type".padding(toLength: 34, withPad: " ", startingAt: 0) + "values".leftPad(10) + "overflow".leftPad(10) + "\n"
        for (k, v) in types.sorted(by: { $0.key < $1.key }) {
            s += "  " + "\(k) \(v.type)".padding(toLength: 34, withPad: " ", startingAt: 0) + String(v.values).leftPad(10) + String(v.overflow).leftPad(10) + "\n"
        }
        if let median = sqnr_db_median, let worst = sqnr_db_worst, let name = sqnr_worst_tensor {
            s += "  SQNR: median \(String(format: "%.1f", median)) dB, worst \(String(format: "%.1f", worst)) dB (\(name))\n"
        }
        if let t = source_tensors_sha256 {
            s += "  source: \(source_tensors ?? 0) tensors read, tensors sha256 \(t)\(source_sha256.map { ", file sha256 \($0)" } ?? "")\n"
        }
        s += "  image sha256 \(image_sha256)"
        if let report { s += "\n  report: \(report)" }
        return s
    }
}

/// `run --json`: one entry per frame, or per frame and task decoder with `--heads`.
struct RunSummary: Encodable {
    struct Output: Encodable {
        /// The input frame's path.
        var frame: String
        /// The .npy written: [tokens, D] float32.
        var file: String
        /// What was done to the frame's pixels (resize, 16-bit PNG, …); nil when nothing was.
        var note: String?
    }
    var format = "moepack-run/1"
    var image: String
    var mode: String
    /// Backbone task (gates) the frames ran with; nil with `--heads` (one per decoder, in `tasks`).
    var task: Int?
    /// [tokens, D] of every backbone output.
    var shape: [Int]
    var dtype = DType.float32.rawValue
    var outputs: [Output]
    /// With `--heads`: each decoder's output per frame.
    var tasks: [TaskOutputSummary]?
}

/// `export --json`: the safetensors file written and what was left out.
struct ExportSummary: Encodable {
    var format = "moepack-export/1"
    var output: String
    var bytes: Int
    var source: String
    var container: String
    var tensors: [ExportedTensor]
    var skipped: [SkippedEntry]
    var metadata: [String: String]

    init(_ r: ExportResult, source: any TensorSource) {
        output = r.path
        bytes = r.bytes
        self.source = source.path
        container = source.container.rawValue
        tensors = r.tensors
        skipped = r.skipped
        metadata = r.metadata
    }
}

/// `quantize --json`: one array converted to raw ap_fixed integers, or back.
struct QuantizeSummary: Encodable {
    enum Direction: String, Encodable {
        /// float → raw container integers.
        case quantize
        /// raw → float32.
        case dequantize
    }
    var format = "moepack-quantize/1"
    var input: String
    var output: String
    var direction: Direction
    var type: String
    var shape: [Int]
    /// The dtype written, spelt as everywhere in moepack (safetensors: `I16`, `F32`, …).
    var dtype: String
    var values: Int
    /// Quantize only: values outside the type's range and the SQNR (dB; "inf" when exact).
    var overflow: Int?
    var sqnr_db: Double?
}

/// `check --json`: whether a packed folder matches its manifest's checksums.
struct CheckSummary: Encodable {
    var format = "moepack-check/1"
    var directory: String
    var ok: Bool
    /// The image's size and SHA-256 as the manifest records them (what the bytes were checked against).
    var image_bytes: Int
    var image_sha256: String
    var buffers: Int
    /// What does not match (empty when ok).
    var problems: [String]
}

/// `image --json`: the frame written in the kernel's `images` layout.
struct ImageSummary: Encodable {
    var format = "moepack-image/1"
    var frame: String
    var output: String
    var bytes: Int
    var type = "ap_ufixed<8,0>"
    /// [3, H, W].
    var shape: [Int]
    var note: String?
}
