import XCTest
import Foundation
import TestSupport

/// Processes for the board tests: the built moepack binary, compilers, host programs and the
/// simulated board, each with a deadline (a test never hangs).
struct Proc {
    var status: Int32
    var stdout: String
    var stderr: String
}

enum BoardTestSupport {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var moepackPath: String { repo.appendingPathComponent(".build/debug/moepack").path }

    /// A running process whose output goes to files (read when it ends).
    final class Running {
        let process = Process()
        let outFile: String, errFile: String
        init(_ exe: String, _ args: [String], cwd: URL? = nil, env: [String: String]? = nil) throws {
            let base = NSTemporaryDirectory() + "moepack-board-proc-\(UUID().uuidString)"
            outFile = base + ".out"; errFile = base + ".err"
            _ = FileManager.default.createFile(atPath: outFile, contents: nil)
            _ = FileManager.default.createFile(atPath: errFile, contents: nil)
            process.executableURL = URL(fileURLWithPath: exe)
            process.arguments = args
            process.currentDirectoryURL = cwd ?? BoardTestSupport.repo
            if let env { process.environment = ProcessInfo.processInfo.environment.merging(env) { $1 } }
            process.standardOutput = FileHandle(forWritingAtPath: outFile)
            process.standardError = FileHandle(forWritingAtPath: errFile)
            try process.run()
        }
        var stdoutSoFar: String { (try? String(contentsOfFile: outFile, encoding: .utf8)) ?? "" }
        /// Waits up to `timeout` seconds; kills the process after that (status then reports the signal).
        func wait(timeout: Double) -> Proc {
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { process.terminate(); process.waitUntilExit() }
            process.waitUntilExit()
            defer { try? FileManager.default.removeItem(atPath: outFile); try? FileManager.default.removeItem(atPath: errFile) }
            return Proc(status: process.terminationStatus,
                        stdout: (try? String(contentsOfFile: outFile, encoding: .utf8)) ?? "",
                        stderr: (try? String(contentsOfFile: errFile, encoding: .utf8)) ?? "")
        }
    }

    @discardableResult
    static func run(_ exe: String, _ args: [String], cwd: URL? = nil, env: [String: String]? = nil, timeout: Double = 120) throws -> Proc {
        try Running(exe, args, cwd: cwd, env: env).wait(timeout: timeout)
    }

    static func moepack(_ args: [String], timeout: Double = 120) throws -> Proc {
        guard FileManager.default.isExecutableFile(atPath: moepackPath) else {
            throw XCTSkip("\(moepackPath) not built (run `swift build` first)")
        }
        return try run(moepackPath, args, timeout: timeout)
    }

    /// `moepack board-sim` on files in `dir`, returned once it printed `ready`.
    static func startBoard(_ dir: String, profile: String = "tiny-test", runs: Int = 1, idleTimeout: Double = 20,
                           dmaBytes: Int = 4 << 20) throws -> Running {
        let sim = try Running(moepackPath, ["board-sim", "--profile", profile, "--devmem", dir + "/devmem", "--dma", dir + "/dma",
                                            "--udmabuf-sysfs", dir + "/udmabuf0", "--dma-bytes", String(dmaBytes),
                                            "--runs", String(runs), "--idle-timeout", String(idleTimeout)])
        let deadline = Date().addingTimeInterval(30)
        while !sim.stdoutSoFar.contains("ready") && sim.process.isRunning && Date() < deadline { usleep(10_000) }
        return sim
    }

    /// The arguments that point a host program at the files of ``startBoard(_:profile:runs:idleTimeout:dmaBytes:)``.
    static func boardArgs(_ dir: String) -> [String] {
        ["--devmem", dir + "/devmem", "--dma", dir + "/dma", "--udmabuf-sysfs", dir + "/udmabuf0"]
    }

    static func tempDir(_ tag: String) throws -> String {
        let dir = NSTemporaryDirectory() + "moepack-board-\(tag)-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Little-endian int32 values of a file.
    static func int32s(_ path: String) throws -> [Int32] {
        let d = try Data(contentsOf: URL(fileURLWithPath: path))
        return d.withUnsafeBytes { b in (0..<(d.count / 4)).map { Int32(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) } }
    }

    /// Replaces `old` (which must occur exactly once) with `new` in the file at `path`.
    static func edit(_ path: String, replacing old: String, with new: String) throws {
        let s = try String(contentsOfFile: path, encoding: .utf8)
        guard s.components(separatedBy: old).count == 2 else {
            throw NSError(domain: "BoardTests", code: 1, userInfo: [NSLocalizedDescriptionKey: "\(path): '\(old)' does not occur exactly once"])
        }
        try s.replacingOccurrences(of: old, with: new).write(toFile: path, atomically: true, encoding: .utf8)
    }
}
