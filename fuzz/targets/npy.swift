// libFuzzer target: .npy headers (Python-literal parser), .npy files (byte order, Fortran order) and
// .npz archives.
import MoepackCore
@testable import MoepackCheckpoint

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNpy(_ data: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: data, count: count))
    expectCleanErrors {
        let h = try NpyHeader.parse(bytes: bytes)
        if h.dataByteCount <= bytes.count - h.headerBytes {
            _ = try h.decodeFloat32(Array(bytes[h.headerBytes..<h.headerBytes + h.dataByteCount]))
        }
    }
    let isZip = count >= 2 && bytes[0] == 0x50 && bytes[1] == 0x4b
    withInputFile(data, count, ext: isZip ? ".npz" : ".npy") { path in
        expectCleanErrors { try drain(isZip ? try NpzSource(path: path) : try NpySource(path: path)) }
    }
    return 0
}
