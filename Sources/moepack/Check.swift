import ArgumentParser
import Foundation
import MoepackCore
import MoepackPacking

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-verify a packed image on disk against its manifest's SHA-256 checksums.",
        discussion: "Exit status 0 when the image, every buffer and the C header match and the manifest's source digests are consistent, 1 otherwise (names what does not match). The manifest itself is the reference: keep a copy of its SHA-256 if it travels separately.")

    @Argument(help: "Folder written by `moepack pack`.")
    var directory: String

    func run() throws {
        try guarded {
            let image = try PackedImage(directory: directory)
            let r = image.check()
            if r.ok {
                print("\(directory): ok (\(image.manifest.image.bytes) bytes, \(image.manifest.buffers.count) buffers, sha256 \(image.manifest.image.sha256))")
            } else {
                throw MoepackError(.verificationFailed, file: directory,
                                   "checksum mismatch: " + r.problems.joined(separator: "; "))
            }
        }
    }
}
