import Foundation
import MoepackCore

/// Opens a checkpoint file or folder, choosing the reader by content (magic bytes), never by extension.
///
/// - Files: PyTorch zip (`PK\x03\x04` with a `data.pkl` record), PyTorch legacy (pickle magic number
///   first), safetensors (8-byte header length then `{`), HDF5 (`\x89HDF\r\n\x1a\n`), NumPy `.npy`
///   (`\x93NUMPY`), `.npz` (zip of `.npy` members).
/// - Folders: expert-parallel saves (`0.pth`, `1.pth`, …) and the Edge-MoE raw float32 folder
///   (`*.float32.bin` files).
/// - Throws: ``MoepackError`` (`badInput`) naming the path when the container is unknown or invalid.
public func openCheckpoint(_ path: String, options: OpenOptions = OpenOptions()) throws -> any TensorSource {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw MoepackError(.io, file: path, "no such file or folder")
    }
    if isDir.boolValue {
        return try openFolder(path, options: options)
    }
    return try openFile(path, options: options)
}
