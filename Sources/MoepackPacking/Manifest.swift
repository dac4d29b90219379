import Foundation
import MoepackCore
import MoepackModel

/// `manifest.json` of a packed DDR image (format `moepack-ddr/1`): everything a host program or
/// `moepack run/verify/check` needs to use `ddr.bin` without the checkpoint.
///
/// Offsets are bytes from the start of `ddr.bin`; the host adds the physical base address of the
/// image and writes each buffer's address to its `register` (low word; high word at register + 4)
/// before starting the kernel through `CTRL` (register 0).
public struct Manifest: Sendable, Codable, Equatable {
    public struct Source: Sendable, Codable, Equatable {
        public var path: String
        public var container: String
        /// Size of the checkpoint file in bytes (for a folder: of its files together).
        public var bytes: Int?
        /// SHA-256 of the checkpoint file (for a folder: of each file's name and bytes, sorted by name);
        /// only with `pack --source-sha256`, since it reads every byte of the file.
        public var sha256: String?
        /// ``TensorDigests/combined(_:)`` of `tensors`: one digest for the weights the image came from.
        public var tensors_sha256: String?
        /// Every checkpoint tensor the image was made from, with its SHA-256 (``TensorDigests``).
        public var tensors: [SourceTensor]?
        /// state_dict key and other reader notes.
        public var notes: [String]

        public init(path: String, container: String, bytes: Int? = nil, sha256: String? = nil,
                    tensors_sha256: String? = nil, tensors: [SourceTensor]? = nil, notes: [String]) {
            self.path = path; self.container = container; self.bytes = bytes; self.sha256 = sha256
            self.tensors_sha256 = tensors_sha256; self.tensors = tensors; self.notes = notes
        }

        /// Short provenance text: `tensors sha256 0123456789abcdef…` and/or `file sha256 …`.
        public var fingerprint: String {
            var parts: [String] = []
            if let t = tensors_sha256 { parts.append("tensors sha256 \(t.prefix(16))…") }
            if let f = sha256 { parts.append("file sha256 \(f.prefix(16))…") }
            return parts.isEmpty ? "no checksum" : parts.joined(separator: ", ")
        }
    }
    /// One checkpoint tensor read by `pack`: canonical M³ViT name, the name in the checkpoint, its
    /// shape there, and the SHA-256 of its float32 little-endian values (``TensorDigests``).
    public struct SourceTensor: Sendable, Codable, Equatable {
        public var name: String
        public var source_name: String
        public var shape: [Int]
        public var sha256: String
    }
    public struct Image: Sendable, Codable, Equatable {
        public var file: String
        public var bytes: Int
        public var sha256: String
    }
    public struct TensorReport: Sendable, Codable, Equatable {
        public var name: String
        public var buffer: String
        public var type: String
        public var count: Int
        public var min: Double
        public var max: Double
        /// Values outside the type's range (saturated or wrapped according to the overflow mode).
        public var overflow: Int
        /// 10·log10(Σx² / Σ(x − q(x))²); null when the quantization error is exactly zero.
        public var sqnr_db: Double?
        public var max_abs_error: Double
    }
    public struct Quantization: Sendable, Codable, Equatable {
        public var mode: String
        public var overflow: String
        public var tensors: [TensorReport]
    }
    public struct Buffer: Sendable, Codable, Equatable {
        public var name: String
        public var offset: Int
        public var bytes: Int
        /// Kernel type name and its full spelling, e.g. `wt_linear_t` = `ap_fixed<16,2>`.
        public var type: String
        public var ctype: String
        public var element_bytes: Int
        public var shape: [Int]
        public var register: Int?
        public var role: KernelArgumentRole
        public var sha256: String
    }
    public struct ExpertRecord: Sendable, Codable, Equatable {
        public var block: Int
        public var expert: Int
        public var offset: Int
        public var bytes: Int
        public var w1: Int
        public var b1: Int
        public var w2: Int
        public var b2: Int
    }
    public struct TaskGate: Sendable, Codable, Equatable {
        public var task: Int
        public var offset: Int
        public var bytes: Int
    }

    public var format: String
    public var tool: String
    public var profile: String
    /// The profile itself when it is not the built-in one of that name (a profile file, or `--hwh`
    /// register offsets): what ``ImageValidation`` checks the image against.
    public var profile_definition: KernelProfile? = nil
    public var kernel: String
    /// Task whose gates sit in `moe_w_gate`.
    public var task: Int
    public var layout: String
    public var model: M3ViTConfig
    public var folds: FoldOptions?
    public var quantization: Quantization
    public var source: Source
    public var image: Image
    /// The C header written beside the image (`moepack_ddr.h`) and its SHA-256.
    public var header: Image?
    public var alignment: Int
    /// Element type spellings by name.
    public var types: [String: String]
    /// Scalar control registers (CTRL, num_images, reload_one_time_weights, debug_id, …).
    public var registers: [String: Int]
    public var buffers: [Buffer]
    public var expert_records: [ExpertRecord]?
    /// Expert-major images: element type of each expert array inside the records (w1 = moe_weights_l1, …).
    public var expert_types: [String: String]?
    public var task_gates: [TaskGate]?
    /// Free-text notes for host programmers (e.g. how to switch tasks).
    public var notes: [String]

    public func buffer(_ name: String) -> Buffer? { buffers.first { $0.name == name } }

    /// Reads `DIR/manifest.json` and validates it (``ImageValidation``; built-in profiles by name).
    /// - Throws: ``MoepackError`` naming the file (and field) when it is missing, too large, not JSON,
    ///   of another format, or inconsistent with itself or its profile.
    public static func load(directory: String) throws -> Manifest {
        try load(directory: directory).manifest
    }

    /// ``load(directory:)`` also returning the bytes read (for the digest in `manifest.sha256`).
    static func load(directory: String) throws -> (manifest: Manifest, bytes: Data) {
        let path = (directory as NSString).appendingPathComponent("manifest.json")
        guard let size = regularFileSize(path) else {
            throw MoepackError(.io, file: path, "no manifest (is \(directory) a moepack pack output?)")
        }
        guard size <= ImageValidation.maximumManifestBytes else {
            throw MoepackError(.badInput, file: path, "\(size) bytes, more than any manifest (\(ImageValidation.maximumManifestBytes) bytes)")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MoepackError(.io, file: path, "cannot read the manifest")
        }
        let m = try ImageValidation.decodeAndValidate(data, file: path, profile: KernelProfile.builtin)
        return (m, data)
    }

    /// Deterministic JSON (sorted keys, pretty printed, trailing newline).
    public func encoded() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var d = try enc.encode(self)
        d.append(0x0A)
        return d
    }
}
