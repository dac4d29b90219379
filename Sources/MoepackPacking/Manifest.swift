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
        public var role: String
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

    /// Reads and validates `DIR/manifest.json`.
    /// - Throws: ``MoepackError`` naming the file when it is missing, not JSON, or of another format.
    public static func load(directory: String) throws -> Manifest {
        let path = (directory as NSString).appendingPathComponent("manifest.json")
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MoepackError(.io, file: path, "no manifest (is \(directory) a moepack pack output?)")
        }
        let m: Manifest
        do { m = try JSONDecoder().decode(Manifest.self, from: data) } catch let e as DecodingError {
            throw MoepackError(.badInput, file: path, "not a moepack manifest: \(describe(e))")
        }
        guard m.format == "moepack-ddr/1" else {
            throw MoepackError(.badInput, file: path, "format '\(m.format)', expected 'moepack-ddr/1'")
        }
        try m.model.validate(file: path)
        guard m.image.bytes >= 0 else {
            throw MoepackError(.badInput, file: path, item: "image.bytes", "negative size \(m.image.bytes)")
        }
        /// offset + bytes when both are ≥ 0 and the sum stays within the image, else nil.
        func end(_ offset: Int, _ bytes: Int) -> Int? {
            guard offset >= 0, bytes >= 0 else { return nil }
            let (e, o) = offset.addingReportingOverflow(bytes)
            return !o && e <= m.image.bytes ? e : nil
        }
        var last = 0
        for b in m.buffers.sorted(by: { $0.offset < $1.offset }) {
            guard b.offset >= last, let e = end(b.offset, b.bytes) else {
                throw MoepackError(.badInput, file: path, item: b.name, "offset \(b.offset) + \(b.bytes) bytes overlaps or exceeds the image (\(m.image.bytes) bytes)")
            }
            last = e
            guard b.element_bytes > 0, checkedElementCount(b.shape, elementBytes: b.element_bytes) == b.bytes else {
                throw MoepackError(.badInput, file: path, item: b.name, "shape \(shapeString(b.shape)) × \(b.element_bytes)-byte elements does not give its \(b.bytes) bytes")
            }
        }
        for g in m.task_gates ?? [] where end(g.offset, g.bytes) == nil {
            throw MoepackError(.badInput, file: path, item: "task_gates[\(g.task)]", "offset \(g.offset) + \(g.bytes) bytes exceeds the image (\(m.image.bytes) bytes)")
        }
        for r in m.expert_records ?? [] {
            guard end(r.offset, r.bytes) != nil, [r.w1, r.b1, r.w2, r.b2].allSatisfy({ $0 >= r.offset && $0 <= r.offset + r.bytes }) else {
                throw MoepackError(.badInput, file: path, item: "expert_records[block \(r.block), expert \(r.expert)]", "offset \(r.offset) + \(r.bytes) bytes (parts at \(r.w1), \(r.b1), \(r.w2), \(r.b2)) exceeds the image (\(m.image.bytes) bytes) or its record")
            }
        }
        return m
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
