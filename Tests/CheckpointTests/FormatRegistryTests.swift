import Foundation
import MoepackCheckpoint
import MoepackCore
import XCTest

/// The format registry (``CheckpointContainer``) over every committed checkpoint fixture: each is
/// sniffed as exactly its kind (no other kind's sniff matches), and `openCheckpoint` opens it with
/// that kind's reader or refuses it with that reader's error.
final class FormatRegistryTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").path

    /// The kind each fixture was written as, by its generator (scripts/make_*_fixtures.py): from the
    /// extension it was given, except where a file was written to be something else (nil: not a
    /// checkpoint, or cut before its signature).
    static let exceptions: [String: CheckpointContainer?] = [
        "formats/empty.bin": nil,
        "formats/text.txt": nil,
        "hostile/empty.pth": nil,
        "hostile/text.pth": nil,
        "checkpoint/basic_legacy.pth": .pytorchLegacy,
        "checkpoint/evil_legacy.pth": .pytorchLegacy,
        "checkpoint/ep/1.pth": .pytorchLegacy,
        "hostile/evil_legacy.pth": .pytorchLegacy,
        "tiny/legacy.pth": .pytorchLegacy,
    ]

    /// Zip files written damaged (truncated, central directory cut or overlapping, bombs): sniffing a
    /// zip kind lists the members, so these are refused by the sniff itself, with the zip reader's error.
    static let damagedZips: Set<String> = [
        "checkpoint/truncated.pth", "hostile/truncated_10.pth", "hostile/truncated_half.pth",
        "hostile/truncated_tail.pth", "hostile/truncated_cd.pth", "hostile/zip_bomb_1t.pth",
        "hostile/zip_bomb_8g.pth", "hostile/zip_overlap.pth", "hostile/regressions/zip/newline-in-record-name.pth",
    ]

    /// Checkpoint fixture kinds by file extension (data files such as `.f32`, `.i16`, `.bin` are not
    /// checkpoint fixtures; `.float32.bin` files are members of Edge-MoE folders).
    static let byExtension: [String: CheckpointContainer] = [
        "pth": .pytorchZip, "npy": .npy, "npz": .npz, "safetensors": .safetensors, "h5": .hdf5,
    ]

    /// (fixture path relative to Tests/Fixtures, expected kind) for every checkpoint file and folder.
    static func checkpointFixtures() throws -> [(String, CheckpointContainer?)] {
        var out: [(String, CheckpointContainer?)] = []
        let fm = FileManager.default
        guard let walk = fm.enumerator(atPath: fixtures) else { return [] }
        for case let rel as String in walk {
            var isDir: ObjCBool = false
            _ = fm.fileExists(atPath: fixtures + "/" + rel, isDirectory: &isDir)
            if let e = exceptions[rel] { out.append((rel, e)); continue }
            if isDir.boolValue {
                let names = try fm.contentsOfDirectory(atPath: fixtures + "/" + rel)
                // A folder holding rank files or float32 members was written as that folder kind.
                if names.contains(where: { $0.hasSuffix(".float32.bin") }) { out.append((rel, .edgeMoEFolder)) }
                else if names.contains(where: { $0.hasSuffix(".pth") && Int($0.dropLast(4)) != nil }) {
                    out.append((rel, names.contains("0.pth") ? .expertParallelFolder : nil))
                }
                continue
            }
            if let k = byExtension[(rel as NSString).pathExtension] { out.append((rel, k)) }
        }
        return out
    }

    func testEveryFixtureIsSniffedAsExactlyItsKind() throws {
        let all = try Self.checkpointFixtures()
        XCTAssertGreaterThan(all.count, 100, "fixture walk found too few checkpoint fixtures")
        var seen = Set<CheckpointContainer>()
        for (rel, expected) in all where !Self.damagedZips.contains(rel) {
            let probe = try CheckpointProbe(path: Self.fixtures + "/" + rel)
            let matching = try CheckpointContainer.allCases.filter { try $0.sniffs(probe) }
            XCTAssertEqual(matching, expected.map { [$0] } ?? [], "\(rel)")
            if let expected { seen.insert(expected) }
        }
        XCTAssertEqual(seen, Set(CheckpointContainer.allCases).subtracting([.memory]), "a kind has no fixture")
    }

    func testDamagedZipsAreRefusedBySniffWithTheErrorOpenGives() throws {
        let walked = Set(try Self.checkpointFixtures().map(\.0))
        for rel in Self.damagedZips.sorted() {
            XCTAssertTrue(walked.contains(rel), "\(rel) is not a committed fixture")
            let path = Self.fixtures + "/" + rel
            var sniffError = ""
            do {
                _ = try CheckpointContainer.sniff(CheckpointProbe(path: path))
                XCTFail("\(rel): sniffed without error")
            } catch let e as MoepackError { sniffError = e.description }
            XCTAssertTrue(sniffError.contains((rel as NSString).lastPathComponent), sniffError)
            XCTAssertFalse(sniffError.contains("\n"), sniffError)
            do {
                _ = try openCheckpoint(path)
                XCTFail("\(rel): opened")
            } catch let e as MoepackError { XCTAssertEqual(e.description, sniffError, rel) }
        }
    }

    func testUnknownFilesGetTheirOneLineRefusal() {
        for (rel, expected) in [("formats/empty.bin", "not a checkpoint: empty file"),
                                ("hostile/text.pth", "not a checkpoint: unknown container (first bytes")] {
            assertRefusal(try openCheckpoint(Self.fixtures + "/" + rel), file: rel, contains: [expected])
        }
    }

    func testOpenCheckpointOpensWithTheSniffedKind() throws {
        for (rel, expected) in try Self.checkpointFixtures() {
            guard let expected, let src = try? openCheckpoint(Self.fixtures + "/" + rel) else { continue }
            XCTAssertEqual(src.container, expected, "\(rel)")
        }
    }

    func testMemoryKindIsNeverSniffed() throws {
        let probe = try CheckpointProbe(path: Self.fixtures + "/formats/model.safetensors")
        XCTAssertFalse(try CheckpointContainer.memory.sniffs(probe))
        XCTAssertEqual(try CheckpointContainer.sniff(probe), .safetensors)
    }

    func testRawValuesAreTheJSONSpellings() {
        XCTAssertEqual(CheckpointContainer.allCases.map(\.rawValue),
                       ["pytorch-zip", "npz", "pytorch-legacy", "npy", "hdf5", "safetensors",
                        "expert-parallel-folder", "edge-moe-folder", "memory"])
    }

    func testSafetensorsWithAbsurdHeaderLengthIsSniffedSoTheReaderNamesTheLength() {
        // The reader, not "unknown container", reports a header length beyond the file and the cap.
        XCTAssertEqual(try CheckpointContainer.sniff(CheckpointProbe(path: Self.fixtures + "/formats/bad_huge_header.safetensors")),
                       .safetensors)
        XCTAssertEqual(try CheckpointContainer.sniff(CheckpointProbe(path: Self.fixtures + "/formats/model.h5")), .hdf5)
    }
}

/// `stateDictKey` is the reader's typed record of the key it read the state_dict from.
final class StateDictKeyTests: XCTestCase {
    func testTorchReadersReportTheKeyTheyUsed() throws {
        let root = FormatRegistryTests.fixtures + "/checkpoint/"
        XCTAssertEqual(try openCheckpoint(root + "training.pth").stateDictKey, "state_dict")
        XCTAssertEqual(try openCheckpoint(root + "training.pth", options: OpenOptions(stateDictKey: "state_dict")).stateDictKey, "state_dict")
        XCTAssertNil(try openCheckpoint(root + "basic_zip.pth").stateDictKey, "top-level state_dict has no key")
        XCTAssertNil(try openCheckpoint(root + "tiny.npz").stateDictKey)
        let ep = try openCheckpoint(root + "ep")
        let rank0 = try openCheckpoint(root + "ep/0.pth")
        XCTAssertEqual(ep.stateDictKey, rank0.stateDictKey)
    }
}
