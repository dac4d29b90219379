import Foundation
import MoepackCore

/// A storage that a pickle refers to through `persistent_load` (PyTorch serialization).
///
/// For the zip format the id is `('storage', storage_type, key, location, numel)` and the bytes are
/// the record `<archive>/data/<key>`; for the legacy format it is
/// `('storage', storage_type, root_key, location, numel, view_metadata)`.
public struct StorageRef: Sendable, Equatable {
    /// Storage key (zip: record name under `data/`; legacy: root storage key).
    public var key: String
    /// Element type, from the storage type (`torch.FloatStorage` → F32, …).
    public var dtype: DType
    /// Elements in this storage (or storage view).
    public var numel: Int
    /// Device location string as saved (`cpu`, `cuda:0`); informational only.
    public var location: String
    /// Legacy storage views: element offset of this view inside the root storage (0 otherwise).
    public var elementOffset: Int

    public init(key: String, dtype: DType, numel: Int, location: String, elementOffset: Int = 0) {
        self.key = key; self.dtype = dtype; self.numel = numel; self.location = location
        self.elementOffset = elementOffset
    }
}

/// A tensor view as `torch._utils._rebuild_tensor_v2` describes it, not yet read.
///
/// Element `(i0, i1, …)` of the tensor is storage element `offset + Σ ik·stride[k]`.
public struct TensorRef: Sendable, Equatable {
    public var storage: StorageRef
    /// Storage offset in elements.
    public var offset: Int
    /// Axis sizes, outermost first.
    public var shape: [Int]
    /// Strides in elements, one per axis.
    public var stride: [Int]
}

/// One key/value pair of an unpickled dict, in insertion order.
public struct PickleDictItem: Sendable {
    public var key: PickleValue
    public var value: PickleValue
}

/// A value produced by ``RestrictedUnpickler``. Nothing in it is executable: callables from the
/// allow-list are interpreted into these cases, everything else is refused.
public indirect enum PickleValue: Sendable {
    case none
    case bool(Bool)
    case int(Int)
    /// An integer that does not fit in `Int`: little-endian two's-complement bytes (LONG1/LONG4).
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case list([PickleValue])
    case tuple([PickleValue])
    case set([PickleValue])
    /// A dict or `collections.OrderedDict`; `attributes` holds instance state set by BUILD (e.g. a
    /// state_dict's `_metadata`).
    case dict([PickleDictItem], attributes: [PickleDictItem])
    /// A reference to an allow-listed global (e.g. a storage type), `module.name`.
    case global(module: String, name: String)
    case storageRef(StorageRef)
    case tensorRef(TensorRef)
    /// An allow-listed object that moepack does not interpret (e.g. `torch.device`).
    case object(type: String, args: [PickleValue])

    /// A short type name for messages (`int`, `dict`, `tensor`, …).
    public var typeName: String {
        switch self {
        case .none: return "None"
        case .bool: return "bool"
        case .int, .bigInt: return "int"
        case .float: return "float"
        case .string: return "str"
        case .bytes: return "bytes"
        case .list: return "list"
        case .tuple: return "tuple"
        case .set: return "set"
        case .dict: return "dict"
        case .global(let m, let n): return "global \(m).\(n)"
        case .storageRef: return "storage"
        case .tensorRef: return "tensor"
        case .object(let t, _): return t
        }
    }

    /// String payload, if this is a string.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }
    /// Int payload, if this is an int (bools count as 0/1 like Python).
    public var intValue: Int? {
        switch self {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }
    /// Items of a tuple or list.
    public var sequence: [PickleValue]? {
        switch self {
        case .tuple(let a), .list(let a): return a
        default: return nil
        }
    }
}

/// Limits that keep hostile pickles from exhausting memory or the call stack.
public struct PickleLimits: Sendable {
    /// Items on the value stack.
    public var maxStack = 10_000_000
    /// Nested MARKs.
    public var maxMarks = 100_000
    /// Memo entries.
    public var maxMemo = 10_000_000
    /// Bytes of one string/bytes value.
    public var maxStringBytes = 64 << 20
    /// Elements of one list/tuple/dict/set.
    public var maxContainerCount = 10_000_000
    /// Nesting depth of the result (deeper or cyclic structures are refused).
    public var maxDepth = 200
    /// Total values in the result (shared sub-objects count once per reference; a cap on
    /// memo-sharing blow-ups such as `x = (x, x)` repeated).
    public var maxTotalValues = 10_000_000
    public init() {}
}

/// Where pickle opcodes come from: a byte array (zip `data.pkl`) or a file at an offset (legacy
/// format, read through a small buffer so the storage bytes after the pickles are never read).
final class PickleInput {
    private let file: RandomAccessFile?
    private var buffer: [UInt8]
    private var bufferStart: Int
    private let end: Int
    /// Absolute position of the next byte.
    private(set) var position: Int

    init(bytes: [UInt8]) {
        file = nil; buffer = bytes; bufferStart = 0; end = bytes.count; position = 0
    }

    init(file: RandomAccessFile, offset: Int) {
        self.file = file; buffer = []; bufferStart = offset; end = file.size; position = offset
    }

    var remaining: Int { end - position }

    private func fill(_ need: Int) throws {
        guard let file else { return }
        let have = bufferStart + buffer.count - position
        if have >= need { return }
        let count = min(max(need, 64 << 10), end - position)
        buffer = try file.read(at: position, count: count, what: "pickle")
        bufferStart = position
    }

    func byte() throws -> UInt8? {
        guard position < end else { return nil }
        try fill(1)
        let b = buffer[position - bufferStart]
        position += 1
        return b
    }

    func bytes(_ n: Int) throws -> [UInt8]? {
        guard n >= 0, n <= end - position else { return nil }
        try fill(n)
        let s = position - bufferStart
        position += n
        return Array(buffer[s..<s + n])
    }

    /// Bytes up to (excluding) the next newline, at most `max` bytes.
    func line(max: Int) throws -> [UInt8]? {
        var out: [UInt8] = []
        while let b = try byte() {
            if b == 0x0a { return out }
            out.append(b)
            if out.count > max { return nil }
        }
        return nil
    }
}

/// An opcode-level interpreter for the pickles `torch.save` writes (protocols 0–5), with an
/// allow-list of globals. It never imports or calls anything: GLOBAL/STACK_GLOBAL/INST of a name not
/// on the allow-list is refused immediately (``MoepackError`` `badInput`, "refused pickle global
/// 'posix.system'"), and REDUCE/NEWOBJ/BUILD on allow-listed names are interpreted into
/// ``PickleValue`` cases (tensor descriptors, dicts, tuples).
///
/// Allow-list (PyTorch serialization, `torch/_utils.py`, `torch/serialization.py`):
/// `torch._utils._rebuild_tensor_v2`, `_rebuild_tensor`, `_rebuild_parameter`,
/// `_rebuild_parameter_with_state`; storage types `torch.{Float,Half,BFloat16,Double,Long,Int,Short,
/// Char,Byte,Bool}Storage`; `collections.OrderedDict`; `torch.Size`; `torch.device`;
/// `builtins.{set,frozenset,list,dict,tuple}` (and `__builtin__` spellings); `_codecs.encode`
/// (latin-1 only, for protocol-2 bytes). Training checkpoints' extras (`best_acc`, `args`) are
/// interpreted as opaque values without calling anything: `numpy.core.multiarray.scalar` and
/// `numpy._core.multiarray.scalar` → `.object(type: "numpy.scalar")`, `numpy.dtype` →
/// `.object(type: "numpy.dtype")`, `argparse.Namespace` → `.object(type: "argparse.Namespace")` (BUILD
/// state is dropped); NumPy arrays (`numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`
/// with `numpy.ndarray`, NumPy 1 / 2) → `.object(type: "numpy.ndarray")` holding shape, typecode and the
/// BUILD state (dtype and raw bytes) undecoded. Refused on purpose: `torch.storage._load_from_bytes` (it
/// unpickles a nested pickle), anything from `os`, `posix`, `subprocess`, `builtins.eval`/`exec`, …
public struct RestrictedUnpickler {
    public typealias PersistentLoad = (PickleValue) throws -> PickleValue

    /// Allow-listed globals and what REDUCE on them means.
    enum Callable {
        case rebuildTensorV2, rebuildTensor, rebuildParameter, rebuildParameterWithState
        case storageType(DType)
        case orderedDict, torchSize, torchDevice, codecsEncode
        case builtinSet, builtinFrozenset, builtinList, builtinDict, builtinTuple
        /// Training-state values outside the state_dict, kept as opaque ``PickleValue/object(type:args:)``:
        /// `numpy.core.multiarray.scalar` / `numpy._core.multiarray.scalar` (NumPy 1 / 2), `numpy.dtype`,
        /// `argparse.Namespace`; arrays (`numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`
        /// of `numpy.ndarray`, then BUILD with (version, shape, dtype, fortran, raw bytes)).
        case numpyScalar, numpyDType, argparseNamespace, numpyReconstruct, numpyNDArrayType
    }

    static let storageTypes: [String: DType] = [
        "FloatStorage": .float32, "HalfStorage": .float16, "BFloat16Storage": .bfloat16,
        "DoubleStorage": .float64, "LongStorage": .int64, "IntStorage": .int32, "ShortStorage": .int16,
        "CharStorage": .int8, "ByteStorage": .uint8, "BoolStorage": .bool,
    ]

    static func allowed(_ module: String, _ name: String) -> Callable? {
        switch (module, name) {
        case ("torch._utils", "_rebuild_tensor_v2"): return .rebuildTensorV2
        case ("torch._utils", "_rebuild_tensor"): return .rebuildTensor
        case ("torch._utils", "_rebuild_parameter"): return .rebuildParameter
        case ("torch._utils", "_rebuild_parameter_with_state"): return .rebuildParameterWithState
        case ("collections", "OrderedDict"): return .orderedDict
        case ("torch", "Size"): return .torchSize
        case ("torch", "device"): return .torchDevice
        case ("_codecs", "encode"): return .codecsEncode
        case ("builtins", "set"), ("__builtin__", "set"): return .builtinSet
        case ("builtins", "frozenset"), ("__builtin__", "frozenset"): return .builtinFrozenset
        case ("builtins", "list"), ("__builtin__", "list"): return .builtinList
        case ("builtins", "dict"), ("__builtin__", "dict"): return .builtinDict
        case ("builtins", "tuple"), ("__builtin__", "tuple"): return .builtinTuple
        case ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"): return .numpyScalar
        case ("numpy", "dtype"): return .numpyDType
        case ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"): return .numpyReconstruct
        case ("numpy", "ndarray"): return .numpyNDArrayType
        case ("argparse", "Namespace"): return .argparseNamespace
        case ("torch", _): return storageTypes[name].map { .storageType($0) }
        default: return nil
        }
    }

    /// Storage element type for a `torch.*Storage` global, nil for anything else.
    public static func storageDType(_ v: PickleValue) -> DType? {
        if case .global("torch", let n) = v { return storageTypes[n] }
        return nil
    }

    public var limits: PickleLimits
    /// File and record named in error messages.
    public var file: String?
    public var record: String?

    public init(file: String? = nil, record: String? = nil, limits: PickleLimits = PickleLimits()) {
        self.file = file; self.record = record; self.limits = limits
    }

    /// Unpickles `bytes` (one pickle, up to STOP; trailing bytes are an error).
    public func load(_ bytes: [UInt8], persistentLoad: PersistentLoad? = nil) throws -> PickleValue {
        let input = PickleInput(bytes: bytes)
        let v = try load(input, persistentLoad: persistentLoad)
        guard input.remaining == 0 else { throw fail("\(input.remaining) bytes after the pickle's STOP") }
        return v
    }

    func fail(_ m: String) -> MoepackError {
        MoepackError(.badInput, file: file, item: record, m)
    }

    // MARK: interpreter

    /// Mutable containers while unpickling (memo references share them, as in Python). Every box is
    /// created through the load's ``Arena``, which keeps it alive until the load ends and then empties
    /// it: a chain of a million nested lists is never released recursively (which would overflow the
    /// call stack), and reference cycles are broken.
    final class ListBox { var items: [Item] = []; init(_ i: [Item] = []) { items = i } }
    final class DictBox {
        var items: [(Item, Item)] = []
        var attrs: [(Item, Item)] = []
        var strIndex: [String: Int] = [:]
        var intIndex: [Int: Int] = [:]
        func set(_ k: Item, _ v: Item) {
            if case .v(.string(let s)) = k {
                if let i = strIndex[s] { items[i].1 = v; return }
                strIndex[s] = items.count
            } else if case .v(.int(let n)) = k {
                if let i = intIndex[n] { items[i].1 = v; return }
                intIndex[n] = items.count
            }
            items.append((k, v))
        }
    }
    /// Owns every box of one load (see ``ListBox``).
    final class Arena {
        private var lists: [ListBox] = []
        private var dicts: [DictBox] = []
        func list(_ items: [Item] = []) -> ListBox {
            let l = ListBox(items)
            lists.append(l)
            return l
        }
        func dict() -> DictBox {
            let d = DictBox()
            dicts.append(d)
            return d
        }
        /// Empties every box (their items are released while the arena still holds the boxes, so no
        /// release recurses into a box), then lets the boxes go.
        func clear() {
            for l in lists { l.items = [] }
            for d in dicts { d.items = []; d.attrs = []; d.strIndex = [:]; d.intIndex = [:] }
            lists = []
            dicts = []
        }
    }
    enum Item {
        case v(PickleValue)
        case list(ListBox)
        case set(ListBox)
        /// Tuples are values: `depth` counts nested tuples (boxes reset it) and is capped at
        /// ``PickleLimits/maxDepth`` when the tuple is made, so releasing one never recurses deeply.
        case tuple([Item], depth: Int)
        case dict(DictBox)
        case callable(Callable, String)
        case object(String, ListBox)
    }

    /// Makes a tuple item, refusing tuple nesting deeper than ``PickleLimits/maxDepth``.
    func tuple(_ items: [Item]) throws -> Item {
        var d = 1
        for i in items { if case .tuple(_, let cd) = i, cd + 1 > d { d = cd + 1 } }
        guard d <= limits.maxDepth else { throw fail("pickle nesting deeper than \(limits.maxDepth) (or cyclic)") }
        return .tuple(items, depth: d)
    }

    /// Interprets opcodes from `input` until STOP and returns the result.
    func load(_ input: PickleInput, persistentLoad: PersistentLoad?) throws -> PickleValue {
        var stack: [Item] = []
        var marks: [Int] = []
        var memo: [Int: Item] = [:]
        let L = limits
        let arena = Arena()
        defer { arena.clear() }

        func push(_ i: Item) throws {
            guard stack.count < L.maxStack else { throw fail("pickle value stack exceeds \(L.maxStack) items") }
            stack.append(i)
        }
        func pop() throws -> Item {
            guard let top = stack.last, stack.count > (marks.last ?? 0) else { throw fail("pickle stack underflow") }
            stack.removeLast()
            return top
        }
        func popMark() throws -> [Item] {
            guard let m = marks.popLast() else { throw fail("pickle opcode needs a MARK but none is set") }
            guard m <= stack.count else { throw fail("pickle MARK beyond the stack") }
            let items = Array(stack[m...])
            stack.removeSubrange(m...)
            guard items.count <= L.maxContainerCount else { throw fail("pickle container exceeds \(L.maxContainerCount) items") }
            return items
        }
        func need(_ n: Int) throws -> [UInt8] {
            guard n <= L.maxStringBytes else { throw fail("pickle string/bytes of \(n) bytes exceeds the limit of \(L.maxStringBytes)") }
            guard let b = try input.bytes(n) else { throw fail("pickle is truncated") }
            return b
        }
        func uint(_ n: Int) throws -> Int {
            let b = try need(n)
            var v: UInt64 = 0
            for i in 0..<n { v |= UInt64(b[i]) << (8 * UInt64(i)) }
            guard v <= UInt64(Int.max) else { throw fail("pickle length \(v) is too large") }
            return Int(v)
        }
        func line() throws -> [UInt8] {
            guard let l = try input.line(max: 1 << 16) else { throw fail("pickle text line is truncated or too long") }
            return l
        }
        func utf8(_ b: [UInt8]) throws -> String {
            guard let s = String(validating: b, as: UTF8.self) else { throw fail("pickle string is not valid UTF-8") }
            return s
        }
        func memoPut(_ idx: Int) throws {
            guard let top = stack.last else { throw fail("pickle PUT on an empty stack") }
            guard memo[idx] != nil || memo.count < L.maxMemo else { throw fail("pickle memo exceeds \(L.maxMemo) entries") }
            memo[idx] = top
        }
        func memoGet(_ idx: Int) throws {
            guard let v = memo[idx] else { throw fail("pickle memo key \(idx) is not set") }
            try push(v)
        }
        func resolveGlobal(_ module: String, _ name: String) throws -> Item {
            guard let c = RestrictedUnpickler.allowed(module, name) else {
                throw fail("refused pickle global '\(module).\(name)' (not on the allow-list of tensor-rebuilding names; nothing was executed)")
            }
            if case .storageType = c { return .v(.global(module: module, name: name)) }
            return .callable(c, module + "." + name)
        }
        func decodeInt(_ bytes: [UInt8]) -> PickleValue {
            if bytes.isEmpty { return .int(0) }
            if bytes.count <= 8 {
                var v: UInt64 = 0
                for (i, b) in bytes.enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
                if bytes.count < 8, bytes[bytes.count - 1] & 0x80 != 0 {
                    v |= ~UInt64(0) << (8 * UInt64(bytes.count))
                }
                return .int(Int(Int64(bitPattern: v)))
            }
            return .bigInt(bytes)
        }

        while true {
            guard let op = try input.byte() else { throw fail("pickle is truncated (no STOP opcode)") }
            switch op {
            case 0x80: // PROTO
                let p = try need(1)[0]
                guard p <= 5 else { throw fail("pickle protocol \(p) is not supported") }
            case 0x95: // FRAME
                _ = try uint(8)
            case 0x2e: // STOP
                let top = try pop()
                guard stack.isEmpty, marks.isEmpty else { throw fail("pickle STOP with \(stack.count) values left on the stack") }
                var budget = L.maxTotalValues
                return try freeze(top, depth: 0, budget: &budget)
            case 0x28: // MARK
                guard marks.count < L.maxMarks else { throw fail("pickle MARK nesting exceeds \(L.maxMarks)") }
                marks.append(stack.count)
            case 0x30: _ = try pop() // POP
            case 0x31: _ = try popMark() // POP_MARK
            case 0x32: // DUP
                guard let top = stack.last else { throw fail("pickle DUP on an empty stack") }
                try push(top)
            case 0x4e: try push(.v(.none))
            case 0x88: try push(.v(.bool(true)))
            case 0x89: try push(.v(.bool(false)))
            case 0x4a: // BININT
                let u = UInt32(try uint(4))
                try push(.v(.int(Int(Int32(bitPattern: u)))))
            case 0x4b: try push(.v(.int(try uint(1))))
            case 0x4d: try push(.v(.int(try uint(2))))
            case 0x8a: // LONG1
                let n = try uint(1)
                try push(.v(decodeInt(try need(n))))
            case 0x8b: // LONG4
                let n = try uint(4)
                try push(.v(decodeInt(try need(n))))
            case 0x49: // INT (text)
                let s = String(decoding: try line(), as: UTF8.self)
                if s == "01" { try push(.v(.bool(true))) }
                else if s == "00" { try push(.v(.bool(false))) }
                else if let i = Int(s) { try push(.v(.int(i))) }
                else { throw fail("pickle INT '\(s.prefix(40))' is not an integer") }
            case 0x4c: // LONG (text)
                var s = String(decoding: try line(), as: UTF8.self)
                if s.hasSuffix("L") { s.removeLast() }
                guard let i = Int(s) else { throw fail("pickle LONG '\(s.prefix(40))' is not a 64-bit integer") }
                try push(.v(.int(i)))
            case 0x47: // BINFLOAT (big-endian double)
                let b = try need(8)
                var v: UInt64 = 0
                for x in b { v = v << 8 | UInt64(x) }
                try push(.v(.float(Double(bitPattern: v))))
            case 0x46: // FLOAT (text)
                let s = String(decoding: try line(), as: UTF8.self)
                guard let d = Double(s) else { throw fail("pickle FLOAT '\(s.prefix(40))' is not a number") }
                try push(.v(.float(d)))
            case 0x58: try push(.v(.string(try utf8(try need(try uint(4)))))) // BINUNICODE
            case 0x8c: try push(.v(.string(try utf8(try need(try uint(1)))))) // SHORT_BINUNICODE
            case 0x8d: try push(.v(.string(try utf8(try need(try uint(8)))))) // BINUNICODE8
            case 0x56: try push(.v(.string(try rawUnicodeEscape(try line())))) // UNICODE
            case 0x42: try push(.v(.bytes(try need(try uint(4))))) // BINBYTES
            case 0x43: try push(.v(.bytes(try need(try uint(1))))) // SHORT_BINBYTES
            case 0x8e: try push(.v(.bytes(try need(try uint(8))))) // BINBYTES8
            case 0x96: try push(.v(.bytes(try need(try uint(8))))) // BYTEARRAY8
            case 0x54, 0x55: // BINSTRING, SHORT_BINSTRING (Python 2 str)
                let b = try need(try uint(op == 0x54 ? 4 : 1))
                try push(.v(String(validating: b, as: UTF8.self).map { .string($0) } ?? .bytes(b)))
            case 0x53: // STRING (text repr)
                let b = try stringRepr(try line())
                try push(.v(String(validating: b, as: UTF8.self).map { .string($0) } ?? .bytes(b)))
            case 0x29: try push(try tuple([])) // EMPTY_TUPLE
            case 0x85: try push(try tuple([try pop()])) // TUPLE1
            case 0x86: // TUPLE2
                let b = try pop(), a = try pop()
                try push(try tuple([a, b]))
            case 0x87: // TUPLE3
                let c = try pop(), b = try pop(), a = try pop()
                try push(try tuple([a, b, c]))
            case 0x74: try push(try tuple(try popMark())) // TUPLE
            case 0x5d: try push(.list(arena.list())) // EMPTY_LIST
            case 0x6c: try push(.list(arena.list(try popMark()))) // LIST
            case 0x7d: try push(.dict(arena.dict())) // EMPTY_DICT
            case 0x8f: try push(.set(arena.list())) // EMPTY_SET
            case 0x64: // DICT
                let items = try popMark()
                guard items.count % 2 == 0 else { throw fail("pickle DICT with an odd number of items") }
                let d = arena.dict()
                for i in stride(from: 0, to: items.count, by: 2) { d.set(items[i], items[i + 1]) }
                try push(.dict(d))
            case 0x91: try push(.set(arena.list(try popMark()))) // FROZENSET
            case 0x61: // APPEND
                let v = try pop()
                guard case .list(let l)? = stack.last else { throw fail("pickle APPEND to a non-list") }
                guard l.items.count < L.maxContainerCount else { throw fail("pickle list exceeds \(L.maxContainerCount) items") }
                l.items.append(v)
            case 0x65: // APPENDS
                let vs = try popMark()
                guard case .list(let l)? = stack.last else { throw fail("pickle APPENDS to a non-list") }
                guard l.items.count + vs.count <= L.maxContainerCount else { throw fail("pickle list exceeds \(L.maxContainerCount) items") }
                l.items.append(contentsOf: vs)
            case 0x90: // ADDITEMS
                let vs = try popMark()
                guard case .set(let l)? = stack.last else { throw fail("pickle ADDITEMS to a non-set") }
                guard l.items.count + vs.count <= L.maxContainerCount else { throw fail("pickle set exceeds \(L.maxContainerCount) items") }
                l.items.append(contentsOf: vs)
            case 0x73: // SETITEM
                let v = try pop(), k = try pop()
                guard case .dict(let d)? = stack.last else { throw fail("pickle SETITEM on a non-dict") }
                guard d.items.count < L.maxContainerCount else { throw fail("pickle dict exceeds \(L.maxContainerCount) items") }
                d.set(k, v)
            case 0x75: // SETITEMS
                let items = try popMark()
                guard items.count % 2 == 0 else { throw fail("pickle SETITEMS with an odd number of items") }
                guard case .dict(let d)? = stack.last else { throw fail("pickle SETITEMS on a non-dict") }
                guard d.items.count + items.count / 2 <= L.maxContainerCount else { throw fail("pickle dict exceeds \(L.maxContainerCount) items") }
                for i in stride(from: 0, to: items.count, by: 2) { d.set(items[i], items[i + 1]) }
            case 0x71: try memoPut(try uint(1)) // BINPUT
            case 0x72: try memoPut(try uint(4)) // LONG_BINPUT
            case 0x70: // PUT
                guard let i = Int(String(decoding: try line(), as: UTF8.self)) else { throw fail("pickle PUT index is not an integer") }
                try memoPut(i)
            case 0x94: try memoPut(memo.count) // MEMOIZE
            case 0x68: try memoGet(try uint(1)) // BINGET
            case 0x6a: try memoGet(try uint(4)) // LONG_BINGET
            case 0x67: // GET
                guard let i = Int(String(decoding: try line(), as: UTF8.self)) else { throw fail("pickle GET index is not an integer") }
                try memoGet(i)
            case 0x63: // GLOBAL
                let module = try utf8(try line()), name = try utf8(try line())
                try push(try resolveGlobal(module, name))
            case 0x93: // STACK_GLOBAL
                let n = try pop(), m = try pop()
                guard case .v(.string(let name)) = n, case .v(.string(let module)) = m else {
                    throw fail("pickle STACK_GLOBAL needs two strings")
                }
                try push(try resolveGlobal(module, name))
            case 0x69: // INST
                let module = try utf8(try line()), name = try utf8(try line())
                let callable = try resolveGlobal(module, name)
                let args = try popMark()
                try push(try reduce(callable, try tuple(args), newObject: true, arena))
            case 0x6f: // OBJ
                var items = try popMark()
                guard !items.isEmpty else { throw fail("pickle OBJ without a class") }
                let cls = items.removeFirst()
                try push(try reduce(cls, try tuple(items), newObject: true, arena))
            case 0x52: // REDUCE
                let args = try pop(), f = try pop()
                try push(try reduce(f, args, newObject: false, arena))
            case 0x81: // NEWOBJ
                let args = try pop(), cls = try pop()
                try push(try reduce(cls, args, newObject: true, arena))
            case 0x92: // NEWOBJ_EX
                let kwargs = try pop(), args = try pop(), cls = try pop()
                if case .dict(let d) = kwargs, !d.items.isEmpty { throw fail("pickle NEWOBJ_EX with keyword arguments is not supported") }
                try push(try reduce(cls, args, newObject: true, arena))
            case 0x62: // BUILD
                let state = try pop()
                guard let obj = stack.last else { throw fail("pickle BUILD on an empty stack") }
                try build(obj, state)
            case 0x51: // BINPERSID
                let pid = try pop()
                try push(.v(try persistent(pid, persistentLoad)))
            case 0x50: // PERSID (text)
                let pid = try utf8(try line())
                try push(.v(try persistent(.v(.string(pid)), persistentLoad)))
            case 0x82, 0x83, 0x84:
                throw fail("pickle extension registry opcodes (EXT1/2/4) are refused")
            case 0x97, 0x98:
                throw fail("pickle out-of-band buffers (protocol 5 NEXT_BUFFER) are not supported")
            default:
                throw fail(String(format: "unknown pickle opcode 0x%02x at byte %d", op, input.position - 1))
            }
        }
    }

    private func persistent(_ pid: Item, _ persistentLoad: PersistentLoad?) throws -> PickleValue {
        guard let persistentLoad else { throw fail("pickle has a persistent id but this container defines none") }
        var budget = 10_000
        return try persistentLoad(try freeze(pid, depth: 0, budget: &budget))
    }

    private func build(_ obj: Item, _ state: Item) throws {
        switch obj {
        case .dict(let d):
            // OrderedDict instance state: a dict of attributes (or (dict, slots)).
            var st = state
            if case .tuple(let t, _) = state, t.count == 2 { st = t[0] }
            if case .dict(let sd) = st { d.attrs.append(contentsOf: sd.items) }
            else if case .v(.none) = st {}
            else { throw fail("pickle BUILD on a dict with unsupported state") }
        case .object("numpy.ndarray", let l):
            l.items.append(state) // the array's (version, shape, dtype, fortran, data): kept, never decoded
        case .v(.tensorRef), .object:
            break // tensor/parameter state (e.g. _rebuild_parameter_with_state) is not needed
        default:
            throw fail("pickle BUILD on an unsupported value")
        }
    }

    /// Interprets a call of an allow-listed callable. Nothing is executed.
    private func reduce(_ f: Item, _ args: Item, newObject: Bool, _ arena: Arena) throws -> Item {
        guard case .callable(let c, let fname) = f else {
            if case .v(.global(let m, let n)) = f {
                throw fail("pickle calls '\(m).\(n)', which is a type moepack only accepts as a storage type")
            }
            throw fail("pickle REDUCE/NEWOBJ on a value that is not an allow-listed callable")
        }
        guard case .tuple(let a, _) = args else { throw fail("pickle arguments to '\(fname)' are not a tuple") }
        var budget = 1_000_000
        func val(_ i: Item) throws -> PickleValue { try freeze(i, depth: 0, budget: &budget) }
        switch c {
        case .rebuildTensorV2, .rebuildTensor:
            guard (c == .rebuildTensor && a.count == 4) || (c == .rebuildTensorV2 && (a.count == 6 || a.count == 7)) else {
                throw fail("\(fname) takes \(c == .rebuildTensor ? "4" : "6 or 7") arguments, got \(a.count)")
            }
            guard case .storageRef(let s) = try val(a[0]) else { throw fail("\(fname): first argument is not a storage") }
            guard let off = try val(a[1]).intValue else { throw fail("\(fname): storage offset is not an int") }
            guard let size = try val(a[2]).sequence?.map({ $0.intValue }), !size.contains(nil),
                  let stride = try val(a[3]).sequence?.map({ $0.intValue }), !stride.contains(nil) else {
                throw fail("\(fname): size/stride are not tuples of ints")
            }
            guard size.count == stride.count else { throw fail("\(fname): size has \(size.count) axes, stride \(stride.count)") }
            if a.count >= 6, case .dict(let hooks) = a[5], !hooks.items.isEmpty {
                throw fail("\(fname): tensors with backward hooks are refused")
            }
            return .v(.tensorRef(TensorRef(storage: s, offset: off, shape: size.map { $0! }, stride: stride.map { $0! })))
        case .rebuildParameter, .rebuildParameterWithState:
            guard a.count >= 1, case .tensorRef = try val(a[0]) else { throw fail("\(fname): first argument is not a tensor") }
            return a[0]
        case .orderedDict, .builtinDict:
            let d = arena.dict()
            if let first = a.first {
                guard case .list(let l) = first else {
                    if case .dict(let src) = first { for (k, v) in src.items { d.set(k, v) }; return .dict(d) }
                    throw fail("\(fname): unsupported argument")
                }
                for p in l.items {
                    guard case .tuple(let kv, _) = p, kv.count == 2 else { throw fail("\(fname): items are not pairs") }
                    d.set(kv[0], kv[1])
                }
            }
            return .dict(d)
        case .torchSize, .builtinTuple:
            guard let first = a.first else { return try tuple([]) }
            switch first {
            case .tuple: return first
            case .list(let l): return try tuple(l.items)
            default: throw fail("\(fname): argument is not a sequence")
            }
        case .builtinList, .builtinSet, .builtinFrozenset:
            var items: [Item] = []
            if let first = a.first {
                switch first {
                case .tuple(let t, _): items = t
                case .list(let l), .set(let l): items = l.items
                default: throw fail("\(fname): argument is not a sequence")
                }
            }
            return c == .builtinList ? .list(arena.list(items)) : .set(arena.list(items))
        case .codecsEncode:
            guard a.count == 2, case .v(.string(let s)) = a[0], case .v(.string(let enc)) = a[1] else {
                throw fail("_codecs.encode: expected (str, encoding)")
            }
            guard enc == "latin1" || enc == "latin-1" else { throw fail("_codecs.encode: encoding '\(enc)' is not supported") }
            var out: [UInt8] = []
            for u in s.unicodeScalars {
                guard u.value < 256 else { throw fail("_codecs.encode: character outside latin-1") }
                out.append(UInt8(u.value))
            }
            return .v(.bytes(out))
        case .torchDevice:
            return .object("torch.device", arena.list(a))
        case .numpyScalar:
            // numpy.core.multiarray.scalar(dtype, bytes) (numpy/core/multiarray.py); the bytes are kept, not decoded.
            guard (1...2).contains(a.count) else { throw fail("\(fname) takes 1 or 2 arguments, got \(a.count)") }
            return .object("numpy.scalar", arena.list(a))
        case .numpyDType:
            // numpy.dtype(obj, align, copy); the BUILD state that follows is dropped.
            guard (1...3).contains(a.count), case .v(.string) = a[0] else { throw fail("numpy.dtype: first argument is not a type string") }
            return .object("numpy.dtype", arena.list(a))
        case .argparseNamespace:
            // Protocol ≥ 2: NEWOBJ(argparse.Namespace, ()) then BUILD(state dict), dropped.
            guard a.isEmpty else { throw fail("argparse.Namespace: unexpected constructor arguments") }
            return .object("argparse.Namespace", arena.list())
        case .numpyReconstruct:
            // numpy.core.multiarray._reconstruct(numpy.ndarray, shape, typecode) makes an empty array that the
            // following BUILD fills; only ndarray itself is accepted as the class.
            guard a.count == 3, case .callable(.numpyNDArrayType, _) = a[0] else {
                throw fail("\(fname): only (numpy.ndarray, shape, typecode) is accepted")
            }
            return .object("numpy.ndarray", arena.list(Array(a[1...])))
        case .numpyNDArrayType:
            throw fail("numpy.ndarray is accepted only as the class argument of _reconstruct")
        case .storageType:
            throw fail("pickle instantiates a storage type directly")
        }
    }

    /// Converts the mutable unpickling graph into a ``PickleValue``; refuses cycles and blow-ups.
    private func freeze(_ i: Item, depth: Int, budget: inout Int) throws -> PickleValue {
        guard depth <= limits.maxDepth else { throw fail("pickle nesting deeper than \(limits.maxDepth) (or cyclic)") }
        budget -= 1
        guard budget >= 0 else { throw fail("pickle expands to more than \(limits.maxTotalValues) values") }
        switch i {
        case .v(let v): return v
        case .list(let l): return .list(try l.items.map { try freeze($0, depth: depth + 1, budget: &budget) })
        case .set(let l): return .set(try l.items.map { try freeze($0, depth: depth + 1, budget: &budget) })
        case .tuple(let t, _): return .tuple(try t.map { try freeze($0, depth: depth + 1, budget: &budget) })
        case .dict(let d):
            let items = try d.items.map { PickleDictItem(key: try freeze($0.0, depth: depth + 1, budget: &budget),
                                                         value: try freeze($0.1, depth: depth + 1, budget: &budget)) }
            let attrs = try d.attrs.map { PickleDictItem(key: try freeze($0.0, depth: depth + 1, budget: &budget),
                                                         value: try freeze($0.1, depth: depth + 1, budget: &budget)) }
            return .dict(items, attributes: attrs)
        case .callable(_, let name):
            let parts = name.split(separator: ".")
            return .global(module: parts.dropLast().joined(separator: "."), name: String(parts.last ?? ""))
        case .object(let t, let args):
            return .object(type: t, args: try args.items.map { try freeze($0, depth: depth + 1, budget: &budget) })
        }
    }

    /// Decodes Python's raw-unicode-escape (protocol 0 UNICODE): `\uXXXX`, `\UXXXXXXXX`, other bytes latin-1.
    private func rawUnicodeEscape(_ b: [UInt8]) throws -> String {
        var s = String.UnicodeScalarView()
        var i = 0
        while i < b.count {
            if b[i] == 0x5c, i + 1 < b.count, b[i + 1] == 0x75 || b[i + 1] == 0x55 {
                let n = b[i + 1] == 0x75 ? 4 : 8
                guard i + 2 + n <= b.count, let v = UInt32(String(decoding: b[i + 2..<i + 2 + n], as: UTF8.self), radix: 16),
                      let u = Unicode.Scalar(v) else { throw fail("pickle UNICODE has a bad escape") }
                s.append(u)
                i += 2 + n
            } else {
                s.append(Unicode.Scalar(b[i]))
                i += 1
            }
        }
        return String(s)
    }

    /// Decodes a protocol-0 STRING argument: a quoted Python repr with backslash escapes.
    private func stringRepr(_ b: [UInt8]) throws -> [UInt8] {
        guard b.count >= 2, let q = b.first, q == 0x27 || q == 0x22, b.last == q else {
            throw fail("pickle STRING argument is not quoted")
        }
        let body = Array(b[1..<b.count - 1])
        var out: [UInt8] = []
        var i = 0
        while i < body.count {
            let c = body[i]
            if c != 0x5c { out.append(c); i += 1; continue }
            guard i + 1 < body.count else { throw fail("pickle STRING ends in a backslash") }
            let e = body[i + 1]
            i += 2
            switch e {
            case 0x6e: out.append(0x0a)
            case 0x74: out.append(0x09)
            case 0x72: out.append(0x0d)
            case 0x5c, 0x27, 0x22: out.append(e)
            case 0x78:
                guard i + 2 <= body.count, let v = UInt8(String(decoding: body[i..<i + 2], as: UTF8.self), radix: 16) else {
                    throw fail("pickle STRING has a bad \\x escape")
                }
                out.append(v); i += 2
            default: out.append(0x5c); out.append(e)
            }
        }
        return out
    }
}

extension RestrictedUnpickler.Callable: Equatable {}
