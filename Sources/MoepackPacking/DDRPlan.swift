import Foundation

import MoepackCore
import MoepackModel
import MoepackFixedPoint

/// How expert weights are laid out in the image (the manifest's `layout`).
public enum DDRLayout: String, Sendable, Codable, CaseIterable {
    /// Every kernel argument exactly as `ViT_compute` declares it: what the published bitstream reads.
    case kernel
    /// The four expert arrays replaced by one `moe_experts` region of expert records in the order the
    /// patch-reordered MoE schedule fetches them (block by block, experts ascending): each record holds
    /// w1 (htoh4 weight [He][D]), b1 ([He]), w2 (h4toh weight [D][He]), b2 ([D]) back to back, each part
    /// at a 64-byte (AXI) aligned offset, each record on a 4096-byte boundary so no burst crosses a
    /// 4 KiB page. For kernels built with one expert base pointer:
    /// record address = base + moe_index·stride_block + expert·stride_expert.
    case expertMajor = "expert-major"

    /// The implementation of this layout.
    var placement: any WeightPlacement {
        switch self {
        case .kernel: return KernelPlacement()
        case .expertMajor: return ExpertMajorPlacement()
        }
    }
}

/// One region of the image: a kernel argument, an extra task's gates, or the expert records.
public struct PlannedBuffer: Sendable {
    public enum Content: Sendable {
        /// A kernel array filled from the model (`task` selects the gates for `moe_w_gate`).
        case kernelArray(KernelArgument, task: Int)
        /// Expert records of every MoE block (expert-major layout).
        case expertRecords(ExpertRecordLayout)
        /// Zeros (scratch, output) or the frame (`images`).
        case zeros
        case frame
    }
    public var buffer: KernelProfile.Buffer
    public var type: FixedType
    public var offset: Int
    public var bytes: Int
    public var content: Content
}

/// Geometry of the expert records (offsets relative to the region start).
public struct ExpertRecordLayout: Sendable, Equatable {
    public var moeBlocks: [Int]
    public var experts: Int
    public var w1Count: Int, b1Count: Int, w2Count: Int, b2Count: Int
    public var elementBytes: Int
    /// Element types of w1, b1, w2, b2 (those of ``KernelArgument/experts``, in that order).
    public var partTypes: [FixedType]
    public var partAlignment: Int
    public var recordAlignment: Int
    /// Offsets of the parts inside a record.
    public var w1: Int { 0 }
    public var b1: Int { align(w1 + w1Count * elementBytes, partAlignment) }
    public var w2: Int { align(b1 + b1Count * elementBytes, partAlignment) }
    public var b2: Int { align(w2 + w2Count * elementBytes, partAlignment) }
    /// Element counts and offsets of the parts, in ``KernelArgument/experts`` order.
    public var partCounts: [Int] { [w1Count, b1Count, w2Count, b2Count] }
    public var partOffsets: [Int] { [w1, b1, w2, b2] }
    /// Bytes of one record's payload and the distance between records.
    public var recordBytes: Int { b2 + b2Count * elementBytes }
    public var strideExpert: Int { align(recordBytes, recordAlignment) }
    public var strideBlock: Int { strideExpert * experts }
    public var totalBytes: Int { strideBlock * moeBlocks.count }
    public func recordOffset(moeIndex: Int, expert: Int) -> Int { moeIndex * strideBlock + expert * strideExpert }

    /// Element type spellings of the parts by kernel array name (the manifest's `expert_types`).
    public var partTypeNames: [String: String] {
        Dictionary(uniqueKeysWithValues: zip(KernelArgument.experts.map(\.name), partTypes.map(\.baseDescription)))
    }
}

/// A region a layout places for a profile buffer, before its offset is known.
struct PlacedRegion {
    var buffer: KernelProfile.Buffer
    var type: FixedType
    var bytes: Int
    var content: PlannedBuffer.Content
}

/// One DDR layout: where the weight arguments go, and what the manifest says about them. The two
/// implementations are ``KernelPlacement`` (`--layout kernel`) and ``ExpertMajorPlacement``.
protocol WeightPlacement: Sendable {
    /// The regions that stand for weight buffer `b` (element type `t`, `bytes` as declared): nil to place
    /// it as declared, [] to leave it out.
    func regions(for b: KernelProfile.Buffer, type t: FixedType, bytes: Int, profile: KernelProfile) throws -> [PlacedRegion]?
    /// The manifest's expert records (nil when the layout has none).
    func expertRecords(_ plan: DDRPlan) -> [Manifest.ExpertRecord]?
    /// A note for host programmers about this layout (nil: none).
    func hostNote(_ plan: DDRPlan) -> String?
}

/// `--layout kernel`: every argument where `ViT_compute` declares it.
struct KernelPlacement: WeightPlacement {
    func regions(for b: KernelProfile.Buffer, type t: FixedType, bytes: Int, profile: KernelProfile) throws -> [PlacedRegion]? { nil }
    func expertRecords(_ plan: DDRPlan) -> [Manifest.ExpertRecord]? { nil }
    func hostNote(_ plan: DDRPlan) -> String? { nil }
}

/// `--layout expert-major`: the expert arrays as one region of expert records (see ``DDRLayout/expertMajor``).
struct ExpertMajorPlacement: WeightPlacement {
    static let regionName = "moe_experts"

    func regions(for b: KernelProfile.Buffer, type t: FixedType, bytes: Int, profile: KernelProfile) throws -> [PlacedRegion]? {
        guard let arg = b.argument, KernelArgument.experts.contains(arg) else { return nil }
        // The region takes the place of the first expert array; the other three are in its records.
        guard arg == KernelArgument.experts[0] else { return [] }
        let m = profile.model
        let partTypes = try KernelArgument.experts.map { a -> FixedType in
            guard let pb = profile.buffer(a.name) else { throw MoepackError(.badInput, file: profile.name, item: a.name, "expert-major layout needs this buffer in the profile") }
            return try profile.fixedType(pb.type)
        }
        guard Set(partTypes.map(\.containerBytes)).count == 1 else {
            throw MoepackError(.unsupported, file: profile.name, item: Self.regionName, "expert arrays of different container sizes")
        }
        let counts = KernelArgument.experts.map { $0.elementsPerExpert(m)! }
        let el = ExpertRecordLayout(moeBlocks: m.moeBlocks, experts: m.experts,
                                    w1Count: counts[0], b1Count: counts[1], w2Count: counts[2], b2Count: counts[3],
                                    elementBytes: t.containerBytes, partTypes: partTypes,
                                    partAlignment: profile.axiAlignment ?? 64, recordAlignment: 4096)
        let region = KernelProfile.Buffer(name: Self.regionName, shape: [m.moeBlocks.count, m.experts, el.strideExpert / t.containerBytes],
                                          type: b.type, role: .weight, register: nil)
        return [PlacedRegion(buffer: region, type: t, bytes: el.totalBytes, content: .expertRecords(el))]
    }

    func expertRecords(_ plan: DDRPlan) -> [Manifest.ExpertRecord]? {
        guard let (region, el) = plan.expertRegion else { return nil }
        return el.moeBlocks.enumerated().flatMap { mi, block in
            (0..<el.experts).map { e in
                let start = region.offset + el.recordOffset(moeIndex: mi, expert: e)
                return Manifest.ExpertRecord(block: block, expert: e, offset: start, bytes: el.recordBytes,
                                             w1: start + el.w1, b1: start + el.b1, w2: start + el.w2, b2: start + el.b2)
            }
        }
    }

    func hostNote(_ plan: DDRPlan) -> String? {
        guard let (region, el) = plan.expertRegion else { return nil }
        return "expert-major layout: for kernels built with one expert base pointer. Record address = base + \(region.offset) + moe_index·\(el.strideBlock) + expert·\(el.strideExpert); inside a record w1 at +\(el.w1), b1 at +\(el.b1), w2 at +\(el.w2), b2 at +\(el.b2). The published bitstream needs --layout kernel."
    }
}

/// The DDR layout: every kernel argument in argument order, each at an `alignment`-byte offset
/// (plus extra task gates and expert records, depending on the options).
public struct DDRPlan: Sendable {
    public var buffers: [PlannedBuffer]
    public var totalBytes: Int
    public var layout: DDRLayout
    /// Every task's gates are packed (`--task all`).
    public var allTasks: Bool
    /// Largest image laid out (2^40 bytes): far above any DDR, and far below an overflow.
    public static let maximumImageBytes = 1 << 40

    /// The expert-record geometry (expert-major layout; nil otherwise).
    public var expertLayout: ExpertRecordLayout? { expertRegion?.layout }

    /// The `moe_experts` region and its record geometry, when the plan has one.
    var expertRegion: (region: PlannedBuffer, layout: ExpertRecordLayout)? {
        for p in buffers { if case .expertRecords(let el) = p.content { return (p, el) } }
        return nil
    }

    /// Lays out the profile's buffers for `options` (kernel layout, one task, by default).
    /// - Parameter tasks: number of task gates the model has (for `allTasks`).
    /// - Throws: ``MoepackError`` when a type does not parse or sizes overflow.
    public init(profile: KernelProfile, layout: DDRLayout = .kernel, task: Int = 0, allTasks: Bool = false, tasks: Int = 1) throws {
        let placement = layout.placement
        var offset = 0
        var out: [PlannedBuffer] = []
        func add(_ r: PlacedRegion) throws {
            offset = align(offset, profile.alignment)
            // Profiles are JSON anyone can edit: sizes are summed without overflow, below 2^40 bytes.
            let (end, o) = offset.addingReportingOverflow(r.bytes)
            guard !o, end <= Self.maximumImageBytes else {
                throw MoepackError(.badInput, file: profile.name, item: r.buffer.name, "the image would exceed \(Self.maximumImageBytes) bytes")
            }
            out.append(PlannedBuffer(buffer: r.buffer, type: r.type, offset: offset, bytes: r.bytes, content: r.content))
            offset = end
        }
        for b in profile.buffers {
            let t = try profile.fixedType(b.type)
            guard let bytes = checkedElementCount(b.shape, elementBytes: t.containerBytes) else {
                throw MoepackError(.badInput, file: profile.name, item: b.name, "size overflows")
            }
            switch b.role {
            case .weight:
                if let regions = try placement.regions(for: b, type: t, bytes: bytes, profile: profile) {
                    try regions.forEach(add)
                    continue
                }
                guard let arg = b.argument else {
                    throw MoepackError(.unsupported, file: profile.name, item: b.name, "no model tensor maps to this kernel argument")
                }
                if arg == .moe_w_gate && allTasks {
                    try add(PlacedRegion(buffer: b, type: t, bytes: bytes, content: .kernelArray(arg, task: 0)))
                    for extra in 1..<max(tasks, 1) {
                        try add(PlacedRegion(buffer: KernelProfile.Buffer(name: "moe_w_gate_task\(extra)", shape: b.shape, type: b.type, role: .weight, register: nil),
                                         type: t, bytes: bytes, content: .kernelArray(arg, task: extra)))
                    }
                } else {
                    try add(PlacedRegion(buffer: b, type: t, bytes: bytes, content: .kernelArray(arg, task: task)))
                }
            case .input where b.argument == .images:
                try add(PlacedRegion(buffer: b, type: t, bytes: bytes, content: .frame))
            default:
                try add(PlacedRegion(buffer: b, type: t, bytes: bytes, content: .zeros))
            }
        }
        buffers = out
        totalBytes = align(offset, profile.alignment)
        self.layout = layout
        self.allTasks = allTasks
    }

    /// The manifest's expert records (expert-major layout; empty otherwise): block by block, experts
    /// ascending, with the absolute offsets of each record and of its four parts.
    public func expertRecords() -> [Manifest.ExpertRecord] { layout.placement.expertRecords(self) ?? [] }

    /// The manifest's task gates (`--task all`; empty otherwise): each task's copy of `moe_w_gate`.
    public func taskGates() -> [Manifest.TaskGate] {
        guard allTasks else { return [] }
        return buffers.compactMap { p in
            guard case .kernelArray(.moe_w_gate, let task) = p.content else { return nil }
            return Manifest.TaskGate(task: task, offset: p.offset, bytes: p.bytes)
        }
    }
}

func align(_ x: Int, _ a: Int) -> Int { (x + a - 1) / a * a }
