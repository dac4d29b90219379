import Foundation
import CZlib
import MoepackCore

/// One record of a zip archive, as its central directory describes it.
public struct ZipEntry: Sendable, Equatable {
    /// Record name (UTF-8), e.g. `archive/data/0`.
    public var name: String
    /// Compression method: 0 stored, 8 deflated (others are refused when read).
    public var method: Int
    /// CRC-32 (ISO-HDLC, zlib `crc32`) of the uncompressed bytes.
    public var crc32: UInt32
    /// Bytes stored in the archive.
    public var compressedSize: Int
    /// Bytes after decompression.
    public var uncompressedSize: Int
    /// Offset of the record's local file header.
    public var localHeaderOffset: Int
    /// General-purpose flag bits (bit 3: sizes in a data descriptor after the data).
    var flags: Int
    /// Raw name bytes, compared byte for byte with the local header.
    var nameBytes: [UInt8]
    /// First byte the record may not reach (next local header or the central directory).
    var limit: Int
}

/// A strict, lazy reader of the zip container (PKWARE APPNOTE.TXT 6.3): opening reads only the
/// end-of-central-directory record (zip64 EOCD + locator when present) and the central directory;
/// each record is read on demand by byte range.
///
/// Checks: EOCD and comment fill the file exactly; single-disk archives only; central directory inside
/// the file and before the EOCD; no duplicate names; records do not overlap; sizes ≤ 16 GiB
/// (``maxUncompressedSize``); deflated records declare at most 1032 × their compressed size (the
/// deflate format's largest ratio); stored records have equal sizes; on read, the local header matches the
/// central directory (name, method, sizes/CRC unless flag bit 3), deflate output length equals the
/// declared size, and the CRC-32 of the bytes equals the declared CRC. No encryption.
public final class ZipArchive: @unchecked Sendable {
    /// Largest uncompressed record accepted (16 GiB), a zip-bomb guard.
    public static let maxUncompressedSize = 16 << 30
    /// Largest number of central-directory entries accepted.
    public static let maxEntries = 1_000_000

    public let path: String
    /// Records in central-directory order.
    public let entries: [ZipEntry]
    let file: RandomAccessFile
    private let index: [String: Int]
    private let lock = NSLock()
    private var _readCount = 0
    private var _readNames: [String] = []

    /// Number of records read so far (for laziness checks).
    public var recordReadCount: Int { lock.lock(); defer { lock.unlock() }; return _readCount }
    /// Names of the records read so far, in order.
    public var recordsRead: [String] { lock.lock(); defer { lock.unlock() }; return _readNames }

    /// Opens `path` and reads its central directory.
    /// - Throws: ``MoepackError`` (`badInput`) naming the file and the structure that is wrong.
    public convenience init(path: String) throws {
        try self.init(file: RandomAccessFile(path))
    }

    init(file: RandomAccessFile) throws {
        self.file = file
        self.path = file.path
        let (entries, index) = try ZipArchive.readDirectory(file)
        self.entries = entries
        self.index = index
    }

    /// The entry named `name`, if present.
    public func entry(_ name: String) -> ZipEntry? {
        index[name].map { entries[$0] }
    }

    private func fail(_ item: String?, _ msg: String) -> MoepackError {
        MoepackError(.badInput, file: path, item: item, msg)
    }

    // MARK: directory

    private static func readDirectory(_ file: RandomAccessFile) throws -> ([ZipEntry], [String: Int]) {
        let path = file.path
        func bad(_ m: String) -> MoepackError { MoepackError(.badInput, file: path, "zip: " + m) }
        let size = file.size
        guard size >= 22 else { throw bad("file of \(size) bytes is too short for an end-of-central-directory record (truncated)") }
        let tailLen = min(size, 22 + 0xFFFF)
        let tailStart = size - tailLen
        let tail = try file.read(at: tailStart, count: tailLen, what: "end of central directory")
        // Search backwards for an EOCD whose comment ends exactly at end of file.
        var eocdPos = -1
        var i = tail.count - 22
        while i >= 0 {
            if tail[i] == 0x50, tail[i + 1] == 0x4b, tail[i + 2] == 0x05, tail[i + 3] == 0x06 {
                let commentLen = Int(tail[i + 20]) | Int(tail[i + 21]) << 8
                if i + 22 + commentLen == tail.count { eocdPos = i; break }
            }
            i -= 1
        }
        guard eocdPos >= 0 else {
            throw bad("no end-of-central-directory record (truncated or not a zip file)")
        }
        let eocdOffset = tailStart + eocdPos
        var r = LEReader(tail, at: eocdPos + 4)
        guard let disk = r.u16(), let cdDisk = r.u16(), let nThisDisk = r.u16(), let nTotal = r.u16(),
              let cdSize32 = r.u32(), let cdOffset32 = r.u32() else { throw bad("short EOCD") }
        var count = nTotal, cdSize = cdSize32, cdOffset = cdOffset32
        var directoryEnd = eocdOffset
        // zip64 locator sits immediately before the EOCD.
        var zip64 = false
        if eocdOffset >= 20 {
            let loc = try file.read(at: eocdOffset - 20, count: 20, what: "zip64 locator")
            var lr = LEReader(loc)
            if lr.uint(4) == 0x07064b50 {
                zip64 = true
                guard let locDisk = lr.u32(), let z64Offset = lr.u64(), let totalDisks = lr.u32() else {
                    throw bad("short zip64 locator")
                }
                guard locDisk == 0, totalDisks <= 1 else { throw bad("multi-disk archives are not supported") }
                guard z64Offset <= eocdOffset - 20 - 56 else { throw bad("zip64 EOCD offset \(z64Offset) out of range") }
                let rec = try file.read(at: z64Offset, count: 56, what: "zip64 end of central directory")
                var zr = LEReader(rec)
                guard zr.uint(4) == 0x06064b50 else { throw bad("zip64 EOCD signature missing at offset \(z64Offset)") }
                guard let recSize = zr.u64(), recSize >= 44, let _ = zr.u16(), let _ = zr.u16(),
                      let d = zr.u32(), let cd = zr.u32(), let n1 = zr.u64(), let n2 = zr.u64(),
                      let s = zr.u64(), let o = zr.u64() else { throw bad("malformed zip64 EOCD") }
                guard d == 0, cd == 0, n1 == n2 else { throw bad("multi-disk archives are not supported") }
                let (recEnd, ov) = z64Offset.addingReportingOverflow(12 + recSize)
                guard !ov, recEnd == eocdOffset - 20 else {
                    throw bad("zip64 EOCD size \(recSize) does not reach the locator")
                }
                // 32-bit fields must be saturated or agree with the zip64 values.
                if nTotal != 0xFFFF, nTotal != n2 { throw bad("EOCD entry count \(nTotal) disagrees with zip64 count \(n2)") }
                if cdSize32 != 0xFFFF_FFFF, cdSize32 != s { throw bad("EOCD directory size disagrees with zip64 EOCD") }
                if cdOffset32 != 0xFFFF_FFFF, cdOffset32 != o { throw bad("EOCD directory offset disagrees with zip64 EOCD") }
                count = n2; cdSize = s; cdOffset = o
                directoryEnd = z64Offset
            }
        }
        if !zip64 {
            guard disk == 0, cdDisk == 0, nThisDisk == nTotal else { throw bad("multi-disk archives are not supported") }
            if nTotal == 0xFFFF || cdSize32 == 0xFFFF_FFFF || cdOffset32 == 0xFFFF_FFFF {
                throw bad("EOCD fields are saturated but there is no zip64 locator")
            }
        }
        guard count <= maxEntries else { throw bad("\(count) entries exceed the limit of \(maxEntries)") }
        let (cdEnd, ov) = cdOffset.addingReportingOverflow(cdSize)
        guard !ov, cdEnd <= directoryEnd else {
            throw bad("central directory (offset \(cdOffset), \(cdSize) bytes) runs past the end-of-directory record")
        }
        guard cdSize >= 46 * count else { throw bad("central directory of \(cdSize) bytes cannot hold \(count) entries") }
        let cd = try file.read(at: cdOffset, count: cdSize, what: "central directory")
        var cr = LEReader(cd)
        var entries: [ZipEntry] = []
        entries.reserveCapacity(count)
        var index: [String: Int] = [:]
        for n in 0..<count {
            guard cr.uint(4) == 0x02014b50 else { throw bad("central directory entry \(n): bad signature") }
            guard let _ = cr.u16(), let _ = cr.u16(), let flags = cr.u16(), let method = cr.u16(),
                  let _ = cr.u16(), let _ = cr.u16(), let crc = cr.u32(), var csize = cr.u32(),
                  var usize = cr.u32(), let nameLen = cr.u16(), let extraLen = cr.u16(),
                  let commentLen = cr.u16(), let diskStart = cr.u16(), let _ = cr.u16(), let _ = cr.u32(),
                  var offset = cr.u32(), let nameBytes = cr.take(nameLen), let extra = cr.take(extraLen),
                  cr.take(commentLen) != nil else {
                throw bad("central directory entry \(n) is truncated")
            }
            guard let name = String(validating: nameBytes, as: UTF8.self) else {
                throw bad("central directory entry \(n): name is not UTF-8")
            }
            func ebad(_ m: String) -> MoepackError { MoepackError(.badInput, file: path, item: name, "zip: " + m) }
            // zip64 extended information extra field (header 0x0001).
            var needU = usize == 0xFFFF_FFFF, needC = csize == 0xFFFF_FFFF, needO = offset == 0xFFFF_FFFF
            var needD = diskStart == 0xFFFF
            var er = LEReader(extra)
            while er.remaining >= 4 {
                guard let tag = er.u16(), let len = er.u16(), let body = er.take(len) else {
                    throw ebad("malformed extra field")
                }
                if tag == 0x0001 {
                    var zr = LEReader(body)
                    if needU { guard let v = zr.u64() else { throw ebad("short zip64 extra field") }; usize = v; needU = false }
                    if needC { guard let v = zr.u64() else { throw ebad("short zip64 extra field") }; csize = v; needC = false }
                    if needO { guard let v = zr.u64() else { throw ebad("short zip64 extra field") }; offset = v; needO = false }
                    if needD { guard let v = zr.u32() else { throw ebad("short zip64 extra field") }; guard v == 0 else { throw ebad("multi-disk archives are not supported") }; needD = false }
                }
            }
            guard !(needU || needC || needO || needD) else { throw ebad("saturated size/offset field without zip64 extra field") }
            guard diskStart == 0 || diskStart == 0xFFFF else { throw ebad("multi-disk archives are not supported") }
            guard flags & 0x1 == 0, flags & 0x40 == 0 else { throw ebad("encrypted records are not supported") }
            guard usize <= maxUncompressedSize else {
                throw ebad("declared size \(usize) bytes exceeds the \(maxUncompressedSize >> 30) GiB limit")
            }
            if method == 8 {
                // Deflate expands at most 1032:1 (RFC 1951: a 258-byte match costs at least 2 bits), so a
                // larger declared size is a lie; refusing it here keeps a small file from reserving gigabytes.
                let (most, o) = csize.multipliedReportingOverflow(by: 1032)
                guard o || usize <= most + 64 else {
                    throw ebad("declared size \(usize) bytes is more than \(csize) deflated bytes can inflate to (zip bomb)")
                }
            }
            guard csize <= cdOffset, offset < cdOffset else {
                throw ebad("record (offset \(offset), \(csize) bytes) lies outside the data area before the central directory")
            }
            if method == 0, csize != usize { throw ebad("stored record with compressed size \(csize) ≠ size \(usize)") }
            guard index[name] == nil else { throw ebad("duplicate record name") }
            index[name] = entries.count
            entries.append(ZipEntry(name: name, method: method, crc32: UInt32(crc), compressedSize: csize,
                                    uncompressedSize: usize, localHeaderOffset: offset, flags: flags,
                                    nameBytes: nameBytes, limit: cdOffset))
        }
        guard cr.remaining == 0 else { throw bad("\(cr.remaining) stray bytes after the last central directory entry") }
        // Records must not overlap: each one ends before the next local header.
        let order = entries.indices.sorted { entries[$0].localHeaderOffset < entries[$1].localHeaderOffset }
        for (k, idx) in order.enumerated() {
            let next = k + 1 < order.count ? entries[order[k + 1]].localHeaderOffset : cdOffset
            let e = entries[idx]
            let minEnd = e.localHeaderOffset + 30 + e.nameBytes.count + e.compressedSize
            guard minEnd <= next else {
                throw MoepackError(.badInput, file: path, item: e.name, "zip: record overlaps the next record or the central directory")
            }
            entries[idx].limit = next
        }
        return (entries, index)
    }

    // MARK: records

    /// Reads and decompresses record `name`, checking its local header, size and CRC-32.
    /// - Throws: ``MoepackError`` (`badInput`) naming the record: missing, header mismatch, bad deflate
    ///   stream, size mismatch, CRC mismatch, truncated file; (`unsupported`) for methods other than 0/8.
    public func read(_ name: String) throws -> [UInt8] {
        guard let e = entry(name) else { throw fail(name, "zip: no such record") }
        return try read(e)
    }

    /// Reads the first `count` bytes of a record without checking its CRC (the CRC covers the whole
    /// record and is checked by ``read(_:)``). Used to parse member headers lazily: a deflated record
    /// is inflated only until `count` bytes are out, reading its compressed bytes 64 KiB at a time, so
    /// an unused member costs a few KiB however large it inflates.
    func readStoredPrefix(_ e: ZipEntry, count: Int) throws -> [UInt8] {
        let (dataStart, _) = try localHeader(e)
        let want = min(count, e.uncompressedSize)
        guard e.method == 8 else { return try file.read(at: dataStart, count: min(want, e.compressedSize), what: e.name) }
        func bad(_ m: String) -> MoepackError { fail(e.name, "zip: " + m) }
        var stream = z_stream()
        guard inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { throw bad("inflateInit2 failed") }
        defer { inflateEnd(&stream) }
        var out = [UInt8](repeating: 0, count: want)
        var produced = 0, consumed = 0
        while produced < want && consumed < e.compressedSize {
            var input = try file.read(at: dataStart + consumed, count: min(1 << 16, e.compressedSize - consumed), what: e.name)
            let rc = input.withUnsafeMutableBufferPointer { inBuf in
                out.withUnsafeMutableBufferPointer { outBuf -> Int32 in
                    stream.next_in = inBuf.baseAddress
                    stream.avail_in = uInt(inBuf.count)
                    stream.next_out = outBuf.baseAddress.map { $0 + produced }
                    stream.avail_out = uInt(want - produced)
                    let rc = inflate(&stream, Z_NO_FLUSH)
                    consumed += inBuf.count - Int(stream.avail_in)
                    produced = want - Int(stream.avail_out)
                    return rc
                }
            }
            if rc == Z_STREAM_END { break }
            guard rc == Z_OK || rc == Z_BUF_ERROR else { throw bad("invalid deflate stream (zlib \(rc))") }
            if rc == Z_BUF_ERROR && produced < want && stream.avail_in > 0 { throw bad("invalid deflate stream (zlib \(rc))") }
        }
        guard produced == want else { throw bad("deflate stream ends after \(produced) bytes, before the \(want) declared") }
        return out
    }

    /// Validates the local header of `e` against the central directory; returns the data range.
    private func localHeader(_ e: ZipEntry) throws -> (start: Int, end: Int) {
        func bad(_ m: String) -> MoepackError { fail(e.name, "zip: " + m) }
        guard e.method == 0 || e.method == 8 else {
            throw MoepackError(.unsupported, file: path, item: e.name, "zip: compression method \(e.method) is not supported (only stored and deflated)")
        }
        let hdr = try file.read(at: e.localHeaderOffset, count: 30, what: e.name)
        var r = LEReader(hdr)
        guard r.uint(4) == 0x04034b50 else { throw bad("local header signature missing at offset \(e.localHeaderOffset)") }
        guard let _ = r.u16(), let flags = r.u16(), let method = r.u16(), let _ = r.u16(), let _ = r.u16(),
              let crc = r.u32(), var csize = r.u32(), var usize = r.u32(), let nameLen = r.u16(),
              let extraLen = r.u16() else { throw bad("short local header") }
        let nameAndExtra = try file.read(at: e.localHeaderOffset + 30, count: nameLen + extraLen, what: e.name)
        guard Array(nameAndExtra[0..<nameLen]) == e.nameBytes else { throw bad("local header name differs from the central directory") }
        guard method == e.method else { throw bad("local header method \(method) differs from the central directory (\(e.method))") }
        guard flags & 0x8 == e.flags & 0x8 else { throw bad("local header flags differ from the central directory") }
        var xr = LEReader(Array(nameAndExtra[nameLen...]))
        while xr.remaining >= 4 {
            guard let tag = xr.u16(), let len = xr.u16(), let body = xr.take(len) else { throw bad("malformed local extra field") }
            if tag == 0x0001 {
                var zr = LEReader(body)
                if usize == 0xFFFF_FFFF { guard let v = zr.u64() else { throw bad("short zip64 extra") }; usize = v }
                if csize == 0xFFFF_FFFF { guard let v = zr.u64() else { throw bad("short zip64 extra") }; csize = v }
            }
        }
        if flags & 0x8 == 0 {
            guard crc == Int(e.crc32), csize == e.compressedSize, usize == e.uncompressedSize else {
                throw bad("local header CRC/sizes (\(csize)/\(usize)) differ from the central directory (\(e.compressedSize)/\(e.uncompressedSize))")
            }
        } else {
            // Sizes are in the data descriptor; a local header that states them must agree.
            if crc != 0 && crc != Int(e.crc32) { throw bad("local header CRC differs from the central directory") }
            if csize != 0 && csize != e.compressedSize { throw bad("local header size differs from the central directory") }
        }
        let dataStart = e.localHeaderOffset + 30 + nameLen + extraLen
        let (dataEnd, ov) = dataStart.addingReportingOverflow(e.compressedSize)
        guard !ov, dataEnd <= e.limit else { throw bad("data runs into the next record or the central directory") }
        return (dataStart, dataEnd)
    }

    /// Reads and decompresses `entry` (see ``read(_:)``).
    public func read(_ e: ZipEntry) throws -> [UInt8] {
        lock.lock(); _readCount += 1; _readNames.append(e.name); lock.unlock()
        func bad(_ m: String) -> MoepackError { fail(e.name, "zip: " + m) }
        guard e.method == 0 || e.method == 8 else {
            throw MoepackError(.unsupported, file: path, item: e.name, "zip: compression method \(e.method) is not supported (only stored and deflated)")
        }
        let (dataStart, dataEnd) = try localHeader(e)
        let raw = try file.read(at: dataStart, count: e.compressedSize, what: e.name)
        let bytes: [UInt8]
        if e.method == 0 {
            bytes = raw
        } else {
            bytes = try inflateRaw(raw, expected: e.uncompressedSize, name: e.name)
        }
        let actual = ZipArchive.crc32(bytes)
        guard actual == e.crc32 else {
            throw bad(String(format: "CRC-32 mismatch (stored %08x, computed %08x): record is corrupted", e.crc32, actual))
        }
        if e.flags & 0x8 != 0 {
            // Data descriptor: optional signature, then CRC-32 (sizes follow; 4 or 8 bytes each).
            let avail = min(16, e.limit - dataEnd)
            if avail >= 4 {
                let dd = try file.read(at: dataEnd, count: avail, what: e.name)
                var dr = LEReader(dd)
                var c = dr.uint(4)
                if c == 0x08074b50 { c = dr.uint(4) }
                if let c, UInt32(truncatingIfNeeded: c) != e.crc32 {
                    throw bad("data descriptor CRC differs from the central directory")
                }
            }
        }
        return bytes
    }

    private func inflateRaw(_ input: [UInt8], expected: Int, name: String) throws -> [UInt8] {
        func bad(_ m: String) -> MoepackError { fail(name, "zip: " + m) }
        var out = [UInt8](repeating: 0, count: expected + 1) // +1 detects overlong streams
        var stream = z_stream()
        var rc = inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard rc == Z_OK else { throw bad("inflateInit2 failed (\(rc))") }
        defer { inflateEnd(&stream) }
        var input = input
        var produced = 0
        var consumed = 0
        try input.withUnsafeMutableBufferPointer { inBuf in
            try out.withUnsafeMutableBufferPointer { outBuf in
                var inPos = 0, outPos = 0
                let chunk = Int(UInt32.max / 2)
                while true {
                    let inLen = min(chunk, inBuf.count - inPos)
                    let outLen = min(chunk, outBuf.count - outPos)
                    stream.next_in = inBuf.baseAddress.map { $0 + inPos }
                    stream.avail_in = uInt(inLen)
                    stream.next_out = outBuf.baseAddress.map { $0 + outPos }
                    stream.avail_out = uInt(outLen)
                    rc = inflate(&stream, Z_NO_FLUSH)
                    let usedIn = inLen - Int(stream.avail_in)
                    let usedOut = outLen - Int(stream.avail_out)
                    inPos += usedIn; outPos += usedOut
                    if rc == Z_STREAM_END { break }
                    guard rc == Z_OK || (rc == Z_BUF_ERROR && (usedIn > 0 || usedOut > 0)) else {
                        if rc == Z_BUF_ERROR {
                            if outPos >= outBuf.count { throw bad("inflated data exceeds the declared size \(expected)") }
                            throw bad("deflate stream is truncated")
                        }
                        throw bad("invalid deflate stream (zlib \(rc))")
                    }
                    if outPos >= outBuf.count { throw bad("inflated data exceeds the declared size \(expected)") }
                }
                produced = outPos; consumed = inPos
            }
        }
        guard produced == expected else { throw bad("inflated \(produced) bytes, central directory declares \(expected)") }
        guard consumed == input.count else { throw bad("\(input.count - consumed) bytes after the end of the deflate stream") }
        out.removeLast()
        return out
    }

    /// CRC-32 as zip uses it (zlib `crc32`).
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var c: uLong = CZlib.crc32(0, nil, 0)
        bytes.withUnsafeBufferPointer { buf in
            var p = buf.baseAddress
            var left = buf.count
            while left > 0, let q = p {
                let n = min(left, Int(UInt32.max / 2))
                c = CZlib.crc32(c, q, uInt(n))
                p = q + n
                left -= n
            }
        }
        return UInt32(truncatingIfNeeded: c)
    }
}
