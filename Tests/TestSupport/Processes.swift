import Foundation

/// The package root for a test file: `#filePath` is `<root>/Tests/<Target>/<File>.swift`.
public func packageRoot(_ filePath: String = #filePath) -> URL {
    URL(fileURLWithPath: filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
}

/// `<root>/.build/debug/moepack` when it has been built, else nil (the CLI tests skip then).
public func builtMoepack(in root: URL) -> String? {
    let bin = root.appendingPathComponent(".build/debug/moepack").path
    return FileManager.default.isExecutableFile(atPath: bin) ? bin : nil
}

/// Runs `executable` with `arguments` in `directory` and waits for it.
///
/// stdout and stderr go to temporary files, not pipes read one after the other: a child that fills
/// the stderr pipe while the parent still drains stdout would otherwise stall both.
/// - Returns: exit status (or signal number when killed) and both outputs as UTF-8.
/// - Throws: when the executable cannot be started.
public func runProcess(_ executable: String, _ arguments: [String], in directory: URL) throws
    -> (status: Int32, stdout: String, stderr: String) {
    let base = NSTemporaryDirectory() + "moepack-test-process-\(UUID().uuidString)"
    let files = [base + ".out", base + ".err"]
    for f in files { _ = FileManager.default.createFile(atPath: f, contents: nil) }
    defer { for f in files { try? FileManager.default.removeItem(atPath: f) } }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    p.currentDirectoryURL = directory
    p.standardOutput = FileHandle(forWritingAtPath: files[0])
    p.standardError = FileHandle(forWritingAtPath: files[1])
    try p.run()
    p.waitUntilExit()
    func text(_ f: String) -> String { String(decoding: FileManager.default.contents(atPath: f) ?? Data(), as: UTF8.self) }
    return (p.terminationStatus, text(files[0]), text(files[1]))
}

/// float32 values of a little-endian version-1 .npy file, read independently of moepack's own npy
/// reader: the header length is the u16 at byte 8, the data follows the 10-byte preamble and header.
public func npyFloat32Values(_ path: String) throws -> [Float] {
    let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    let headerLen = Int(b[8]) | Int(b[9]) << 8
    return b[(10 + headerLen)...].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
}
