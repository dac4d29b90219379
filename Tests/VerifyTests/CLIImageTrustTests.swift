import Foundation
import XCTest

/// An image folder is trusted only when proven (issue 16): every command that reads one refuses an
/// edited manifest, a corrupted image or header, or a missing digest with exit status 2 and one line
/// naming the file and field, and never crashes. Runs the debug binary like ``CLIHostileTests``.
extension CLIHostileTests {
    /// Commands that read an image folder, each with the arguments it needs besides the folder.
    static let imageCommands: [(name: String, args: @Sendable (String, String) -> [String])] = [
        ("check", { dir, _ in ["check", dir] }),
        ("run", { dir, out in ["run", dir, "--image", trustFrame, "-o", out + "/out.npy"] }),
        ("run --mode fixed", { dir, out in ["run", dir, "--image", trustFrame, "-o", out + "/out.npy", "--mode", "fixed"] }),
        ("verify", { dir, _ in ["verify", dir, "--checkpoint", trustCheckpoint, "--image", trustFrame] }),
        ("verify --mode fixed", { dir, _ in ["verify", dir, "--checkpoint", trustCheckpoint, "--image", trustFrame, "--mode", "fixed"] }),
        ("schedule", { dir, _ in ["schedule", dir, "--image", trustFrame] }),
    ]
    static let trustCheckpoint = repo.appendingPathComponent("Tests/Fixtures/tiny/model.pth").path
    static let trustFrame = repo.appendingPathComponent("Tests/Fixtures/tiny/frame.u8").path

    /// Packs the tiny model with the tiny-test profile into `dir` (extra pack options appended).
    func packTrustImage(_ dir: String, _ extra: [String] = []) throws {
        let r = try moepack(["pack", Self.trustCheckpoint, "-o", dir, "--profile", "tiny-test", "--quiet", "--image", Self.trustFrame] + extra)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    /// A copy of image folder `src` at `dst` with `manifest.json` changed by `edit`; with `resum`,
    /// `manifest.sha256` is rewritten for the edited manifest so that the field checks are reached.
    func editedCopy(of src: String, to dst: String, resum: Bool, _ edit: (inout [String: Any]) -> Void) throws {
        try? FileManager.default.removeItem(atPath: dst)
        try FileManager.default.copyItem(atPath: src, toPath: dst)
        var m = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/manifest.json"))) as? [String: Any])
        edit(&m)
        try JSONSerialization.data(withJSONObject: m, options: [.sortedKeys]).write(to: URL(fileURLWithPath: dst + "/manifest.json"))
        if resum { try resumManifest(dst) }
    }

    /// Asserts exit 2, no signal, exactly one stderr line, containing `expected`.
    func assertRefusedInOneLine(_ r: Outcome, _ expected: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(r.signaled, "\(what): killed by a signal", file: file, line: line)
        XCTAssertEqual(r.status, 2, "\(what): \(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.stderrLines.count, 1, "\(what): \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderrLines.first?.hasPrefix("moepack: error: ") == true && r.stderr.contains(expected),
                      "\(what): expected '\(expected)' in: \(r.stderr)", file: file, line: line)
    }

    typealias ManifestEdit = (image: String, what: String, field: String, edit: (inout [String: Any]) -> Void)

    /// The manifest edits of issue 16, reproductions 1, 2 and 6, each with the image it applies to
    /// ("base", "all": every task's gates, "em": expert-major) and the field the refusal must name.
    static func manifestEdits() -> [ManifestEdit] {
        func model(_ key: String, _ v: Any) -> (inout [String: Any]) -> Void {
            { m in var model = m["model"] as! [String: Any]; model[key] = v; m["model"] = model }
        }
        func buffer(_ name: String, _ key: String, _ v: Any) -> (inout [String: Any]) -> Void {
            { m in
                var b = m["buffers"] as! [[String: Any]]
                let i = b.firstIndex { $0["name"] as? String == name }!
                b[i][key] = v; m["buffers"] = b
            }
        }
        return [
            ("base", "experts 4 → 8", "'model.experts': 8, profile tiny-test says 4", model("experts", 8)),
            ("base", "embedDim 32 → 64", "'model.embedDim': 64, profile tiny-test says 32", model("embedDim", 64)),
            ("base", "every block MoE", "'model.moeBlocks': [0, 1, 2, 3], profile tiny-test says [1, 3]", model("moeBlocks", [0, 1, 2, 3])),
            ("base", "heads 2 → 1", "'model.heads': 1, profile tiny-test says 2", model("heads", 1)),
            ("base", "topK 2 → 4", "'model.topK': 4, profile tiny-test says 2", model("topK", 4)),
            ("base", "layerNormEps", "'model.layerNormEps': 1e-05, profile tiny-test says 1e-06", model("layerNormEps", 1e-5)),
            ("base", "register 212 → 216", "'buffers.moe_weights_l1.register': 216, the profile gives 212", buffer("moe_weights_l1", "register", 216)),
            ("base", "element type", "'types.wt_linear_t': ap_fixed<16,3>, profile tiny-test says ap_fixed<16,2>",
             { m in var t = m["types"] as! [String: Any]; t["wt_linear_t"] = "ap_fixed<16,3>"; m["types"] = t }),
            ("base", "buffer ctype", "'buffers.attn_weights.ctype': ap_fixed<16,3>, the profile gives ap_fixed<16,2>", buffer("attn_weights", "ctype", "ap_fixed<16,3>")),
            ("base", "quantization mode", "'quantization.mode': 'AP_NEAREST' is not an ap_fixed quantization mode",
             { m in var q = m["quantization"] as! [String: Any]; q["mode"] = "AP_NEAREST"; m["quantization"] = q }),
            // Valid values the layout cannot see: the header (under header.sha256) recorded the pack's.
            ("base", "quantization mode AP_TRN", "'quantization.mode': AP_TRN, but moepack_ddr.h (covered by header.sha256) records AP_RND_CONV",
             { m in var q = m["quantization"] as! [String: Any]; q["mode"] = "AP_TRN"; m["quantization"] = q }),
            ("base", "overflow mode AP_WRAP", "'quantization.overflow': AP_WRAP, but moepack_ddr.h (covered by header.sha256) records AP_SAT",
             { m in var q = m["quantization"] as! [String: Any]; q["overflow"] = "AP_WRAP"; m["quantization"] = q }),
            ("base", "task 0 → 1", "'task': 1, but moepack_ddr.h (covered by header.sha256) records 0", { $0["task"] = 1 }),
            ("base", "layout", "'buffers': 25 buffers, the profile and layout give 22", { $0["layout"] = "expert-major" }),
            ("base", "image outside the folder", "'image.file': '../other/ddr.bin' is not a plain file name inside the image folder",
             { m in var i = m["image"] as! [String: Any]; i["file"] = "../other/ddr.bin"; m["image"] = i }),
            ("base", "header outside the folder", "'header.file': '/etc/passwd' is not a plain file name",
             { m in var i = m["header"] as! [String: Any]; i["file"] = "/etc/passwd"; m["header"] = i }),
            ("base", "task 99", "'task': 99 is not one of the model's 2 task(s)", { $0["task"] = 99 }),
            ("base", "unknown profile", "'profile': 'zcu104' is not a built-in profile", { $0["profile"] = "zcu104" }),
            ("all", "task gate size", "'task_gates[1]': task 1 at offset ", { m in
                var g = m["task_gates"] as! [[String: Any]]; g[1]["bytes"] = 100; m["task_gates"] = g }),
            ("all", "task gate missing", "'task_gates': tasks [0], expected each of 0…1 once", { m in
                var g = m["task_gates"] as! [[String: Any]]; g.removeLast(); m["task_gates"] = g }),
            ("em", "expert record part", "'expert_records[3]': block 1 expert 3 at ", { m in
                var r = m["expert_records"] as! [[String: Any]]; r[3]["w2"] = (r[3]["w2"] as! Int) + 64; m["expert_records"] = r }),
        ]
    }

    /// Issue 16, reproductions 1, 2 and 6: each edit of the manifest (with its digest recomputed, so
    /// the field checks are what refuses it) is refused by every command with one line naming the field.
    /// Split in three so that `swift test --parallel` spreads the ~160 commands over the workers.
    func testEveryCommandRefusesEditedModelFieldsInOneLine() throws { try refuseEditedManifests(0..<7) }
    func testEveryCommandRefusesEditedTypesAndTasksInOneLine() throws { try refuseEditedManifests(7..<14) }
    func testEveryCommandRefusesEditedFilesGatesAndRecordsInOneLine() throws {
        try refuseEditedManifests(14..<Self.manifestEdits().count, digestOnlyEdits: true)
    }

    /// Runs every image command on `part` of ``manifestEdits()`` (and, with `digestOnlyEdits`, on the
    /// edits only the manifest's digest can see) and asserts each is refused in one line.
    func refuseEditedManifests(_ part: Range<Int>, digestOnlyEdits: Bool = false) throws {
        let edits = Self.manifestEdits()
        XCTAssertTrue(part.clamped(to: edits.indices) == part && !part.isEmpty, "edit range \(part) of \(edits.count)")
        let tmp = try tempDir()
        for image in Set(edits[part].map(\.image)).union(digestOnlyEdits ? ["base"] : []) {
            try packTrustImage(tmp + "/" + image, ["all": ["--task", "all"], "em": ["--layout", "expert-major"]][image] ?? [])
        }
        // Every edited folder is prepared first, then the ~160 commands run two at a time (the
        // machine's cores), and their outcomes are asserted in order.
        var jobs: [(args: [String], expected: String, what: String)] = []
        for i in part {
            let e = edits[i]
            let dir = tmp + "/edited-\(i)", raw = tmp + "/edited-\(i)-digest-not-recomputed"
            try editedCopy(of: tmp + "/" + e.image, to: dir, resum: true, e.edit)
            for c in Self.imageCommands {
                jobs.append((c.args(dir, tmp), "\(dir)/manifest.json: \(e.field)", "\(c.name) on \(e.what)"))
            }
            // Without the digest recomputed, the manifest's SHA-256 catches any edit first... or the
            // field check does; either way one line, exit 2.
            try editedCopy(of: tmp + "/" + e.image, to: raw, resum: false, e.edit)
            jobs.append((["check", raw], "\(raw)/manifest", "check on \(e.what), digest not recomputed"))
        }
        // Edits the fields cannot see (the task, a valid other mode, the notes) are caught by the digest.
        let digestOnly: [(String, (inout [String: Any]) -> Void)] = !digestOnlyEdits ? [] : [
            ("task 0 → 1", { m in m["task"] = 1 }),
            ("quantization mode", { m in var q = m["quantization"] as! [String: Any]; q["mode"] = "AP_TRN"; m["quantization"] = q }),
        ]
        for (i, (what, edit)) in digestOnly.enumerated() {
            let dir = tmp + "/digest-\(i)"
            try editedCopy(of: tmp + "/base", to: dir, resum: false, edit)
            for c in Self.imageCommands {
                jobs.append((c.args(dir, tmp), "\(dir)/manifest.sha256: manifest.json has SHA-256 ", "\(c.name) on \(what)"))
            }
        }
        let outcomes = try moepackConcurrently(jobs.map(\.args))
        for (job, outcome) in zip(jobs, outcomes) {
            assertRefusedInOneLine(outcome, job.expected, job.what)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp + "/out.npy"), "no command wrote an output")
    }

    /// Issue 16, reproduction 2: `verify` on an image with a flipped weight byte used to pass; the image
    /// is now checked against its SHA-256 first. An edited header or a missing manifest digest too.
    func testCorruptedImageHeaderOrMissingDigestRefused() throws {
        let tmp = try tempDir()
        try packTrustImage(tmp + "/base")
        let pristine = try moepack(Self.imageCommands[3].args(tmp + "/base", tmp))
        XCTAssertEqual(pristine.status, 0, pristine.stderr)
        XCTAssertTrue(pristine.stdout.contains("PASS"), pristine.stdout)

        let dir = tmp + "/img"
        try FileManager.default.copyItem(atPath: tmp + "/base", toPath: dir)
        let m = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/manifest.json"))) as? [String: Any])
        let w = try XCTUnwrap((m["buffers"] as? [[String: Any]])?.first { $0["name"] as? String == "moe_weights_l1" })
        let h = try XCTUnwrap(FileHandle(forUpdatingAtPath: dir + "/ddr.bin"))
        let at = UInt64(w["offset"] as! Int + 10)
        try h.seek(toOffset: at)
        let b = try XCTUnwrap(h.read(upToCount: 1))
        try h.seek(toOffset: at)
        try h.write(contentsOf: Data([b[0] ^ 0x01]))
        try h.close()
        for c in Self.imageCommands where c.name != "check" {
            assertRefusedInOneLine(try moepack(c.args(dir, tmp)), "\(dir)/ddr.bin: 'image.sha256': the image's SHA-256 differs from the manifest's", c.name)
        }
        let check = try moepack(["check", dir])
        XCTAssertEqual(check.status, 1, check.stderr)
        XCTAssertEqual(check.stderrLines, ["moepack: error: \(dir): checksum mismatch: ddr.bin (whole image); buffers moe_weights_l1"])

        try FileManager.default.removeItem(atPath: dir)
        try FileManager.default.copyItem(atPath: tmp + "/base", toPath: dir)
        try Data("/* edited */\n".utf8).write(to: URL(fileURLWithPath: dir + "/moepack_ddr.h"))
        assertRefusedInOneLine(try moepack(Self.imageCommands[1].args(dir, tmp)), "\(dir)/moepack_ddr.h: 'header.sha256': missing, or its SHA-256 differs", "run, edited header")
        XCTAssertEqual(try moepack(["check", dir]).stderrLines, ["moepack: error: \(dir): checksum mismatch: moepack_ddr.h"])

        try FileManager.default.removeItem(atPath: dir)
        try FileManager.default.copyItem(atPath: tmp + "/base", toPath: dir)
        try FileManager.default.removeItem(atPath: dir + "/manifest.sha256")
        for c in Self.imageCommands {
            assertRefusedInOneLine(try moepack(c.args(dir, tmp)), "\(dir)/manifest.sha256: missing", c.name)
        }
    }

    /// manifest.sha256 is what `sha256sum manifest.json` prints, so `sha256sum -c` checks it too.
    func testManifestDigestIsSha256sumFormat() throws {
        let tmp = try tempDir()
        try packTrustImage(tmp + "/base")
        let written = try String(contentsOfFile: tmp + "/base/manifest.sha256", encoding: .utf8)
        try resumManifest(tmp + "/base")
        XCTAssertEqual(try String(contentsOfFile: tmp + "/base/manifest.sha256", encoding: .utf8), written)
        XCTAssertTrue(written.hasSuffix("  manifest.json\n"), written)
    }
}
