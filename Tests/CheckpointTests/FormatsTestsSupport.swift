import Foundation
import MoepackCheckpoint
import MoepackCore
import XCTest

/// Fixture access for the format reader/writer tests (fixtures made by scripts/make_format_fixtures.py).
enum FormatsFixtures {
    static let root: String = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/formats").path

    static func path(_ name: String) -> String { root + "/" + name }

    static func bytes(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: path(name))))
    }

    /// Expected float32 bit patterns of a tensor (expected/<name>.f32, little-endian).
    static func expectedBits(_ tensor: String) throws -> [UInt32] {
        let b = try bytes("expected/\(tensor).f32")
        return stride(from: 0, to: b.count, by: 4).map {
            UInt32(b[$0]) | UInt32(b[$0 + 1]) << 8 | UInt32(b[$0 + 2]) << 16 | UInt32(b[$0 + 3]) << 24
        }
    }

    static func bits(_ v: [Float]) -> [UInt32] { v.map(\.bitPattern) }

    static func leBytes(_ v: [Float]) -> [UInt8] {
        v.flatMap { f in withUnsafeBytes(of: f.bitPattern.littleEndian) { Array($0) } }
    }

    /// A fresh empty folder for writer outputs, removed when `test` ends.
    static func tempDir(_ test: XCTestCase) throws -> String {
        let d = NSTemporaryDirectory() + "moepack-formats-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }
}

/// Asserts that `body` throws a MoepackError whose one-line description names `file` (last path
/// component) and contains every string of `contains`.
func assertRefusal<T>(_ body: @autoclosure () throws -> T, file fixture: String, contains: [String],
                      kind: MoepackError.Kind? = nil, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected a refusal for \(fixture)", line: line)
    } catch let e as MoepackError {
        let d = e.description
        XCTAssertTrue(d.contains((fixture as NSString).lastPathComponent), "description does not name the file: \(d)", line: line)
        for c in contains { XCTAssertTrue(d.contains(c), "description lacks '\(c)': \(d)", line: line) }
        XCTAssertFalse(d.contains("\n"), line: line)
        if let kind { XCTAssertEqual(e.kind, kind, d, line: line) }
    } catch {
        XCTFail("not a MoepackError: \(error)", line: line)
    }
}

/// A thread-safe counter for concurrent-read tests.
final class FormatsCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func increment() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}
