import Foundation
import MoepackCore

/// The folder `moepack_pynq.py --bisect` writes: one `debug_id_<N>.npy` per early-return point
/// (`N` = layer·16 + 12 for every layer), read back by `verify --board-output FOLDER`.
public enum BisectFolder {
    /// File name for the x returned at `debugID`.
    public static func fileName(debugID: Int) -> String { "debug_id_\(debugID).npy" }

    /// The folder's `debug_id_<N>.npy`/`.bin` files, ordered by N.
    /// - Throws: ``MoepackError`` when the folder cannot be listed or holds no such file.
    public static func files(_ folder: String) throws -> [(path: String, debugID: Int)] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else {
            throw MoepackError(.io, file: folder, "cannot list the folder")
        }
        let found = names.compactMap { name -> (String, Int)? in
            let stem = (name as NSString).deletingPathExtension
            guard ["npy", "bin"].contains((name as NSString).pathExtension), stem.hasPrefix("debug_id_"),
                  let id = Int(stem.dropFirst("debug_id_".count)), id >= 0 else { return nil }
            return ((folder as NSString).appendingPathComponent(name), id)
        }.sorted { $0.1 < $1.1 }
        guard !found.isEmpty else {
            throw MoepackError(.badInput, file: folder, "no debug_id_<N>.npy files (write them with moepack_pynq.py --bisect)")
        }
        return found.map { (path: $0.0, debugID: $0.1) }
    }
}
