import ArgumentParser
import Foundation
import MoepackCore
import MoepackInference

/// moepack: M³ViT checkpoints → Edge-MoE DDR images, verified on the CPU.
@main
struct Moepack: ParsableCommand {
    static let version = "0.1.0"
    static let configuration = CommandConfiguration(
        commandName: "moepack",
        abstract: "Turn trained M³ViT checkpoints into Edge-MoE FPGA DDR images and verify them on the CPU.",
        discussion: """
        Typical use:
          moepack pack models/m3vit-tiny-edge-moe.pth -o packed/edge-moe-zcu102
          moepack verify packed/edge-moe-zcu102 --checkpoint models/m3vit-tiny-edge-moe.pth --image models/demo-frame.u8
        Refused input exits with status 2 and one line on stderr naming the file, the tensor and the problem.
        """,
        version: version,
        subcommands: [Pack.self, Run.self, Verify.self, HeadsCommand.self, Inspect.self, Export.self, Quantize.self, Check.self, ImageCommand.self, Schedule.self, Suggest.self, Sweep.self, BoardSim.self, ProbeHDF5.self])

    /// swift-argument-parser's entry point, except that a command-line error is one stderr line
    /// (`moepack: error: …`, exit 64) like every other moepack error, not a usage block.
    static func main() {
        // Before anything else, so an interrupt is handled (alike for SIGINT, SIGTERM, SIGHUP) from
        // the start of every subcommand.
        InterruptCleanup.install()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            InterruptCleanup.waitIfInterrupted()
            if !(error is ExitCode), exitCode(for: error) == .validationFailure {
                // swift-argument-parser lists allowed values on lines of their own: one line here.
                let lines = message(for: error).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                let text = lines.isEmpty ? "invalid arguments"
                    : ([lines[0]] + [lines.dropFirst().map { $0.hasPrefix("- ") ? String($0.dropFirst(2)) : $0 }.joined(separator: ", ")].filter { !$0.isEmpty }).joined(separator: " ")
                FileHandle.standardError.write(Data("moepack: error: \(text) (see --help)\n".utf8))
                Foundation.exit(ExitCode.validationFailure.rawValue)
            }
            exit(withError: error)
        }
    }
}

/// Runs a subcommand body, turning ``MoepackError`` into one stderr line and its exit code.
/// Interrupts (Ctrl-C) remove any output being staged.
func guarded(_ body: () throws -> Void) throws {
    InterruptCleanup.install()
    configureBLASThreads()
    do {
        try body()
    } catch let e as MoepackError {
        InterruptCleanup.waitIfInterrupted()
        FileHandle.standardError.write(Data("moepack: error: \(e.description)\n".utf8))
        throw ExitCode(e.exitCode)
    }
}

func note(_ s: String) {
    FileHandle.standardError.write(Data("\(s)\n".utf8))
}

/// Prints `value` as JSON on stdout: sorted keys, pretty printed, non-finite numbers as strings.
func printJSON(_ value: some Encodable) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    print(String(decoding: try enc.encode(value), as: UTF8.self))
}
