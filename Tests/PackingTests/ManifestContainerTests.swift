import Foundation
import MoepackCheckpoint
import MoepackPacking
import XCTest

/// The manifest's `source.container` is a ``CheckpointContainer`` in Swift and its JSON spelling in
/// the file (`pytorch-zip`, `expert-parallel-folder`, …), unchanged from when it was a string.
final class ManifestContainerTests: XCTestCase {
    func testContainerEncodesAsItsJSONSpellingAndDecodesBack() throws {
        for kind in CheckpointContainer.allCases {
            let src = Manifest.Source(path: "m", container: kind, notes: [])
            let json = String(decoding: try JSONEncoder().encode(src), as: UTF8.self)
            XCTAssertTrue(json.contains("\"container\":\"\(kind.rawValue)\""), json)
            XCTAssertEqual(try JSONDecoder().decode(Manifest.Source.self, from: Data(json.utf8)).container, kind)
        }
        XCTAssertEqual(CheckpointContainer.expertParallelFolder.rawValue, "expert-parallel-folder")
    }

    func testUnknownContainerSpellingIsRefused() {
        let json = #"{"path":"m","container":"pytorch_zip","notes":[]}"#
        XCTAssertThrowsError(try JSONDecoder().decode(Manifest.Source.self, from: Data(json.utf8)))
    }
}
