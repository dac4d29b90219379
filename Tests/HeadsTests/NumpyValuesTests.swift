import XCTest
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackModel

/// Training checkpoints with NumPy values beside the state_dict (scripts/make_numpy_value_fixtures.py):
/// they open, the NumPy values are kept as opaque data, nothing is executed.
final class NumpyValuesTests: XCTestCase {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/checkpoint/numpy-values")

    func testNumPy1AndNumPy2CheckpointsOpenWithTheirTensors() throws {
        let plain = try openCheckpoint(Self.dir.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("tiny/plain.pth").path)
        for name in ["numpy1.pth", "numpy2.pth"] {
            let src = try openCheckpoint(Self.dir.appendingPathComponent(name).path)
            XCTAssertEqual(src.entries.count, plain.entries.count, name)
            let backbone = try BackboneCheckpoint(source: src)
            XCTAssertEqual(backbone.config.depth, 4, name)
            XCTAssertEqual(try backbone.read("blocks.1.mlp.experts.htoh4.weight"),
                           try plain.readFloat32("blocks.1.mlp.experts.htoh4.weight"), name)
        }
    }

    /// The array is an opaque object holding its shape and BUILD state; the bytes stay undecoded.
    func testArrayIsKeptOpaque() throws {
        // _reconstruct(numpy.ndarray, (0,), b'b') then BUILD((1, (2,), dtype, False, b'\x01\x02')) — dtype given as a string here.
        let pkl = Array("cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR(I1\n(I2\ntS'<i1'\nI00\nS'\\x01\\x02'\ntb.".utf8)
        let v = try RestrictedUnpickler(file: "x.pkl").load(pkl)
        guard case .object(let type, let args) = v else { return XCTFail("\(v)") }
        XCTAssertEqual(type, "numpy.ndarray")
        XCTAssertEqual(args.count, 3, "shape, typecode, BUILD state")
    }

    func testReconstructOfAnotherClassIsRefused() {
        let pkl = Array("cnumpy._core.multiarray\n_reconstruct\n(ccollections\nOrderedDict\n(I0\ntS'b'\ntR.".utf8)
        XCTAssertThrowsError(try RestrictedUnpickler(file: "x.pkl").load(pkl)) { e in
            XCTAssertEqual("\(e)", "x.pkl: numpy._core.multiarray._reconstruct: only (numpy.ndarray, shape, typecode) is accepted")
        }
        XCTAssertThrowsError(try RestrictedUnpickler(file: "x.pkl").load(Array("cnumpy\nndarray\n(I0\ntR.".utf8))) { e in
            XCTAssertEqual("\(e)", "x.pkl: numpy.ndarray is accepted only as the class argument of _reconstruct")
        }
    }
}
