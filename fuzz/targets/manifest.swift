// libFuzzer target: an image folder's manifest.json through the one validation every command runs
// (ImageValidation.decodeAndValidate: JSON decoding, fields against each other, the profile named or
// embedded, the DDR layout recomputed from it). Built-in profiles are read from
// Sources/MoepackPacking/Profiles/ (run from the repository root, as fuzz/run.sh does).
import Foundation
import MoepackCore
import MoepackPacking

/// The built-in profiles, read once from their JSON files.
let builtinProfiles: [String: KernelProfile] = {
    var out: [String: KernelProfile] = [:]
    for name in KernelProfile.builtinNames {
        guard let p = try? KernelProfile.load("Sources/MoepackPacking/Profiles/\(name).json") else {
            fatalError("fuzz: cannot read profile \(name) (run from the repository root)")
        }
        out[name] = p
    }
    return out
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzManifest(_ data: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Data(bytes: data, count: count)
    expectCleanErrors {
        let m = try ImageValidation.decodeAndValidate(bytes, file: "manifest.json", profile: { builtinProfiles[$0] })
        // A manifest that passes must describe buffers inside its image: what every reader relies on.
        for b in m.buffers {
            check(b.offset >= 0 && b.bytes >= 0 && b.offset <= m.image.bytes - b.bytes, "\(b.name) outside the image")
        }
        for g in m.task_gates ?? [] {
            check(g.offset >= 0 && g.bytes >= 0 && g.offset <= m.image.bytes - g.bytes, "task gate \(g.task) outside the image")
        }
    }
    return 0
}
