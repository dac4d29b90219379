import Foundation
import MoepackCore
import MoepackModel
import MoepackFixedPoint
import MoepackPacking
import MoepackInference
import MoepackHeads

/// One `--vary` axis of a precision sweep: a kernel element type name (a key of the profile's
/// `types`, e.g. `wt_linear_t`) and the `ap_fixed` types to try for it.
public struct SweepAxis: Sendable, Equatable {
    public var typeName: String
    public var types: [FixedType]

    public init(typeName: String, types: [FixedType]) { self.typeName = typeName; self.types = types }

    /// Parses `NAME=TYPE,TYPE,...` (commas inside `<…>` belong to the type), e.g.
    /// `wt_linear_t=ap_fixed<8,1>,ap_fixed<10,2>`.
    /// - Throws: `MoepackError(.usage)` naming the text for a missing `=`, an empty list or a type
    ///   that does not parse.
    public init(parsing text: String) throws {
        guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
            throw MoepackError(.usage, item: "--vary", "'\(text)' is not NAME=TYPE[,TYPE...]")
        }
        let name = String(text[..<eq]).trimmingCharacters(in: .whitespaces)
        typeName = name
        var items: [String] = [], depth = 0, cur = ""
        for ch in text[text.index(after: eq)...] {
            if ch == "<" { depth += 1 } else if ch == ">" { depth -= 1 }
            if ch == ",", depth == 0 { items.append(cur); cur = "" } else { cur.append(ch) }
        }
        items.append(cur)
        items = items.map { $0.trimmingCharacters(in: .whitespaces) }
        guard !items.contains(where: \.isEmpty) else {
            throw MoepackError(.usage, item: "--vary", "'\(text)': empty type in the list")
        }
        types = try items.map { s in
            do { return try FixedType(parsing: s) } catch let e as MoepackError {
                throw MoepackError(.usage, item: "--vary", "\(name)=\(s): \(e.message)")
            }
        }
    }
}

/// Routing agreement of one MoE block for one task, averaged over the frames: the fraction of tokens
/// whose top-k expert set equals the float model's.
public struct SweepRouting: Sendable, Codable, Equatable {
    public var task: Int
    public var block: Int
    public var agreement: Double
}

/// Agreement of one task decoder's output on the candidate's backbone with its output on the float
/// model's backbone, averaged over the frames.
public struct SweepTaskAgreement: Sendable, Codable, Equatable {
    public var task: String
    /// Backbone task (gate set) feeding the decoder.
    public var backbone_task: Int
    /// Segmentation tasks: fraction of pixels with the same argmax class; nil for other tasks.
    public var pixel_agreement: Double?
    /// Decoder output [C, H, W] against the float model's: mean squared error and cosine.
    public var mse: Double
    public var cosine: Double
}

/// One candidate's figures.
public struct SweepCandidate: Sendable, Codable, Equatable {
    /// The swept element types (type name → Vitis spelling); the others are the profile's.
    public var types: [String: String]
    /// Bytes of ddr.bin.
    public var image_bytes: Int
    /// DDR bytes the MoE schedule fetches per frame (all MoE blocks, ``moeScheduleFetch``), the mean
    /// over frames and tasks, from the candidate's own (fixed-point) routing.
    public var moe_bytes_per_frame: Double
    /// Output x [tokens, D] against the float model of the checkpoint: mean over frames and tasks.
    public var mse: Double
    public var cosine: Double
    /// The lowest cosine over frames and tasks.
    public var worst_cosine: Double
    /// Per task and MoE block.
    public var routing: [SweepRouting]
    /// Fixed-point wrap-arounds over every frame and task.
    public var overflow: Int
    /// Per task decoder, when the sweep was given decoders (`--heads`); empty otherwise.
    public var task_agreement: [SweepTaskAgreement] = []
    /// On the Pareto front of (moe_bytes_per_frame, mse): no other candidate is at least as good in
    /// both and better in one.
    public var pareto: Bool
}

/// `moepack sweep` result (format `moepack-sweep/1`).
public struct SweepReport: Sendable, Codable, Equatable {
    public var format = "moepack-sweep/1"
    public var checkpoint: String
    public var profile: String
    public var frames: [String]
    public var tasks: [Int]
    /// The swept type names, in `--vary` order.
    public var varied: [String]
    /// Every combination of the axes (the first axis varies slowest).
    public var candidates: [SweepCandidate]
}

/// Options of ``sweep(kernel:profile:axes:frames:options:progress:)``.
public struct SweepOptions: Sendable {
    /// Conversion modes of `pack` (float → fixed).
    public var quantization: Quantization = .AP_RND_CONV
    public var overflow: Overflow = .AP_SAT
    /// Where candidate images are packed (each removed once measured); a fresh folder is made in it.
    public var workDirectory: String = NSTemporaryDirectory()
    /// Candidates measured at once (default: the active cores).
    public var parallel: Int = ProcessInfo.processInfo.activeProcessorCount
    public var checkpointPath: String = ""
    public var burstBytes: Int = 512
    /// Task decoders run on every candidate's backbone output and on the float model's, with the
    /// backbone task feeding each decoder (``TaskMap``).
    public var heads: TaskHeads?
    public var taskMap: [String: Int] = [:]
    public init() {}
}

/// The candidates' type tables: the product of the axes, first axis slowest.
/// A type listed twice in one axis counts once.
/// - Throws: `MoepackError(.usage)` for a type name the profile does not declare or named twice, or
///   more than ``maximumSweepCandidates`` candidates.
public func sweepCandidates(profile: KernelProfile, axes: [SweepAxis]) throws -> [[String: FixedType]] {
    var seen = Set<String>()
    for a in axes {
        guard profile.types[a.typeName] != nil else {
            throw MoepackError(.usage, item: "--vary", "'\(a.typeName)' is not an element type of profile \(profile.name) (\(profile.types.keys.sorted().joined(separator: ", ")))")
        }
        guard seen.insert(a.typeName).inserted else {
            throw MoepackError(.usage, item: "--vary", "'\(a.typeName)' is varied twice")
        }
    }
    // The same type listed twice (in any spelling of it) is one candidate.
    let lists = axes.map { a in
        (a.typeName, a.types.reduce(into: [FixedType]()) { kept, t in if !kept.contains(t) { kept.append(t) } })
    }
    let count = lists.reduce(1) { $0.multipliedReportingOverflow(by: $1.1.count).partialValue }
    guard count <= maximumSweepCandidates, lists.allSatisfy({ $0.1.count <= maximumSweepCandidates }) else {
        throw MoepackError(.usage, item: "--vary", "\(lists.map { String($0.1.count) }.joined(separator: " × ")) candidates, more than \(maximumSweepCandidates): sweep fewer types at once")
    }
    var out: [[String: FixedType]] = [[:]]
    for (name, types) in lists {
        out = out.flatMap { partial in types.map { t in partial.merging([name: t]) { $1 } } }
    }
    return out
}

/// Most candidates one `moepack sweep` runs: each packs and emulates a whole image (seconds to minutes
/// at full size), so a larger product of `--vary` lists is a typo more often than a plan.
public let maximumSweepCandidates = 256

/// The profile of each candidate (its types replaced), each checked with
/// ``FixedEmulation/supports(profile:overridden:option:)``.
/// - Throws: `MoepackError(.usage)` naming `--vary`, the type name and the first argument whose type
///   the emulation cannot reproduce.
public func sweepProfiles(profile: KernelProfile, candidates: [[String: FixedType]]) throws -> [KernelProfile] {
    try candidates.map { types in
        var p = profile
        for (name, t) in types { p.types[name] = t.description }
        try FixedEmulation.supports(profile: p, overridden: Set(types.keys), option: "--vary")
        return p
    }
}

/// Packs, emulates and measures every combination of `axes` (see ``SweepCandidate``).
///
/// Each candidate is the profile with the swept types replaced, checked first with
/// ``FixedEmulation/supports(profile:)`` (so a type the emulation cannot reproduce is refused
/// before any work, naming the argument), packed with every task's gates into a temporary folder,
/// run through the fixed-point emulation for every task and frame, compared with the float model of
/// the checkpoint, and removed. Candidates run in parallel (`options.parallel`); the float
/// reference is computed once per task and frame.
/// - Parameter progress: called with (candidates done, total) from worker threads.
/// - Throws: ``MoepackError`` from checking, packing or running a candidate.
public func sweep(kernel: KernelTensors, profile: KernelProfile, axes: [SweepAxis], frames: [NamedFrame],
                  options: SweepOptions = SweepOptions(),
                  progress: (@Sendable (Int, Int) -> Void)? = nil) throws -> SweepReport {
    let combos = try sweepCandidates(profile: profile, axes: axes)
    let profiles = try sweepProfiles(profile: profile, candidates: combos)
    let cfg = kernel.config
    let tasks = Array(0..<max(cfg.tasks, 1))
    // Float reference per task and frame.
    let reference: [[ForwardResult]] = try tasks.map { t in
        let float = FloatBackbone(weights: try kernel.backboneWeights(task: t))
        return try frames.map { try float.forward(pixels: $0.frame.pixels) }
    }
    // Decoder outputs on the float backbone, per frame.
    let referenceHeads: [[TaskOutput]] = try options.heads.map { heads in
        try frames.indices.map { f in try heads.run(tokens: { reference[$0][f].output }, taskMap: options.taskMap) }
    } ?? []
    let work = (options.workDirectory as NSString).appendingPathComponent("moepack-sweep-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    try makeDirectory(work)
    InterruptCleanup.register(work)
    defer { try? FileManager.default.removeItem(atPath: work); InterruptCleanup.unregister(work) }

    let results = SweepSlots(count: profiles.count)
    let workers = max(1, min(options.parallel, profiles.count))
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        var i = w
        while i < profiles.count {
            let dir = (work as NSString).appendingPathComponent("candidate-\(i)")
            let r = Result {
                try measureCandidate(kernel: kernel, profile: profiles[i], types: combos[i], frames: frames,
                                     tasks: tasks, reference: reference, referenceHeads: referenceHeads,
                                     directory: dir, options: options)
            }
            try? FileManager.default.removeItem(atPath: dir)
            let done = results.set(i, r)
            progress?(done, profiles.count)
            i += workers
        }
    }
    var candidates = try results.values.map { try $0!.get() }
    markPareto(&candidates)
    return SweepReport(checkpoint: options.checkpointPath, profile: profile.name, frames: frames.map(\.name),
                       tasks: tasks, varied: axes.map(\.typeName), candidates: candidates)
}

/// Held while a candidate is packed (see ``measureCandidate``).
private let sweepPackLock = NSLock()

func measureCandidate(kernel: KernelTensors, profile: KernelProfile, types: [String: FixedType], frames: [NamedFrame],
                      tasks: [Int], reference: [[ForwardResult]], referenceHeads: [[TaskOutput]], directory: String,
                      options: SweepOptions) throws -> SweepCandidate {
    let packOptions = PackOptions(profile: profile, allTasks: tasks.count > 1,
                                  quantization: options.quantization, overflow: options.overflow)
    // Packing is serialised: candidates share one checkpoint reader (its read observer, the
    // kernel tensors' cache, libhdf5) that is not meant for concurrent packs; emulation stays parallel.
    let packed = try sweepPackLock.withLock { try pack(kernel: kernel, options: packOptions, outputDirectory: directory) }
    let image = try PackedImage(directory: directory)
    let models = try tasks.map { try ImageModel(image: image, mode: .fixed, task: $0) }
    var mse = 0.0, cosine = 0.0, worstCosine = 1.0, moeBytes = 0.0, overflow = 0
    let k = kernel.config.topK
    let nBlocks = kernel.config.moeBlocks.count
    var agreement = [[Double]](repeating: [Double](repeating: 0, count: nBlocks), count: tasks.count)
    var taskAgreement: [SweepTaskAgreement] = []
    for (fi, nf) in frames.enumerated() {
        var outputs: [Int: [Float]] = [:]
        for (ti, t) in tasks.enumerated() {
            let got = try models[ti].run(nf.frame)
            let want = reference[ti][fi]
            outputs[t] = got.output
            let m = ComparisonMetrics(got.output, reference: want.output)
            mse += m.mse; cosine += m.cosine; worstCosine = min(worstCosine, m.cosine)
            moeBytes += Double(try moeScheduleFetch(routing: got.routing, image: image, burstBytes: options.burstBytes)
                .reduce(0) { $0 + $1.bytes_fetched })
            overflow += got.overflow.reduce(0) { $0 + $1.count }
            for (j, (g, r)) in zip(got.routing, want.routing).enumerated() where j < nBlocks {
                agreement[ti][j] += routingAgreement(g.topExperts, r.topExperts, k: k) / Double(frames.count)
            }
        }
        if let heads = options.heads {
            let got = try heads.run(tokens: { outputs[$0]! }, taskMap: options.taskMap)
            let frameAgreement = zip(got, referenceHeads[fi]).map { compareTaskOutputs($0, $1) }
            if taskAgreement.isEmpty {
                taskAgreement = frameAgreement.map {
                    SweepTaskAgreement(task: $0.task, backbone_task: $0.backbone_task,
                                       pixel_agreement: $0.pixel_agreement.map { _ in 0 }, mse: 0, cosine: 0)
                }
            }
            let w = 1 / Double(frames.count)   // mean over frames
            for (j, a) in frameAgreement.enumerated() {
                taskAgreement[j].mse += a.mse * w
                taskAgreement[j].cosine += a.cosine * w
                if let p = a.pixel_agreement { taskAgreement[j].pixel_agreement? += p * w }
            }
        }
    }
    var routing: [SweepRouting] = []
    for (ti, t) in tasks.enumerated() {
        for (j, block) in kernel.config.moeBlocks.sorted().enumerated() {
            routing.append(SweepRouting(task: t, block: block, agreement: agreement[ti][j]))
        }
    }
    let n = Double(frames.count * tasks.count)
    return SweepCandidate(types: types.mapValues(spelling), image_bytes: packed.manifest.image.bytes,
                          moe_bytes_per_frame: moeBytes / n, mse: mse / n, cosine: cosine / n,
                          worst_cosine: worstCosine, routing: routing, overflow: overflow,
                          task_agreement: taskAgreement, pareto: false)
}

/// One decoder's output on a candidate's backbone against its output on the float backbone.
func compareTaskOutputs(_ got: TaskOutput, _ want: TaskOutput) -> SweepTaskAgreement {
    let m = ComparisonMetrics(got.values, reference: want.values)
    var pixel: Double? = nil
    if case .segmentation = TaskKind.of(task: got.task, channels: got.channels) {
        let n = got.height * got.width
        let a = TaskRenderer.argmax(got.values, channels: got.channels, pixels: n)
        let b = TaskRenderer.argmax(want.values, channels: want.channels, pixels: n)
        pixel = n == 0 ? 1 : Double(zip(a, b).filter { $0 == $1 }.count) / Double(n)
    }
    return SweepTaskAgreement(task: got.task, backbone_task: got.backboneTask ?? 0, pixel_agreement: pixel,
                              mse: m.mse, cosine: m.cosine)
}

/// Marks the candidates no other candidate dominates in (moe_bytes_per_frame, mse).
func markPareto(_ c: inout [SweepCandidate]) {
    for i in c.indices {
        c[i].pareto = !c.indices.contains { j in
            j != i && c[j].moe_bytes_per_frame <= c[i].moe_bytes_per_frame && c[j].mse <= c[i].mse
                && (c[j].moe_bytes_per_frame < c[i].moe_bytes_per_frame || c[j].mse < c[i].mse)
        }
    }
}

/// Results filled from worker threads, in candidate order.
final class SweepSlots: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var values: [Result<SweepCandidate, Error>?]
    private var done = 0
    init(count: Int) { values = Array(repeating: nil, count: count) }
    /// Stores result `i` and returns how many are done.
    func set(_ i: Int, _ r: Result<SweepCandidate, Error>) -> Int {
        lock.lock(); defer { lock.unlock() }
        values[i] = r; done += 1
        return done
    }
}

/// `ap_fixed<W,I>` when the modes are Vitis's defaults (AP_TRN, AP_WRAP), else the full spelling.
func spelling(_ t: FixedType) -> String {
    guard t.quantization == .AP_TRN, t.overflow == .AP_WRAP else { return t.description }
    return "\(t.signed ? "ap_fixed" : "ap_ufixed")<\(t.width),\(t.integerBits)>"
}
