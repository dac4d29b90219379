import ArgumentParser
import Foundation
import MoepackCore
import MoepackCheckpoint

/// Opens a checkpoint; an HDF5 file is first read completely by a child `moepack` process, because
/// the system libhdf5 (1.10.8) can crash with a signal on some corrupted files (found by fuzzing,
/// `fuzz/known-crashes/libhdf5/`) and a crash must become a one-line refusal, not a dead process.
func openCheckpointIsolated(_ path: String, options: OpenOptions) throws -> any TensorSource {
    if isHDF5File(path) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        p.arguments = ["probe-hdf5", path]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch {
            throw MoepackError(.io, file: path, "cannot start the HDF5 probe process")
        }
        p.waitUntilExit()
        if p.terminationReason == .uncaughtSignal {
            throw MoepackError(.badInput, file: path, "corrupted HDF5 file: the HDF5 library crashed reading it (signal \(p.terminationStatus))")
        }
    }
    return try openCheckpoint(path, options: options)
}

/// Hidden: opens an HDF5 checkpoint and reads every dataset, so the parent learns whether the HDF5
/// library survives this file.
struct ProbeHDF5: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "probe-hdf5", shouldDisplay: false)

    @Argument var path: String

    func run() throws {
        do {
            let s = try openCheckpoint(path)
            for e in s.entries { _ = try? s.readRaw(e.name) }
        } catch {
            throw ExitCode(2)
        }
    }
}
