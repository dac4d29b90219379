// Fuzz builds only: stands in for SwiftPM's generated resource accessor of MoepackPacking, so that
// `Bundle.module` resolves to the profile folder in the source tree (run from the repository root).
import Foundation

extension Foundation.Bundle {
    static let module: Bundle = Bundle(path: "Sources/MoepackPacking") ?? Bundle.main
}
