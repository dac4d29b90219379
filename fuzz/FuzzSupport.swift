// Shared by every libFuzzer target (compiled into each one by fuzz/build.sh).
// Contract: for any input, the readers either succeed or throw MoepackError. Anything else — another
// error type, a trap, an ASan report, a hang past -timeout — is a finding.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MoepackCore
@testable import MoepackCheckpoint

/// A per-process scratch file in /dev/shm (falls back to /tmp) that holds the current input.
func inputPath(_ ext: String) -> String {
    let dir = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : "/tmp"
    return "\(dir)/moepack-fuzz-\(getpid())\(ext)"
}

/// Writes the input bytes to the scratch file and runs `body` with its path.
func withInputFile(_ data: UnsafeRawPointer, _ count: Int, ext: String, _ body: (String) -> Void) {
    let path = inputPath(ext)
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { fatalError("fuzz: cannot create \(path)") }
    var done = 0
    while done < count {
        let n = write(fd, data + done, count - done)
        guard n > 0 else { fatalError("fuzz: cannot write \(path)") }
        done += n
    }
    close(fd)
    body(path)
}

/// Runs `body`, swallowing MoepackError only.
func expectCleanErrors(_ body: () throws -> Void) {
    do {
        try body()
    } catch let e as MoepackError {
        // The CLI prints this line: it must be a single line.
        check(!e.description.contains("\n") && !e.description.contains("\r"), "multi-line error: \(e.description)")
    } catch {
        fatalError("fuzz: a reader threw a non-MoepackError: \(error)")
    }
}

/// Reads every tensor of `src` as raw bytes and as float32 and checks the lengths against the entry.
func drain(_ src: any TensorSource) throws {
    for e in src.entries {
        let raw = try src.readRaw(e.name)
        let f = try src.readFloat32(e.name)
        check(raw.count == e.elementCount * e.dtype.byteSize, "\(e.name): \(raw.count) raw bytes for \(e.shape) \(e.dtype)")
        check(f.count == e.elementCount, "\(e.name): \(f.count) floats for \(e.shape)")
    }
}

/// Like `precondition`, but prints the message in optimized builds too, then aborts (a finding).
func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition {
        FileHandle.standardError.write(Data("fuzz check failed: \(message())\n".utf8))
        abort()
    }
}
