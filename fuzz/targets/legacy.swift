// libFuzzer target: legacy (pre-1.6, non-zip) torch.save files.
import MoepackCore
@testable import MoepackCheckpoint

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLegacy(_ data: UnsafeRawPointer, _ count: Int) -> CInt {
    withInputFile(data, count, ext: ".pth") { path in
        expectCleanErrors { try drain(try PyTorchLegacySource(path: path)) }
    }
    return 0
}
