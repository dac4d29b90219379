import Foundation
import MoepackPacking

/// Whether the checkpoint `verify` compares with is the one the image was packed from.
///
/// With `source.tensors` in the manifest (``TensorDigests``): every tensor verify read is compared
/// with the packed tensor of the same canonical name; tensors verify did not read and packed ones it
/// did not find are not compared. Older manifests with only `source.sha256`: the whole file's
/// SHA-256 (folders: ``sha256OfPath(_:)``). Neither: not checked, and the report says so.
public struct SourceCheck: Sendable, Codable, Equatable {
    public enum Method: String, Sendable, Codable { case tensors, file, none }
    public var method: Method
    /// Tensors compared (method `tensors`), or 1 (method `file`), or 0.
    public var compared: Int
    /// Canonical names of the tensors whose digests differ (method `file`: the checkpoint path).
    public var differing: [String]
    /// `differing` is empty and something was compared.
    public var same: Bool { !differing.isEmpty ? false : compared > 0 }
    /// One line for the text report and the warning.
    public var summary: String

    /// Compares the digests of the tensors read from `checkpoint` (canonical name → SHA-256, from
    /// ``TensorDigests/finish()``) with `manifest.source`.
    public static func compare(checkpoint: String, manifest: Manifest, readDigests: [String: String]) -> SourceCheck {
        let src = manifest.source
        if let packed = src.tensors, !packed.isEmpty {
            var compared = 0
            var differ: [String] = []
            for t in packed {
                guard let got = readDigests[t.name] else { continue }
                compared += 1
                if got != t.sha256 { differ.append(t.name) }
            }
            let summary: String
            if compared == 0 {
                summary = "source not checked: none of the \(packed.count) tensors in the manifest was read from \(checkpoint)"
            } else if differ.isEmpty {
                summary = "source: the \(compared) tensors read from \(checkpoint) are the ones packed (SHA-256 of their float32 values)"
            } else {
                let shown = differ.prefix(8).joined(separator: ", ") + (differ.count > 8 ? " and \(differ.count - 8) more" : "")
                summary = "\(checkpoint) is not the checkpoint this image was packed from (\(src.path)): \(differ.count) of \(compared) tensor(s) differ: \(shown)"
            }
            return SourceCheck(method: .tensors, compared: compared, differing: differ, summary: summary)
        }
        if let packed = src.sha256 {
            guard let sha = try? sha256OfPath(checkpoint) else {
                return SourceCheck(method: .none, compared: 0, differing: [], summary: "source not checked: \(checkpoint) could not be hashed")
            }
            if sha == packed {
                return SourceCheck(method: .file, compared: 1, differing: [], summary: "source: \(checkpoint) has the SHA-256 recorded in the manifest")
            }
            return SourceCheck(method: .file, compared: 1, differing: [checkpoint],
                               summary: "\(checkpoint) is not the checkpoint this image was packed from (sha256 \(sha.prefix(12))…, manifest \(packed.prefix(12))… from \(src.path))")
        }
        return SourceCheck(method: .none, compared: 0, differing: [], summary: "source not checked: the manifest has no source digests")
    }
}

extension VerifyReport {
    /// Records `check` in the report; with `required`, a checkpoint that differs from the packed one
    /// (or one that cannot be checked) is a failure.
    public mutating func apply(_ check: SourceCheck, required: Bool) {
        source_check = check
        if required && !check.same {
            failures.append(check.differing.isEmpty ? check.summary : "checkpoint differs from the one packed (\(check.differing.count) tensor(s))")
            passed = false
        }
    }
}
