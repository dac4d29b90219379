import Foundation
import MoepackCore

/// A `torch.save(..., _use_new_zipfile_serialization=False)` checkpoint, container `pytorch-legacy`.
///
/// Layout (torch/serialization.py `_legacy_save`): pickle of the magic number
/// `0x1950a86a20f9469cfc6c`, pickle of the protocol version `1001`, pickle of `sys_info`
/// (`little_endian` must be true), the main pickle (storages as persistent ids
/// `('storage', type, key, location, numel, view_metadata)`), a pickled list of storage keys, then for
/// each key in that order: numel as 8-byte little-endian integer followed by numel × itemsize bytes.
///
/// Opening reads the pickles and the 8-byte storage headers only (it seeks over storage data);
/// storage bytes are read when a tensor is read. There is no checksum in this format.
public final class PyTorchLegacySource: TensorSource {
    public let path: String
    public let container = CheckpointContainer.pytorchLegacy
    public let entries: [TensorEntry]
    public let skipped: [SkippedEntry]
    public let notes: [String]
    public let stateDictKey: String?
    let file: RandomAccessFile
    /// Per storage key: byte offset of its data and its element count/type.
    private let storageData: [String: (offset: Int, numel: Int, dtype: DType)]
    private let refs: [String: TensorRef]

    static let magic: [UInt8] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]

    /// Opens `path` as a legacy PyTorch checkpoint.
    /// - Throws: ``MoepackError`` naming the file (and tensor/storage): bad magic or protocol version,
    ///   big-endian `sys_info`, refused pickle globals, storage size mismatches, truncation, trailing
    ///   bytes, views out of bounds.
    public convenience init(path: String, options: OpenOptions = OpenOptions()) throws {
        try self.init(file: RandomAccessFile(path), options: options)
    }

    init(file: RandomAccessFile, options: OpenOptions) throws {
        let path = file.path
        self.path = path
        self.file = file
        func bad(_ item: String?, _ m: String) -> MoepackError { MoepackError(.badInput, file: path, item: item, m) }
        let input = PickleInput(file: file, offset: 0)
        let u = RestrictedUnpickler(file: path, record: "legacy header")
        guard case .bigInt(let m) = try u.load(input, persistentLoad: nil), m == Self.magic else {
            throw bad(nil, "not a legacy PyTorch checkpoint: the first pickle is not the torch magic number")
        }
        guard case .int(let proto) = try u.load(input, persistentLoad: nil), proto == 1001 else {
            throw bad(nil, "legacy PyTorch protocol version is not 1001")
        }
        guard case .dict(let sysInfo, _) = try u.load(input, persistentLoad: nil) else {
            throw bad(nil, "legacy PyTorch sys_info is not a dict")
        }
        if let le = sysInfo.first(where: { $0.key.stringValue == "little_endian" }), case .bool(false) = le.value {
            throw MoepackError(.unsupported, file: path, "big-endian checkpoints are not supported")
        }
        // Main pickle: record storages and their views.
        var storages: [String: StorageRef] = [:]
        let main = RestrictedUnpickler(file: path, record: "pickle")
        let root = try main.load(input) { pid in
            let (s, view) = try TorchCheckpoint.parseStorageID(pid, legacy: true, file: path)
            if let prev = storages[s.key], prev.dtype != s.dtype || prev.numel != s.numel {
                throw bad("storage \(s.key)", "storage referenced with two different types or sizes")
            }
            storages[s.key] = s
            if let view {
                return .storageRef(StorageRef(key: s.key, dtype: s.dtype, numel: view.numel, location: s.location,
                                              elementOffset: view.offset))
            }
            return .storageRef(s)
        }
        let keysValue = try RestrictedUnpickler(file: path, record: "storage keys").load(input, persistentLoad: nil)
        guard case .list(let keyItems) = keysValue else { throw bad(nil, "storage key list is a \(keysValue.typeName)") }
        var storageData: [String: (offset: Int, numel: Int, dtype: DType)] = [:]
        var pos = input.position
        for k in keyItems {
            guard let key = k.stringValue ?? k.intValue.map(String.init) else { throw bad(nil, "storage key is a \(k.typeName)") }
            guard let s = storages[key] else { throw bad("storage \(key)", "listed storage is not used by the pickle") }
            guard storageData[key] == nil else { throw bad("storage \(key)", "storage listed twice") }
            let hdr = try file.read(at: pos, count: 8, what: "storage \(key)")
            var r = LEReader(hdr)
            guard let n = r.u64() else { throw bad("storage \(key)", "element count does not fit in 64 bits") }
            guard n == s.numel else { throw bad("storage \(key)", "stores \(n) elements, the pickle declares \(s.numel)") }
            let (bytes, o1) = n.multipliedReportingOverflow(by: s.dtype.byteSize)
            let (end, o2) = (pos + 8).addingReportingOverflow(bytes)
            guard !o1, !o2, end <= file.size else {
                throw bad("storage \(key)", "\(n) elements of \(s.dtype.rawValue) run past the end of the file (truncated)")
            }
            storageData[key] = (pos + 8, n, s.dtype)
            pos = end
        }
        guard pos == file.size else { throw bad(nil, "\(file.size - pos) unexpected bytes after the last storage") }
        for key in storages.keys where storageData[key] == nil {
            throw bad("storage \(key)", "storage is used by the pickle but has no data")
        }
        let sel = try TorchCheckpoint.selectStateDict(root, options: options, file: path)
        var entries: [TensorEntry] = []
        var refs: [String: TensorRef] = [:]
        for (name, t) in sel.tensors {
            _ = try TorchCheckpoint.validate(t, name: name, file: path)
            guard let d = storageData[t.storage.key] else { throw bad(name, "storage '\(t.storage.key)' has no data") }
            let (viewEnd, o) = t.storage.elementOffset.addingReportingOverflow(t.storage.numel)
            guard !o, viewEnd <= d.numel else { throw bad(name, "storage view runs past its root storage") }
            guard refs[name] == nil else { throw bad(name, "duplicate tensor name") }
            refs[name] = t
            entries.append(TensorEntry(name: name, dtype: t.storage.dtype, shape: t.shape))
        }
        self.entries = entries
        self.refs = refs
        self.storageData = storageData
        self.skipped = sel.skipped
        self.stateDictKey = sel.key
        self.notes = ["pytorch legacy format (protocol 1001)"] + sel.notes
    }

    public func readRaw(_ name: String) throws -> [UInt8] {
        guard let t = refs[name], let d = storageData[t.storage.key] else {
            throw MoepackError(.badInput, file: path, item: name, "no such tensor")
        }
        let isz = t.storage.dtype.byteSize
        let bytes = try file.read(at: d.offset + t.storage.elementOffset * isz, count: t.storage.numel * isz, what: name)
        return TorchCheckpoint.gather(bytes, t)
    }

    public func readFloat32(_ name: String) throws -> [Float] {
        guard let t = refs[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        return TorchCheckpoint.toFloat32(try readRaw(name), dtype: t.storage.dtype)
    }
}
