import ArgumentParser
import Foundation
import MoepackCore
import MoepackPacking

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a packed image folder (manifest fields, profile, layout, manifest.sha256) and re-verify it against its manifest's SHA-256 checksums.",
        discussion: "Exit status 0 when the manifest is valid and matches its SHA-256 in manifest.sha256, and the image, every buffer and the C header match the manifest's checksums and its source digests are consistent; 2 when the manifest is invalid or edited (one line naming the field), 1 when a checksum differs (names what does not match).")

    @Argument(help: "Folder written by `moepack pack`.")
    var directory: String

    @Flag(help: "JSON summary on stdout (ok, image size and SHA-256, what does not match); the exit status is the same.")
    var json = false

    func run() throws {
        try guarded {
            let image = try PackedImage(directory: directory, verifyingDigests: false)
            let r = image.check()
            if json {
                let m = image.manifest
                try printJSON(CheckSummary(directory: directory, ok: r.ok, image_bytes: m.image.bytes, image_sha256: m.image.sha256,
                                           buffers: m.buffers.count, problems: r.problems))
            }
            if r.ok {
                if json { return }
                print("\(directory): ok (\(image.manifest.image.bytes) bytes, \(image.manifest.buffers.count) buffers, sha256 \(image.manifest.image.sha256))")
            } else {
                throw MoepackError(.verificationFailed, file: directory,
                                   "checksum mismatch: " + r.problems.joined(separator: "; "))
            }
        }
    }
}
