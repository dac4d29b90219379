import MoepackCore

/// One tensor a checkpoint holds, described without reading its data.
public struct TensorEntry: Sendable, Equatable {
    /// Name as the container stores it (state_dict key, dataset path with `/` → `.`, npz member, …).
    public var name: String
    /// Element type as stored.
    public var dtype: DType
    /// Axis sizes, outermost first.
    public var shape: [Int]

    public init(name: String, dtype: DType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    public var elementCount: Int { shape.reduce(1, *) }
}

/// An entry of the container that is not offered as a tensor, and why (optimizer state, non-tensor
/// values, …). Reported by `moepack inspect`.
public struct SkippedEntry: Sendable, Equatable, Codable {
    public var name: String
    public var reason: String
    public init(name: String, reason: String) {
        self.name = name
        self.reason = reason
    }
}

/// A checkpoint opened for lazy reading: the tensor table is known, no tensor data has been read.
///
/// Implementations validate the container's structure when they are created (offsets, sizes, element
/// counts) and validate each tensor's bytes (CRC-32 of zip records, bounds) when it is read. Every
/// error is a ``MoepackError`` naming the file and the tensor.
public protocol TensorSource: AnyObject, Sendable {
    /// The file or folder as the user named it.
    var path: String { get }
    /// Container kind (its raw value is the JSON spelling: `pytorch-zip`, `safetensors`, …).
    var container: CheckpointContainer { get }
    /// Tensors in stored order.
    var entries: [TensorEntry] { get }
    /// What was passed over and why.
    var skipped: [SkippedEntry] { get }
    /// Facts worth reporting (e.g. "state_dict found under key 'state_dict'").
    var notes: [String] { get }
    /// Key of the training checkpoint's top-level dict the state_dict was read from (torch.save
    /// kinds); nil when the state_dict is the top-level dict or the container has no such notion.
    var stateDictKey: String? { get }

    /// Reads one tensor as float32 values in C order (strided storage is gathered).
    /// - Throws: ``MoepackError`` when the name is unknown, the bytes are out of bounds or corrupted.
    func readFloat32(_ name: String) throws -> [Float]

    /// Reads one tensor's stored bytes, gathered to C order, little-endian, in its stored dtype.
    /// - Throws: ``MoepackError`` as ``readFloat32(_:)``.
    func readRaw(_ name: String) throws -> [UInt8]
}

extension TensorSource {
    public var stateDictKey: String? { nil }

    /// The entry for `name`, if the source has it.
    public func entry(_ name: String) -> TensorEntry? {
        entries.first { $0.name == name }
    }

    /// Reads `name` as a ``Tensor``.
    public func readTensor(_ name: String) throws -> Tensor {
        guard let e = entry(name) else {
            throw MoepackError(.badInput, file: path, item: name, "no such tensor")
        }
        return Tensor(shape: e.shape, values: try readFloat32(name))
    }
}

/// Options for ``openCheckpoint(_:options:)``.
public struct OpenOptions: Sendable {
    /// Key of the state_dict inside a training checkpoint; nil searches `state_dict`, `model`,
    /// `model_state`, `net`, `ema`, then the top level.
    public var stateDictKey: String?
    public init(stateDictKey: String? = nil) {
        self.stateDictKey = stateDictKey
    }
}
