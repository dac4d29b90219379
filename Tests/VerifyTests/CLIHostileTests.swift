import Foundation
import XCTest

/// Hostile inputs at process level: `moepack pack` on each fixture of Tests/Fixtures/hostile/ must exit
/// with status 2, print exactly one line `moepack: error: <file>: …` on stderr, die of no signal, and
/// leave nothing in the output's parent folder (no `out`, no staging or temporary files).
///
/// Runs the debug binary `.build/debug/moepack` (located from #filePath); skipped when it has not been
/// built (`make test` builds it first).
final class CLIHostileTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let binary = repo.appendingPathComponent(".build/debug/moepack").path
    static let hostile = repo.appendingPathComponent("Tests/Fixtures/hostile").path
    static let pwned = "/tmp/moepack-hostile-pwned"

    struct Outcome {
        var status: Int32
        var signaled: Bool
        var stdout: String
        var stderr: String
        var stderrLines: [String] { stderr.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init) }
    }

    func moepack(_ args: [String]) throws -> Outcome { try Self.runMoepack(args) }

    /// Runs the debug binary with `args`; stdout and stderr go through files.
    nonisolated static func runMoepack(_ args: [String], environment extra: [String: String] = [:]) throws -> Outcome {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            throw XCTSkip("\(Self.binary) is not built (run `swift build` first)")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = args
        if !extra.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(extra) { _, new in new } }
        // Output goes to files (not pipes) so nothing can block on a full pipe.
        let base = NSTemporaryDirectory() + "moepack-cli-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: base + ".out", contents: nil)
        _ = FileManager.default.createFile(atPath: base + ".err", contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: base + ".out")
            try? FileManager.default.removeItem(atPath: base + ".err")
        }
        let out = try XCTUnwrap(FileHandle(forWritingAtPath: base + ".out"))
        let err = try XCTUnwrap(FileHandle(forWritingAtPath: base + ".err"))
        p.standardOutput = out
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        try out.close()
        try err.close()
        let outData = try Data(contentsOf: URL(fileURLWithPath: base + ".out"))
        let errData = try Data(contentsOf: URL(fileURLWithPath: base + ".err"))
        return Outcome(status: p.terminationStatus, signaled: p.terminationReason == .uncaughtSignal,
                       stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
    }

    /// Runs `moepack` once per argument list, `width` processes at a time; outcomes in input order.
    /// The first error thrown (e.g. the binary is not built) is rethrown after all have run.
    func moepackConcurrently(_ runs: [[String]], width: Int = 2) throws -> [Outcome] {
        let runs = runs
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var outcomes: [Outcome?]
            var error: Error?
            init(_ n: Int) { outcomes = Array(repeating: nil, count: n) }
        }
        let results = Results(runs.count)
        DispatchQueue.concurrentPerform(iterations: width) { worker in
            for i in stride(from: worker, to: runs.count, by: width) {
                let r = Result { try Self.runMoepack(runs[i]) }
                results.lock.lock()
                switch r {
                case .success(let o): results.outcomes[i] = o
                case .failure(let e): results.error = results.error ?? e
                }
                results.lock.unlock()
            }
        }
        if let e = results.error { throw e }
        return results.outcomes.map { $0! }
    }

    /// Rewrites `DIR/manifest.sha256` for the edited manifest with coreutils' `sha256sum` (the format
    /// moepack writes), so the field checks behind the digest check are reached.
    func resumManifest(_ dir: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        p.arguments = ["manifest.json"]
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let line = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        try line.write(to: URL(fileURLWithPath: dir + "/manifest.sha256"))
    }

    func tempDir() throws -> String {
        let d = NSTemporaryDirectory() + "moepack-cli-hostile-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// MOEPACK_SIMD chooses the integer kernels' form; a value naming no form is said in one warning line
    /// and the best form the CPU runs is used. Every form gives the same bits, so the output is
    /// identical whatever the variable says.
    func testUnknownSimdFormWarnsOnceAndChangesNoBit() throws {
        let tmp = try tempDir()
        try packTrustImage(tmp + "/img")
        func run(_ simd: String?, _ out: String) throws -> Outcome {
            try Self.runMoepack(["run", tmp + "/img", "--image", Self.trustFrame, "--mode", "fixed", "-o", tmp + "/" + out],
                                environment: simd.map { ["MOEPACK_SIMD": $0] } ?? [:])
        }
        let plain = try run(nil, "plain.npy"), bogus = try run("sse9", "bogus.npy"), portable = try run("portable", "portable.npy")
        for r in [plain, bogus, portable] { XCTAssertEqual(r.status, 0, r.stderr) }
        XCTAssertEqual(bogus.stderrLines.count, 1, bogus.stderr)
        XCTAssertTrue(bogus.stderr.hasPrefix("moepack: warning: MOEPACK_SIMD=sse9 is not one of portable, avx2, avx512; using "), bogus.stderr)
        XCTAssertEqual(portable.stderr, "")
        let want = try Data(contentsOf: URL(fileURLWithPath: tmp + "/plain.npy"))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: tmp + "/bogus.npy")), want)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: tmp + "/portable.npy")), want)
    }

    func fx(_ name: String) -> String { Self.hostile + "/" + name }

    override func setUp() {
        try? FileManager.default.removeItem(atPath: Self.pwned)
    }

    override func tearDown() {
        XCTAssertFalse(FileManager.default.fileExists(atPath: Self.pwned), "a pickle payload was executed")
    }

    /// Fixture → exact substring of the error line.
    static let refusals: [(String, String)] = [
        ("truncated_10.pth", "zip: file of 10 bytes is too short for an end-of-central-directory record (truncated)"),
        ("truncated_half.pth", "zip: no end-of-central-directory record (truncated or not a zip file)"),
        ("truncated_cd.pth", "zip: no end-of-central-directory record (truncated or not a zip file)"),
        ("truncated_tail.pth", "zip: no end-of-central-directory record (truncated or not a zip file)"),
        ("empty.pth", "not a checkpoint: empty file"),
        ("text.pth", "not a checkpoint: unknown container (first bytes 74 68 69 73)"),
        ("evil_system.pth", "refused pickle global 'posix.system'"),
        ("evil_eval.pth", "refused pickle global '__builtin__.eval'"),
        ("evil_popen.pth", "refused pickle global 'subprocess.Popen'"),
        ("evil_nested.pth", "refused pickle global 'posix.system'"),
        ("evil_legacy.pth", "'pickle': refused pickle global 'posix.system'"),
        ("evil_user_class.pth", "refused pickle global '__main__.Config'"),
        ("zip_bomb_1t.pth", "'archive/data/0': zip: declared size 1099511627776 bytes exceeds the 16 GiB limit"),
        ("zip_bomb_8g.pth", "deflated bytes can inflate to (zip bomb)"),
        ("zip_overlap.pth", "zip: record overlaps the next record or the central directory"),
        ("inflate_size_short.pth", "'weight': storage record 'archive/data/0' holds 40 bytes, expected 12 × 4"),
        ("view_oob.pth", "'view': view (offset 5, shape [2,4], stride [4,1]) reaches element 12 of a storage with 12 elements"),
        ("short_record.pth", "'weight': storage record 'archive/data/0' holds 44 bytes, expected 12 × 4"),
        ("st_oob.safetensors", "'w': data_offsets [0,16] out of bounds"),
        ("st_overlap.safetensors", "'b': data_offsets [8,24] overlap tensor 'a'"),
        ("st_huge_header.safetensors", "safetensors header length 4611686018427387904 exceeds the 100000000-byte cap"),
        ("object.npy", "object arrays are refused: unpickling is not allowed"),
        ("int_weights.h5", "'patch_embed.proj.weight': missing tensor"),
        ("nan_weight.pth", "'module.backbone.blocks.2.attn.proj.weight': nan at flat index 101; NaN/Inf weights are refused"),
        ("inf_weight.pth", "'module.backbone.blocks.2.attn.proj.weight': -inf at flat index 1"),
        ("wrong_experts.pth", "'module.backbone.blocks.1.mlp.experts.htoh4.weight': shape [3,16,32] gives expert count = 3, the profile expects 4"),
        ("wrong_tokens.pth", "'module.backbone.pos_embed': shape [1,17,32] gives token count = 17, the profile expects 9"),
        ("wrong_expert_hidden.pth", "gives expert hidden size = 24, the profile expects 16"),
        ("missing_tensor.pth", "'blocks.2.attn.proj.weight': missing tensor (expected shape [32,32])"),
        ("tiny_bad_crc.pth", "'module.backbone.blocks.0.norm1.bias': record 'archive/data/1': zip: CRC-32 mismatch"),
        ("ep_missing_rank", "'1.pth': missing rank file (ranks must be 0…2)"),
    ]

    /// Asserts the refusal contract for one `pack` run into `<tmp>/out`.
    func assertRefused(_ fixture: String, _ expected: String, extra: [String] = [], line: UInt = #line) throws {
        let tmp = try tempDir()
        let input = fx(fixture)
        let r = try moepack(["pack", input, "-o", tmp + "/out", "--profile", "tiny-test"] + extra)
        XCTAssertFalse(r.signaled, "\(fixture): killed by a signal", line: line)
        XCTAssertEqual(r.status, 2, "\(fixture): \(r.stderr)", line: line)
        XCTAssertEqual(r.stderrLines.count, 1, "\(fixture): stderr is not one line: \(r.stderr)", line: line)
        let l = r.stderrLines.first ?? ""
        XCTAssertTrue(l.hasPrefix("moepack: error: \(input)"), "\(fixture): \(l)", line: line)
        XCTAssertTrue(l.contains(expected), "\(fixture): '\(l)' lacks '\(expected)'", line: line)
        XCTAssertFalse(r.stderr.contains("Stack trace") || r.stderr.contains("Fatal error"), line: line)
        let left = try FileManager.default.contentsOfDirectory(atPath: tmp)
        XCTAssertEqual(left, [], "\(fixture): output folder's parent holds \(left)", line: line)
    }

    func testEveryHostileInputIsRefusedWithOneLineAndNoOutput() throws {
        for (fixture, expected) in Self.refusals {
            try assertRefused(fixture, expected)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: Self.pwned))
    }

    func testOverflowWithStrictIsRefused() throws {
        try assertRefused("overflow.pth",
                          "'blocks.0.attn.proj.weight': 1 value(s) outside ap_fixed<16,2> range [-2, 1.99994], largest |value| 5 (--strict)",
                          extra: ["--strict"])
    }

    func testOverflowWithoutStrictWarnsOncePerTensor() throws {
        let tmp = try tempDir()
        let r = try moepack(["pack", fx("overflow.pth"), "-o", tmp + "/out", "--profile", "tiny-test", "--quiet"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderrLines, [
            "moepack: warning: blocks.0.attn.proj.weight: 1 value(s) outside wt_linear_t = ap_fixed<16,2> range [-2, 1.99994], largest |value| 5 (AP_SAT)",
            "moepack: warning: blocks.2.mlp.fc1.weight: 2 value(s) outside wt_linear_t = ap_fixed<16,2> range [-2, 1.99994], largest |value| 7.5 (AP_SAT)",
        ])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp + "/out").sorted(),
                       ["ddr.bin", "host", "manifest.json", "manifest.sha256", "moepack_ddr.h"])
    }

    func testPackIsDeterministic() throws {
        let tmp = try tempDir()
        for o in ["a", "b"] {
            let r = try moepack(["pack", fx("tiny_lean.pth"), "-o", tmp + "/" + o, "--profile", "tiny-test", "--quiet"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stderr, "")
        }
        for f in ["ddr.bin", "manifest.json", "moepack_ddr.h"] {
            let a = try Data(contentsOf: URL(fileURLWithPath: tmp + "/a/" + f))
            let b = try Data(contentsOf: URL(fileURLWithPath: tmp + "/b/" + f))
            XCTAssertFalse(a.isEmpty)
            XCTAssertEqual(a, b, "\(f) differs between two runs")
        }
    }

    func testCheckDetectsAFlippedByteAndNamesTheBuffer() throws {
        let tmp = try tempDir()
        let dir = tmp + "/img"
        XCTAssertEqual(try moepack(["pack", fx("tiny_lean.pth"), "-o", dir, "--profile", "tiny-test", "--quiet"]).status, 0)
        XCTAssertEqual(try moepack(["check", dir]).status, 0)
        // Flip one byte in the middle of the first weight buffer named in the manifest.
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/manifest.json"))) as? [String: Any]
        let buffers = try XCTUnwrap(manifest?["buffers"] as? [[String: Any]])
        let weight = try XCTUnwrap(buffers.first { ($0["role"] as? String) == "weight" })
        let name = try XCTUnwrap(weight["name"] as? String)
        let offset = try XCTUnwrap(weight["offset"] as? Int), bytes = try XCTUnwrap(weight["bytes"] as? Int)
        let h = try XCTUnwrap(FileHandle(forUpdatingAtPath: dir + "/ddr.bin"))
        try h.seek(toOffset: UInt64(offset + bytes / 2))
        let b = try XCTUnwrap(h.read(upToCount: 1))
        try h.seek(toOffset: UInt64(offset + bytes / 2))
        try h.write(contentsOf: Data([b[0] ^ 0x10]))
        let r = try moepack(["check", dir])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
        XCTAssertEqual(r.stderrLines.first, "moepack: error: \(dir): checksum mismatch: ddr.bin (whole image); buffers \(name)", r.stderr)

        // An edited provenance digest in the manifest is caught by the manifest's own SHA-256 ...
        var text = try String(contentsOfFile: dir + "/manifest.json", encoding: .utf8)
        try h.close()
        let digest = try XCTUnwrap((manifest?["source"] as? [String: Any])?["tensors_sha256"] as? String)
        text = text.replacingOccurrences(of: digest, with: String(repeating: "0", count: 64))
        try text.write(toFile: dir + "/manifest.json", atomically: true, encoding: .utf8)
        let r2 = try moepack(["check", dir])
        XCTAssertEqual(r2.status, 2, r2.stderr)
        XCTAssertEqual(r2.stderrLines.count, 1, r2.stderr)
        XCTAssertTrue(r2.stderrLines.first?.hasPrefix("moepack: error: \(dir)/manifest.sha256: manifest.json has SHA-256 ") == true, r2.stderr)
        // ... and, with that digest recomputed (sha256sum's format), by the provenance rule.
        try resumManifest(dir)
        let r3 = try moepack(["check", dir])
        XCTAssertEqual(r3.status, 1, r3.stderr)
        XCTAssertEqual(r3.stderrLines.first, "moepack: error: \(dir): checksum mismatch: ddr.bin (whole image); buffers \(name); manifest source.tensors_sha256 (not the digest of source.tensors)", r3.stderr)
    }

    /// Command-line mistakes are one line too, and thresholds that would disable a check are refused
    /// before anything is loaded.
    func testCommandLineErrorsAreOneLine() throws {
        let cases: [([String], String)] = [
            (["verify", "nowhere", "--checkpoint", "x.pth", "--tie-margin", "abc"], "moepack: error: The value 'abc' is invalid for '--tie-margin <p>' (see --help)"),
            (["frobnicate"], "moepack: error: Unexpected argument 'frobnicate' (see --help)"),
            (["verify", "nowhere", "--checkpoint", "x.pth", "--min-cosine", "nan"], "moepack: error: '--min-cosine': must be a cosine in -1…1, got nan"),
            (["verify", "nowhere", "--checkpoint", "x.pth", "--max-mse", "-1"], "moepack: error: '--max-mse': must be a finite MSE ≥ 0, got -1.0"),
            (["verify", "nowhere", "--checkpoint", "x.pth", "--min-routing-agreement", "inf"], "moepack: error: '--min-routing-agreement': must be a fraction in 0…1, got inf"),
            (["suggest", "x.pth", "--headroom-bits", "-1"], "moepack: error: '--headroom-bits': must be 0…8, got -1"),
        ]
        for (args, line) in cases {
            let r = try moepack(args)
            XCTAssertEqual(r.status, 64, args.joined(separator: " "))
            XCTAssertEqual(r.stderrLines, [line], args.joined(separator: " "))
        }
    }

    /// An output path that exists and is not a regular file (a FIFO, a symbolic link to a device) is
    /// refused in one line with exit 64 and left as it is: renaming a finished file into place would
    /// replace the node itself (`run -o /dev/full` used to leave a plain file there).
    func testNonRegularOutputDestinationIsRefusedAndKept() throws {
        let tmp = try tempDir()
        let fifo = tmp + "/fifo", link = tmp + "/null-link"
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: "/dev/null")
        let cases: [([String], String)] = [
            (["export", fx("tiny_lean.pth"), "-o", fifo, "--quiet"], fifo),
            (["export", fx("tiny_lean.pth"), "-o", link, "--quiet"], link),
            (["pack", fx("tiny_lean.pth"), "-o", fifo, "--profile", "tiny-test", "--quiet"], fifo),
        ]
        for (args, dest) in cases {
            let r = try moepack(args)
            XCTAssertEqual(r.status, 64, args.joined(separator: " ") + ": " + r.stderr)
            XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
            XCTAssertTrue(r.stderr.hasPrefix("moepack: error: \(dest): exists and is "), r.stderr)
        }
        var st = stat()
        XCTAssertEqual(lstat(fifo, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO, "the FIFO was replaced")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: link), "/dev/null")
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: tmp)), ["fifo", "null-link"])
    }
}
