import Foundation
import XCTest

/// Issue 16, reproduction 4: SIGINT and SIGTERM are handled alike at any moment of `pack --report`:
/// the process exits 0 (finished first) or 128 + signal (or, before its handlers are installed at
/// start-up, dies of that signal; never of another one, e.g. SIGSEGV), leaves no hidden
/// staging folder or temporary file, and puts the image and its report in place together or not at all.
extension CLIHostileTests {
    func testInterruptedPackLeavesImageAndReportTogetherOrNothing() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else { throw XCTSkip("\(Self.binary) is not built") }
        let tmp = try tempDir()
        // Delays spread over a whole run (about 0.4 s for the tiny model in a debug build).
        let delays = stride(from: 0.02, through: 0.6, by: 0.03).map { $0 }
        var outcomes: [Int32: Int] = [:]
        for (i, delay) in delays.enumerated() {
            let sig = i % 2 == 0 ? SIGINT : SIGTERM
            let parent = tmp + "/run\(i)"
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Self.binary)
            p.arguments = ["pack", Self.trustCheckpoint, "-o", parent + "/img", "--profile", "tiny-test", "--quiet",
                           "--image", Self.trustFrame, "--report", parent + "/report.html"]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            usleep(useconds_t(delay * 1e6))
            kill(p.processIdentifier, sig)
            p.waitUntilExit()
            let what = "signal \(sig) after \(delay) s"
            if p.terminationReason == .uncaughtSignal {
                // Only the signal sent, and only before moepack's handlers exist (process start-up).
                XCTAssertEqual(p.terminationStatus, sig, "\(what): died of signal \(p.terminationStatus)")
            } else {
                XCTAssertTrue([0, 128 + sig].contains(p.terminationStatus), "\(what): exit \(p.terminationStatus)")
                outcomes[p.terminationStatus, default: 0] += 1
            }
            let left = try FileManager.default.contentsOfDirectory(atPath: parent).sorted()
            XCTAssertTrue(left == [] || left == ["img", "report.html"], "\(what): left \(left)")
            if left == ["img", "report.html"] {
                XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent + "/img").sorted(),
                               ["ddr.bin", "host", "manifest.json", "manifest.sha256", "moepack_ddr.h"], what)
            }
        }
        XCTAssertGreaterThan(outcomes[128 + SIGINT, default: 0] + outcomes[128 + SIGTERM, default: 0], 0, "no run was interrupted by moepack's handler: \(outcomes)")
    }
}
