import Foundation
import MoepackCore

/// An expert-parallel save, container `expert-parallel-folder`: a folder of `0.pth, 1.pth, …,
/// (N−1).pth`, one `torch.save` file per rank (FastMoE/DeepSpeed-style expert parallelism).
///
/// Rule (generic, no model names): ranks must be exactly 0…N−1; rank 0 holds every tensor; a tensor
/// that also appears in ranks > 0 is the concatenation along axis 0 of its per-rank parts, in rank
/// order (other axes and dtype must agree). Tensors only in rank 0 are read from rank 0. Each rank
/// file may be zip or legacy format. Reads are lazy (only the ranks' records of the tensor read).
public final class ExpertParallelSource: TensorSource {
    public let path: String
    public let container = CheckpointContainer.expertParallelFolder
    public let entries: [TensorEntry]
    public let skipped: [SkippedEntry]
    public let notes: [String]
    public let stateDictKey: String?
    /// Per-rank sources, rank order.
    public let ranks: [any TensorSource]
    /// For each tensor, the ranks holding a part (always starting with 0).
    private let parts: [String: [Int]]

    /// Opens the folder `path`.
    /// - Throws: ``MoepackError`` naming the folder: no `0.pth`, a missing rank file (named), a
    ///   tensor absent from rank 0, parts whose dtype or non-leading axes differ (tensor, rank, shapes).
    public init(path: String, options: OpenOptions = OpenOptions()) throws {
        self.path = path
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: path) } catch {
            throw MoepackError(.io, file: path, "cannot list folder")
        }
        var rankFiles: [Int: String] = [:]
        var skipped: [SkippedEntry] = []
        for n in names.sorted() {
            let stem = n.hasSuffix(".pth") ? String(n.dropLast(4)) : ""
            if !stem.isEmpty, stem.allSatisfy({ $0.isASCII && $0.isNumber }), let r = Int(stem), String(r) == stem {
                rankFiles[r] = n
            } else {
                skipped.append(SkippedEntry(name: n, reason: "not a rank file <rank>.pth"))
            }
        }
        guard let maxRank = rankFiles.keys.max(), rankFiles[0] != nil else {
            throw MoepackError(.badInput, file: path, "expert-parallel folder has no 0.pth")
        }
        for r in 0...maxRank where rankFiles[r] == nil {
            throw MoepackError(.badInput, file: path, item: "\(r).pth", "missing rank file (ranks must be 0…\(maxRank))")
        }
        var ranks: [any TensorSource] = []
        for r in 0...maxRank {
            let p = (path as NSString).appendingPathComponent("\(r).pth")
            let probe = try CheckpointProbe(path: p)
            guard let kind = try CheckpointContainer.sniff(probe) else { throw try refusal(probe) }
            guard kind == .pytorchZip || kind == .pytorchLegacy else {
                throw MoepackError(.badInput, file: p, "rank file is a \(kind.rawValue) container, expected a torch.save file")
            }
            ranks.append(try kind.open(probe, options: options))
        }
        var shapes: [String: TensorEntry] = [:]
        var parts: [String: [Int]] = [:]
        for e in ranks[0].entries { shapes[e.name] = e; parts[e.name] = [0] }
        for r in 1..<ranks.count {
            for e in ranks[r].entries {
                guard var acc = shapes[e.name] else {
                    throw MoepackError(.badInput, file: path, item: e.name, "tensor in rank \(r) is missing from rank 0")
                }
                guard e.dtype == acc.dtype, !e.shape.isEmpty, e.shape.count == acc.shape.count,
                      e.shape.dropFirst().elementsEqual(acc.shape.dropFirst()) else {
                    throw MoepackError(.mismatch, file: path, item: e.name,
                                       "rank \(r) part \(e.dtype.rawValue)\(shapeString(e.shape)) cannot be concatenated along axis 0 with rank 0 part \(ranks[0].entry(e.name).map { $0.dtype.rawValue + shapeString($0.shape) } ?? "")")
                }
                let (s, o) = acc.shape[0].addingReportingOverflow(e.shape[0])
                guard !o else { throw MoepackError(.badInput, file: path, item: e.name, "axis 0 overflows") }
                acc.shape[0] = s
                shapes[e.name] = acc
                parts[e.name, default: [0]].append(r)
            }
        }
        for r in 0..<ranks.count { skipped += ranks[r].skipped.map { SkippedEntry(name: "\(r).pth:\($0.name)", reason: $0.reason) } }
        self.entries = ranks[0].entries.compactMap { shapes[$0.name] }
        self.parts = parts
        self.ranks = ranks
        self.skipped = skipped
        let merged = parts.values.filter { $0.count > 1 }.count
        self.stateDictKey = ranks[0].stateDictKey
        self.notes = ["\(ranks.count) ranks; \(merged) tensors concatenated along axis 0 in rank order"]
            + ranks[0].notes.map { "0.pth: " + $0 }
    }

    public func readRaw(_ name: String) throws -> [UInt8] {
        guard let p = parts[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        var out: [UInt8] = []
        for r in p { out += try ranks[r].readRaw(name) }
        return out
    }

    public func readFloat32(_ name: String) throws -> [Float] {
        guard let p = parts[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        var out: [Float] = []
        for r in p { out += try ranks[r].readFloat32(name) }
        return out
    }
}
