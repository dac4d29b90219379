import Foundation
import XCTest
import MoepackCore
import MoepackModel
@testable import MoepackInference

/// FrameLoader: PNG kinds (fixtures from scripts/make_frame_fixtures.py), npy, raw uint8/float32,
/// the area-filter resize against a numpy result, and error messages.
final class FramesTests: XCTestCase {
    static let framesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/frames")

    static func config(h: Int, w: Int) -> M3ViTConfig {
        M3ViTConfig(embedDim: 4, depth: 1, heads: 1, moeBlocks: [], experts: 0, expertHidden: 0, mlpHidden: 4,
                    tasks: 1, topK: 1, tokens: 1 + (h / 2) * (w / 2), patchSize: 2, inChans: 3,
                    imageHeight: h, imageWidth: w)
    }

    private func fixture(_ name: String) -> String { Self.framesDir.appendingPathComponent(name).path }
    private func bytes(_ name: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: Self.framesDir.appendingPathComponent(name))) }

    private var tmp: URL!
    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("moepack-frames-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: tmp) }

    private func write(_ name: String, _ data: [UInt8]) throws -> String {
        let url = tmp.appendingPathComponent(name)
        try Data(data).write(to: url)
        return url.path
    }

    /// A .npy v1.0 file as numpy writes it (header padded so data starts at a multiple of 64).
    private func npy(descr: String, shape: [Int], payload: [UInt8], fortran: Bool = false) -> [UInt8] {
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(descr)', 'fortran_order': \(fortran ? "True" : "False"), 'shape': \(shapeText), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        let len = header.utf8.count
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(len & 0xFF), UInt8(len >> 8)] + Array(header.utf8) + payload
    }

    // MARK: PNG

    func testSmallPNGKinds() throws {
        let c = Self.config(h: 4, w: 6)
        for name in ["small_rgb8", "small_rgba8", "small_gray8", "small_rgb16", "small_palette"] {
            let frame = try FrameLoader.load(path: fixture(name + ".png"), config: c)
            XCTAssertEqual(frame.bytes, try bytes(name + ".expected.u8"), name)
            XCTAssertEqual(frame.pixels, frame.bytes.map { Float($0) / 256 }, name)
            XCTAssertNil(frame.note, name)
        }
    }

    /// The PNG spec's PLTE rule: a pixel's index must be below the palette's entry count. Fixtures
    /// of scripts/make_frame_fixtures.py: 5 entries, index 5 at (x 4, y 2), also index 200 at (5, 3)
    /// in the 8-bit file; the 4-bit file packs two indices per byte.
    func testPaletteIndexPastPLTERefused() throws {
        let c = Self.config(h: 4, w: 6)
        for name in ["palette_index_past_plte", "palette4_index_past_plte"] {
            let path = fixture(name + ".png")
            XCTAssertThrowsError(try FrameLoader.load(path: path, config: c), name) { e in
                XCTAssertEqual((e as? MoepackError)?.kind, .badInput, name)
                XCTAssertEqual((e as? MoepackError)?.description,
                               "\(path): PNG pixel (x 4, y 2) has palette index 5, but its PLTE chunk has 5 entries", name)
            }
        }
    }

    func testBigPNGExactSize() throws {
        let frame = try FrameLoader.load(path: fixture("big_rgb8.png"), config: Self.config(h: 64, w: 128))
        XCTAssertEqual(frame.bytes, try bytes("big_rgb8.expected.u8"))
        XCTAssertNil(frame.note)
    }

    func testAreaResizeMatchesNumpy() throws {
        let half = try FrameLoader.load(path: fixture("big_rgb8.png"), config: Self.config(h: 32, w: 64))
        XCTAssertEqual(half.bytes, try bytes("big_to_32x64.expected.u8"))
        XCTAssertEqual(half.note, "resized 128×64 → 64×32 (area filter)")
        // Non-integer ratio 64/48 × 128/80: fractional coverage.
        let odd = try FrameLoader.load(path: fixture("big_rgb8.png"), config: Self.config(h: 48, w: 80))
        XCTAssertEqual(odd.bytes, try bytes("big_to_48x80.expected.u8"))
        XCTAssertEqual(odd.note, "resized 128×64 → 80×48 (area filter)")
    }

    func testAreaResizeByHand() {
        // 1 channel, 1×3 → 1×2: output 0 covers [0, 1.5): (a + b/2)/1.5; output 1 covers [1.5, 3).
        let out = FrameLoader.areaResize([10, 20, 31], channels: 1, height: 1, width: 3, toHeight: 1, toWidth: 2)
        // (10 + 10)/1.5 = 13.33 → 13; (10 + 31)/1.5 = 27.33 → 27.
        XCTAssertEqual(out, [13, 27])
        // Upscale 1×1 → 2×2 replicates; half-way rounding goes up: 1×2 [0, 1] → 1×1 = 0.5 → 1.
        XCTAssertEqual(FrameLoader.areaResize([7], channels: 1, height: 1, width: 1, toHeight: 2, toWidth: 2), [7, 7, 7, 7])
        XCTAssertEqual(FrameLoader.areaResize([0, 1], channels: 1, height: 1, width: 2, toHeight: 1, toWidth: 1), [1])
    }

    // MARK: raw and npy

    func testRawUInt8AndFloat32() throws {
        let c = Self.config(h: 2, w: 2)
        let data: [UInt8] = (0..<12).map { UInt8($0 * 20) }
        let frame = try FrameLoader.load(path: try write("f.u8", data), config: c)
        XCTAssertEqual(frame.bytes, data)
        XCTAssertEqual(frame.pixels[1], 20 / 256)
        // float32 raw: floor(v·256) clamped: byte/256 exact, just below a step, 1.0 (byte/255 scaling) saturates.
        let values: [Float] = [3 / 256, 0.5, 0.999, 1.0, 0, Float(5) / 256 - 1e-7, 0, 0.25, 0.75, 0.1, 0.2, 0.3]
        func rawBytes(_ vs: [Float]) -> [UInt8] {
            var raw: [UInt8] = []
            for v in vs { withUnsafeBytes(of: v.bitPattern.littleEndian) { raw += $0 } }
            return raw
        }
        let ff = try FrameLoader.load(path: try write("image.float32.bin", rawBytes(values)), config: c)
        XCTAssertEqual(ff.bytes, [3, 128, 255, 255, 0, 4, 0, 64, 192, 25, 51, 76])
        XCTAssertNotNil(ff.note)
        // Values outside [0, 1] are a normalised image, not pixel/256: refused, naming the sample.
        for (bad, index) in [(Float(1.5), 3), (Float(-0.1), 4)] {
            var vs = values
            vs[index] = bad
            XCTAssertThrowsError(try FrameLoader.load(path: try write("bad.float32.bin", rawBytes(vs)), config: c)) { e in
                XCTAssertTrue((e as! MoepackError).description.contains("'sample \(index)': value \(Double(bad)) outside [0, 1]"), "\(e)")
            }
        }
    }

    func testNpyLayouts() throws {
        let c = Self.config(h: 2, w: 2)
        let chw: [UInt8] = (0..<12).map { UInt8($0 + 100) }
        let a = try FrameLoader.load(path: try write("a.npy", npy(descr: "|u1", shape: [3, 2, 2], payload: chw)), config: c)
        XCTAssertEqual(a.bytes, chw)
        // HWC: element (y, x, c) = chw[c, y, x].
        var hwc = [UInt8](repeating: 0, count: 12)
        for ch in 0..<3 { for p in 0..<4 { hwc[p * 3 + ch] = chw[ch * 4 + p] } }
        let b = try FrameLoader.load(path: try write("b.npy", npy(descr: "|u1", shape: [2, 2, 3], payload: hwc)), config: c)
        XCTAssertEqual(b.bytes, chw)
        var f32: [UInt8] = []
        for v in chw { withUnsafeBytes(of: (Float(v) / 256).bitPattern.littleEndian) { f32 += $0 } }
        let f = try FrameLoader.load(path: try write("f.npy", npy(descr: "<f4", shape: [3, 2, 2], payload: f32)), config: c)
        XCTAssertEqual(f.bytes, chw)
        XCTAssertEqual(f.pixels, chw.map { Float($0) / 256 })
    }

    func testNpyHWCResize() throws {
        let big = try bytes("big_rgb8.expected.u8")  // [3,64,128]
        var hwc = [UInt8](repeating: 0, count: big.count)
        let n = 64 * 128
        for ch in 0..<3 { for p in 0..<n { hwc[p * 3 + ch] = big[ch * n + p] } }
        let frame = try FrameLoader.load(path: try write("big.npy", npy(descr: "|u1", shape: [64, 128, 3], payload: hwc)),
                                         config: Self.config(h: 32, w: 64))
        XCTAssertEqual(frame.bytes, try bytes("big_to_32x64.expected.u8"))
    }

    // MARK: errors

    /// A PNG of only a signature, an IHDR declaring `width`×`height` (8-bit, `colorType` 0 grey or
    /// 2 RGB), an IDAT holding a zlib header and an empty final block (no pixels) and IEND, chunk CRCs as the PNG spec defines them (CRC-32, polynomial 0xEDB88320).
    private func pngHeaderOnly(width: UInt32, height: UInt32, colorType: UInt8) -> [UInt8] {
        func be(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }
        func crc(_ bytes: [UInt8]) -> UInt32 {
            var c: UInt32 = 0xFFFF_FFFF
            for b in bytes { c ^= UInt32(b); for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 } }
            return ~c
        }
        func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
            let td = Array(type.utf8) + data
            return be(UInt32(data.count)) + td + be(crc(td))
        }
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
            + chunk("IHDR", be(width) + be(height) + [8, colorType, 0, 0, 0])
            + chunk("IDAT", [0x78, 0x9C, 0x03, 0x00]) + chunk("IEND", [])
    }

    /// Issue 16, reproduction 3: a PNG declaring 32768×32768 grey (which took 7.4 GB before it was
    /// refused) or 30000×30000 RGB (accepted after 6.2 GB) is refused from its header, before any
    /// pixel is decoded: these files hold no pixel data, so a decode would fail with another message.
    func testHugePNGRefusedFromItsHeader() throws {
        let c = Self.config(h: 4, w: 8)
        for (w, h, type) in [(32768, 32768, UInt8(0)), (30000, 30000, UInt8(2)), (8192, 4097, UInt8(2))] {
            let path = try write("huge_\(w)x\(h).png", pngHeaderOnly(width: UInt32(w), height: UInt32(h), colorType: type))
            XCTAssertThrowsError(try FrameLoader.load(path: path, config: c)) { e in
                XCTAssertEqual((e as? MoepackError)?.description,
                               "\(path): PNG size \(w)×\(h) is \(w * h) pixels, more than the 33554432 moepack decodes (resize the frame first)")
            }
        }
        // At the limit the header is accepted and the (missing) pixel data is what fails.
        let path = try write("limit.png", pngHeaderOnly(width: 8192, height: 4096, colorType: 2))
        XCTAssertThrowsError(try FrameLoader.load(path: path, config: c)) { e in
            XCTAssertTrue((e as? MoepackError)?.description.hasPrefix("\(path): PNG IDAT zlib stream is cut short after 0 of the 100667392 bytes of filtered rows a 8192×4096 8-bit RGB image has (file truncated?)") == true, "\(e)")
        }
    }

    func testErrorsNameFileAndProblem() throws {
        let c = Self.config(h: 2, w: 2)
        func check(_ path: String, _ kind: MoepackError.Kind, _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try FrameLoader.load(path: path, config: c), line: line) { e in
                guard let e = e as? MoepackError else { return XCTFail("\(e)", line: line) }
                XCTAssertEqual(e.kind, kind, "\(e)", line: line)
                XCTAssertEqual(e.file, path, line: line)
                XCTAssertTrue(e.description.hasPrefix(path + ": "), e.description, line: line)
                XCTAssertTrue(e.description.contains(fragment), e.description, line: line)
            }
        }
        check(try write("odd.bin", [UInt8](repeating: 1, count: 13)), .badInput, "13 bytes is neither raw uint8 [3,2,2] (12 bytes)")
        check(try write("fake.png", [UInt8](repeating: 1, count: 12)), .badInput, "not a PNG")
        let png = try bytes("big_rgb8.png")
        check(try write("cut.png", Array(png.prefix(200))), .badInput, "PNG chunk 'IDAT' at byte 33 declares")
        check(try write("cut.npy", npy(descr: "|u1", shape: [3, 2, 2], payload: [1, 2, 3])), .badInput,
              "truncated npy: 3 data bytes, expected 12")
        check(try write("i4.npy", npy(descr: "<i4", shape: [3, 2, 2], payload: [UInt8](repeating: 0, count: 48))),
              .badInput, "dtype '<i4' not accepted")
        check(try write("f.npy", npy(descr: "|u1", shape: [3, 2, 2], payload: [UInt8](repeating: 0, count: 12), fortran: true)),
              .unsupported, "fortran_order")
        check(try write("shape.npy", npy(descr: "|u1", shape: [12], payload: [UInt8](repeating: 0, count: 12))),
              .badInput, "npy shape [12]")
        var nan: [UInt8] = []
        for _ in 0..<12 { withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { nan += $0 } }
        check(try write("nan.bin", nan), .numeric, "not finite")
        check(tmp.appendingPathComponent("missing.png").path, .io, "cannot open")
    }

    // MARK: real Edge-MoE frame

    func testEdgeMoEImageFloat32() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("shared/edge-moe/weights/image.float32.bin").path
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("../shared/edge-moe absent: real Edge-MoE frame not available")
        }
        let frame = try FrameLoader.load(path: path, config: .edgeMoE)
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let floats: [Float] = data.withUnsafeBytes { raw in
            (0..<data.count / 4).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
        // The file holds exact byte/256 values, so the conversion is lossless.
        XCTAssertEqual(frame.pixels, floats)
        XCTAssertEqual(frame.bytes.count, 3 * 128 * 256)
    }
}
