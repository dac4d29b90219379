import Foundation

/// Writes a file through a temporary name in the destination folder and renames it into place only
/// when complete, so that an error or a kill never leaves a partial output under the final name.
public final class AtomicFileWriter {
    public let path: String
    public let temporaryPath: String
    private var handle: FileHandle?
    private var buffer: [UInt8] = []
    private let bufferLimit = 1 << 20
    /// Bytes written so far.
    public private(set) var bytesWritten = 0

    /// Creates `<dir>/.<name>.tmp-<pid>-<n>`.
    /// - Throws: ``MoepackError`` `.usage` when `path` exists and is not a regular file (a device,
    ///   FIFO, socket or folder, directly or through a symbolic link: the rename would replace the
    ///   node itself); `.io` when the folder is not writable.
    public init(path: String) throws {
        try refuseNonRegularDestination(path)
        self.path = path
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        let name = url.lastPathComponent
        removeStaleTemporaries(in: dir, name: name)
        let temporary = (dir as NSString).appendingPathComponent(".\(name).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        temporaryPath = temporary
        handle = try InterruptCleanup.creating(temporary) {
            guard FileManager.default.createFile(atPath: temporary, contents: nil),
                  let h = FileHandle(forWritingAtPath: temporary) else {
                throw MoepackError(.io, file: path, "cannot create a temporary file in \(dir)")
            }
            return h
        }
    }

    deinit { abort() }

    /// Appends bytes.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        buffer.append(contentsOf: bytes)
        bytesWritten += bytes.count
        if buffer.count >= bufferLimit { try flush() }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Appends `count` zero bytes.
    public func writeZeros(_ count: Int) throws {
        guard count > 0 else { return }
        buffer.append(contentsOf: repeatElement(0, count: count))
        bytesWritten += count
        if buffer.count >= bufferLimit { try flush() }
    }

    private func flush() throws {
        guard let handle else { return }
        do {
            try handle.write(contentsOf: buffer)
        } catch {
            throw MoepackError(.io, file: path, "write failed: \(error.localizedDescription)")
        }
        buffer.removeAll(keepingCapacity: true)
    }

    /// Flushes and renames the temporary file to `path`. (No fsync: the rename makes the result
    /// all-or-nothing for other processes; durability across a power cut is left to the file system.)
    public func commit() throws {
        try flush()
        guard let h = handle else { throw MoepackError(.io, file: path, "already closed") }
        try? h.close()
        handle = nil
        defer { InterruptCleanup.unregister(temporaryPath) }
        do {
            // Swapped: the replaced file now sits at the temporary path.
            if try placeFile(temporaryPath, at: path, failure: "cannot rename the finished file into place") {
                unlink(temporaryPath)
            }
        } catch {
            unlink(temporaryPath)
            throw error
        }
    }

    /// Removes the temporary file (no-op after ``commit()``).
    public func abort() {
        if let h = handle {
            try? h.close()
            handle = nil
            unlink(temporaryPath)
            InterruptCleanup.unregister(temporaryPath)
        }
    }

    /// Writes `data` to `path` atomically.
    public static func write(_ data: [UInt8], to path: String) throws {
        try write(to: path) { try $0.write(data) }
    }

    /// Runs `body` with a writer for `path` and commits when it returns; when it throws, the temporary
    /// file is removed and the error rethrown.
    public static func write(to path: String, _ body: (AtomicFileWriter) throws -> Void) throws {
        let w = try AtomicFileWriter(path: path)
        do {
            try body(w)
            try w.commit()
        } catch {
            w.abort()
            throw error
        }
    }
}

/// Makes the folder `path` (and parents) if missing.
/// - Throws: ``MoepackError`` `.io` when it exists as a file or cannot be made.
public func makeDirectory(_ path: String) throws {
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
        guard isDir.boolValue else { throw MoepackError(.io, file: path, "exists and is not a folder") }
        return
    }
    do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
        throw MoepackError(.io, file: path, "cannot create folder")
    }
}

/// An output folder built in a hidden staging folder beside it and moved into place by ``commit()``:
/// a failed run leaves neither a partial folder nor partial files. When the destination exists, the
/// finished files replace its files of the same names one by one (each rename is atomic).
public final class StagedDirectory {
    public let destination: String
    public let staging: String
    private var committed = false

    /// - Throws: ``MoepackError`` `.io` when the parent folder cannot be written or the destination is a file.
    public init(destination: String) throws {
        self.destination = destination
        let url = URL(fileURLWithPath: destination).standardizedFileURL
        let parent = url.deletingLastPathComponent().path
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: destination, isDirectory: &isDir), !isDir.boolValue {
            throw MoepackError(.usage, file: destination, "exists and is not a folder: choose a folder or a new name for the output")
        }
        if !FileManager.default.fileExists(atPath: parent) {
            throw MoepackError(.io, file: destination, "parent folder \(parent) does not exist")
        }
        removeStaleTemporaries(in: parent, name: url.lastPathComponent)
        let folder = (parent as NSString).appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try InterruptCleanup.creating(folder) {
            guard mkdir(folder, 0o755) == 0 else {
                throw MoepackError(.io, file: destination, "cannot create a folder in \(parent): \(String(cString: strerror(errno)))")
            }
        }
        staging = folder
    }

    deinit { if !committed { abort() } }

    /// Path of `name` inside the staging folder.
    public func path(_ name: String) -> String { (staging as NSString).appendingPathComponent(name) }

    /// Moves the staged files into the destination.
    ///
    /// A new destination: the staging folder is renamed to it. An existing one: each staged file is
    /// swapped with the file of the same name (`renameat2(RENAME_EXCHANGE)`: atomic, and unlike a
    /// rename onto an existing file it does not make ext4 write the new file back before returning),
    /// or renamed into place where there is none; the old files leave with the staging folder. Other
    /// files in the destination are kept. A folder where a staged file goes is refused before anything
    /// moves. SIGINT/SIGTERM wait until this is done (``InterruptCleanup/uninterruptible(_:)``).
    /// - Parameter alongside: finished files outside the folder (e.g. `pack --report`'s report) put
    ///   in place in the same uninterruptible step, right after the folder: an interrupt leaves both
    ///   or neither.
    /// - Throws: ``MoepackError`` `.io` naming the path that could not be replaced.
    public func commit(alongside: [AtomicFileWriter] = []) throws {
        try InterruptCleanup.uninterruptible {
            var isDir: ObjCBool = false
            if !FileManager.default.fileExists(atPath: destination, isDirectory: &isDir) {
                if rename(staging, destination) != 0 {
                    throw MoepackError(.io, file: destination, "cannot move the finished folder into place: \(String(cString: strerror(errno)))")
                }
            } else {
                try Self.checkPlaceable(staging, into: destination)
                try Self.place(staging, into: destination)
                try? FileManager.default.removeItem(atPath: staging)
            }
            committed = true
            InterruptCleanup.unregister(staging)
            for w in alongside { try w.commit() }
        }
    }

    /// Refuses, before anything moves, a folder in `dst` where a staged file goes, or a file where a
    /// staged subfolder (e.g. `host/`) goes.
    static func checkPlaceable(_ src: String, into dst: String) throws {
        for n in ((try? FileManager.default.contentsOfDirectory(atPath: src)) ?? []).sorted() {
            let s = (src as NSString).appendingPathComponent(n), d = (dst as NSString).appendingPathComponent(n)
            if isFolder(s) {
                var st = stat()
                if lstat(d, &st) == 0 && !isFolder(d) {
                    throw MoepackError(.io, file: d, "is a file where moepack writes its folder \(n): move it away or choose another output folder")
                }
                if isFolder(d) { try checkPlaceable(s, into: d) }
            } else if isFolder(d) {
                throw MoepackError(.io, file: d, "is a folder where moepack writes its \(n): move it away or choose another output folder")
            }
        }
    }

    /// Places each staged file of `src` at the same name in `dst` (``placeFile``); a staged subfolder
    /// is renamed into place when `dst` has none, else its files are placed one by one. A swapped-out
    /// old file stays in the staging folder, removed with it.
    static func place(_ src: String, into dst: String) throws {
        for n in ((try? FileManager.default.contentsOfDirectory(atPath: src)) ?? []).sorted() {
            let s = (src as NSString).appendingPathComponent(n), d = (dst as NSString).appendingPathComponent(n)
            if isFolder(s) && isFolder(d) {
                try place(s, into: d)
            } else {
                _ = try placeFile(s, at: d, failure: "cannot move the finished file into place")
            }
        }
    }

    /// Removes the staging folder and everything in it.
    public func abort() {
        // A file removed by someone else meanwhile makes one recursive removal fail: try again.
        for _ in 0..<3 where FileManager.default.fileExists(atPath: staging) {
            try? FileManager.default.removeItem(atPath: staging)
        }
        InterruptCleanup.unregister(staging)
    }
}

/// Refuses an output path that exists and is not a regular file (followed through symbolic links).
/// Outputs are renamed into place, which would replace a device node such as `/dev/full` or a FIFO
/// with a plain file instead of writing to it.
/// - Throws: ``MoepackError`` `.usage` naming `path` and what it is.
func refuseNonRegularDestination(_ path: String) throws {
    var st = stat()
    guard stat(path, &st) == 0 else { return }
    let kind: String
    switch st.st_mode & S_IFMT {
    case S_IFREG: return
    case S_IFDIR: kind = "a folder"
    case S_IFCHR, S_IFBLK: kind = "a device"
    case S_IFIFO: kind = "a FIFO"
    case S_IFSOCK: kind = "a socket"
    default: kind = "a special file"
    }
    throw MoepackError(.usage, file: path, "exists and is \(kind), not a regular file: moepack renames a finished file into place; choose a new name for the output")
}

/// Whether `path` is a folder itself (a symbolic link to one is not).
func isFolder(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
}

/// Puts the finished file `src` at `dst`. A file or symbolic link already at `dst` is swapped with it
/// (``exchangePaths(_:_:)``: atomic, and unlike a rename onto an existing file it does not make ext4
/// write the new file back before returning); otherwise `src` is renamed to `dst`.
/// - Returns: true when swapped: the replaced file now sits at `src`, for the caller to remove.
/// - Throws: ``MoepackError`` `.io` naming `dst`: `failure` and the system's reason (e.g. `dst` is a folder).
func placeFile(_ src: String, at dst: String, failure: String) throws -> Bool {
    if !isFolder(dst), exchangePaths(src, dst) { return true }
    guard rename(src, dst) == 0 else {
        throw MoepackError(.io, file: dst, "\(failure): \(String(cString: strerror(errno)))")
    }
    return false
}

/// Atomically swaps two existing paths (Linux `renameat2` with `RENAME_EXCHANGE`, looked up at run
/// time); false when either is missing, the file system or C library cannot, or it failed.
func exchangePaths(_ a: String, _ b: String) -> Bool {
    typealias Renameat2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32
    guard let f = renameat2Symbol else { return false }
    let atFDCWD: Int32 = -100, renameExchange: UInt32 = 2
    return unsafeBitCast(f, to: Renameat2.self)(atFDCWD, a, atFDCWD, b, renameExchange) == 0
}
nonisolated(unsafe) private let renameat2Symbol = dlsym(nil, "renameat2")

/// Removes `.NAME.tmp-PID-…` entries in `parent` left by moepack processes that no longer run (killed
/// with SIGKILL or by a power cut, so they could not clean up). Entries of running processes stay.
func removeStaleTemporaries(in parent: String, name: String) {
    let prefix = ".\(name).tmp-"
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: parent) else { return }
    for e in entries where e.hasPrefix(prefix) {
        guard let pid = Int32(e.dropFirst(prefix.count).prefix { $0 != "-" }), pid > 0, pid != getpid() else { continue }
        if kill(pid, 0) != 0 && errno == ESRCH {
            try? FileManager.default.removeItem(atPath: (parent as NSString).appendingPathComponent(e))
        }
    }
}

/// Removes registered staging paths when the process is interrupted (SIGINT, SIGTERM, SIGHUP, all
/// alike), so that Ctrl-C or `kill` during `pack` leaves neither the output nor a hidden staging folder
/// behind.
///
/// The signals are handled by a dispatch source on a background queue (not an async signal
/// handler), which removes what is registered and ends the process with `_exit(128 + signal)`. The
/// other threads keep running meanwhile, so a folder being written may gain a file while it is
/// removed: removal is retried until the path is gone. `_exit`, not `exit`: running atexit handlers
/// and destructors under threads still at work crashed (SIGSEGV) in about 1 of 80 interrupts.
public enum InterruptCleanup {
    nonisolated(unsafe) private static var paths = Set<String>()
    private static let lock = NSLock()
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    /// Installs the handlers once (call early in `main`).
    public static func install() {
        lock.lock()
        defer { lock.unlock() }
        guard sources.isEmpty else { return }
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler {
                interrupting.withLock { $0 = true }
                critical.lock()   // never released: the process exits below
                lock.lock()
                let todo = paths
                lock.unlock()
                for p in todo { removeRetrying(p) }
                fflush(nil)
                _exit(128 + sig)
            }
            s.resume()
            sources.append(s)
        }
    }

    private static let critical = NSLock()
    private static let interrupting = FlagBox()

    /// Called on the way out of a failed command: when an interrupt is being handled, the failure is
    /// most likely its doing (its staging folder removed under a writer), so wait for the handler to
    /// end the process with 128 + signal instead of reporting an I/O error and exiting 1.
    public static func waitIfInterrupted() {
        guard interrupting.withLock({ $0 }) else { return }
        while true { pause() }
    }

    /// Removes `path` (file or folder tree), again while it still exists (at most 100 tries).
    private static func removeRetrying(_ path: String) {
        var st = stat()
        for _ in 0..<100 where lstat(path, &st) == 0 {
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    /// Runs `body` with interruption deferred: a SIGINT/SIGTERM/SIGHUP arriving meanwhile is handled
    /// (cleanup, exit) only after `body` returns, so that a multi-step commit is never cut in half.
    public static func uninterruptible<T>(_ body: () throws -> T) rethrows -> T {
        critical.lock()
        defer { critical.unlock() }
        return try body()
    }

    /// Registers `path` and runs `create`, which makes it, as one step the interrupt handler cannot
    /// split (``uninterruptible(_:)``): registering first and creating outside that step let a
    /// signal arriving in between remove nothing and exit while the creation still went ahead,
    /// leaving the hidden path behind. When `create` throws, `path` is unregistered.
    public static func creating<T>(_ path: String, _ create: () throws -> T) rethrows -> T {
        try uninterruptible {
            register(path)
            do { return try create() } catch {
                unregister(path)
                throw error
            }
        }
    }

    /// Removes `path` (file or folder) if the process is interrupted before ``unregister(_:)``.
    public static func register(_ path: String) {
        lock.lock(); paths.insert(path); lock.unlock()
    }

    public static func unregister(_ path: String) {
        lock.lock(); paths.remove(path); lock.unlock()
    }
}

/// A Bool behind a lock.
final class FlagBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func withLock<T>(_ body: (inout Bool) -> T) -> T { lock.lock(); defer { lock.unlock() }; return body(&value) }
}
