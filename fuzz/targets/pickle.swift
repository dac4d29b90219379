// libFuzzer target: the restricted unpickler on raw bytes (data.pkl), with torch persistent ids,
// state_dict selection, view validation and strided gathering from a zero-filled storage.
import MoepackCore
@testable import MoepackCheckpoint

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPickle(_ data: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: data, count: count))
    for legacy in [false, true] {
        expectCleanErrors {
            let u = RestrictedUnpickler(file: "fuzz", record: "data.pkl")
            let root = try u.load(bytes) { pid in
                let (s, view) = try TorchCheckpoint.parseStorageID(pid, legacy: legacy, file: "fuzz")
                if let view {
                    return .storageRef(StorageRef(key: s.key, dtype: s.dtype, numel: view.numel, location: s.location, elementOffset: view.offset))
                }
                return .storageRef(s)
            }
            let sel = try TorchCheckpoint.selectStateDict(root, options: OpenOptions(), file: "fuzz")
            for (name, t) in sel.tensors {
                let n = try TorchCheckpoint.validate(t, name: name, file: "fuzz")
                let (bytes, o) = t.storage.numel.multipliedReportingOverflow(by: t.storage.dtype.byteSize)
                guard !o, bytes <= 1 << 20 else { continue }
                let out = TorchCheckpoint.gather([UInt8](repeating: 0, count: bytes), t)
                check(out.count == n * t.storage.dtype.byteSize, "\(name): gathered \(out.count) bytes for \(n) elements")
            }
        }
    }
    return 0
}
