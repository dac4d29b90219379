import CZlib
import MoepackCore

/// The structure of a PNG file, checked before libpng decodes a pixel: the chunk list, the header,
/// the rules on PLTE/tRNS that libpng's simplified API lets pass, and the size the IDAT zlib stream
/// inflates to. libpng allocates a chunk's declared length before it sees that the file is shorter,
/// and inflates whatever compressed data follows the last row before it warns; here both are bounded
/// by the file itself.
///
/// Rules (PNG specification, W3C 2nd edition = ISO/IEC 15948):
/// - §5.3: a chunk is a 4-byte big-endian data length, a 4-letter ASCII type, the data, a CRC
///   (checked by libpng). A length that runs past the end of the file is refused.
/// - §5.6/§11.2: IHDR first (13 bytes), IDAT chunks consecutive, IEND last. Bytes after IEND are ignored.
/// - §11.2.2 (IHDR): the allowed bit depths of each colour type; interlace method 0 or 1.
/// - §11.2.3 (PLTE): forbidden for greyscale types 0 and 4; §11.3.2.1 (tRNS): for type 3, at most as
///   many entries as PLTE.
/// - §7.3/§8.2/§10: the IDAT data concatenated is one zlib stream of the filtered scanlines, each
///   row one filter byte plus its packed samples, per Adam7 pass when interlaced (empty passes have
///   no rows). It must inflate to exactly that many bytes and end where the IDAT data ends.
struct PNGStructure {
    /// The IHDR fields moepack uses.
    struct Header: Equatable {
        var width: Int
        var height: Int
        var bitDepth: Int
        var colourType: Int
        var interlaced: Bool
    }

    /// Colour types of IHDR (§11.2.2): name, samples per pixel, allowed bit depths.
    static let colourTypes: [Int: (name: String, samples: Int, depths: Set<Int>)] = [
        0: ("greyscale", 1, [1, 2, 4, 8, 16]),
        2: ("RGB", 3, [8, 16]),
        3: ("palette", 1, [1, 2, 4, 8]),
        4: ("greyscale+alpha", 2, [8, 16]),
        6: ("RGBA", 4, [8, 16]),
    ]

    /// Adam7 passes (§8.2): first column, first row, column step, row step.
    static let adam7: [(x0: Int, y0: Int, dx: Int, dy: Int)] = [
        (0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2),
    ]

    var header: Header
    /// Byte ranges of the IDAT chunks' data in the file, in file order.
    var idat: [Range<Int>]

    /// Bytes of filtered scanlines the header calls for (the IDAT stream's inflated size).
    var filteredSize: Int {
        let bitsPerPixel = Self.colourTypes[header.colourType]!.samples * header.bitDepth
        func rows(width: Int, height: Int) -> Int {
            width == 0 || height == 0 ? 0 : height * (1 + (width * bitsPerPixel + 7) / 8)
        }
        guard header.interlaced else { return rows(width: header.width, height: header.height) }
        return Self.adam7.reduce(0) { sum, p in
            sum + rows(width: (header.width - p.x0 + p.dx - 1) / p.dx, height: (header.height - p.y0 + p.dy - 1) / p.dy)
        }
    }

    /// "6×4 8-bit RGB" (with ", Adam7-interlaced" when so), for messages.
    var imageDescription: String {
        "\(header.width)×\(header.height) \(header.bitDepth)-bit \(Self.colourTypes[header.colourType]!.name)"
            + (header.interlaced ? " Adam7-interlaced" : "")
    }

    /// Checks `data` (a whole file starting with the PNG signature) and returns its structure.
    /// - Parameters: maxSide / maxPixels: the largest accepted width or height, and width·height.
    /// - Throws: `MoepackError(.badInput)` with one line naming the chunk (type and byte offset) or the
    ///   rule that fails.
    static func check(_ data: [UInt8], maxSide: Int, maxPixels: Int) throws -> PNGStructure {
        let chunks = try chunkList(data)
        let header = try parseHeader(data, chunks, maxSide: maxSide, maxPixels: maxPixels)
        let idat = try checkOrder(data, chunks, header: header)
        let structure = PNGStructure(header: header, idat: idat)
        try structure.checkImageData(data)
        return structure
    }

    /// The one error shape of this file: "PNG <what is wrong>".
    private static func bad(_ m: String) -> MoepackError { MoepackError(.badInput, "PNG " + m) }

    /// A 4-byte big-endian unsigned integer (§7.1), as chunk lengths and IHDR fields are stored.
    private static func u32<C: Collection<UInt8>>(_ bytes: C) -> Int { bytes.prefix(4).reduce(0) { $0 << 8 | Int($1) } }

    struct Chunk {
        var type: String
        var offset: Int
        var data: Range<Int>
        var label: String { "chunk '\(type)' at byte \(offset)" }
    }

    /// Walks the chunks from the signature to IEND (§5.3), each length checked against the bytes left.
    static func chunkList(_ data: [UInt8]) throws -> [Chunk] {
        var chunks: [Chunk] = []
        var at = 8
        while chunks.last?.type != "IEND" {
            guard at < data.count else {
                let after = chunks.last.map { " after \($0.label)" } ?? " after its signature"
                throw bad("ends\(after) without an IEND chunk (file truncated?)")
            }
            guard data.count - at >= 8 else { throw bad("ends inside the chunk header at byte \(at) (file truncated?)") }
            let length = u32(data[at..<at + 4])
            let typeBytes = data[at + 4..<at + 8]
            guard typeBytes.allSatisfy({ (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) }) else {
                let hex = typeBytes.map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: " ")
                throw bad("chunk at byte \(at) has type bytes \(hex), not four ASCII letters (file corrupt?)")
            }
            let chunk = Chunk(type: String(decoding: typeBytes, as: UTF8.self), offset: at, data: at + 8..<at + 8 + length)
            let left = data.count - chunk.data.lowerBound
            guard length + 4 <= left else {
                throw bad("\(chunk.label) declares \(length) data bytes, but only \(left) bytes follow its type (file truncated or length corrupt)")
            }
            chunks.append(chunk)
            at = chunk.data.upperBound + 4
        }
        return chunks
    }

    /// IHDR (§11.2.2): first, 13 bytes, an allowed colour type and bit depth, interlace 0 or 1, and a size
    /// within moepack's limits (checked here, before any pixel is decoded).
    static func parseHeader(_ data: [UInt8], _ chunks: [Chunk], maxSide: Int, maxPixels: Int) throws -> Header {
        let first = chunks[0]
        guard first.type == "IHDR" else { throw bad("starts with \(first.label), not IHDR") }
        guard first.data.count == 13 else { throw bad("IHDR chunk has \(first.data.count) data bytes, not 13") }
        let d = Array(data[first.data])
        let header = Header(width: u32(d[0..<4]), height: u32(d[4..<8]), bitDepth: Int(d[8]), colourType: Int(d[9]), interlaced: d[12] == 1)
        guard let colour = colourTypes[header.colourType] else {
            throw bad("IHDR colour type \(header.colourType) is not one of 0, 2, 3, 4, 6")
        }
        guard colour.depths.contains(header.bitDepth) else {
            throw bad("IHDR bit depth \(header.bitDepth) is not allowed with colour type \(header.colourType) (\(colour.name)): \(colour.depths.sorted().map(String.init).joined(separator: ", "))")
        }
        guard d[12] <= 1 else { throw bad("IHDR interlace method \(d[12]) is not 0 (none) or 1 (Adam7)") }
        let (w, h) = (header.width, header.height)
        guard w > 0, h > 0, w <= maxSide, h <= maxSide else { throw bad("size \(w)×\(h) outside 1…\(maxSide)") }
        guard w * h <= maxPixels else {
            throw bad("size \(w)×\(h) is \(w * h) pixels, more than the \(maxPixels) moepack decodes (resize the frame first)")
        }
        return header
    }

    /// Chunk order and the PLTE/tRNS rules; returns the IDAT data ranges (§5.6, §11.2.3, §11.3.2.1).
    static func checkOrder(_ data: [UInt8], _ chunks: [Chunk], header: Header) throws -> [Range<Int>] {
        var paletteEntries: Int?
        var idat: [Chunk] = []
        for (i, chunk) in chunks.enumerated() {
            switch chunk.type {
            case "IDAT":
                if let last = idat.last, chunks[i - 1].type != "IDAT" {
                    throw bad("IDAT chunks are not consecutive: \(chunks[i - 1].label) comes between \(last.label) and \(chunk.label)")
                }
                idat.append(chunk)
            case "PLTE":
                if header.colourType == 0 || header.colourType == 4 {
                    throw bad("has a PLTE chunk at byte \(chunk.offset), which the PNG spec forbids in a \(colourTypes[header.colourType]!.name) (colour type \(header.colourType)) image")
                }
                paletteEntries = chunk.data.count / 3
            case "tRNS" where header.colourType == 3:
                if let entries = paletteEntries, chunk.data.count > entries {
                    throw bad("tRNS chunk at byte \(chunk.offset) has \(chunk.data.count) alpha entries, more than the \(entries) entries of its PLTE chunk")
                }
            default:
                continue
            }
        }
        guard !idat.isEmpty else { throw bad("has no IDAT chunk (no pixel data)") }
        return idat.map(\.data)
    }

    /// Inflates the IDAT stream into a scratch buffer, counting bytes and stopping as soon as the count
    /// passes `filteredSize`, so a stream that inflates far past the image costs at most one image.
    func checkImageData(_ data: [UInt8]) throws {
        let expected = filteredSize
        var stream = z_stream()
        guard inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw Self.bad("IDAT: zlib inflateInit failed")
        }
        defer { inflateEnd(&stream) }
        let scratchSize = 1 << 16
        let scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: scratchSize)
        defer { scratch.deallocate() }
        var produced = 0, ended = false, trailing = 0
        try data.withUnsafeBufferPointer { file in
            for range in idat {
                if ended { trailing += range.count; continue }
                stream.next_in = UnsafeMutablePointer(mutating: file.baseAddress! + range.lowerBound)
                stream.avail_in = UInt32(range.count)
                inflating: while !ended && (stream.avail_in > 0 || stream.avail_out == 0) {
                    stream.next_out = scratch
                    stream.avail_out = UInt32(scratchSize)
                    let rc = inflate(&stream, Z_NO_FLUSH)
                    produced += scratchSize - Int(stream.avail_out)
                    guard produced <= expected else {
                        throw Self.bad("IDAT data inflates past the \(expected) bytes of filtered rows a \(imageDescription) image has (extra compressed data)")
                    }
                    switch rc {
                    case Z_OK: continue
                    case Z_STREAM_END: ended = true; trailing += Int(stream.avail_in)
                    case Z_BUF_ERROR: break inflating  // no progress possible until the next IDAT
                    case Z_NEED_DICT: throw Self.bad("IDAT zlib stream asks for a preset dictionary, which PNG does not allow")
                    default:
                        let why = stream.msg.map { String(cString: $0) } ?? "error \(rc)"
                        throw Self.bad("IDAT zlib stream is corrupt after \(produced) inflated bytes: \(why)")
                    }
                }
            }
        }
        guard ended else {
            throw Self.bad("IDAT zlib stream is cut short after \(produced) of the \(expected) bytes of filtered rows a \(imageDescription) image has (file truncated?)")
        }
        guard produced == expected else {
            throw Self.bad("IDAT data inflates to \(produced) bytes, but a \(imageDescription) image has \(expected) bytes of filtered rows")
        }
        guard trailing == 0 else { throw Self.bad("has \(trailing) bytes of IDAT data after its zlib stream ends") }
    }
}

private extension String {
    func leftPadded(to n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}
