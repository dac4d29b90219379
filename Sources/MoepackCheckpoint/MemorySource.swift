import MoepackCore

/// A ``TensorSource`` over float32 tensors held in memory: for tests, and for programs that build or
/// complete a model before packing it.
public final class MemorySource: TensorSource, @unchecked Sendable {
    public let path: String
    public let container: CheckpointContainer
    public let entries: [TensorEntry]
    public let skipped: [SkippedEntry] = []
    public let notes: [String] = []
    private let values: [String: [Float]]

    /// - Parameter tensors: name, shape, C-order float32 values (count must equal the shape's product).
    public init(path: String = "<memory>", container: CheckpointContainer = .memory, tensors: [(String, [Int], [Float])]) {
        self.path = path
        self.container = container
        entries = tensors.map { TensorEntry(name: $0.0, dtype: .float32, shape: $0.1) }
        var v: [String: [Float]] = [:]
        for t in tensors {
            precondition(t.2.count == t.1.reduce(1, *), "MemorySource: \(t.0) has \(t.2.count) values for \(t.1)")
            v[t.0] = t.2
        }
        values = v
    }

    public func readFloat32(_ name: String) throws -> [Float] {
        guard let v = values[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        return v
    }

    public func readRaw(_ name: String) throws -> [UInt8] {
        let v = try readFloat32(name)
        var out = [UInt8]()
        out.reserveCapacity(v.count * 4)
        for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        return out
    }
}
