import Foundation
import MoepackCore

/// Opens a checkpoint file or folder, choosing the reader by content, never by extension: the first
/// ``CheckpointContainer`` (in declaration order) whose sniff matches opens it.
///
/// - Files: PyTorch zip (`PK\x03\x04` with a `data.pkl` record), `.npz` (zip of `.npy` members),
///   PyTorch legacy (pickle magic number first), NumPy `.npy` (`\x93NUMPY`), HDF5 (`\x89HDF\r\n\x1a\n`),
///   safetensors (8-byte header length then `{`).
/// - Folders: expert-parallel saves (`0.pth`, `1.pth`, …) and the Edge-MoE raw float32 folder
///   (`*.float32.bin` files).
/// - Throws: ``MoepackError`` naming the path: `io` when it does not exist; `badInput` when the
///   container is unknown or invalid (the reader's error for a sniffed kind).
public func openCheckpoint(_ path: String, options: OpenOptions = OpenOptions()) throws -> any TensorSource {
    let probe = try CheckpointProbe(path: path)
    guard let kind = try CheckpointContainer.sniff(probe) else { throw try refusal(probe) }
    return try kind.open(probe, options: options)
}
