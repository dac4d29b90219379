// libFuzzer target: zip container + PyTorch zip checkpoints (ZipArchive, PyTorchZipSource, npz dispatch).
import MoepackCore
@testable import MoepackCheckpoint

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzZip(_ data: UnsafeRawPointer, _ count: Int) -> CInt {
    withInputFile(data, count, ext: ".pth") { path in
        expectCleanErrors {
            let zip = try ZipArchive(path: path)
            for e in zip.entries {
                expectCleanErrors {
                    let b = try zip.read(e)
                    check(b.count == e.uncompressedSize, "\(e.name): \(b.count) bytes, declared \(e.uncompressedSize)")
                }
            }
        }
        expectCleanErrors { try drain(try openCheckpoint(path)) }
    }
    return 0
}
