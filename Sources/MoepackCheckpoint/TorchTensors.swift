import MoepackCore

/// Shared PyTorch logic for the zip and legacy containers: parsing persistent ids, choosing the
/// state_dict inside a training checkpoint, validating tensor views and gathering strided data.
enum TorchCheckpoint {
    /// Keys searched, in order, for the state_dict of a training checkpoint.
    static let stateDictKeys = ["state_dict", "model", "model_state", "net", "ema"]

    /// Parses a storage persistent id `('storage', storage_type, key, location, numel[, view_metadata])`.
    /// Returns the storage and, for legacy views, `(view_key, element_offset, view_numel)`.
    static func parseStorageID(_ pid: PickleValue, legacy: Bool, file: String) throws
        -> (StorageRef, view: (key: String, offset: Int, numel: Int)?)
    {
        func bad(_ m: String) -> MoepackError { MoepackError(.badInput, file: file, item: "data.pkl", m) }
        guard case .tuple(let t) = pid, t.count == (legacy ? 6 : 5), t[0].stringValue == "storage" else {
            throw bad("persistent id is not ('storage', type, key, location, numel\(legacy ? ", view" : ""))")
        }
        guard let dtype = RestrictedUnpickler.storageDType(t[1]) else {
            throw bad("persistent id names unsupported storage type \(t[1].typeName)")
        }
        let key: String
        switch t[2] {
        case .string(let s): key = s
        case .int(let i): key = String(i)
        default: throw bad("storage key is a \(t[2].typeName), expected a string")
        }
        guard let location = t[3].stringValue else { throw bad("storage '\(key)': location is not a string") }
        guard let numel = t[4].intValue, numel >= 0 else { throw bad("storage '\(key)': element count is not a non-negative int") }
        var view: (String, Int, Int)? = nil
        if legacy, case .tuple(let v) = t[5] {
            guard v.count == 3, let vk = v[0].stringValue ?? v[0].intValue.map(String.init),
                  let off = v[1].intValue, let vn = v[2].intValue, off >= 0, vn >= 0 else {
                throw bad("storage '\(key)': malformed view metadata")
            }
            view = (vk, off, vn)
        } else if legacy, case .none = t[5] {
        } else if legacy {
            throw bad("storage '\(key)': view metadata is a \(t[5].typeName)")
        }
        return (StorageRef(key: key, dtype: dtype, numel: numel, location: location), view)
    }

    /// The tensors, skipped entries, notes and chosen state_dict key (nil: the top level) of an
    /// unpickled `torch.save` object.
    ///
    /// Rule: with `options.stateDictKey` that key must hold a dict; otherwise the first of
    /// ``stateDictKeys`` whose value is a dict holding at least one tensor; otherwise the top level
    /// when it holds tensors. Every other top-level entry is skipped unread; non-tensor values inside
    /// the state_dict (ints, nested dicts, `_metadata`) are skipped. Names are kept as stored.
    static func selectStateDict(_ root: PickleValue, options: OpenOptions, file: String) throws
        -> (tensors: [(String, TensorRef)], skipped: [SkippedEntry], notes: [String], key: String?)
    {
        guard case .dict(let top, let topAttrs) = root else {
            if case .tensorRef = root {
                throw MoepackError(.unsupported, file: file, "the checkpoint is a single bare tensor, not a dict of named tensors")
            }
            throw MoepackError(.badInput, file: file, "top-level pickle object is a \(root.typeName), expected a dict (state_dict or training checkpoint)")
        }
        func keyName(_ k: PickleValue) -> String {
            switch k {
            case .string(let s): return s
            case .int(let i): return String(i)
            default: return "<\(k.typeName) key>"
            }
        }
        func hasTensor(_ v: PickleValue) -> Bool {
            if case .dict(let items, _) = v { return items.contains { if case .tensorRef = $0.value { return true }; return false } }
            return false
        }
        var chosen: String? = nil
        if let k = options.stateDictKey {
            guard let item = top.first(where: { $0.key.stringValue == k }) else {
                throw MoepackError(.badInput, file: file, item: k, "no such top-level key (keys: \(top.prefix(12).map { keyName($0.key) }.joined(separator: ", ")))")
            }
            guard case .dict = item.value else {
                throw MoepackError(.badInput, file: file, item: k, "top-level entry is a \(item.value.typeName), expected a state_dict")
            }
            guard hasTensor(item.value) else {
                throw MoepackError(.badInput, file: file, item: k, "top-level entry holds no tensors, expected a state_dict")
            }
            chosen = k
        } else {
            for k in stateDictKeys {
                if let item = top.first(where: { $0.key.stringValue == k }), hasTensor(item.value) { chosen = k; break }
            }
        }
        var notes: [String] = []
        var skipped: [SkippedEntry] = []
        let sdItems: [PickleDictItem]
        let sdAttrs: [PickleDictItem]
        if let chosen, let item = top.first(where: { $0.key.stringValue == chosen }), case .dict(let items, let attrs) = item.value {
            notes.append("state_dict found under key '\(chosen)'")
            sdItems = items; sdAttrs = attrs
            for other in top where other.key.stringValue != chosen {
                skipped.append(SkippedEntry(name: keyName(other.key),
                                            reason: "top-level \(other.value.typeName) outside the state_dict '\(chosen)' (training state, not read)"))
            }
            for a in topAttrs { skipped.append(SkippedEntry(name: keyName(a.key), reason: "pickled attribute of the checkpoint dict")) }
        } else {
            guard hasTensor(root) else {
                throw MoepackError(.badInput, file: file, "no tensors found: the top-level dict has no tensor values and none of the keys \(stateDictKeys.joined(separator: ", ")) holds a state_dict (name the key with --key)")
            }
            notes.append("state_dict is the top-level dict")
            sdItems = top; sdAttrs = topAttrs
        }
        var tensors: [(String, TensorRef)] = []
        for item in sdItems {
            let name = keyName(item.key)
            guard case .string = item.key else {
                skipped.append(SkippedEntry(name: name, reason: "key is a \(item.key.typeName), not a string"))
                continue
            }
            if case .tensorRef(let t) = item.value {
                tensors.append((name, t))
            } else {
                skipped.append(SkippedEntry(name: name, reason: "\(item.value.typeName) value, not a tensor"))
            }
        }
        for a in sdAttrs {
            skipped.append(SkippedEntry(name: keyName(a.key), reason: "state_dict attribute (\(a.value.typeName)), not a tensor"))
        }
        return (tensors, skipped, notes, chosen)
    }

    /// Checks a view against its storage: non-negative sizes/strides, no overflow in the element
    /// count, and `offset + Σ(size−1)·stride < numel` (empty tensors need only `offset ≤ numel`).
    /// - Returns: the element count.
    static func validate(_ t: TensorRef, name: String, file: String) throws -> Int {
        func bad(_ m: String) -> MoepackError { MoepackError(.badInput, file: file, item: name, m) }
        guard t.offset >= 0 else { throw bad("negative storage offset \(t.offset)") }
        var count = 1
        var last = t.offset
        for (s, st) in zip(t.shape, t.stride) {
            guard s >= 0 else { throw bad("negative size in shape \(shapeString(t.shape))") }
            guard st >= 0 else { throw bad("negative stride in \(shapeString(t.stride))") }
            let (c, o1) = count.multipliedReportingOverflow(by: s)
            guard !o1 else { throw bad("element count of shape \(shapeString(t.shape)) overflows") }
            count = c
            if s > 0 {
                let (span, o2) = (s - 1).multipliedReportingOverflow(by: st)
                let (l, o3) = last.addingReportingOverflow(span)
                guard !o2, !o3 else { throw bad("view extent overflows") }
                last = l
            }
        }
        if count == 0 {
            guard t.offset <= t.storage.numel else { throw bad("storage offset \(t.offset) beyond the storage of \(t.storage.numel) elements") }
        } else {
            guard last < t.storage.numel else {
                throw bad("view (offset \(t.offset), shape \(shapeString(t.shape)), stride \(shapeString(t.stride))) reaches element \(last) of a storage with \(t.storage.numel) elements")
            }
        }
        let (_, o4) = count.multipliedReportingOverflow(by: t.storage.dtype.byteSize)
        guard !o4 else { throw bad("byte size overflows") }
        return count
    }

    /// Gathers a (validated) view from its storage bytes into C order.
    /// `storage` holds the storage's elements starting at element 0 (legacy views are pre-sliced).
    static func gather(_ storage: [UInt8], _ t: TensorRef) -> [UInt8] {
        let isz = t.storage.dtype.byteSize
        let count = t.shape.reduce(1, *)
        if count == 0 { return [] }
        // Contiguous C-order view: one copy.
        var contiguous = true
        var expect = 1
        for k in stride(from: t.shape.count - 1, through: 0, by: -1) where t.shape[k] != 1 {
            if t.stride[k] != expect { contiguous = false; break }
            expect *= t.shape[k]
        }
        if contiguous {
            // The whole storage (the usual case) is returned as is: no copy.
            if t.offset == 0 && count * isz == storage.count { return storage }
            return Array(storage[t.offset * isz..<(t.offset + count) * isz])
        }
        var out = [UInt8](repeating: 0, count: count * isz)
        let rank = t.shape.count
        var idx = [Int](repeating: 0, count: rank)
        var src = t.offset
        storage.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { o in
                for n in 0..<count {
                    (o.baseAddress! + n * isz).copyMemory(from: s.baseAddress! + src * isz, byteCount: isz)
                    var k = rank - 1
                    while k >= 0 {
                        idx[k] += 1
                        src += t.stride[k]
                        if idx[k] < t.shape[k] { break }
                        src -= t.stride[k] * t.shape[k]
                        idx[k] = 0
                        k -= 1
                    }
                }
            }
        }
        return out
    }

    /// Decodes gathered little-endian bytes of `dtype` to float32.
    static func toFloat32(_ raw: [UInt8], dtype: DType) -> [Float] {
        let count = raw.count / dtype.byteSize
        // decodeToFloat32 writes all `count` values, so no zero fill first.
        return [Float](unsafeUninitializedCapacity: count) { o, initialized in
            raw.withUnsafeBytes { r in decodeToFloat32(r, dtype: dtype, count: count, into: o) }
            initialized = count
        }
    }
}
