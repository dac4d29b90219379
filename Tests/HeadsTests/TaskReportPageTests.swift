import XCTest
import Foundation
import TestSupport

/// The report's task section, made by `pack --heads --report`, checked as a page: its structure in the
/// HTML text and, when Debian's chromium is installed, in the DOM a real browser builds from it.
final class TaskReportPageTests: XCTestCase {
    private let repo = packageRoot()

    private func run(_ exe: String, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try runProcess(exe, args, in: repo)
    }

    private func count(_ needle: String, in text: String) -> Int { text.components(separatedBy: needle).count - 1 }

    func testPackReportShowsTasksSideBySideAndExpertChoice() throws {
        let bin = repo.appendingPathComponent(".build/debug/moepack").path
        guard FileManager.default.isExecutableFile(atPath: bin) else { throw XCTSkip("\(bin) not built") }
        let dir = NSTemporaryDirectory() + "moepack-report-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(bin, ["pack", "Tests/Fixtures/tiny/model.pth", "-o", dir + "/img", "--profile", "tiny-test", "--task", "all",
                              "--image", "Tests/Fixtures/tiny/frame.u8", "--report", dir + "/report.html",
                              "--heads", "Tests/Fixtures/heads/tiny_heads.pth", "--task-map", "edge=1,depth=0"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let html = try String(contentsOfFile: dir + "/report.html", encoding: .utf8)
        XCTAssertEqual(count("<section id=\"tasks\">", in: html), 1)
        for task in ["semseg", "depth", "normals", "edge"] {
            XCTAssertEqual(count("<div class=\"task\" data-task=\"\(task)\">", in: html), 1, task)
        }
        // Per task: float model, image (fixed path) and the mask of differing pixels.
        XCTAssertEqual(count("<figure class=\"float\">", in: html), 4)
        XCTAssertEqual(count("<figure class=\"image\">", in: html), 4)
        XCTAssertEqual(count("<figure class=\"mask\">", in: html), 4)
        // Expert choice: 2 backbone tasks × 2 MoE blocks of the tiny model.
        XCTAssertEqual(count("<figure class=\"experts\">", in: html), 4)
        XCTAssertTrue(html.contains("pixel agreement"), "segmentation fidelity shown")
        // Every picture is an embedded PNG that decodes to the expected size (the frame at 2×: 128×64).
        let uris = html.components(separatedBy: "src=\"data:image/png;base64,").dropFirst().map { String($0.prefix { $0 != "\"" }) }
        XCTAssertEqual(uris.count, 1 + 12 + 4)
        let frame = try XCTUnwrap(Data(base64Encoded: uris[0]))
        XCTAssertEqual(Array(frame.prefix(4)), [0x89, 0x50, 0x4E, 0x47])
        func be(_ o: Int) -> Int { frame[o..<(o + 4)].reduce(0) { $0 << 8 | Int($1) } }
        XCTAssertEqual([be(16), be(20)], [128, 64])

        // A real browser builds the same structure.
        let chromium = "/usr/bin/chromium"
        guard FileManager.default.isExecutableFile(atPath: chromium) else { throw XCTSkip("chromium not installed (Debian package chromium)") }
        let dom = try run(chromium, ["--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", "file://" + dir + "/report.html"])
        XCTAssertEqual(dom.status, 0, dom.stderr)
        XCTAssertEqual(count("<figure class=\"mask\">", in: dom.stdout), 4)
        XCTAssertEqual(count("<figure class=\"experts\">", in: dom.stdout), 4)
    }
}
