import CPNG
import MoepackCore
import MoepackModel
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One input frame in the kernel's pixel convention.
public struct Frame: Sendable, Equatable {
    /// [3, H, W] row-major (channel, row, column), values byte/256 (`ap_ufixed<8,0>`), in [0, 1).
    public var pixels: [Float]
    /// The same frame as bytes, [3, H, W] row-major, uint8.
    public var bytes: [UInt8]
    /// What was done to the file's pixels, e.g. `resized 2048×1024 → 256×128 (area filter)`; nil when
    /// the file already had the configured size and 8-bit values.
    public var note: String?

    public init(bytes: [UInt8], note: String? = nil) {
        self.bytes = bytes
        self.pixels = bytes.map { Float($0) / 256 }
        self.note = note
    }
}

/// Loads input frames for the backbone (`config.inChans` must be 3; size `config.imageHeight` ×
/// `config.imageWidth`).
///
/// Accepted files (checked in this order):
/// - PNG (signature `\x89PNG\r\n\x1a\n`): 8-bit grey, grey+alpha, RGB, RGBA, palette (expanded; an
///   index past the PLTE chunk's entries is refused, as the PNG spec makes it an error);
///   alpha is ignored (the colour samples are taken as stored). 16-bit files: the high byte of each
///   sample (16-bit files with alpha are first composited onto black by libpng, in linear light).
///   Interlaced (Adam7) files are accepted. Before any pixel is decoded, `PNGStructure` checks the
///   chunk list against the file's length, the PLTE/tRNS rules and that the IDAT stream inflates to
///   exactly the header's rows (a stream that inflates further is stopped one image in). Decoded with
///   libpng's simplified API (`png_image`), so a gAMA/sRGB chunk that differs from sRGB is converted to sRGB.
/// - NumPy `.npy` (magic `\x93NUMPY`, versions 1–3, C order): uint8 `[3,H,W]` or `[H,W,3]`, or
///   float32/float64 `[3,H,W]` or `[H,W,3]` holding byte/256 values.
/// - Raw uint8 `[3,H,W]` (file size exactly 3·H·W).
/// - Raw little-endian float32 `[3,H,W]` of byte/256 values (size 3·H·W·4, the Edge-MoE
///   `image.float32.bin` layout).
///
/// Float samples v become bytes by `floor(v·256)` clamped to 0…255, i.e. the conversion to
/// `ap_ufixed<8,0>` with Vitis' default AP_TRN quantisation and saturation in place of wrap-around
/// (exact for values that already are byte/256). NaN or infinite samples are refused.
///
/// Frames (PNG or .npy) of another size are resized to H×W with an area filter: each output pixel is
/// the average of the source pixels under its footprint weighted by exact fractional coverage,
/// computed in integers and rounded half up; `Frame.note` records the resize.
public enum FrameLoader {
    /// Largest accepted source side (pixels).
    public static let maxSide = 1 << 15
    /// Largest accepted PNG frame in pixels (2^25 ≈ 33.5 million, e.g. 8K UHD 7680×4320): checked from
    /// the PNG header before anything is decoded, since decoding holds the whole frame (at most
    /// 9 bytes a pixel: 16-bit RGB samples and the [3,h,w] copy, about 300 MB at this limit).
    public static let maxPNGPixels = 1 << 25

    /// Loads and converts one frame.
    /// - Throws: `MoepackError` naming the file: `.io` when it cannot be read; `.badInput` when it is
    ///   not a PNG / npy of the accepted kinds or has the wrong size, is truncated or malformed;
    ///   `.numeric` for NaN/Inf samples; `.unsupported` for non-3-channel configs or Fortran-order npy.
    public static func load(path: String, config: M3ViTConfig) throws -> Frame {
        guard config.inChans == 3 else {
            throw MoepackError(.unsupported, file: path, "frames have 3 channels, config has \(config.inChans)")
        }
        let H = config.imageHeight, W = config.imageWidth
        let data = try readFile(path)
        let lower = path.lowercased()
        do {
            if data.starts(with: pngSignature) {
                let (chw, h, w) = try decodePNG(data)
                return try finish(chw, h: h, w: w, H: H, W: W, extraNote: nil)
            }
            if lower.hasSuffix(".png") {
                throw MoepackError(.badInput, "not a PNG (missing PNG signature)")
            }
            if data.starts(with: npyMagic) {
                let (chw, h, w, note) = try decodeNPY(data)
                return try finish(chw, h: h, w: w, H: H, W: W, extraNote: note)
            }
            if lower.hasSuffix(".npy") {
                throw MoepackError(.badInput, "not a NumPy .npy file (missing \\x93NUMPY magic)")
            }
            let n = 3 * H * W
            if data.count == n { return Frame(bytes: data) }
            if data.count == n * 4 {
                let bytes = try floatsToBytes(count: n) { i in
                    let b = UInt32(data[4 * i]) | UInt32(data[4 * i + 1]) << 8
                        | UInt32(data[4 * i + 2]) << 16 | UInt32(data[4 * i + 3]) << 24
                    return Double(Float(bitPattern: b))
                }
                return Frame(bytes: bytes, note: "float32 [3,\(H),\(W)] converted to bytes by floor(v·256)")
            }
            throw MoepackError(.badInput,
                "\(data.count) bytes is neither raw uint8 [3,\(H),\(W)] (\(n) bytes) nor raw float32 (\(n * 4) bytes), and not a PNG or .npy")
        } catch let e as MoepackError {
            throw e.inFile(path)
        }
    }

    // MARK: - Common tail

    private static func finish(_ chw: [UInt8], h: Int, w: Int, H: Int, W: Int, extraNote: String?) throws -> Frame {
        if h == H && w == W { return Frame(bytes: chw, note: extraNote) }
        let resized = areaResize(chw, channels: 3, height: h, width: w, toHeight: H, toWidth: W)
        var note = "resized \(w)×\(h) → \(W)×\(H) (area filter)"
        if let extraNote { note = extraNote + "; " + note }
        return Frame(bytes: resized, note: note)
    }

    private static func floatsToBytes(count: Int, _ value: (Int) -> Double) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        for i in 0..<count {
            let v = value(i)
            guard v.isFinite else {
                throw MoepackError(.numeric, item: "sample \(i)", "value \(v) is not finite")
            }
            // Pixels are byte/256 in [0, 1) (1.0, from byte/255 scaling, saturates to 255). Anything
            // outside [0, 1] is a normalised or otherwise transformed image, not a frame: refuse it.
            guard v >= 0, v <= 1 else {
                throw MoepackError(.badInput, item: "sample \(i)", "value \(v) outside [0, 1]: float frames hold pixel/256 values (give raw bytes or un-normalised pixels)")
            }
            out[i] = UInt8(max(0, min(255, (v * 256).rounded(.down))))
        }
        return out
    }

    // MARK: - Area filter

    /// Area (box) resize of [channels, height, width] bytes to [channels, toHeight, toWidth].
    ///
    /// Source pixel (r, c) covers [r, r+1)×[c, c+1); output pixel (i, j) covers
    /// [i·h/H, (i+1)·h/H)×[j·w/W, (j+1)·w/W). The output is Σ coverage·value / footprint area, rounded
    /// half up. Everything is scaled by H·W so coverages are integers and the result is exact.
    static func areaResize(_ src: [UInt8], channels: Int, height h: Int, width w: Int,
                           toHeight H: Int, toWidth W: Int) -> [UInt8] {
        /// For each output index, (first source index, integer coverages) along one axis.
        func axisWeights(src n: Int, dst m: Int) -> [(Int, [Int64])] {
            (0..<m).map { i in
                let lo = i * n, hi = (i + 1) * n          // output interval, units of 1/m source pixel
                let first = lo / m, last = (hi - 1) / m     // source pixels touched
                let ws = (first...last).map { r in Int64(min((r + 1) * m, hi) - max(r * m, lo)) }
                return (first, ws)
            }
        }
        let wy = axisWeights(src: h, dst: H), wx = axisWeights(src: w, dst: W)
        let den = Int64(h) * Int64(w)
        var out = [UInt8](repeating: 0, count: channels * H * W)
        var tmp = [Int64](repeating: 0, count: w)
        for c in 0..<channels {
            for i in 0..<H {
                let (r0, ys) = wy[i]
                for x in 0..<w { tmp[x] = 0 }
                for (k, oy) in ys.enumerated() {
                    let base = (c * h + r0 + k) * w
                    for x in 0..<w { tmp[x] += oy * Int64(src[base + x]) }
                }
                for j in 0..<W {
                    let (c0, xs) = wx[j]
                    var num: Int64 = 0
                    for (k, ox) in xs.enumerated() { num += ox * tmp[c0 + k] }
                    out[(c * H + i) * W + j] = UInt8(min(255, (2 * num + den) / (2 * den)))
                }
            }
        }
        return out
    }

    // MARK: - PNG

    static let pngSignature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

    /// Decodes a PNG to [3, h, w] bytes via libpng's simplified API, after `PNGStructure.check` has
    /// bounded its chunks and its IDAT stream by the file and the header.
    static func decodePNG(_ data: [UInt8]) throws -> ([UInt8], Int, Int) {
        let structure = try PNGStructure.check(data, maxSide: maxSide, maxPixels: maxPNGPixels)
        var image = png_image()
        image.version = png_uint_32(PNG_IMAGE_VERSION)
        defer { png_image_free(&image) }
        let ok = data.withUnsafeBytes { png_image_begin_read_from_memory(&image, $0.baseAddress, $0.count) }
        guard ok != 0 else { throw MoepackError(.badInput, "PNG header: \(pngMessage(&image))") }
        let w = structure.header.width, h = structure.header.height
        if image.format & png_uint_32(PNG_FORMAT_FLAG_COLORMAP) != 0 { try checkPaletteIndices(data, width: w, height: h) }
        let sixteen = image.format & png_uint_32(PNG_FORMAT_FLAG_LINEAR) != 0
        var chw = [UInt8](repeating: 0, count: 3 * h * w)
        if sixteen {
            // 16-bit samples, no alpha (linear output composites alpha onto black): take the high byte.
            image.format = png_uint_32(PNG_FORMAT_FLAG_COLOR | PNG_FORMAT_FLAG_LINEAR)
            var buf = [UInt16](repeating: 0, count: 3 * h * w)
            let r = buf.withUnsafeMutableBytes {
                png_image_finish_read(&image, nil, $0.baseAddress, png_int_32(3 * w), nil)
            }
            guard r != 0 else { throw MoepackError(.badInput, "PNG data: \(pngMessage(&image))") }
            for p in 0..<(h * w) { for c in 0..<3 { chw[c * h * w + p] = UInt8(buf[3 * p + c] >> 8) } }
        } else {
            // 8-bit RGBA (not premultiplied); the alpha sample is dropped.
            image.format = png_uint_32(PNG_FORMAT_FLAG_COLOR | PNG_FORMAT_FLAG_ALPHA)
            var buf = [UInt8](repeating: 0, count: 4 * h * w)
            let r = buf.withUnsafeMutableBytes {
                png_image_finish_read(&image, nil, $0.baseAddress, png_int_32(4 * w), nil)
            }
            guard r != 0 else { throw MoepackError(.badInput, "PNG data: \(pngMessage(&image))") }
            for p in 0..<(h * w) { for c in 0..<3 { chw[c * h * w + p] = buf[4 * p + c] } }
        }
        return (chw, h, w)
    }

    /// Refuses a palette PNG with a pixel whose index is not below its PLTE chunk's entry count: an
    /// error by the PNG spec's PLTE rule, which libpng's simplified API expands to black without a
    /// word. The file is read once more as indices (the colormap format keeps a palette file's own
    /// indices), row-major; the first offending pixel is named.
    /// - Throws: `MoepackError(.badInput)` naming the pixel (x, y), its index and the entry count.
    private static func checkPaletteIndices(_ data: [UInt8], width w: Int, height h: Int) throws {
        var image = png_image()
        image.version = png_uint_32(PNG_IMAGE_VERSION)
        defer { png_image_free(&image) }
        let ok = data.withUnsafeBytes { png_image_begin_read_from_memory(&image, $0.baseAddress, $0.count) }
        guard ok != 0 else { throw MoepackError(.badInput, "PNG header: \(pngMessage(&image))") }
        let entries = Int(image.colormap_entries)
        image.format = png_uint_32(PNG_FORMAT_FLAG_COLORMAP | PNG_FORMAT_FLAG_COLOR | PNG_FORMAT_FLAG_ALPHA)
        var indices = [UInt8](repeating: 0, count: h * w)
        var colormap = [UInt8](repeating: 0, count: 4 * 256)
        let r = indices.withUnsafeMutableBytes { idx in
            colormap.withUnsafeMutableBytes { png_image_finish_read(&image, nil, idx.baseAddress, png_int_32(w), $0.baseAddress) }
        }
        guard r != 0 else { throw MoepackError(.badInput, "PNG data: \(pngMessage(&image))") }
        if let p = indices.firstIndex(where: { Int($0) >= entries }) {
            throw MoepackError(.badInput, "PNG pixel (x \(p % w), y \(p / w)) has palette index \(indices[p]), but its PLTE chunk has \(entries) entr\(entries == 1 ? "y" : "ies")")
        }
    }

    private static func pngMessage(_ image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { raw in
            let bytes = raw.prefix { $0 != 0 }
            let s = String(decoding: bytes, as: UTF8.self)
            return s.isEmpty ? "libpng error" : s
        }
    }

    // MARK: - NPY

    static let npyMagic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]

    /// Decodes a `.npy` frame (format spec: numpy.lib.format, versions 1.0–3.0) to [3, h, w] bytes.
    static func decodeNPY(_ data: [UInt8]) throws -> ([UInt8], Int, Int, String?) {
        let header = try NPYHeader.parse(data)
        let shape = header.shape
        guard shape.count == 3, shape[0] == 3 || shape[2] == 3 else {
            throw MoepackError(.badInput, "npy shape \(shapeString(shape)), expected [3,H,W] or [H,W,3]")
        }
        let hwc = shape[0] != 3
        let h = hwc ? shape[0] : shape[1], w = hwc ? shape[1] : shape[2]
        guard h > 0, w > 0, h <= maxSide, w <= maxSide else {
            throw MoepackError(.badInput, "npy frame size \(w)×\(h) outside 1…\(maxSide)")
        }
        let n = 3 * h * w
        let payload = data.count - header.dataOffset
        let (need, overflow) = n.multipliedReportingOverflow(by: header.itemSize)
        guard !overflow, payload == need else {
            throw MoepackError(.badInput, payload < need
                ? "truncated npy: \(payload) data bytes, expected \(need) for \(header.descr) \(shapeString(shape))"
                : "npy has \(payload) data bytes, expected \(need) for \(header.descr) \(shapeString(shape))")
        }
        let base = header.dataOffset
        /// Maps CHW index → file element index.
        func fileIndex(_ i: Int) -> Int {
            guard hwc else { return i }
            let c = i / (h * w), p = i % (h * w)
            return p * 3 + c
        }
        var note: String? = nil
        var chw: [UInt8]
        switch header.kind {
        case .u8:
            chw = (0..<n).map { data[base + fileIndex($0)] }
        case .f32:
            chw = try floatsToBytes(count: n) { i in
                let o = base + 4 * fileIndex(i)
                var b: UInt32 = 0
                for k in 0..<4 { b |= UInt32(data[o + k]) << (header.bigEndian ? 8 * (3 - k) : 8 * k) }
                return Double(Float(bitPattern: b))
            }
            note = "float32 npy converted to bytes by floor(v·256)"
        case .f64:
            chw = try floatsToBytes(count: n) { i in
                let o = base + 8 * fileIndex(i)
                var b: UInt64 = 0
                for k in 0..<8 { b |= UInt64(data[o + k]) << (header.bigEndian ? 8 * (7 - k) : 8 * k) }
                return Double(bitPattern: b)
            }
            note = "float64 npy converted to bytes by floor(v·256)"
        }
        return (chw, h, w, note)
    }

    // MARK: - File

    static func readFile(_ path: String) throws -> [UInt8] {
        guard let f = fopen(path, "rb") else {
            throw MoepackError(.io, file: path, "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { fclose(f) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
            if n > 0 { out.append(contentsOf: chunk[0..<n]) }
            if n < chunk.count {
                if ferror(f) != 0 { throw MoepackError(.io, file: path, "read error: \(String(cString: strerror(errno)))") }
                break
            }
            if out.count > 1 << 30 { throw MoepackError(.badInput, file: path, "larger than 1 GiB, not a frame") }
        }
        return out
    }
}

/// Minimal strict parser of a NumPy `.npy` header (numpy.lib.format): magic, version, header
/// length, then a Python dict literal with exactly the keys `descr`, `fortran_order`, `shape`.
struct NPYHeader {
    enum Kind { case u8, f32, f64 }
    var descr: String
    var kind: Kind
    var bigEndian: Bool
    var itemSize: Int
    var shape: [Int]
    var dataOffset: Int

    static func parse(_ d: [UInt8]) throws -> NPYHeader {
        func bad(_ m: String) -> MoepackError { MoepackError(.badInput, item: "npy header", m) }
        guard d.count >= 10, d.starts(with: FrameLoader.npyMagic) else { throw bad("missing \\x93NUMPY magic or truncated") }
        let major = d[6]
        let len: Int, start: Int
        switch major {
        case 1: len = Int(d[8]) | Int(d[9]) << 8; start = 10
        case 2, 3:
            guard d.count >= 12 else { throw bad("truncated") }
            len = Int(d[8]) | Int(d[9]) << 8 | Int(d[10]) << 16 | Int(d[11]) << 24; start = 12
        default: throw bad("unsupported npy version \(major).\(d[7])")
        }
        guard len <= 1 << 20, start + len <= d.count else { throw bad("header length \(len) runs past end of file") }
        let text = String(decoding: d[start..<start + len], as: UTF8.self)
        var p = DictParser(chars: Array(text.unicodeScalars))
        let dict = try p.parseDict().mapError(bad)
        guard Set(dict.keys) == ["descr", "fortran_order", "shape"] else {
            throw bad("keys \(dict.keys.sorted()), expected descr, fortran_order, shape")
        }
        guard case let .string(descr)? = dict["descr"] else { throw bad("descr is not a string") }
        guard case let .bool(fortran)? = dict["fortran_order"] else { throw bad("fortran_order is not True/False") }
        guard case let .tuple(shape)? = dict["shape"] else { throw bad("shape is not a tuple") }
        if fortran { throw MoepackError(.unsupported, item: "npy header", "fortran_order True is not supported") }
        let kind: Kind, size: Int
        var big = false
        switch descr {
        case "|u1", "u1", "<u1", ">u1", "=u1": kind = .u8; size = 1
        case "<f4", "=f4", "f4": kind = .f32; size = 4
        case ">f4": kind = .f32; size = 4; big = true
        case "<f8", "=f8", "f8": kind = .f64; size = 8
        case ">f8": kind = .f64; size = 8; big = true
        default: throw bad("dtype '\(descr)' not accepted for frames (uint8, float32, float64)")
        }
        return NPYHeader(descr: descr, kind: kind, bigEndian: big, itemSize: size, shape: shape, dataOffset: start + len)
    }
}

private extension Result {
    func mapError(_ f: (String) -> MoepackError) throws -> Success where Failure == DictParser.Failure {
        switch self {
        case let .success(v): return v
        case let .failure(e): throw f(e.message)
        }
    }
}

/// Parser for the Python literal subset used in npy headers.
struct DictParser {
    struct Failure: Error { var message: String }
    enum Value { case string(String), bool(Bool), tuple([Int]) }
    var chars: [Unicode.Scalar]
    var i = 0

    mutating func skip() { while i < chars.count, chars[i] == " " || chars[i] == "\n" || chars[i] == "\t" { i += 1 } }
    mutating func expect(_ c: Unicode.Scalar) -> Bool {
        skip(); if i < chars.count, chars[i] == c { i += 1; return true }; return false
    }

    mutating func parseDict() -> Result<[String: Value], Failure> {
        var out: [String: Value] = [:]
        guard expect("{") else { return .failure(Failure(message: "does not start with '{'")) }
        while true {
            if expect("}") { break }
            guard case let .success(key) = parseString() else { return .failure(Failure(message: "expected a quoted key")) }
            guard expect(":") else { return .failure(Failure(message: "expected ':' after '\(key)'")) }
            skip()
            guard let v = parseValue() else { return .failure(Failure(message: "bad value for '\(key)'")) }
            if out[key] != nil { return .failure(Failure(message: "duplicate key '\(key)'")) }
            out[key] = v
            if expect(",") { continue }
            guard expect("}") else { return .failure(Failure(message: "expected ',' or '}'")) }
            break
        }
        skip()
        guard i == chars.count else { return .failure(Failure(message: "trailing characters after dict")) }
        return .success(out)
    }

    mutating func parseString() -> Result<String, Failure> {
        skip()
        guard i < chars.count, chars[i] == "'" || chars[i] == "\"" else { return .failure(Failure(message: "")) }
        let q = chars[i]; i += 1
        var s = ""
        while i < chars.count, chars[i] != q { s.unicodeScalars.append(chars[i]); i += 1 }
        guard i < chars.count else { return .failure(Failure(message: "")) }
        i += 1
        return .success(s)
    }

    mutating func parseValue() -> Value? {
        guard i < chars.count else { return nil }
        if chars[i] == "'" || chars[i] == "\"" {
            if case let .success(s) = parseString() { return .string(s) }
            return nil
        }
        if word("True") { return .bool(true) }
        if word("False") { return .bool(false) }
        guard expect("(") else { return nil }
        var dims: [Int] = []
        while true {
            if expect(")") { break }
            skip()
            var digits = ""
            while i < chars.count, ("0"..."9").contains(chars[i]) { digits.unicodeScalars.append(chars[i]); i += 1 }
            guard !digits.isEmpty, digits.count <= 12, let n = Int(digits) else { return nil }
            dims.append(n)
            if expect(",") { continue }
            guard expect(")") else { return nil }
            break
        }
        return .tuple(dims)
    }

    mutating func word(_ w: String) -> Bool {
        let ws = Array(w.unicodeScalars)
        guard i + ws.count <= chars.count, Array(chars[i..<i + ws.count]) == ws else { return false }
        i += ws.count
        return true
    }
}
