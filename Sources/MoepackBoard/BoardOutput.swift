import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackFixedPoint
import MoepackInference
import MoepackPacking

/// What a board returned in `x`: `[n][tokens][D]` values, either as the raw fm_t containers
/// (`moepack_host -o OUT.bin`, `moepack_pynq.py --raw`) or as float32 (`moepack_pynq.py` default).
public struct BoardOutput: Sendable {
    public enum Values: Sendable {
        /// fm_t raw integers (value · 2^fraction bits).
        case raw([Int32])
        /// float32 values (raw / 2^fraction bits rounded to float32).
        case float([Float])
    }
    public var values: Values
    /// Images in the file (n).
    public var images: Int

    /// Reads OUT.bin (int32 little-endian, `[n][tokens][D]`) or OUT.npy (`[n,tokens,D]` or
    /// `[tokens,D]`, float32 or int32).
    /// - Throws: ``MoepackError`` naming the file: unreadable, wrong size or shape, other dtypes.
    public static func load(path: String, tokens: Int, dim: Int) throws -> BoardOutput {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MoepackError(.io, file: path, "cannot read the board output")
        }
        let bytes = [UInt8](data)
        let perImage = tokens * dim
        if path.lowercased().hasSuffix(".npy") {
            do { return try loadNpy(bytes, perImage: perImage, tokens: tokens, dim: dim, path: path) } catch let e as MoepackError {
                throw e.inFile(path)
            }
        }
        guard !bytes.isEmpty, bytes.count % (perImage * 4) == 0 else {
            throw MoepackError(.badInput, file: path, "\(bytes.count) bytes is not a whole number of x arrays (int32 [n][\(tokens)][\(dim)] = \(perImage * 4) bytes each)")
        }
        return BoardOutput(values: .raw(Self.int32s(bytes[...])), images: bytes.count / (perImage * 4))
    }

    static func loadNpy(_ bytes: [UInt8], perImage: Int, tokens: Int, dim: Int, path: String) throws -> BoardOutput {
        do {
            let h = try NpyHeader.parse(bytes: bytes)
            let count = h.shape.reduce(1, *)
            guard (h.shape.count == 3 && Array(h.shape.suffix(2)) == [tokens, dim]) || h.shape == [tokens, dim], count > 0 else {
                throw MoepackError(.badInput, file: path, "shape \(shapeString(h.shape)), expected [n,\(tokens),\(dim)] or [\(tokens),\(dim)]")
            }
            guard bytes.count >= h.headerBytes + h.dataByteCount else {
                throw MoepackError(.badInput, file: path, "truncated: \(bytes.count - h.headerBytes) data bytes, \(h.dataByteCount) expected")
            }
            let stored = Array(bytes[h.headerBytes..<(h.headerBytes + h.dataByteCount)])
            switch h.dtype {
            case .float32:
                let values = try h.decodeFloat32(stored)
                // The board writes fm_t containers: NaN or Inf cannot come from it and would
                // compare as neither identical nor a finite error.
                if let k = values.firstIndex(where: { !$0.isFinite }) {
                    throw MoepackError(.badInput, file: path, "non-finite value \(values[k]) at image \(k / perImage), token \(k % perImage / dim), channel \(k % dim): not a board output")
                }
                return BoardOutput(values: .float(values), images: count / perImage)
            case .int32:
                let le = try h.toLittleEndianCOrder(stored)
                return BoardOutput(values: .raw(Self.int32s(le[...])), images: count / perImage)
            default:
                throw MoepackError(.badInput, file: path, "dtype \(h.dtype.rawValue): expected float32 (values) or int32 (fm_t containers)")
            }
        }
    }

    static func int32s(_ b: ArraySlice<UInt8>) -> [Int32] {
        b.withUnsafeBytes { src in (0..<(b.count / 4)).map { Int32(littleEndian: src.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) } }
    }
}

/// The comparison of one board output with the emulation of the same image, frame and `debug_id`.
public struct BoardComparison: Sendable, Codable {
    public struct Difference: Sendable, Codable {
        public var image: Int
        public var token: Int
        public var channel: Int
        /// fm_t raw value the board returned (for float32 output: the value · 2^fraction bits).
        public var board: Double
        public var expected: Int32
    }
    public var output: String
    public var frame: String
    public var debug_id: Int
    /// Where x was taken: `end`, `patch_embedding`, `layer L attention residual`, `layer L output`.
    public var point: String
    public var elements: Int
    public var identical: Int
    /// Largest |board − emulation| in units of the last place of fm_t.
    public var max_error_lsb: Double
    /// Mean squared and mean absolute error of the values, as the published testbench (e2e.cpp) prints them.
    public var mse: Double
    public var mae: Double
    public var first_difference: Difference?
    public var max_lsb_allowed: Double
    public var passed: Bool
}

public enum BoardCheck {
    /// Compares `output` with the fixed-point emulation of `frame` through `image` at `debugID`.
    ///
    /// Every image of a batch is compared with the same frame unless `frames` has one per image.
    /// An early return (`debugID` ≠ 0) computes only the first image (ViT_compute returns from the
    /// whole kernel), so only that one is compared.
    /// - Throws: ``MoepackError`` when the output has fewer images than frames, or the image lacks the task.
    public static func compare(image: PackedImage, frames: [(name: String, bytes: [UInt8])], output: BoardOutput, outputName: String,
                               debugID: Int, task: Int?, maxLSB: Double) throws -> BoardComparison {
        let c = image.manifest.model
        let point = try DebugPoint(validating: debugID, depth: c.depth, item: "--debug-id")
        let backbone = try FixedBackbone(arrays: try image.kernelArrays(task: task))
        let fm = try image.type(of: "x")
        let scale = Double(1 << fm.fractionBits)
        let perImage = c.tokens * c.embedDim
        let n = point.returnsEarly ? 1 : output.images
        guard frames.count == 1 || frames.count == output.images else {
            throw MoepackError(.usage, file: outputName, "holds \(output.images) image(s), \(frames.count) frames given")
        }
        var identical = 0, maxErr = 0.0, se = 0.0, ae = 0.0
        var first: BoardComparison.Difference?
        for i in 0..<n {
            let frame = frames[frames.count == 1 ? 0 : i]
            let expected = try backbone.forward(pixels: frame.bytes, stopAfter: point.stopPoint).outputRaw
            for k in 0..<perImage {
                let e = expected[k]
                let (same, boardRaw): (Bool, Double)
                switch output.values {
                case .raw(let r): same = r[i * perImage + k] == e; boardRaw = Double(r[i * perImage + k])
                case .float(let f):
                    let v = f[i * perImage + k]
                    same = v == Float(Double(e) / scale); boardRaw = Double(v) * scale
                }
                let err = abs(boardRaw - Double(e))
                if same { identical += 1 } else if first == nil {
                    first = .init(image: i, token: k / c.embedDim, channel: k % c.embedDim, board: boardRaw, expected: e)
                }
                maxErr = max(maxErr, same ? 0 : err)
                let d = err / scale
                se += d * d; ae += d
            }
        }
        let count = n * perImage
        let name: String
        switch point.stopPoint {
        case nil: name = "end"
        case .patchEmbedding?: name = "patch_embedding"
        case .attentionResidual(let l)?: name = "layer \(l) attention residual"
        case .layerOutput(let l)?: name = "layer \(l) output"
        }
        return BoardComparison(output: outputName, frame: frames.map(\.name).joined(separator: ","), debug_id: debugID, point: name,
                               elements: count, identical: identical, max_error_lsb: maxErr.rounded(.up),
                               mse: se / Double(count), mae: ae / Double(count), first_difference: first,
                               max_lsb_allowed: maxLSB, passed: identical == count || maxErr <= maxLSB)
    }

    /// One line per comparison for the terminal.
    public static func render(_ r: BoardComparison) -> String {
        var s = "\(r.output) vs the emulation of \(r.frame) at debug_id \(r.debug_id) (\(r.point)): \(r.identical)/\(r.elements) elements identical, largest error \(whole(r.max_error_lsb)) LSB\n"
        s += "MSE: \(r.mse)\nMAE: \(r.mae)\n"
        if let d = r.first_difference {
            s += "first difference: image \(d.image), token \(d.token), channel \(d.channel): board \(whole(d.board)), emulation \(d.expected) (raw fm_t)\n"
        }
        s += r.passed ? (r.identical == r.elements ? "PASS: identical" : "PASS: within \(whole(r.max_lsb_allowed)) LSB") : "FAIL"
        return s
    }

    /// A whole number without a fraction, anything else (huge, non-finite) as Double prints it.
    static func whole(_ v: Double) -> String { Int64(exactly: v).map(String.init) ?? String(v) }
}
