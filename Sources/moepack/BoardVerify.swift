import ArgumentParser
import Foundation
import MoepackCore
import MoepackPacking
import MoepackBoard

/// `verify DIR --board-output OUT|FOLDER --image FRAME`: one comparison, or a `--bisect` folder of
/// `debug_id_<N>.npy` files compared in layer order to name the first layer that differs.
func verifyBoardOutput(directory: String, output: String, frames frameOptions: FrameOptions, task: Int?,
                       debugID: Int, maxLSB: Double, json: Bool) throws {
    let image = try PackedImage(directory: directory)
    let c = image.manifest.model
    _ = try DebugPoint(validating: debugID, depth: c.depth, item: "--debug-id")
    let frames = try frameOptions.load(config: c).map { (name: $0.name, bytes: $0.frame.bytes) }
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: output, isDirectory: &isDir) else {
        throw MoepackError(.io, file: output, "no such file or folder")
    }
    func compare(_ path: String, _ id: Int) throws -> BoardComparison {
        let out = try BoardOutput.load(path: path, tokens: c.tokens, dim: c.embedDim)
        return try BoardCheck.compare(image: image, frames: frames, output: out, outputName: path, debugID: id, task: task, maxLSB: maxLSB)
    }
    if !isDir.boolValue {
        let r = try compare(output, debugID)
        if json { try printJSON(r) } else { print(BoardCheck.render(r)) }
        if !r.passed { throw ExitCode(1) }
        return
    }
    let files = try BisectFolder.files(output)
    var results: [BoardComparison] = []
    for f in files { results.append(try compare(f.path, f.debugID)) }
    let firstBad = results.first { !$0.passed }
    let layer = firstBad.map { DebugPoint(debugID: $0.debug_id, depth: c.depth) }.flatMap { p -> Int? in
        if case let .step(l, _) = p { return l }
        return nil
    }
    struct Bisect: Encodable { var folder: String; var comparisons: [BoardComparison]; var first_differing_debug_id: Int?; var first_differing_layer: Int?; var passed: Bool }
    let report = Bisect(folder: output, comparisons: results, first_differing_debug_id: firstBad?.debug_id,
                        first_differing_layer: layer, passed: firstBad == nil)
    if json {
        try printJSON(report)
    } else {
        for r in results {
            print("debug_id \(r.debug_id) (\(r.point)): \(r.identical)/\(r.elements) identical, largest error \(Int(r.max_error_lsb)) LSB, MSE \(r.mse)\(r.passed ? "" : "  <- differs")")
        }
        if let firstBad {
            let where_ = layer.map { "layer \($0)" } ?? firstBad.point
            print("first difference: \(where_) (debug_id \(firstBad.debug_id))" + (firstBad.first_difference.map { ", token \($0.token), channel \($0.channel)" } ?? ""))
        } else {
            print("PASS: every layer's x identical\(maxLSB > 0 ? " (within \(Int(maxLSB)) LSB)" : "")")
        }
    }
    if firstBad != nil { throw ExitCode(1) }
}
