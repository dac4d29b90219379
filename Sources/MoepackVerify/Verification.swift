import Foundation
import MoepackCore
import MoepackModel
import MoepackPacking
import MoepackInference

/// Pass/fail thresholds of `moepack verify`.
public struct VerifyThresholds: Sendable, Codable, Equatable {
    /// Minimum cosine similarity of the output against the float model.
    public var min_cosine: Double?
    /// Maximum MSE of the output against the float model.
    public var max_mse: Double?
    /// Minimum fraction of tokens whose top-k expert set agrees, in every MoE block.
    public var min_routing_agreement: Double
    /// When set, a token routed differently whose float-model gate margin (probability of its k-th
    /// chosen expert minus that of the best expert left out, ``MoERouting/margins``) is below this
    /// value is a near-tie: reported, but counted as agreeing for `min_routing_agreement`; so are
    /// that token's flips in later MoE blocks, which follow from the first. Unset (the default):
    /// every differing token counts.
    public var tie_margin: Double? = nil

    /// Float path: cosine ≥ 0.9999 and agreement ≥ 0.98. Fixed path: the published testbench's
    /// acceptance MSE ≤ 0.1 and agreement ≥ 0.97.
    public static func defaults(for mode: InferenceMode) -> VerifyThresholds {
        switch mode {
        case .float: return VerifyThresholds(min_cosine: 0.9999, max_mse: nil, min_routing_agreement: 0.98)
        case .fixed: return VerifyThresholds(min_cosine: nil, max_mse: 0.1, min_routing_agreement: 0.97)
        }
    }
}

/// Error of one block's output (x after the block) against the float model.
public struct BlockReport: Sendable, Codable, Equatable {
    public var block: Int
    public var mse: Double
    public var max_abs_error: Double
    public var cosine: Double
}

/// Routing agreement of one MoE block.
public struct MoEBlockReport: Sendable, Codable, Equatable {
    public var block: Int
    /// Fraction of tokens whose top-k expert set equals the float model's.
    public var routing_agreement: Double
    /// Fraction of tokens whose first choice equals the float model's.
    public var top1_agreement: Double
    /// Tokens routed differently whose float-model margin is below the `tie_margin` threshold (0 when
    /// it is unset); the agreement checked against `min_routing_agreement` counts them as agreeing.
    public var near_tie_flips: Int = 0
    /// `routing_agreement` with the near-tie flips counted as agreeing: what the threshold checks.
    public var routing_agreement_checked: Double? = nil
    /// In the report's summary over several frames: the frame these figures come from, the one with
    /// the lowest checked agreement in this block (nil in a frame's own report).
    public var frame: String? = nil
}

/// One token whose top-k expert set differs from the float model's in one MoE block.
public struct RoutingFlip: Sendable, Codable, Equatable {
    public var block: Int
    public var token: Int
    /// Experts the float model chose (gate order) and the ones the image's datapath chose.
    public var reference_experts: [Int]
    public var experts: [Int]
    /// Float model's gate margin for this token (``MoERouting/margins``): k-th chosen minus best
    /// left-out probability. Near 0: a near-tie any rounding can flip.
    public var reference_margin: Double
    /// The same token was already routed differently in an earlier MoE block: its input here differs
    /// by that earlier flip, so this flip follows from it whatever the margin.
    public var after_earlier_flip: Bool
}

public struct OverflowReport: Sendable, Codable, Equatable {
    public var layer: Int
    public var unit: String
    public var count: Int
}

public struct FrameReport: Sendable, Codable, Equatable {
    public var frame: String
    public var note: String?
    public var output: ComparisonMetrics
    public var blocks: [BlockReport]
    public var moe_blocks: [MoEBlockReport]
    /// Tokens whose top-k expert set differs from the float model's in at least one MoE block, and the
    /// largest output error over the other tokens (routing flips on near-ties dominate max |err|).
    public var tokens_routed_differently: [Int]
    public var max_abs_error_same_routing: Double
    /// Every (block, token) whose expert set differs, with the float model's margin there.
    public var routing_flips: [RoutingFlip]
    /// Fixed mode: wrap-arounds per layer/unit (only non-zero entries).
    public var overflow: [OverflowReport]?
}

public struct VerifyReport: Sendable, Codable, Equatable {
    public var format = "moepack-verify/1"
    public var image: String
    public var image_sha256: String
    public var checkpoint: String
    public var mode: InferenceMode
    public var task: Int
    public var thresholds: VerifyThresholds
    public var frames: [FrameReport]
    /// Per-metric mean over frames and the worst frame.
    public var summary: Summary
    /// Fixed mode: per MoE block, worst routing agreement over frames (same as moe_blocks when one frame).
    public var moe_blocks: [MoEBlockReport]
    public var passed: Bool
    public var failures: [String]
    public var notes: [String]
    /// Whether the checkpoint is the one the image was packed from (set by `moepack verify`).
    public var source_check: SourceCheck? = nil
    /// Task-level fidelity of the decoders (`verify --heads`).
    public var heads: HeadsReport? = nil

    public struct Summary: Sendable, Codable, Equatable {
        public var frames: Int
        public var mean_mse: Double
        public var mean_cosine: Double
        public var worst_mse: Double
        public var worst_mse_frame: String
        public var worst_cosine: Double
        public var worst_cosine_frame: String
        public var max_abs_error: Double
        public var min_routing_agreement: Double
        public var total_overflow: Int
    }
}

/// A named input frame.
public struct NamedFrame: Sendable {
    public var name: String
    public var frame: Frame
    public init(name: String, frame: Frame) { self.name = name; self.frame = frame }
}

/// Runs the packed image (float or fixed datapath) and the unquantized float model from the
/// checkpoint on each frame and compares them: output error, per-block error, per-MoE-block routing
/// agreement, and (fixed) overflow counts. Frames run in parallel across the cores.
/// - Parameters:
///   - reference: kernel-form float weights from the checkpoint (``KernelTensors/backboneWeights(task:)``).
/// - Throws: ``MoepackError`` when the image and the checkpoint describe different models.
public func verify(image: PackedImage, reference: BackboneWeights, frames: [NamedFrame], mode: InferenceMode,
                   task: Int?, thresholds: VerifyThresholds, checkpointPath: String,
                   progress: (@Sendable (Int, Int) -> Void)? = nil) throws -> VerifyReport {
    let cfg = image.manifest.model
    guard reference.config.embedDim == cfg.embedDim, reference.config.depth == cfg.depth,
          reference.config.moeBlocks == cfg.moeBlocks, reference.config.experts == cfg.experts,
          reference.config.tokens == cfg.tokens else {
        throw MoepackError(.mismatch, file: checkpointPath, "the checkpoint's model does not match the image's (\(image.directory))")
    }
    let model = try ImageModel(image: image, mode: mode, task: task)
    let float = FloatBackbone(weights: reference)
    let results = ResultBox(count: frames.count)
    let counter = ResultBox(count: 1)
    let workers = min(frames.count, max(1, ProcessInfo.processInfo.activeProcessorCount))
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        var i = w
        while i < frames.count {
            let nf = frames[i]
            do {
                let got = try model.run(nf.frame, recordBlocks: true)
                let want = try float.forward(pixels: nf.frame.pixels, recordBlocks: true)
                results.set(i, .success(compareFrame(name: nf.name, note: nf.frame.note, got: got, want: want, k: cfg.topK,
                                                     tieMargin: thresholds.tie_margin)))
            } catch {
                results.set(i, .failure(error))
            }
            progress?(counter.increment(), frames.count)
            i += workers
        }
    }
    var reports: [FrameReport] = []
    for r in results.values {
        switch r! {
        case .success(let f): reports.append(f)
        case .failure(let e): throw e
        }
    }
    var failures: [String] = []
    let worstMSE = reports.max { $0.output.mse < $1.output.mse }!
    let worstCos = reports.min { $0.output.cosine < $1.output.cosine }!
    let moeWorst = worstPerMoEBlock(reports)
    for w in moeWorst {
        let checked = w.routing_agreement_checked ?? w.routing_agreement
        if checked < thresholds.min_routing_agreement {
            let what = thresholds.tie_margin == nil ? "routing agreement" : "routing agreement outside near-ties"
            failures.append("MoE block \(w.block): \(what) \(String(format: "%.4f", checked)) < \(thresholds.min_routing_agreement)\(w.frame.map { " (frame \($0))" } ?? "")")
        }
    }
    if let c = thresholds.min_cosine, worstCos.output.cosine < c {
        failures.append("cosine \(String(format: "%.6f", worstCos.output.cosine)) < \(c) (frame \(worstCos.frame))")
    }
    if let m = thresholds.max_mse, worstMSE.output.mse > m {
        failures.append("MSE \(String(format: "%.3g", worstMSE.output.mse)) > \(m) (frame \(worstMSE.frame))")
    }
    let totalOverflow = reports.reduce(0) { $0 + ($1.overflow ?? []).reduce(0) { $0 + $1.count } }
    var notes: [String] = []
    if mode == .fixed {
        notes.append("exp, sqrt and reciprocal use correctly rounded float64 results converted to the kernel's types; Vitis hls_math may differ in the last bits.")
    }
    for f in reports { if let n = f.note { notes.append("\(f.frame): \(n)") } }
    let n = Double(reports.count)
    return VerifyReport(
        image: image.directory, image_sha256: image.manifest.image.sha256, checkpoint: checkpointPath, mode: mode,
        task: model.task, thresholds: thresholds, frames: reports,
        summary: .init(frames: reports.count,
                       mean_mse: reports.reduce(0) { $0 + $1.output.mse } / n,
                       mean_cosine: reports.reduce(0) { $0 + $1.output.cosine } / n,
                       worst_mse: worstMSE.output.mse, worst_mse_frame: worstMSE.frame,
                       worst_cosine: worstCos.output.cosine, worst_cosine_frame: worstCos.frame,
                       max_abs_error: reports.map(\.output.max_abs_error).max() ?? 0,
                       min_routing_agreement: moeWorst.map(\.routing_agreement).min() ?? 1,
                       total_overflow: totalOverflow),
        moe_blocks: moeWorst, passed: failures.isEmpty, failures: failures, notes: notes)
}

/// Per MoE block, the report of the frame with the lowest checked agreement (`routing_agreement_checked`
/// when a tie margin is set, else `routing_agreement`; the first such frame on ties), all its figures
/// together, with `frame` naming it when there are several frames.
func worstPerMoEBlock(_ reports: [FrameReport]) -> [MoEBlockReport] {
    guard let first = reports.first else { return [] }
    return first.moe_blocks.indices.map { j in
        func checked(_ r: FrameReport) -> Double { r.moe_blocks[j].routing_agreement_checked ?? r.moe_blocks[j].routing_agreement }
        let worst = reports.min { checked($0) < checked($1) }!
        var w = worst.moe_blocks[j]
        w.frame = reports.count > 1 ? worst.frame : nil
        return w
    }
}

func compareFrame(name: String, note: String?, got: FrameResult, want: ForwardResult, k: Int,
                  tieMargin: Double? = nil) -> FrameReport {
    let out = ComparisonMetrics(got.output, reference: want.output)
    var blocks: [BlockReport] = []
    for (i, (g, w)) in zip(got.blockOutputs, want.blockOutputs).enumerated() {
        let m = ComparisonMetrics(g, reference: w)
        blocks.append(BlockReport(block: i, mse: m.mse, max_abs_error: m.max_abs_error, cosine: m.cosine))
    }
    var moe: [MoEBlockReport] = []
    var flips: [RoutingFlip] = []
    // Token → whether its first flip (in block order) was a near-tie; later flips of that token
    // follow from it and are counted the same way.
    var firstFlipWasTie: [Int: Bool] = [:]
    for (g, w) in zip(got.routing, want.routing) {
        let tokens = w.topExperts.count / k
        var top1 = 0, ties = 0
        for t in 0..<tokens where g.topExperts[t * k] == w.topExperts[t * k] { top1 += 1 }
        for t in 0..<tokens {
            let mine = g.topExperts[(t * k)..<((t + 1) * k)], theirs = w.topExperts[(t * k)..<((t + 1) * k)]
            guard Set(mine) != Set(theirs) else { continue }
            let margin = t < w.margins.count ? Double(w.margins[t]) : .nan
            let earlier = firstFlipWasTie[t]
            let isTie = earlier ?? (tieMargin.map { margin < $0 } ?? false)
            if earlier == nil { firstFlipWasTie[t] = isTie }
            if tieMargin != nil && isTie { ties += 1 }
            flips.append(RoutingFlip(block: w.block, token: t, reference_experts: theirs.map { Int($0) },
                                     experts: mine.map { Int($0) }, reference_margin: margin,
                                     after_earlier_flip: earlier != nil))
        }
        let agreement = routingAgreement(g.topExperts, w.topExperts, k: k)
        moe.append(MoEBlockReport(block: w.block, routing_agreement: agreement,
                                  top1_agreement: Double(top1) / Double(max(tokens, 1)), near_tie_flips: ties,
                                  routing_agreement_checked: tieMargin == nil ? nil : agreement + Double(ties) / Double(max(tokens, 1))))
    }
    let overflow = got.overflow.filter { $0.count > 0 }.map { OverflowReport(layer: $0.layer, unit: $0.unit, count: $0.count) }
    // Tokens routed differently in at least one block: the ones with a first flip.
    let differing = Set(firstFlipWasTie.keys)
    let d = got.output.count / max(want.routing.first.map { $0.topExperts.count / k } ?? 1, 1)
    var sameMax = 0.0
    for i in 0..<got.output.count where !differing.contains(i / max(d, 1)) {
        sameMax = max(sameMax, Double(abs(got.output[i] - want.output[i])))
    }
    return FrameReport(frame: name, note: note, output: out, blocks: blocks, moe_blocks: moe,
                       tokens_routed_differently: differing.sorted(), max_abs_error_same_routing: sameMax,
                       routing_flips: flips,
                       overflow: got.overflow.isEmpty && overflow.isEmpty ? nil : overflow)
}

/// Thread-safe result slots for parallel frames.
final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var values: [Result<FrameReport, Error>?]
    private var counter = 0
    init(count: Int) { values = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ r: Result<FrameReport, Error>) { lock.lock(); values[i] = r; lock.unlock() }
    func increment() -> Int { lock.lock(); counter += 1; let c = counter; lock.unlock(); return c }
}

/// Human-readable verification report.
public func renderVerifyReport(_ r: VerifyReport) -> String {
    func f(_ x: Double, _ p: Int = 4) -> String { String(format: "%.\(p)g", x) }
    var s = "verify \(r.image) (\(r.mode.rawValue) datapath, task \(r.task)) against the float model of \(r.checkpoint)\n"
    if r.frames.count == 1 {
        let o = r.frames[0].output
        s += "  output [tokens, D]: MSE \(f(o.mse)), max |err| \(f(o.max_abs_error)), cosine \(String(format: "%.6f", o.cosine)) (reference RMS \(f(o.reference_rms)))\n"
        s += "  per block max |err|: " + r.frames[0].blocks.map { "\($0.block):\(f($0.max_abs_error, 2))" }.joined(separator: " ") + "\n"
        let diff = r.frames[0].tokens_routed_differently
        if !diff.isEmpty {
            let flips = r.frames[0].routing_flips
            let shown = flips.prefix(6).map { "token \($0.token) in block \($0.block): experts \($0.reference_experts.map(String.init).joined(separator: ","))→\($0.experts.map(String.init).joined(separator: ",")), float gate margin \(f($0.reference_margin, 2))\($0.after_earlier_flip ? " (after its earlier flip)" : "")" }
            s += "  \(diff.count) token(s) routed to a different expert set (\(shown.joined(separator: "; "))\(flips.count > 6 ? "; …" : "")); max |err| over the other tokens \(f(r.frames[0].max_abs_error_same_routing))\n"
        }
    } else {
        let sm = r.summary
        s += "  \(sm.frames) frames: mean MSE \(f(sm.mean_mse)), worst \(f(sm.worst_mse)) (\(sm.worst_mse_frame)); mean cosine \(String(format: "%.6f", sm.mean_cosine)), worst \(String(format: "%.6f", sm.worst_cosine)) (\(sm.worst_cosine_frame)); max |err| \(f(sm.max_abs_error))\n"
        let flipped = r.frames.filter { !$0.tokens_routed_differently.isEmpty }
        if !flipped.isEmpty {
            s += "  tokens routed to a different expert set (the JSON lists each with its gate margin): " + flipped.prefix(6).map { "\($0.frame) \($0.tokens_routed_differently.count)" }.joined(separator: ", ") + (flipped.count > 6 ? ", … (\(flipped.count) frames)" : "") + "\n"
        }
    }
    s += "  routing agreement (top-k expert set\(r.frames.count > 1 ? ", worst frame" : "")): " + r.moe_blocks.map { "block \($0.block) \(String(format: "%.3f", $0.routing_agreement))\($0.frame.map { " (\($0))" } ?? "")" }.joined(separator: ", ") + "\n"
    if let tm = r.thresholds.tie_margin {
        s += "  outside near-ties (float gate margin < \(tm) counted as agreeing): " + r.moe_blocks.map { "block \($0.block) \(String(format: "%.3f", $0.routing_agreement_checked ?? $0.routing_agreement)) (\($0.near_tie_flips) near-tie)" }.joined(separator: ", ") + "\n"
    }
    if r.mode == .fixed {
        s += "  accumulator wrap-arounds: \(r.summary.total_overflow)"
        if let o = r.frames.first?.overflow, !o.isEmpty {
            s += " (" + o.prefix(6).map { "layer \($0.layer) \($0.unit): \($0.count)" }.joined(separator: ", ") + (o.count > 6 ? ", …" : "") + ")"
        }
        s += "\n"
    }
    if let h = r.heads { s += renderHeadsReport(h) }
    for n in r.notes { s += "  note: \(n)\n" }
    if let c = r.source_check { s += "  \(c.same || c.method == .none ? "" : "warning: ")\(c.summary)\n" }
    let th = r.thresholds
    let crit = [th.min_cosine.map { "cosine ≥ \($0)" }, th.max_mse.map { "MSE ≤ \($0)" },
                "routing agreement\(th.tie_margin.map { " outside near-ties (margin < \($0))" } ?? "") ≥ \(th.min_routing_agreement)"].compactMap { $0 }.joined(separator: ", ")
    s += r.passed ? "PASS (\(crit))" : "FAIL: " + r.failures.joined(separator: "; ")
    return s
}
