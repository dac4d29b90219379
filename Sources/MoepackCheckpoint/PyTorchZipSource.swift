import Foundation
import MoepackCore

/// A `torch.save` checkpoint in the zip format (PyTorch ≥ 1.6, `_use_new_zipfile_serialization=True`),
/// container `pytorch-zip`.
///
/// Layout (torch/serialization.py, caffe2 `PyTorchStreamWriter`): records `<archive>/data.pkl` (the
/// pickled object, storages as persistent ids `('storage', type, key, location, numel)`),
/// `<archive>/data/<key>` (raw little-endian storage bytes, numel × itemsize), `<archive>/byteorder`
/// (optional, `little`; `big` is refused) and `<archive>/version`.
///
/// Opening reads the zip directory, `data.pkl`, `byteorder` and `version` only; a tensor's storage
/// record is read (and CRC-checked) when that tensor is read. Records of skipped entries (optimizer
/// state, …) are never read. A storage that several tensors are views of (`torch.save` of slices of
/// one buffer) is read once: its bytes are kept until every tensor viewing it has been read.
public final class PyTorchZipSource: TensorSource {
    public let path: String
    public let container = CheckpointContainer.pytorchZip
    public let entries: [TensorEntry]
    public let skipped: [SkippedEntry]
    public let notes: [String]
    public let stateDictKey: String?
    /// The underlying archive (exposes ``ZipArchive/recordReadCount`` for laziness checks).
    public let archive: ZipArchive
    /// Record-name prefix, e.g. `archive/`.
    public let prefix: String
    private let refs: [String: TensorRef]
    /// Storage key → names of the tensors that view it, for storages viewed by more than one tensor.
    private let sharers: [String: Set<String>]
    /// Shared storages read and not yet read by all their tensors: bytes and the names still to read.
    /// (Guarded by `sharedLock`.)
    nonisolated(unsafe) private var shared: [String: (bytes: [UInt8], pending: Set<String>)] = [:]
    private let sharedLock = NSLock()

    /// Opens `path` as a PyTorch zip checkpoint.
    /// - Throws: ``MoepackError`` naming the file and record/tensor: zip structure errors, missing
    ///   `data.pkl`, refused pickle globals, big-endian byteorder, storage records whose length is not
    ///   numel × itemsize, views out of bounds.
    public convenience init(path: String, options: OpenOptions = OpenOptions()) throws {
        try self.init(archive: ZipArchive(path: path), options: options)
    }

    init(archive: ZipArchive, options: OpenOptions) throws {
        let path = archive.path
        self.path = path
        self.archive = archive
        let pkls = archive.entries.filter { $0.name.hasSuffix("/data.pkl") || $0.name == "data.pkl" }
        guard pkls.count == 1, let pkl = pkls.first else {
            throw MoepackError(.badInput, file: path, pkls.isEmpty ? "zip archive has no data.pkl record (not a torch.save checkpoint)"
                                                     : "zip archive has \(pkls.count) data.pkl records")
        }
        let prefix = String(pkl.name.dropLast("data.pkl".count))
        self.prefix = prefix
        if archive.entry(prefix + "constants.pkl") != nil || archive.entry(prefix + "code/") != nil {
            throw MoepackError(.unsupported, file: path, "TorchScript archive (torch.jit.save); save the model's state_dict with torch.save instead")
        }
        var notes: [String] = []
        if let bo = archive.entry(prefix + "byteorder") {
            let b = String(decoding: try archive.read(bo), as: UTF8.self)
            if b == "big" { throw MoepackError(.unsupported, file: path, item: bo.name, "big-endian checkpoints are not supported") }
            guard b == "little" else { throw MoepackError(.badInput, file: path, item: bo.name, "byteorder is '\(b.prefix(20))', expected 'little'") }
        }
        if let v = archive.entry(prefix + "version") ?? archive.entry(prefix + ".data/version") {
            let s = String(decoding: try archive.read(v), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !s.isEmpty, s.allSatisfy(\.isNumber) else { throw MoepackError(.badInput, file: path, item: v.name, "version record is not a number") }
            notes.append("pytorch zip format version \(s)")
        }
        guard pkl.uncompressedSize <= 1 << 30 else {
            throw MoepackError(.badInput, file: path, item: pkl.name, "data.pkl of \(pkl.uncompressedSize) bytes exceeds the 1 GiB limit")
        }
        let pickleBytes = try archive.read(pkl)
        var storages: [String: StorageRef] = [:]
        let unpickler = RestrictedUnpickler(file: path, record: pkl.name)
        let root = try unpickler.load(pickleBytes) { pid in
            let (s, _) = try TorchCheckpoint.parseStorageID(pid, legacy: false, file: path)
            if let prev = storages[s.key], prev.dtype != s.dtype || prev.numel != s.numel {
                throw MoepackError(.badInput, file: path, item: "data/\(s.key)", "storage referenced with two different types or sizes")
            }
            storages[s.key] = s
            return .storageRef(s)
        }
        let sel = try TorchCheckpoint.selectStateDict(root, options: options, file: path)
        var entries: [TensorEntry] = []
        var refs: [String: TensorRef] = [:]
        for (name, t) in sel.tensors {
            _ = try TorchCheckpoint.validate(t, name: name, file: path)
            let rec = prefix + "data/" + t.storage.key
            guard let e = archive.entry(rec) else {
                throw MoepackError(.badInput, file: path, item: name, "storage record '\(rec)' is missing")
            }
            let (want, o) = t.storage.numel.multipliedReportingOverflow(by: t.storage.dtype.byteSize)
            guard !o, e.uncompressedSize == want else {
                throw MoepackError(.badInput, file: path, item: name,
                                   "storage record '\(rec)' holds \(e.uncompressedSize) bytes, expected \(t.storage.numel) × \(t.storage.dtype.byteSize)")
            }
            guard refs[name] == nil else { throw MoepackError(.badInput, file: path, item: name, "duplicate tensor name") }
            refs[name] = t
            entries.append(TensorEntry(name: name, dtype: t.storage.dtype, shape: t.shape))
        }
        self.entries = entries
        self.refs = refs
        sharers = Dictionary(grouping: refs, by: { $0.value.storage.key })
            .filter { $0.value.count > 1 }.mapValues { Set($0.map(\.key)) }
        self.skipped = sel.skipped
        self.stateDictKey = sel.key
        self.notes = notes + sel.notes
    }

    public func readRaw(_ name: String) throws -> [UInt8] {
        guard let t = refs[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        let record = prefix + "data/" + t.storage.key
        let bytes = try storageBytes(t, for: name)
        // The directory size was checked at open; a record that changed since is refused, not trapped on.
        let (need, o) = t.storage.numel.multipliedReportingOverflow(by: t.storage.dtype.byteSize)
        guard !o, bytes.count == need else {
            throw MoepackError(.badInput, file: path, item: name, "record '\(record)' holds \(bytes.count) bytes, expected \(t.storage.numel) × \(t.storage.dtype.byteSize)")
        }
        return TorchCheckpoint.gather(bytes, t)
    }

    /// The bytes of `t`'s storage record for reading tensor `name`: from the archive (CRC-checked), or
    /// for a shared storage from the copy kept since another of its tensors was read.
    private func storageBytes(_ t: TensorRef, for name: String) throws -> [UInt8] {
        let key = t.storage.key
        if let names = sharers[key] {
            let kept: [UInt8]? = sharedLock.withLock {
                guard var s = shared[key] else { return nil }
                s.pending.remove(name)
                shared[key] = s.pending.isEmpty ? nil : s
                return s.bytes
            }
            if let kept { return kept }
            let bytes = try readRecord(key, for: name)
            sharedLock.withLock {
                let pending = names.subtracting([name])
                if !pending.isEmpty { shared[key] = (bytes, pending) }
            }
            return bytes
        }
        return try readRecord(key, for: name)
    }

    private func readRecord(_ key: String, for name: String) throws -> [UInt8] {
        let record = prefix + "data/" + key
        do { return try archive.read(record) } catch var e as MoepackError where e.item == record {
            // Name the tensor the user asked for; the record stays in the message.
            e.item = name
            e.message = "record '\(record)': " + e.message
            throw e
        }
    }

    public func readFloat32(_ name: String) throws -> [Float] {
        guard let t = refs[name] else { throw MoepackError(.badInput, file: path, item: name, "no such tensor") }
        return TorchCheckpoint.toFloat32(try readRaw(name), dtype: t.storage.dtype)
    }
}
