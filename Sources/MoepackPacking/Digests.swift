import Foundation

import MoepackCore
import MoepackFixedPoint

/// Lower-case hexadecimal spelling of a digest.
public func hex(_ d: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var s = [UInt8]()
    for b in d { s.append(digits[Int(b >> 4)]); s.append(digits[Int(b & 15)]) }
    return String(decoding: s, as: UTF8.self)
}

/// The regular files a source path stands for: the file itself, or a folder's regular files (not
/// recursive) in name order; nil when the path does not exist.
func sourceFiles(_ path: String) -> (folder: Bool, files: [String])? {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: path, isDirectory: &isDir) else { return nil }
    guard isDir.boolValue else { return (false, [path]) }
    let files = ((try? fm.contentsOfDirectory(atPath: path)) ?? []).sorted()
        .map { (path as NSString).appendingPathComponent($0) }
        .filter { var d: ObjCBool = false; return fm.fileExists(atPath: $0, isDirectory: &d) && !d.boolValue }
    return (true, files)
}

/// SHA-256 of a file (streamed), or of a folder: each regular file's name and bytes in name order.
/// - Throws: ``MoepackError`` `.io` when a file cannot be read.
public func sha256OfPath(_ path: String) throws -> String {
    var hasher = SHA256()
    let (folder, files) = sourceFiles(path) ?? (false, [])   // a missing path hashes as empty
    for f in files {
        if folder { hasher.update(data: Array((f as NSString).lastPathComponent.utf8) + [0]) }
        // Streamed in 4 MiB windows through one reused buffer: bounded memory whatever the file size.
        let fd = open(f, O_RDONLY)
        guard fd >= 0 else { throw MoepackError(.io, file: f, "cannot read") }
        defer { close(fd) }
        let chunk = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        defer { buffer.deallocate() }
        while true {
            let n = read(fd, buffer.baseAddress, chunk)
            if n < 0 { throw MoepackError(.io, file: f, "read failed") }
            if n == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    }
    return hex(hasher.finalize())
}

/// Size in bytes of a file, or of a folder's regular files together (nil when unreadable).
func pathBytes(_ path: String) -> Int? {
    guard let (folder, files) = sourceFiles(path) else { return nil }
    func size(_ p: String) -> Int? { (try? FileManager.default.attributesOfItem(atPath: p))?[.size] as? Int }
    guard folder else { return size(path) }
    return files.reduce(0) { $0 + (size($1) ?? 0) }
}

/// A value computed on a background thread; ``value()`` waits for it.
final class Background<T: Sendable>: @unchecked Sendable {
    private let group = DispatchGroup()
    private var result: Result<T, Error>?
    init(_ work: @escaping @Sendable () throws -> T) {
        group.enter()
        DispatchQueue.global().async {
            self.result = Result { try work() }
            self.group.leave()
        }
    }
    func value() throws -> T {
        group.wait()
        return try result!.get()
    }
}

/// One serial background thread for hashing, so that SHA-256 runs on the second core while the
/// reading thread reads, quantizes and writes. Work runs in submission order. The bytes queued and
/// not yet hashed are bounded (`budget`): ``async(bytes:_:)`` waits when the hashing falls behind, so
/// memory stays bounded whatever the checkpoint size.
public final class BackgroundHasher: @unchecked Sendable {
    private let queue = DispatchQueue(label: "moepack.hash", qos: .userInitiated)
    private let condition = NSCondition()
    private var pending = 0
    private let budget: Int

    /// - Parameter budget: most bytes held for hashing at once (default 32 MiB); one larger job is
    ///   still accepted when nothing else is pending.
    public init(budget: Int = 32 << 20) { self.budget = budget }

    /// Queues `work`, which holds `bytes` bytes alive until it has run.
    public func async(bytes: Int, _ work: @escaping @Sendable () -> Void) {
        condition.lock()
        while pending > 0 && pending + bytes > budget { condition.wait() }
        pending += bytes
        condition.unlock()
        queue.async {
            work()
            self.condition.lock()
            self.pending -= bytes
            self.condition.signal()
            self.condition.unlock()
        }
    }

    /// Waits for everything queued, then runs `work` on the hashing thread and returns its result.
    public func sync<T>(_ work: () -> T) -> T { queue.sync(execute: work) }
}

/// SHA-256 fingerprints of the backbone tensors a command read, for `source.tensors` in the manifest.
///
/// Each tensor's digest is the SHA-256 of its values as float32 little-endian, in row-major (C) order
/// of its checkpoint shape, after decoding (float16/bfloat16/float64 → float32) and before any fold:
/// the same weights give the same digests whatever the container (pth, safetensors, HDF5, npz) — in
/// NumPy, `hashlib.sha256(a.astype('<f4').tobytes()).hexdigest()`. Hashing runs on a
/// ``BackgroundHasher``; a tensor read twice is hashed once.
public final class TensorDigests: @unchecked Sendable {
    private let hasher: BackgroundHasher
    private let lock = NSLock()
    private var seen = Set<String>()
    private var digests: [String: String] = [:]   // touched on the hasher's thread only

    public init(hasher: BackgroundHasher = BackgroundHasher()) { self.hasher = hasher }

    /// Queues the digest of one tensor (first read of `name` only).
    public func record(_ name: String, _ values: [Float]) {
        guard lock.withLock({ seen.insert(name).inserted }) else { return }
        hasher.async(bytes: values.count * 4) { [self] in
            #if _endian(big)
            let le = values.map { $0.bitPattern.littleEndian }
            let d = le.withUnsafeBytes { hex(SHA256.hash(data: $0)) }
            #else
            let d = values.withUnsafeBytes { hex(SHA256.hash(data: $0)) }
            #endif
            digests[name] = d
        }
    }

    /// Waits for the queued digests; canonical name → SHA-256 (hex).
    public func finish() -> [String: String] { hasher.sync { digests } }

    /// The digest of a set of tensor digests: SHA-256 of one UTF-8 line per tensor, sorted by name,
    /// `<name> <shape, comma separated> <sha256>\n` (manifest `source.tensors_sha256`).
    public static func combined(_ tensors: [Manifest.SourceTensor]) -> String {
        let text = tensors.sorted { $0.name < $1.name }
            .map { "\($0.name) \($0.shape.map(String.init).joined(separator: ",")) \($0.sha256)\n" }
            .joined()
        return hex(SHA256.hash(data: Array(text.utf8)))
    }
}

/// Streams quantized bytes into the image; SHA-256 of the whole image and of each buffer are computed
/// on a ``BackgroundHasher`` in write order.
final class ImageStream: @unchecked Sendable {
    let file: AtomicFileWriter
    private let hasher: BackgroundHasher
    // Touched on the hasher's thread only.
    private var imageHash = SHA256()
    private var bufferHash = SHA256()
    private var bufferDigests: [String] = []
    private static let zeroChunk = [UInt8](repeating: 0, count: 1 << 20)

    init(path: String, hasher: BackgroundHasher) throws {
        file = try AtomicFileWriter(path: path)
        self.hasher = hasher
    }
    var position: Int { file.bytesWritten }

    /// Starts a new per-buffer digest (bytes written before the next ``endBuffer()`` go into it).
    func beginBuffer() { hasher.async(bytes: 0) { [self] in bufferHash = SHA256() } }
    /// Ends the current buffer's digest; ``finish()`` returns the digests in order.
    func endBuffer() { hasher.async(bytes: 0) { [self] in bufferDigests.append(hex(bufferHash.finalize())) } }

    func write(_ bytes: [UInt8], intoBuffer: Bool = true) throws {
        try bytes.withUnsafeBytes { try file.write($0) }
        hasher.async(bytes: bytes.count) { [self] in
            bytes.withUnsafeBytes {
                imageHash.update(bufferPointer: $0)
                if intoBuffer { bufferHash.update(bufferPointer: $0) }
            }
        }
    }

    func zeros(_ n: Int, intoBuffer: Bool = true) throws {
        var left = n
        while left > 0 {
            let k = min(left, Self.zeroChunk.count)
            try Self.zeroChunk.withUnsafeBytes { try file.write(UnsafeRawBufferPointer(rebasing: $0[0..<k])) }
            hasher.async(bytes: 0) { [self] in
                Self.zeroChunk.withUnsafeBytes {
                    let z = UnsafeRawBufferPointer(rebasing: $0[0..<k])
                    imageHash.update(bufferPointer: z)
                    if intoBuffer { bufferHash.update(bufferPointer: z) }
                }
            }
            left -= k
        }
    }

    /// Quantizes `values` to `t` and writes them; returns the statistics.
    func quantized(_ values: ArraySlice<Float>, _ t: FixedType) throws -> QuantizationStats {
        var stats = QuantizationStats()
        let n = values.count * t.containerBytes
        // encode stores every container byte, so the array needs no zero fill first.
        let out = [UInt8](unsafeUninitializedCapacity: n) { raw, count in
            values.withUnsafeBufferPointer { t.encode($0, into: UnsafeMutableRawBufferPointer(raw), stats: &stats) }
            count = n
        }
        try write(out)
        return stats
    }

    /// Waits for the hashing: the image's SHA-256 and each buffer's, in ``endBuffer()`` order.
    func finish() -> (image: String, buffers: [String]) {
        hasher.sync { (hex(imageHash.finalize()), bufferDigests) }
    }
}
