// libFuzzer target: safetensors header parsing (strict JSON), offset validation and tensor reads.
import MoepackCore
@testable import MoepackCheckpoint

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafeRawPointer, _ count: Int) -> CInt {
    withInputFile(data, count, ext: ".safetensors") { path in
        expectCleanErrors { try drain(try SafetensorsSource(path: path)) }
    }
    return 0
}
