import XCTest
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel
import MoepackFixedPoint
import MoepackPacking
@testable import MoepackInference

/// Non-published element types end to end against an independent reference: the tiny checkpoint is
/// packed with the tiny-test profile and each case's type overrides, and the image's buffers and the
/// emulated output must equal, bit for bit, what scripts/make_precision_fixtures.py computed with a
/// model of the kernel written from its C++ (scripts/kernel_datapath_ref.py).
final class FixedEmulationPrecisionTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    struct Case: Decodable {
        var types: [String: String]
        var buffer_sha256: [String: String]
        var output: String
        var topk: String
    }
    struct Cases: Decodable { var cases: [String: Case] }

    func ints(_ url: URL) throws -> [Int32] {
        let d = try Data(contentsOf: url)
        return d.withUnsafeBytes { b in
            (0..<(b.count / 4)).map { Int32(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
        }
    }

    func testNonPublishedTypesMatchKernelReference() throws {
        let dir = Self.fixtures.appendingPathComponent("precision")
        let cases = try JSONDecoder().decode(Cases.self, from: Data(contentsOf: dir.appendingPathComponent("cases.json")))
        XCTAssertEqual(Set(cases.cases.keys), ["linear8", "linear12", "linear12i4_bias8", "wide_mixed"])
        let tiny = Self.fixtures.appendingPathComponent("tiny")
        let frame = [UInt8](try Data(contentsOf: tiny.appendingPathComponent("frame.u8")))
        let base = try KernelProfile.load("tiny-test")
        let kernel = try KernelTensors(checkpoint: try BackboneCheckpoint(
            source: try openCheckpoint(tiny.appendingPathComponent("model.pth").path), expected: base.model))
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("moepack-precision-\(getpid())")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }

        for (name, c) in cases.cases.sorted(by: { $0.key < $1.key }) {
            var profile = base
            for (t, spelled) in c.types { profile.types[t] = spelled }
            let out = tmp.appendingPathComponent(name).path
            _ = try pack(kernel: kernel, options: PackOptions(profile: profile), outputDirectory: out)
            let image = try PackedImage(directory: out)
            for (buffer, digest) in c.buffer_sha256 {
                XCTAssertEqual(image.manifest.buffer(buffer)?.sha256, digest, "\(name): \(buffer) DDR bytes")
            }
            let expected = try ints(dir.appendingPathComponent(c.output))
            let expectedTop = try ints(dir.appendingPathComponent(c.topk))
            let arrays = try image.kernelArrays()
            for general in [false, true] {
                let r = try FixedBackbone(arrays: arrays, forceGeneral: general).forward(pixels: frame)
                XCTAssertEqual(r.outputRaw.count, expected.count, name)
                let diff = zip(r.outputRaw, expected).filter { $0 != $1 }.count
                XCTAssertEqual(diff, 0, "\(name) (general path forced: \(general)): raw fm_t outputs differing")
                XCTAssertEqual(r.routing.flatMap(\.topExperts), expectedTop, "\(name) routing")
            }
        }
    }

    /// The narrower weights change the output (the test above would not notice a type ignored).
    func testCasesDifferFromPublishedTypes() throws {
        let published = try ints(Self.fixtures.appendingPathComponent("emulation/tiny_fixed_out.i32"))
        for c in ["linear8", "linear12", "linear12i4_bias8", "wide_mixed"] {
            let out = try ints(Self.fixtures.appendingPathComponent("precision/\(c)_out.i32"))
            XCTAssertEqual(out.count, published.count)
            XCTAssertNotEqual(out, published, c)
        }
    }
}
