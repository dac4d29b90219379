import XCTest
import Foundation
import TestSupport
#if canImport(FoundationXML)
import FoundationXML
#endif
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint
import MoepackPacking
import MoepackInference
import MoepackHeads
@testable import MoepackVerify

/// `moepack sweep`: axis parsing, the candidate product, the figures on the tiny model (against the
/// verify path and the exact MoE byte counts), the Pareto marking, the page's SVG and the CLI.
final class SweepTests: XCTestCase {
    static let repo = packageRoot()
    static let tiny = repo.appendingPathComponent("Tests/Fixtures/tiny")

    func testAxisParsingKeepsCommasInsideTypes() throws {
        let a = try SweepAxis(parsing: "wt_linear_t=ap_fixed<8,1>, ap_fixed<10,2,AP_RND_CONV,AP_SAT>,ap_fixed<12,2>")
        XCTAssertEqual(a.typeName, "wt_linear_t")
        XCTAssertEqual(a.types, [FixedType(width: 8, integerBits: 1),
                                 FixedType(width: 10, integerBits: 2, quantization: .AP_RND_CONV, overflow: .AP_SAT),
                                 FixedType(width: 12, integerBits: 2)])
        for bad in ["ap_fixed<8,1>", "=ap_fixed<8,1>", "wt_linear_t=", "wt_linear_t=ap_fixed<8,1>,,ap_fixed<9,1>", "wt_linear_t=ap_fixd<8,1>"] {
            XCTAssertThrowsError(try SweepAxis(parsing: bad), bad) { e in
                XCTAssertEqual((e as? MoepackError)?.kind, .usage, bad)
                XCTAssertEqual((e as? MoepackError)?.item, "--vary", bad)
            }
        }
    }

    func testCandidatesAreTheProductFirstAxisSlowest() throws {
        let profile = try KernelProfile.load("tiny-test")
        let c = try sweepCandidates(profile: profile, axes: [
            try SweepAxis(parsing: "wt_linear_t=ap_fixed<8,1>,ap_fixed<12,2>"),
            try SweepAxis(parsing: "wt_bias_t=ap_fixed<8,3>,ap_fixed<12,4>,ap_fixed<16,5>")])
        XCTAssertEqual(c.count, 6)
        XCTAssertEqual(c.map { $0["wt_linear_t"]!.width }, [8, 8, 8, 12, 12, 12])
        XCTAssertEqual(c.map { $0["wt_bias_t"]!.width }, [8, 12, 16, 8, 12, 16])
        XCTAssertThrowsError(try sweepCandidates(profile: profile, axes: [try SweepAxis(parsing: "wt_foo_t=ap_fixed<8,1>")])) { e in
            XCTAssertTrue((e as? MoepackError)?.message.contains("wt_foo_t") ?? false)
        }
        XCTAssertThrowsError(try sweepCandidates(profile: profile, axes: [
            try SweepAxis(parsing: "wt_bias_t=ap_fixed<8,3>"), try SweepAxis(parsing: "wt_bias_t=ap_fixed<9,3>")]))
    }

    /// A type listed twice (in another spelling of it) is one candidate; more than the documented
    /// maximum is refused before any work, naming --vary.
    func testDuplicateCandidatesMergedAndTooManyRefused() throws {
        let profile = try KernelProfile.load("tiny-test")
        let c = try sweepCandidates(profile: profile, axes: [
            try SweepAxis(parsing: "wt_linear_t=ap_fixed<8,1>,ap_fixed<12,2>,ap_fixed<8,1,AP_TRN,AP_WRAP>,ap_fixed<12,2>")])
        XCTAssertEqual(c.map { $0["wt_linear_t"]!.width }, [8, 12])
        func list(_ n: Int) -> String { (0..<n).map { "ap_fixed<\(8 + $0),2>" }.joined(separator: ",") }
        let axes = [try SweepAxis(parsing: "wt_linear_t=" + list(17)), try SweepAxis(parsing: "wt_bias_t=" + list(17))]
        XCTAssertEqual(maximumSweepCandidates, 256)
        XCTAssertThrowsError(try sweepCandidates(profile: profile, axes: axes)) { e in
            XCTAssertEqual((e as? MoepackError)?.kind, .usage)
            XCTAssertEqual((e as? MoepackError)?.item, "--vary")
            XCTAssertTrue((e as? MoepackError)?.message.contains("17 × 17 candidates, more than 256") ?? false, "\(e)")
        }
        XCTAssertEqual(try sweepCandidates(profile: profile, axes: [axes[0], try SweepAxis(parsing: "wt_bias_t=" + list(15))]).count, 255)
    }

    func testParetoFront() {
        func c(_ bytes: Double, _ mse: Double) -> SweepCandidate {
            SweepCandidate(types: [:], image_bytes: 0, moe_bytes_per_frame: bytes, mse: mse, cosine: 1, worst_cosine: 1,
                           routing: [], overflow: 0, pareto: false)
        }
        var cs = [c(10, 5), c(20, 1), c(20, 2), c(15, 5), c(30, 1), c(5, 9)]
        markPareto(&cs)
        XCTAssertEqual(cs.map(\.pareto), [true, true, false, false, false, true])
    }

    /// Three weight widths on the tiny model: MoE bytes are the visited experts times the exact
    /// per-expert bytes of each width, and the published-type candidate's error equals what
    /// `verify --mode fixed` reports for a plain pack (a separate code path).
    func testTinySweepFigures() throws {
        let profile = try KernelProfile.load("tiny-test")
        let kernel = try KernelTensors(checkpoint: try BackboneCheckpoint(
            source: try openCheckpoint(Self.tiny.appendingPathComponent("model.pth").path), expected: profile.model))
        let frame = NamedFrame(name: "frame.u8", frame: try FrameLoader.load(path: Self.tiny.appendingPathComponent("frame.u8").path, config: profile.model))
        let report = try sweep(kernel: kernel, profile: profile,
                               axes: [try SweepAxis(parsing: "wt_linear_t=ap_fixed<8,1>,ap_fixed<12,2>,ap_fixed<16,2>")],
                               frames: [frame])
        XCTAssertEqual(report.candidates.map { $0.types["wt_linear_t"] }, ["ap_fixed<8,1>", "ap_fixed<12,2>", "ap_fixed<16,2>"])
        XCTAssertEqual(report.tasks, [0, 1])
        // D = 32, He = 16: w1, w2 He·D elements each in 1 or 2 bytes, b1 He and b2 D wt_bias_t in 2 bytes.
        let perExpert = [2 * 512 * 1 + 16 * 2 + 32 * 2, 2 * 512 * 2 + 16 * 2 + 32 * 2, 2 * 512 * 2 + 16 * 2 + 32 * 2]
        for (c, per) in zip(report.candidates, perExpert) {
            let visitsTimesTasks = c.moe_bytes_per_frame * 2 / Double(per)
            XCTAssertEqual(visitsTimesTasks, visitsTimesTasks.rounded(), "\(c.types): \(c.moe_bytes_per_frame)")
            XCTAssertGreaterThan(visitsTimesTasks, 0)
            XCTAssertEqual(c.routing.count, 2 * profile.model.moeBlocks.count)
        }
        XCTAssertLessThan(report.candidates[0].moe_bytes_per_frame, report.candidates[2].moe_bytes_per_frame)
        XCTAssertLessThan(report.candidates[0].image_bytes, report.candidates[2].image_bytes)
        XCTAssertGreaterThan(report.candidates[0].mse, report.candidates[2].mse)

        let dir = NSTemporaryDirectory() + "moepack-sweep-test-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let packed = try pack(kernel: kernel, options: PackOptions(profile: profile, allTasks: true), outputDirectory: dir)
        XCTAssertEqual(report.candidates[2].image_bytes, packed.manifest.image.bytes)
        var mse = 0.0, cosine = 0.0
        for t in 0..<2 {
            let v = try MoepackVerify.verify(image: try PackedImage(directory: dir), reference: try kernel.backboneWeights(task: t),
                                             frames: [frame], mode: .fixed, task: t,
                                             thresholds: .defaults(for: .fixed), checkpointPath: "model.pth")
            mse += v.summary.mean_mse / 2; cosine += v.summary.mean_cosine / 2
            for b in v.moe_blocks {
                XCTAssertEqual(report.candidates[2].routing.first { $0.task == t && $0.block == b.block }?.agreement, b.routing_agreement)
            }
        }
        XCTAssertEqual(report.candidates[2].mse, mse, accuracy: mse * 1e-12)
        XCTAssertEqual(report.candidates[2].cosine, cosine, accuracy: 1e-12)

        // The page: well-formed SVG with one point per candidate and the Pareto front drawn.
        let html = sweepHTML(report)
        let svg = String(html[html.range(of: "<svg")!.lowerBound..<html.range(of: "</svg>")!.upperBound])
        final class Counter: NSObject, XMLParserDelegate {
            var circles = 0, polylines = 0
            func parser(_ p: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                        attributes: [String: String] = [:]) {
                if name == "circle", attributes["class"] == "candidate" { circles += 1 }
                if name == "polyline", attributes["class"] == "pareto" { polylines += 1 }
            }
        }
        let parser = XMLParser(data: Data(svg.utf8))
        let counter = Counter()
        parser.delegate = counter
        XCTAssertTrue(parser.parse(), "SVG is not well-formed XML: \(String(describing: parser.parserError))")
        XCTAssertEqual(counter.circles, report.candidates.count)
        XCTAssertEqual(counter.polylines, report.candidates.filter(\.pareto).count > 1 ? 1 : 0)
        XCTAssertTrue(renderSweepTable(report).contains("ap_fixed<8,1>"))
    }

    func testCLIWritesOnlyItsResultsAndRefusesCleanly() throws {
        let bin = Self.repo.appendingPathComponent(".build/debug/moepack").path
        guard FileManager.default.isExecutableFile(atPath: bin) else { throw XCTSkip("\(bin) not built") }
        func run(_ args: [String]) throws -> (Int32, String, String) { try runProcess(bin, args, in: Self.repo) }
        let parent = NSTemporaryDirectory() + "moepack-sweep-cli-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: parent) }
        let base = ["sweep", "Tests/Fixtures/tiny/model.pth", "--profile", "tiny-test", "--image", "Tests/Fixtures/tiny/frame.u8"]
        let (s, out, err) = try run(base + ["--vary", "wt_linear_t=ap_fixed<8,1>,ap_fixed<10,2>,ap_fixed<12,2>,ap_fixed<8,1>", "-o", parent + "/out", "--json"])
        XCTAssertEqual(s, 0)
        // Not a terminal: a start line and the final count on stderr (the duplicate type counted once).
        XCTAssertTrue(err.hasPrefix("moepack: sweep: 3 candidate(s) × 1 frame(s) × 2 task(s)"), err)
        XCTAssertTrue(err.contains("moepack: sweep: candidates done 3/3"), err)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        XCTAssertEqual((json["candidates"] as? [Any])?.count, 3)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent + "/out").sorted(), ["sweep.html", "sweep.json"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: parent), ["out"], "no staging folder left")

        // A type the emulation cannot reproduce: a usage error (exit 64), one line naming --vary, the
        // type name, the first argument of that type and the type, no output.
        let (s2, _, e2) = try run(base + ["--vary", "wt_linear_t=ap_fixed<8,1>,ap_ufixed<8,1>", "-o", parent + "/refused"])
        XCTAssertEqual(s2, 64)
        XCTAssertTrue(e2.hasPrefix("moepack: error: '--vary': wt_linear_t (attn_weights): element type ap_ufixed<8,1"), e2)
        XCTAssertEqual(e2.split(separator: "\n").count, 1, e2)
        XCTAssertFalse(FileManager.default.fileExists(atPath: parent + "/refused"))
        // Usage errors exit 64.
        let (s3, _, e3) = try run(base + ["--vary", "wt_linear_t"])
        XCTAssertEqual(s3, 64, e3)
        let (s4, _, e4) = try run(base + ["--vary", "wt_nope_t=ap_fixed<8,1>"])
        XCTAssertEqual(s4, 64, e4)
        XCTAssertTrue(e4.contains("wt_nope_t"), e4)
    }
}

/// `sweep` with task decoders: per decoder, the candidate's output against the float backbone's,
/// checked against the heads module's own image runner (``ImageWithHeads``) on the packed image.
final class SweepHeadsTests: XCTestCase {
    func testTaskAgreementMatchesImageWithHeads() throws {
        let tiny = SweepTests.tiny
        let profile = try KernelProfile.load("tiny-test")
        let kernel = try KernelTensors(checkpoint: try BackboneCheckpoint(
            source: try openCheckpoint(tiny.appendingPathComponent("model.pth").path), expected: profile.model))
        let frame = NamedFrame(name: "frame.u8", frame: try FrameLoader.load(path: tiny.appendingPathComponent("frame.u8").path, config: profile.model))
        let ck = try TaskHeadsCheckpoint(source: try openCheckpoint(SweepTests.repo.appendingPathComponent("Tests/Fixtures/heads/tiny_heads.pth").path))
        let heads = try TaskHeads(checkpoint: ck, imageHeight: profile.model.imageHeight, imageWidth: profile.model.imageWidth)
        var options = SweepOptions()
        options.heads = heads
        options.taskMap = try TaskMap.resolve(heads: ck.heads, imageTasks: [0, 1], overrides: ["edge": 1, "depth": 0])
        let report = try sweep(kernel: kernel, profile: profile,
                               axes: [try SweepAxis(parsing: "wt_linear_t=ap_fixed<8,1>,ap_fixed<16,2>")],
                               frames: [frame], options: options)
        let published = try XCTUnwrap(report.candidates.last)
        XCTAssertEqual(published.task_agreement.map(\.task), ["semseg", "normals", "edge", "depth"])
        XCTAssertNotNil(published.task_agreement[0].pixel_agreement)
        XCTAssertNil(published.task_agreement[1].pixel_agreement)

        let dir = NSTemporaryDirectory() + "moepack-sweep-heads-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try pack(kernel: kernel, options: PackOptions(profile: profile, allTasks: true), outputDirectory: dir)
        let fixed = try ImageWithHeads(image: try PackedImage(directory: dir), mode: .fixed, heads: heads, taskMap: options.taskMap)
        let got = try fixed.run(frame.frame).outputs
        let floats = try (0..<2).map { t in try FloatBackbone(weights: try kernel.backboneWeights(task: t)).forward(pixels: frame.frame.pixels).output }
        let want = try heads.run(tokens: { floats[$0] }, taskMap: options.taskMap)
        for (a, (g, w)) in zip(published.task_agreement, zip(got, want)) {
            let m = ComparisonMetrics(g.values, reference: w.values)
            XCTAssertEqual(a.mse, m.mse, accuracy: m.mse * 1e-12, a.task)
            XCTAssertEqual(a.cosine, m.cosine, accuracy: 1e-12, a.task)
            XCTAssertEqual(a.backbone_task, options.taskMap[a.task], a.task)
        }
        XCTAssertGreaterThan(published.task_agreement[0].pixel_agreement!, report.candidates[0].task_agreement[0].pixel_agreement! - 1e-9)
    }
}
