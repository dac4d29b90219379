// libFuzzer target (optional): HDF5 through the system libhdf5. Crashes inside libhdf5 itself are
// reported separately from moepack's own code (libhdf5 is not instrumented).
import MoepackCore
@testable import MoepackCheckpoint

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHDF5(_ data: UnsafeRawPointer, _ count: Int) -> CInt {
    withInputFile(data, count, ext: ".h5") { path in
        expectCleanErrors { try drain(try HDF5Source(path: path)) }
    }
    return 0
}
