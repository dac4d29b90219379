import Foundation
import MoepackCore
import MoepackModel
import MoepackPacking
import MoepackInference
import MoepackHeads

/// Task-level thresholds of `verify --heads` (exit 1 below them).
public struct TaskThresholds: Sendable, Codable, Equatable {
    /// Segmentation: fraction of pixels whose class (argmax) is the float model's.
    public var min_pixel_agreement: Double
    /// Segmentation: mean IoU of the image's classes against the float model's (classes present in either).
    public var min_miou: Double
    /// Depth: mean |Δ| / reference over pixels where the reference depth is > 0 (valid depth, as M³ViT's
    /// depth evaluation masks non-positive labels).
    public var max_abs_rel: Double
    /// Normals: mean angle between the image's and the float model's normals, degrees.
    public var max_angular_error_deg: Double
    /// Saliency/edges: mean |Δ sigmoid|.
    public var max_probability_error: Double

    /// float: the packed weights alone move the backbone by ~1e-3, so almost nothing changes;
    /// fixed: the kernel's fixed point flips near-tied routings, which moves whole patches.
    public static func defaults(for mode: InferenceMode) -> TaskThresholds {
        switch mode {
        case .float: return TaskThresholds(min_pixel_agreement: 0.99, min_miou: 0.95, max_abs_rel: 0.05,
                                           max_angular_error_deg: 1, max_probability_error: 0.01)
        case .fixed: return TaskThresholds(min_pixel_agreement: 0.95, min_miou: 0.85, max_abs_rel: 0.1,
                                           max_angular_error_deg: 5, max_probability_error: 0.05)
        }
    }
}

/// One task's output from the packed image against the float model's, for one frame.
public struct TaskFidelity: Sendable, Codable, Equatable {
    public var frame: String?
    public var task: String
    /// Backbone task (gates) that fed the decoder on both sides.
    public var backbone_task: Int
    /// segmentation, depth, normals or grey.
    public var kind: String
    public var pixel_agreement: Double?
    public var miou: Double?
    /// Pixels whose rendering differs: class (segmentation); |Δ| above 1% of the reference range (others).
    public var differing_pixels: Int
    public var abs_rel: Double?
    public var rmse: Double?
    public var valid_pixels: Int?
    public var mean_angular_error_deg: Double?
    public var mean_probability_error: Double?
}

/// Compares one task output `got` with the float model's `want`, both `[C, H·W]`.
public func compareTask(_ got: TaskOutput, _ want: TaskOutput, frame: String?) -> TaskFidelity {
    let n = got.height * got.width, c = got.channels
    var r = TaskFidelity(frame: frame, task: got.task, backbone_task: got.backboneTask ?? 0, kind: "", differing_pixels: 0)
    switch TaskKind.of(task: got.task, channels: c) {
    case .segmentation:
        r.kind = "segmentation"
        let a = TaskRenderer.argmax(got.values, channels: c, pixels: n), b = TaskRenderer.argmax(want.values, channels: c, pixels: n)
        var inter = [Int](repeating: 0, count: c), union = [Int](repeating: 0, count: c)
        var same = 0
        for p in 0..<n {
            if a[p] == b[p] { same += 1; inter[a[p]] += 1; union[a[p]] += 1 } else { union[a[p]] += 1; union[b[p]] += 1 }
        }
        let ious = (0..<c).filter { union[$0] > 0 }.map { Double(inter[$0]) / Double(union[$0]) }
        r.pixel_agreement = Double(same) / Double(n)
        r.miou = ious.isEmpty ? 1 : ious.reduce(0, +) / Double(ious.count)
        r.differing_pixels = n - same
    case .depth:
        r.kind = "depth"
        var sq = 0.0, rel = 0.0, valid = 0
        for p in 0..<n {
            let d = Double(got.values[p]) - Double(want.values[p])
            sq += d * d
            if want.values[p] > 0 { rel += abs(d) / Double(want.values[p]); valid += 1 }
        }
        r.rmse = (sq / Double(n)).squareRoot()
        r.abs_rel = valid > 0 ? rel / Double(valid) : 0
        r.valid_pixels = valid
        r.differing_pixels = differingPixels(got, want).filter { $0 }.count
    case .normals:
        r.kind = "normals"
        let deg = angles(got.values, want.values, pixels: n)
        r.mean_angular_error_deg = deg.reduce(0, +) / Double(n)
        r.differing_pixels = differingPixels(got, want).filter { $0 }.count
    case .grey:
        r.kind = "grey"
        r.mean_probability_error = probabilityErrors(got.values, want.values, pixels: n).reduce(0, +) / Double(n)
        r.differing_pixels = differingPixels(got, want).filter { $0 }.count
    }
    return r
}

/// Per pixel, whether the rendering differs: another class (segmentation), |Δ| above 1% of the float
/// model's range (depth), more than 1° (normals), |Δ probability| above 0.01 (saliency, edges).
public func differingPixels(_ got: TaskOutput, _ want: TaskOutput) -> [Bool] {
    let n = got.height * got.width, c = got.channels
    switch TaskKind.of(task: got.task, channels: c) {
    case .segmentation:
        return zip(TaskRenderer.argmax(got.values, channels: c, pixels: n), TaskRenderer.argmax(want.values, channels: c, pixels: n)).map { $0 != $1 }
    case .depth:
        let lo = want.values.prefix(n).min() ?? 0, hi = want.values.prefix(n).max() ?? 0
        let tol = max(Double(hi - lo), 1e-12) * 0.01
        return (0..<n).map { abs(Double(got.values[$0]) - Double(want.values[$0])) > tol }
    case .normals:
        return angles(got.values, want.values, pixels: n).map { $0 > 1 }
    case .grey:
        return probabilityErrors(got.values, want.values, pixels: n).map { $0 > 0.01 }
    }
}

/// Angle in degrees between two `[3, n]` normal maps, per pixel.
func angles(_ a: [Float], _ b: [Float], pixels n: Int) -> [Double] {
    (0..<n).map { p in
        let u = (0..<3).map { Double(a[$0 * n + p]) }, v = (0..<3).map { Double(b[$0 * n + p]) }
        let nu = (u[0] * u[0] + u[1] * u[1] + u[2] * u[2]).squareRoot(), nv = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).squareRoot()
        let cos = nu > 0 && nv > 0 ? (u[0] * v[0] + u[1] * v[1] + u[2] * v[2]) / (nu * nv) : 1
        return acos(min(max(cos, -1), 1)) * 180 / .pi
    }
}

/// |sigmoid(a) − sigmoid(b)| per pixel.
func probabilityErrors(_ a: [Float], _ b: [Float], pixels n: Int) -> [Double] {
    func sigmoid(_ x: Float) -> Double { 1 / (1 + exp(-Double(x))) }
    return (0..<n).map { abs(sigmoid(a[$0]) - sigmoid(b[$0])) }
}

/// `verify --heads`: every decoder on the packed image's backbone output and on the float model's,
/// per frame.
public struct HeadsReport: Sendable, Codable, Equatable {
    public var checkpoint: String
    /// Decoder → backbone task.
    public var task_map: [String: Int]
    public var thresholds: TaskThresholds
    public var tasks: [TaskFidelity]
    public var failures: [String]
}

/// One frame's decoder outputs from both sides, for renderings.
public struct HeadsFrameOutputs: Sendable {
    public var frame: String
    public var image: [TaskOutput]
    public var float: [TaskOutput]
    /// The image's backbone results per task (routing).
    public var backbone: [Int: FrameResult]
}

/// Runs the decoders on the image's backbone (mode as given) and on the checkpoint's float backbone
/// for each mapped task, and compares them task by task.
/// - Parameters:
///   - reference: the checkpoint's kernel-form float weights per backbone task.
/// - Throws: ``MoepackError`` when a task is not in the image or the checkpoint.
public func verifyHeads(image: PackedImage, reference: (Int) throws -> BackboneWeights, heads: TaskHeads,
                        taskMap: [String: Int], frames: [NamedFrame], mode: InferenceMode,
                        thresholds: TaskThresholds, checkpointPath: String,
                        progress: (@Sendable (Int, Int) -> Void)? = nil) throws -> (HeadsReport, [HeadsFrameOutputs]) {
    let packed = try ImageWithHeads(image: image, mode: mode, heads: heads, taskMap: taskMap)
    var floats: [Int: FloatBackbone] = [:]
    for t in Set(taskMap.values) { floats[t] = FloatBackbone(weights: try reference(t)) }
    var rows: [TaskFidelity] = []
    var outputs: [HeadsFrameOutputs] = []
    for (i, nf) in frames.enumerated() {
        let got = try packed.run(nf.frame)
        var want: [Int: [Float]] = [:]
        for (t, f) in floats { want[t] = try f.forward(pixels: nf.frame.pixels).output }
        let ref = try heads.run(tokens: { want[$0]! }, taskMap: taskMap)
        for (g, w) in zip(got.outputs, ref) { rows.append(compareTask(g, w, frame: frames.count > 1 ? nf.name : nil)) }
        outputs.append(HeadsFrameOutputs(frame: nf.name, image: got.outputs, float: ref, backbone: got.backbone))
        progress?(i + 1, frames.count)
    }
    return (HeadsReport(checkpoint: checkpointPath, task_map: taskMap, thresholds: thresholds, tasks: rows,
                        failures: taskFailures(rows, thresholds)), outputs)
}

func taskFailures(_ rows: [TaskFidelity], _ th: TaskThresholds) -> [String] {
    var out: [String] = []
    func f(_ x: Double) -> String { String(format: "%.4g", x) }
    for r in rows {
        let at = "\(r.task)\(r.frame.map { " (frame \($0))" } ?? "")"
        if let v = r.pixel_agreement, v < th.min_pixel_agreement { out.append("\(at): pixel agreement \(f(v)) < \(th.min_pixel_agreement)") }
        if let v = r.miou, v < th.min_miou { out.append("\(at): mIoU \(f(v)) < \(th.min_miou)") }
        if let v = r.abs_rel, v > th.max_abs_rel { out.append("\(at): abs-rel \(f(v)) > \(th.max_abs_rel)") }
        if let v = r.mean_angular_error_deg, v > th.max_angular_error_deg { out.append("\(at): mean angular error \(f(v))° > \(th.max_angular_error_deg)°") }
        if let v = r.mean_probability_error, v > th.max_probability_error { out.append("\(at): mean probability error \(f(v)) > \(th.max_probability_error)") }
    }
    return out
}

/// The text lines of a heads report.
public func renderHeadsReport(_ h: HeadsReport) -> String {
    func f(_ x: Double) -> String { String(format: "%.4g", x) }
    var s = "  task outputs (decoders of \(h.checkpoint) on the image's backbone vs the float model's):\n"
    for r in h.tasks {
        var parts: [String] = []
        if let v = r.pixel_agreement { parts.append("pixel agreement \(f(v))") }
        if let v = r.miou { parts.append("mIoU \(f(v))") }
        if let v = r.abs_rel { parts.append("abs-rel \(f(v)) over \(r.valid_pixels ?? 0) pixels with depth > 0") }
        if let v = r.rmse { parts.append("RMSE \(f(v))") }
        if let v = r.mean_angular_error_deg { parts.append("mean angular error \(f(v))°") }
        if let v = r.mean_probability_error { parts.append("mean |Δ probability| \(f(v))") }
        parts.append("\(r.differing_pixels) pixels differ")
        s += "    \(r.task) (task \(r.backbone_task)'s gates)\(r.frame.map { " \($0)" } ?? ""): " + parts.joined(separator: ", ") + "\n"
    }
    return s
}

extension VerifyReport {
    /// Adds the task-level results; their failures fail the verification.
    public mutating func apply(_ h: HeadsReport) {
        heads = h
        failures += h.failures
        passed = failures.isEmpty
    }
}
