import Foundation
import MoepackCore
import MoepackModel
import MoepackFixedPoint

/// A proposed `ap_fixed` format for one kernel element type: same word length W, the fewest integer
/// bits I′ that hold every value the type carries, and the SQNR both formats give.
///
/// Produced by ``suggestTypes(kernel:profile:task:)``; nothing here changes a profile. To apply a
/// suggestion, change the kernel's `typedef` (and the profile's `types` entry) and rebuild the bitstream.
public struct TypeSuggestion: Sendable, Codable, Equatable {
    /// Kernel type name, e.g. `wt_linear_t`.
    public var typeName: String
    /// Current spelling from the profile, e.g. `ap_fixed<16,2>`.
    public var current: String
    /// Proposed spelling, e.g. `ap_fixed<16,3>` (equal to `current` when nothing is gained).
    public var suggested: String
    /// max |x| over every value of every tensor the type carries (float64 of the float32 values).
    public var maxAbs: Double
    /// 10·log10(Σx² / Σ(x − q(x))²) in dB over all the type's tensors, with q = conversion to the
    /// current type under AP_RND_CONV, AP_SAT; nil when the error is exactly zero.
    public var currentSQNR: Double?
    /// The same for the suggested type.
    public var suggestedSQNR: Double?
    /// Values outside the current type's range (they saturate under AP_SAT).
    public var overflowCurrent: Int
    /// Report names of the tensors the type carries (``KernelPart/name``), in buffer order.
    public var tensors: [String]
    /// Remarks, e.g. that the type also carries activations and so is never narrowed.
    public var notes: [String]
    /// How far the values are from the edges of the suggested type's range: the smaller of
    /// maxValue ÷ max x (when some x > 0) and |minValue| ÷ |min x| (when some x < 0); 1.0… means a weight
    /// sits at the edge (nil when every value is 0).
    public var headroom: Double?

    public init(typeName: String, current: String, suggested: String, maxAbs: Double, currentSQNR: Double?,
                suggestedSQNR: Double?, overflowCurrent: Int, tensors: [String], notes: [String] = [],
                headroom: Double? = nil) {
        self.typeName = typeName; self.current = current; self.suggested = suggested; self.maxAbs = maxAbs
        self.currentSQNR = currentSQNR; self.suggestedSQNR = suggestedSQNR
        self.overflowCurrent = overflowCurrent; self.tensors = tensors; self.notes = notes
        self.headroom = headroom
    }

    /// Whether the suggestion differs from the current type.
    public var changes: Bool { current != suggested }
}

/// The fewest integer bits I (sign bit included for signed types) such that `ap_fixed<W,I>`
/// (`ap_ufixed<W,I>` when `signed` is false) holds every value in [min, max] without overflow.
///
/// Rule (Vitis HLS UG1399, "Arbitrary Precision Fixed-Point Data Types": LSB = 2^(I−W); signed range
/// [−2^(I−1), 2^(I−1) − LSB], unsigned [0, 2^I − LSB]): signed needs max ≤ 2^(I−1) − 2^(I−W) and
/// min ≥ −2^(I−1); unsigned needs min ≥ 0 and max ≤ 2^I − 2^(I−W). I may be negative (UG1399 allows
/// it: implicit sign bits right of the binary point).
/// - Returns: nil when no I fits (unsigned with min < 0, non-finite bounds, W < 1, or W = 1 signed
///   with max > 0), or when every value is 0 (any I fits).
public func minimumIntegerBits(min lo: Double, max hi: Double, width: Int, signed: Bool) -> Int? {
    guard lo.isFinite, hi.isFinite, width >= 1, lo <= hi else { return nil }
    if !signed && lo < 0 { return nil }
    let maxAbs = Swift.max(abs(lo), abs(hi))
    guard maxAbs > 0 else { return nil }
    func fits(_ i: Int) -> Bool {
        let lsb = Foundation.pow(2.0, Double(i - width))
        if signed {
            let half = Foundation.pow(2.0, Double(i - 1))
            return hi <= half - lsb && lo >= -half
        }
        return hi <= Foundation.pow(2.0, Double(i)) - lsb
    }
    // Start one octave below the magnitude's exponent and walk up; a handful of steps at most.
    var i = Int(Foundation.log2(maxAbs).rounded(.down)) - 1
    let limit = i + width + 4
    while i <= limit {
        if fits(i) { return i }
        i += 1
    }
    return nil
}

/// Proposes, for every weight element type of `profile`, the `ap_fixed` format with the same word
/// length and the fewest integer bits that holds all the type's values (plus `headroomBits`), and
/// compares SQNR.
///
/// The fewest bits fit this checkpoint's values only: the largest weight may sit near the edge of the
/// range (see ``TypeSuggestion/headroom``), and another checkpoint of the same model (fine-tuned, or
/// trained longer) may exceed it. `headroomBits` adds integer bits (each doubles the range and the
/// LSB) to every narrowed or widened suggestion.
///
/// For each type named by a buffer of role `weight` (in argument-table order: `wt_patch_embed_t`,
/// `wt_bias_t`, `fm_t`, `wt_linear_t`, …), every tensor of every weight buffer of that type is read
/// through ``KernelTensors/forEachPart(of:task:_:)`` (folds applied, `task`'s gates in `moe_w_gate`),
/// twice at most, one tensor in memory at a time. SQNR uses AP_RND_CONV and AP_SAT, the pack default.
/// Types that also carry activations (a buffer of role input/output/scratch, e.g. `fm_t`) are only
/// ever widened, never narrowed, because the weights say nothing about activation range; their
/// suggestion says so in ``TypeSuggestion/notes``. An unsigned type holding negative values is
/// suggested as signed. The profile is never changed.
/// - Returns: one suggestion per weight type, in order of first use in the argument table.
/// - Throws: ``MoepackError`` for an unparsable type, missing tensors, NaN/Inf weights or a task out
///   of range (from ``KernelTensors``).
public func suggestTypes(kernel: KernelTensors, profile: KernelProfile, task: Int,
                         headroomBits: Int = 0) throws -> [TypeSuggestion] {
    var order: [String] = []
    for b in profile.buffers where b.role == .weight && !order.contains(b.type) { order.append(b.type) }
    var out: [TypeSuggestion] = []
    for typeName in order {
        let base = try profile.fixedType(typeName)
        let buffers = profile.buffers.filter { $0.role == .weight && $0.type == typeName }.map(\.name)
        let activationBuffers = profile.buffers.filter { $0.role != .weight && $0.type == typeName }.map(\.name)
        let current = base.with(quantization: .AP_RND_CONV, overflow: .AP_SAT)

        // Pass 1: range and current-type error.
        var names: [String] = []
        var lo = Double.infinity, hi = -Double.infinity
        var cur = ErrorSums()
        var scratch = [UInt8]()
        for name in buffers {
            try kernel.forEachPart(of: name, task: task) { part in
                names.append(part.name)
                // The encoder's statistics carry the range (KernelTensors refuses NaN/Inf before this).
                let stats = try quantizationStats(part.values, as: current, scratch: &scratch)
                lo = min(lo, stats.min)
                hi = max(hi, stats.max)
                cur.add(stats)
            }
        }
        let maxAbs = names.isEmpty || !lo.isFinite ? 0 : max(abs(lo), abs(hi))

        // The proposal.
        var notes: [String] = []
        var signed = base.signed
        if !signed && lo < 0 {
            signed = true
            notes.append("holds negative values (min \(fmt(lo))): an unsigned type cannot represent them, suggested signed")
        }
        // Headroom is for weights to come; types that also carry activations follow their own rule below.
        let extra = activationBuffers.isEmpty ? headroomBits : 0
        var bits = lo.isFinite ? minimumIntegerBits(min: lo, max: hi, width: base.width, signed: signed).map { $0 + extra } : nil
        if bits == nil {
            notes.append(maxAbs == 0 ? "every value is 0: any integer width fits, kept" : "no integer width fits, kept")
            signed = base.signed
        }
        if !activationBuffers.isEmpty, let b = bits, b < base.integerBits, signed == base.signed {
            bits = base.integerBits
            notes.append("also carries activations (\(activationBuffers.joined(separator: ", "))): never narrowed from weights alone")
        }
        let suggestedType = FixedType(width: base.width, integerBits: bits ?? base.integerBits, signed: signed,
                                      quantization: .AP_RND_CONV, overflow: .AP_SAT)

        // Pass 2: suggested-type error (skipped when the type stays the same).
        var sug = cur
        if suggestedType.baseDescription != base.baseDescription {
            sug = ErrorSums()
            for name in buffers {
                try kernel.forEachPart(of: name, task: task) { part in
                    sug.add(try quantizationStats(part.values, as: suggestedType, scratch: &scratch))
                }
            }
        }
        if suggestedType.baseDescription != base.baseDescription, let a = cur.sqnrDB, let b = sug.sqnrDB, b < a {
            notes.append(String(format: "the suggestion loses %.2f dB against the current type: the headroom asked for costs that much precision", a - b))
        }
        out.append(TypeSuggestion(
            typeName: typeName, current: base.baseDescription, suggested: suggestedType.baseDescription,
            maxAbs: maxAbs, currentSQNR: cur.sqnrDB, suggestedSQNR: sug.sqnrDB,
            overflowCurrent: cur.overflow, tensors: names, notes: notes,
            headroom: headroom(of: suggestedType, min: lo, max: hi)))
    }
    return out
}

/// How far [min, max] is from the edges of `t`'s range: the smaller of maxValue ÷ max (when max > 0)
/// and |minValue| ÷ |min| (when min < 0); nil when every value is 0.
func headroom(of t: FixedType, min lo: Double, max hi: Double) -> Double? {
    var h = Double.infinity
    if hi > 0 { h = min(h, t.maxValue / hi) }
    if lo < 0 { h = min(h, -t.minValue / -lo) }
    return h.isFinite ? h : nil
}

/// Σx², Σ(x − q(x))² and overflow count over several tensors.
struct ErrorSums {
    var signal = 0.0
    var noise = 0.0
    var overflow = 0

    mutating func add(_ s: QuantizationStats) {
        signal += Double(s.sumSquares)
        noise += Double(s.sumSquaredError)
        overflow += Int(s.overflowCount)
    }

    /// 10·log10(Σx²/Σe²); nil when Σe² is 0 (exact), −∞ never returned (a zero signal with error gives nil too).
    var sqnrDB: Double? {
        guard noise > 0, signal > 0 else { return nil }
        return 10 * Foundation.log10(signal / noise)
    }
}

/// Converts `values` to `type` (into a scratch buffer) and returns the statistics.
func quantizationStats(_ values: [Float], as type: FixedType, scratch: inout [UInt8]) throws -> QuantizationStats {
    let (n, o) = values.count.multipliedReportingOverflow(by: type.containerBytes)
    guard !o else { throw MoepackError(.badInput, "tensor of \(values.count) values too large") }
    if scratch.count < n { scratch = [UInt8](repeating: 0, count: n) }
    var stats = QuantizationStats()
    scratch.withUnsafeMutableBytes { raw in
        let dst = UnsafeMutableRawBufferPointer(rebasing: raw[0..<n])
        values.withUnsafeBufferPointer { type.encode($0, into: dst, stats: &stats) }
    }
    return stats
}

/// A plain-text table of suggestions, one line per type, for `moepack suggest`:
///
/// ```
/// type         current         suggested       max|x|   overflow  SQNR now   SQNR suggested  tensors
/// wt_linear_t  ap_fixed<16,2>  ap_fixed<16,1>  0.81     0         62.10 dB   68.12 dB        164
/// ```
/// followed by each suggestion's notes and a reminder that profiles are not changed.
/// SQNR "exact" means zero quantization error.
public func renderSuggestions(_ suggestions: [TypeSuggestion]) -> String {
    func db(_ x: Double?) -> String { x.map { String(format: "%.2f dB", $0) } ?? "exact" }
    var rows: [[String]] = [["type", "current", "suggested", "max|x|", "headroom", "overflow", "SQNR now", "SQNR suggested", "gain", "tensors"]]
    for s in suggestions {
        var gain = "-"
        if s.changes, let a = s.currentSQNR, let b = s.suggestedSQNR { gain = String(format: "%+.2f dB", b - a) }
        rows.append([s.typeName, s.current, s.changes ? s.suggested : "(keep)", fmt(s.maxAbs),
                     s.headroom.map { String(format: "%.2f×", $0) } ?? "-", String(s.overflowCurrent),
                     db(s.currentSQNR), s.changes ? db(s.suggestedSQNR) : "", gain, String(s.tensors.count)])
    }
    var widths = [Int](repeating: 0, count: rows[0].count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    var lines: [String] = []
    for r in rows {
        var line = ""
        for (i, c) in r.enumerated() {
            line += i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count + 2)
        }
        lines.append(line)
    }
    for s in suggestions {
        for n in s.notes { lines.append("\(s.typeName): \(n)") }
    }
    lines.append("SQNR over every tensor of the type, AP_RND_CONV + AP_SAT. Same word length; the profile is not changed.")
    lines.append("headroom = the suggested type's largest value ÷ the largest weight (or its most negative ÷ the most negative weight, the smaller). The fewest integer bits fit this checkpoint only: another checkpoint of the model may need more (--headroom-bits 1 doubles every range).")
    return lines.joined(separator: "\n") + "\n"
}

/// The `--type NAME=TYPE` assignments that apply the suggestions that change a type, in order.
public func typeAssignments(_ suggestions: [TypeSuggestion]) -> [String] {
    suggestions.filter(\.changes).map { "\($0.typeName)=\($0.suggested)" }
}

/// The `moepack pack` command line that packs `checkpoint` with the suggested types
/// (`moepack pack CKPT [ARGS…] --type 'NAME=TYPE' … -o DIR`), each word quoted for a POSIX shell
/// where needed; nil when no suggestion changes a type.
/// - Parameter arguments: options to repeat before the `--type`s (profile, folds, state_dict key).
public func packCommandLine(checkpoint: String, suggestions: [TypeSuggestion], arguments: [String] = []) -> String? {
    let types = typeAssignments(suggestions)
    guard !types.isEmpty else { return nil }
    let words = ["moepack", "pack", checkpoint] + arguments + types.flatMap { ["--type", $0] } + ["-o", "DIR"]
    return words.map(shellQuoted).joined(separator: " ")
}

/// `word` as one POSIX shell word: unchanged when it holds only characters no shell treats
/// specially, else in single quotes (a `'` inside written `'\''`).
public func shellQuoted(_ word: String) -> String {
    let plain = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@%+,")
    if !word.isEmpty, word.allSatisfy(plain.contains) { return word }
    return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
