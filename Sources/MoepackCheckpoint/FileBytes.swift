#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import MoepackCore

/// A read-only file opened for positional reads (`pread`), shared by the lazy readers.
///
/// Reads never move a shared cursor, so one `RandomAccessFile` can serve concurrent tensor reads.
/// The descriptor is closed when the object is released.
final class RandomAccessFile: Sendable {
    /// The path as the user named it (used in error messages).
    let path: String
    /// File size in bytes at open time.
    let size: Int
    private let fd: Int32

    /// Opens `path` for reading.
    /// - Throws: ``MoepackError`` (`io`) when the file cannot be opened or is not a regular file.
    init(_ path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw MoepackError(.io, file: path, "cannot open for reading (errno \(errno))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            close(fd)
            throw MoepackError(.io, file: path, "cannot stat (errno \(errno))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw MoepackError(.badInput, file: path, "not a regular file")
        }
        self.fd = fd
        self.size = Int(st.st_size)
    }

    deinit { close(fd) }

    /// Reads exactly `count` bytes at `offset`.
    /// - Throws: ``MoepackError`` (`badInput`) naming `what` when the range lies outside the file
    ///   (truncated file), (`io`) when the OS refuses the read.
    func read(at offset: Int, count: Int, what: String? = nil) throws -> [UInt8] {
        guard offset >= 0, count >= 0 else {
            throw MoepackError(.badInput, file: path, item: what, "negative offset or length")
        }
        let (end, o) = offset.addingReportingOverflow(count)
        guard !o, end <= size else {
            throw MoepackError(.badInput, file: path, item: what,
                               "byte range \(offset)..<\(o ? Int.max : end) lies beyond the end of the file (\(size) bytes): truncated")
        }
        if count == 0 { return [] }
        // Filled by pread, so no zero fill first; on a throw the initialized count is 0.
        return try [UInt8](unsafeUninitializedCapacity: count) { buf, initialized in
            guard let base = buf.baseAddress else { return }
            var done = 0
            while done < count {
                let n = pread(fd, base + done, count - done, off_t(offset + done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw MoepackError(.io, file: path, item: what, "read failed (errno \(errno))")
                }
                if n == 0 {
                    throw MoepackError(.badInput, file: path, item: what, "unexpected end of file at byte \(offset + done)")
                }
                done += n
            }
            initialized = count
        }
    }

    /// Reads up to `count` bytes at the start of the file (fewer when the file is shorter).
    func prefix(_ count: Int) throws -> [UInt8] {
        try read(at: 0, count: min(count, size), what: "header")
    }
}

/// Little-endian field access into a byte array with bounds checks (for container headers).
struct LEReader {
    let bytes: [UInt8]
    var pos: Int

    init(_ bytes: [UInt8], at pos: Int = 0) {
        self.bytes = bytes
        self.pos = pos
    }

    var remaining: Int { bytes.count - pos }

    mutating func u8() -> UInt8? {
        guard pos < bytes.count else { return nil }
        defer { pos += 1 }
        return bytes[pos]
    }

    mutating func uint(_ n: Int) -> UInt64? {
        guard n >= 0, n <= 8, pos <= bytes.count - n else { return nil }
        var v: UInt64 = 0
        for i in 0..<n { v |= UInt64(bytes[pos + i]) << (8 * UInt64(i)) }
        pos += n
        return v
    }

    mutating func u16() -> Int? { uint(2).map { Int($0) } }
    mutating func u32() -> Int? { uint(4).map { Int($0) } }
    /// A u64 that must fit in Int (file offsets and sizes).
    mutating func u64() -> Int? {
        guard let v = uint(8), v <= UInt64(Int.max) else { return nil }
        return Int(v)
    }

    mutating func take(_ n: Int) -> [UInt8]? {
        guard n >= 0, pos <= bytes.count - n else { return nil }
        defer { pos += n }
        return Array(bytes[pos..<pos + n])
    }
}

/// Formats the first bytes of a file as `7b 0a 20 20` for "unknown container" messages.
func hexPrefix(_ bytes: [UInt8], count: Int = 4) -> String {
    bytes.prefix(count).map { b in
        let s = String(b, radix: 16)
        return s.count == 1 ? "0" + s : s
    }.joined(separator: " ")
}
