@preconcurrency import CHDF5
import Foundation
import MoepackCore

/// Serializes every libhdf5 call: the system library is built without thread safety.
let hdf5Lock = NSLock()

/// Collects link names and types during `H5Literate`.
private final class HDF5LinkList {
    var items: [(name: String, type: H5L_type_t)] = []
}

/// Collects error-stack descriptions during `H5Ewalk2`.
private final class HDF5ErrorList {
    var descriptions: [String] = []
}

/// The most specific message on libhdf5's error stack (then clears it). Call with ``hdf5Lock`` held.
private func hdf5ErrorText() -> String {
    let list = HDF5ErrorList()
    _ = withExtendedLifetime(list) {
        H5Ewalk2(0 /* H5E_DEFAULT */, H5E_WALK_UPWARD, { _, err, data in
            guard let err, let data else { return 0 }
            let l = Unmanaged<HDF5ErrorList>.fromOpaque(data).takeUnretainedValue()
            if let d = err.pointee.desc { l.descriptions.append(String(cString: d)) }
            return 0
        }, Unmanaged.passUnretained(list).toOpaque())
    }
    H5Eclear2(0)
    let useful = list.descriptions.filter { !$0.isEmpty }
    return useful.isEmpty ? "" : " (libhdf5: \(useful.prefix(2).joined(separator: "; ")))"
}

/// An HDF5 file (Keras `.h5`, h5py saves) opened for lazy reading through the system libhdf5.
///
/// Every group is walked recursively (links in name order); the dataset at path `a/b/c` becomes tensor
/// `a.b.c`. Float datasets of 2 bytes (IEEE half, or bfloat16 stored as a custom float type), 4 or
/// 8 bytes (either byte order) are weights (``entries``);
/// integer, string, enum (h5py bool), compound and other datasets are listed in ``skipped`` with the
/// reason, and asking to read one is an error naming the dataset. Soft and external links are not
/// followed (listed in ``skipped``). Chunked and compressed (gzip/shuffle) datasets read through the
/// library's filter pipeline.
///
/// libhdf5's automatic error printing is turned off; failures become ``MoepackError`` lines quoting the
/// library's innermost error description. All library calls hold a process-wide lock.
public final class HDF5Source: TensorSource {
    /// Largest dataset read, in bytes of float32/float64 memory (16 GiB).
    public static let maxDatasetBytes = 1 << 34
    /// Deepest group nesting followed (guards against hard-link cycles).
    public static let maxGroupDepth = 64
    /// Most links visited in total (guards against hard-link fan-out cycles).
    public static let maxLinks = 1_000_000

    public let path: String
    public var container: CheckpointContainer { .hdf5 }
    public let entries: [TensorEntry]
    public let skipped: [SkippedEntry]
    public let notes: [String]

    private let fileID: hid_t
    /// tensor name → HDF5 object path (`/a/b/c`).
    private let objectPaths: [String: String]
    /// tensor name → reason, for datasets that are not float weights.
    private let refused: [String: String]

    /// Opens the HDF5 file at `path` read-only and lists its datasets; no dataset is read.
    /// - Throws: ``MoepackError`` naming the file: `badInput` when it is not an HDF5 file, cannot be
    ///   opened, two datasets map to the same tensor name, or the groups nest deeper than
    ///   ``maxGroupDepth``; `io` when it does not exist.
    public init(path: String) throws {
        self.path = path
        hdf5Lock.lock()
        defer { hdf5Lock.unlock() }
        _ = H5open()
        _ = H5Eset_auto2(0 /* H5E_DEFAULT */, nil, nil)
        guard FileManager.default.fileExists(atPath: path) else {
            throw MoepackError(.io, file: path, "no such file")
        }
        let isHDF5 = H5Fis_hdf5(path)
        guard isHDF5 > 0 else {
            let detail = hdf5ErrorText()
            throw MoepackError(.badInput, file: path, "not an HDF5 file (no HDF5 superblock signature)\(isHDF5 < 0 ? detail : "")")
        }
        let fid = H5Fopen(path, 0 /* H5F_ACC_RDONLY */, 0 /* H5P_DEFAULT */)
        guard fid >= 0 else {
            throw MoepackError(.badInput, file: path, "libhdf5 cannot open the file\(hdf5ErrorText())")
        }
        var walk = Walk(path: path)
        do {
            try walk.visit(group: fid, prefix: [], depth: 0)
        } catch {
            H5Fclose(fid)
            throw error
        }
        self.fileID = fid
        self.entries = walk.entries
        self.skipped = walk.skipped
        self.objectPaths = walk.objectPaths
        self.refused = walk.refused
        var notes: [String] = []
        if !walk.bigEndian.isEmpty {
            notes.append("\(walk.bigEndian.count) dataset(s) stored big-endian; converted by libhdf5 on read")
        }
        if !walk.filtered.isEmpty {
            notes.append("\(walk.filtered.count) dataset(s) chunked; read through the libhdf5 filter pipeline")
        }
        self.notes = notes
    }

    deinit {
        hdf5Lock.lock()
        H5Fclose(fileID)
        hdf5Lock.unlock()
    }

    /// Group walk state (runs with ``hdf5Lock`` held).
    private struct Walk {
        let path: String
        var entries: [TensorEntry] = []
        var skipped: [SkippedEntry] = []
        var objectPaths: [String: String] = [:]
        var refused: [String: String] = [:]
        var bigEndian: [String] = []
        var filtered: [String] = []
        var linkCount = 0

        init(path: String) { self.path = path }

        mutating func visit(group gid: hid_t, prefix: [String], depth: Int) throws {
            guard depth < HDF5Source.maxGroupDepth else {
                throw MoepackError(.badInput, file: path, item: prefix.joined(separator: "/"),
                                   "groups nest deeper than \(HDF5Source.maxGroupDepth) levels (hard-link cycle?)")
            }
            let list = HDF5LinkList()
            var idx: hsize_t = 0
            let rc = withExtendedLifetime(list) {
                H5Literate(gid, H5_INDEX_NAME, H5_ITER_INC, &idx, { _, name, info, data in
                    guard let name, let info, let data else { return -1 }
                    let l = Unmanaged<HDF5LinkList>.fromOpaque(data).takeUnretainedValue()
                    l.items.append((String(cString: name), info.pointee.type))
                    return 0
                }, Unmanaged.passUnretained(list).toOpaque())
            }
            guard rc >= 0 else {
                throw MoepackError(.badInput, file: path, item: "/" + prefix.joined(separator: "/"),
                                   "cannot list the group's links\(hdf5ErrorText())")
            }
            for (name, type) in list.items {
                linkCount += 1
                let comps = prefix + [name]
                let objectPath = "/" + comps.joined(separator: "/")
                let tensorName = comps.joined(separator: ".")
                guard linkCount <= HDF5Source.maxLinks else {
                    throw MoepackError(.badInput, file: path, item: objectPath, "more than \(HDF5Source.maxLinks) links (hard-link cycle?)")
                }
                if type != H5L_TYPE_HARD {
                    let kind = type == H5L_TYPE_SOFT ? "soft link" : (type == H5L_TYPE_EXTERNAL ? "external link" : "user-defined link")
                    skipped.append(SkippedEntry(name: tensorName, reason: "\(kind) (not followed)"))
                    continue
                }
                let oid = H5Oopen(gid, name, 0)
                guard oid >= 0 else {
                    throw MoepackError(.badInput, file: path, item: objectPath, "cannot open the object\(hdf5ErrorText())")
                }
                defer { H5Oclose(oid) }
                let kind = H5Iget_type(oid)
                if kind == H5I_GROUP {
                    try visit(group: oid, prefix: comps, depth: depth + 1)
                } else if kind == H5I_DATASET {
                    try dataset(oid, objectPath: objectPath, tensorName: tensorName)
                } else if kind == H5I_DATATYPE {
                    skipped.append(SkippedEntry(name: tensorName, reason: "named datatype, not a dataset"))
                } else {
                    skipped.append(SkippedEntry(name: tensorName, reason: "HDF5 object that is not a group or dataset"))
                }
            }
        }

        mutating func dataset(_ did: hid_t, objectPath: String, tensorName: String) throws {
            if objectPaths[tensorName] != nil || refused[tensorName] != nil {
                throw MoepackError(.badInput, file: path, item: objectPath,
                                   "dataset maps to tensor name '\(tensorName)', which another dataset already has")
            }
            let tid = H5Dget_type(did)
            guard tid >= 0 else {
                throw MoepackError(.badInput, file: path, item: objectPath, "cannot read the dataset's datatype\(hdf5ErrorText())")
            }
            defer { H5Tclose(tid) }
            let sid = H5Dget_space(did)
            guard sid >= 0 else {
                throw MoepackError(.badInput, file: path, item: objectPath, "cannot read the dataset's dataspace\(hdf5ErrorText())")
            }
            defer { H5Sclose(sid) }
            let cls = H5Tget_class(tid)
            let size = H5Tget_size(tid)

            func refuse(_ reason: String) {
                skipped.append(SkippedEntry(name: tensorName, reason: reason))
                refused[tensorName] = reason
            }

            var dtype: DType?
            if cls == H5T_FLOAT {
                var spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0
                H5Tget_fields(tid, &spos, &epos, &esize, &mpos, &msize)
                switch size {
                case 2 where esize == 8 && msize == 7: dtype = .bfloat16
                case 2 where esize == 5 && msize == 10: dtype = .float16
                case 2: refuse("2-byte float dataset with \(esize) exponent and \(msize) mantissa bits (neither IEEE half nor bfloat16)")
                case 4: dtype = .float32
                case 8: dtype = .float64
                default: refuse("float dataset of \(size) bytes per element (only 2, 4, 8 are read)")
                }
            } else if cls == H5T_INTEGER {
                let signed = H5Tget_sign(tid) == H5T_SGN_2
                refuse("integer dataset (\(signed ? "signed" : "unsigned") \(size * 8)-bit), not a float weight")
            } else if cls == H5T_STRING {
                refuse("string dataset, not a float weight")
            } else if cls == H5T_ENUM {
                refuse("enum dataset (h5py bool?), not a float weight")
            } else if cls == H5T_COMPOUND {
                refuse("compound dataset, not a float weight")
            } else {
                refuse("dataset of HDF5 type class \(cls.rawValue), not a float weight")
            }
            guard let dtype else { return }

            let extent = H5Sget_simple_extent_type(sid)
            if extent == H5S_NULL {
                refuse("dataset with a null dataspace (no elements, no shape)")
                return
            }
            let rank = H5Sget_simple_extent_ndims(sid)
            guard rank >= 0, rank <= 32 else {
                throw MoepackError(.badInput, file: path, item: objectPath, "dataset rank \(rank) is invalid")
            }
            var dims = [hsize_t](repeating: 0, count: Int(rank))
            if rank > 0 {
                guard H5Sget_simple_extent_dims(sid, &dims, nil) == rank else {
                    throw MoepackError(.badInput, file: path, item: objectPath, "cannot read the dataset's dimensions\(hdf5ErrorText())")
                }
            }
            var shape: [Int] = []
            var bytes = dtype == .float64 ? 8 : 4
            for d in dims {
                guard d <= hsize_t(Int.max) else {
                    throw MoepackError(.badInput, file: path, item: objectPath, "dimension \(d) is too large")
                }
                let (p, o) = bytes.multipliedReportingOverflow(by: Int(d))
                guard !o, p <= HDF5Source.maxDatasetBytes else {
                    throw MoepackError(.badInput, file: path, item: objectPath,
                                       "dataset of shape \(shapeString(shape + [Int(d)]) + "…") exceeds the \(HDF5Source.maxDatasetBytes)-byte read cap")
                }
                bytes = p
                shape.append(Int(d))
            }
            if H5Tget_order(tid) == H5T_ORDER_BE { bigEndian.append(tensorName) }
            let plist = H5Dget_create_plist(did)
            if plist >= 0 {
                if H5Pget_layout(plist) == H5D_CHUNKED { filtered.append(tensorName) }
                H5Pclose(plist)
            }
            entries.append(TensorEntry(name: tensorName, dtype: dtype, shape: shape))
            objectPaths[tensorName] = objectPath
        }
    }

    private func check(_ name: String) throws -> (String, TensorEntry) {
        if let reason = refused[name] {
            let kind = reason.hasPrefix("integer") ? "integer dataset" : reason.hasPrefix("string") ? "string dataset"
                : "dataset of a non-float type"
            throw MoepackError(.mismatch, file: path, item: name, "\(kind) where a float weight is expected (\(reason))")
        }
        guard let p = objectPaths[name], let e = entry(name) else {
            throw MoepackError(.badInput, file: path, item: name, "no such dataset")
        }
        return (p, e)
    }

    /// Reads a float dataset through libhdf5 into `out` as the native `memType`. Lock held by caller.
    private func read<T>(_ objectPath: String, name: String, count: Int, memType: hid_t, zero: T) throws -> [T] {
        if count == 0 { return [] }
        let did = H5Dopen2(fileID, objectPath, 0)
        guard did >= 0 else {
            throw MoepackError(.badInput, file: path, item: name, "cannot open the dataset\(hdf5ErrorText())")
        }
        defer { H5Dclose(did) }
        // A dataset may declare any extent and store nothing (fill values): before reserving memory,
        // a large dataset must store at least 1/1032 of its bytes (gzip's largest ratio) in the file.
        let (bytes, o) = count.multipliedReportingOverflow(by: MemoryLayout<T>.stride)
        let stored = Int(clamping: H5Dget_storage_size(did))
        guard !o, bytes <= Self.maxDatasetBytes, bytes <= 64 << 20 || bytes / 1032 <= stored else {
            throw MoepackError(.badInput, file: path, item: name,
                               "dataset declares \(count) elements but stores \(stored) bytes in the file (fill values or a corrupted extent)")
        }
        var out = [T](repeating: zero, count: count)
        let rc = out.withUnsafeMutableBytes { H5Dread(did, memType, 0 /* H5S_ALL */, 0 /* H5S_ALL */, 0 /* H5P_DEFAULT */, $0.baseAddress) }
        guard rc >= 0 else {
            throw MoepackError(.badInput, file: path, item: name, "libhdf5 cannot read the dataset (corrupted data or unavailable filter)\(hdf5ErrorText())")
        }
        return out
    }

    /// Reads a float dataset as float32 in C order; float64 is read as double and rounded to nearest.
    /// - Throws: ``MoepackError`` naming the dataset: `mismatch` for integer/string/other non-float
    ///   datasets ("integer dataset where a float weight is expected"), `badInput` for unknown names and
    ///   read failures.
    public func readFloat32(_ name: String) throws -> [Float] {
        let (p, e) = try check(name)
        hdf5Lock.lock()
        defer { hdf5Lock.unlock() }
        if e.dtype == .float64 {
            return try read(p, name: name, count: e.elementCount, memType: H5T_NATIVE_DOUBLE_g, zero: 0.0 as Double).map { Float($0) }
        }
        return try read(p, name: name, count: e.elementCount, memType: H5T_NATIVE_FLOAT_g, zero: 0 as Float)
    }

    /// Reads the stored values as little-endian bytes of the stored dtype (F16 and BF16 are read as
    /// float32 by the library — libhdf5 1.10 has no native half type — and narrowed back exactly; NaN
    /// payloads are not preserved).
    public func readRaw(_ name: String) throws -> [UInt8] {
        let (p, e) = try check(name)
        hdf5Lock.lock()
        defer { hdf5Lock.unlock() }
        var out: [UInt8] = []
        switch e.dtype {
        case .float64:
            let v = try read(p, name: name, count: e.elementCount, memType: H5T_NATIVE_DOUBLE_g, zero: 0.0 as Double)
            out.reserveCapacity(v.count * 8)
            for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        case .float16:
            let v = try read(p, name: name, count: e.elementCount, memType: H5T_NATIVE_FLOAT_g, zero: 0 as Float)
            out.reserveCapacity(v.count * 2)
            for x in v { withUnsafeBytes(of: Float16(x).bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        case .bfloat16:
            // Every bfloat16 value is a float32 whose low 16 bits are zero: keep the high half.
            let v = try read(p, name: name, count: e.elementCount, memType: H5T_NATIVE_FLOAT_g, zero: 0 as Float)
            out.reserveCapacity(v.count * 2)
            for x in v { withUnsafeBytes(of: UInt16(truncatingIfNeeded: x.bitPattern >> 16).littleEndian) { out.append(contentsOf: $0) } }
        default:
            let v = try read(p, name: name, count: e.elementCount, memType: H5T_NATIVE_FLOAT_g, zero: 0 as Float)
            out.reserveCapacity(v.count * 4)
            for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        }
        return out
    }
}
