import Foundation
import MoepackCore
import MoepackModel
import MoepackFixedPoint

/// The one validation of a packed image's manifest, run by every command that reads an image folder
/// (through ``PackedImage``) before anything is sized, indexed or trusted from it.
///
/// An image folder holds `ddr.bin`, `manifest.json`, `moepack_ddr.h` and `manifest.sha256`. The
/// manifest records the SHA-256 of `ddr.bin` (`image.sha256`), of each buffer and of the header
/// (`header.sha256`); `manifest.sha256` records the SHA-256 of `manifest.json` itself, in
/// `sha256sum` format (`<64 hex>  manifest.json`), so `sha256sum -c manifest.sha256` checks it too.
/// The manifest's digest lives in its own file, not in the header, because the header's digest is in
/// the manifest: each file's digest sits in another file, so editing any one file is caught.
///
/// ``validate(_:file:profile:)`` checks, in this order (the first problem found is thrown):
/// 1. `format`, the model configuration (``M3ViTConfig/validate(file:)``: sizes, heads divide D, top-k
///    within the experts, …), `layout`, the quantization and overflow modes, `alignment`;
/// 2. file names: `image.file` and `header.file` are plain names inside the folder (no `/`, `..`);
/// 3. the profile the manifest names (a built-in, or the one embedded as `profile_definition`):
///    the model configuration equals the profile's (the task count comes from the checkpoint),
///    `types`, `registers` and `alignment` equal the profile's;
/// 4. the DDR plan recomputed from that profile and the manifest's layout and task options
///    (``DDRPlan``): every buffer's name, offset, bytes, type, ctype, element size, shape, register and
///    role, the expert records and their types, the task gates, and the image size equal the plan's;
/// 5. `task` is one of the checkpoint's tasks, and with `task_gates` every task's gates are listed once.
///
/// Digests (the manifest's, the image's, the header's) are checked by ``PackedImage``, which reads the
/// files; this function reads nothing, so fuzzers and host-side tools can call it on bytes alone.
public enum ImageValidation {
    /// Name of the file holding the SHA-256 of `manifest.json`, beside it.
    public static let manifestDigestFile = "manifest.sha256"
    /// Largest `manifest.json` accepted (bytes): a real one is well under 1 MiB.
    public static let maximumManifestBytes = 64 << 20

    /// Decodes and validates a manifest (see the type's documentation for what is checked).
    /// - Parameters:
    ///   - data: the bytes of `manifest.json`.
    ///   - file: the path named in errors.
    ///   - profile: the built-in profile of a name, or nil when there is none by that name
    ///     (``KernelProfile/builtin(_:)`` in moepack; fuzzers pass profiles read from files).
    /// - Throws: ``MoepackError`` `.badInput` naming `file`, the field and the problem, in one line.
    public static func decodeAndValidate(_ data: Data, file: String,
                                         profile: (String) throws -> KernelProfile?) throws -> Manifest {
        guard data.count <= maximumManifestBytes else {
            throw MoepackError(.badInput, file: file, "\(data.count) bytes, more than any manifest (\(maximumManifestBytes) bytes)")
        }
        let m: Manifest
        do { m = try JSONDecoder().decode(Manifest.self, from: data) } catch let e as DecodingError {
            throw MoepackError(.badInput, file: file, "not a moepack manifest: \(describe(e))")
        } catch {
            throw MoepackError(.badInput, file: file, "not a moepack manifest: invalid JSON")
        }
        try validate(m, file: file, profile: profile)
        return m
    }

    /// Validates a decoded manifest against itself and the profile it names.
    /// - Throws: ``MoepackError`` `.badInput` naming `file`, the field and the problem.
    public static func validate(_ m: Manifest, file: String, profile resolve: (String) throws -> KernelProfile?) throws {
        func bad(_ field: String, _ message: String) -> MoepackError {
            MoepackError(.badInput, file: file, item: field, message)
        }
        guard m.format == "moepack-ddr/1" else {
            throw MoepackError(.badInput, file: file, "format '\(m.format)', expected 'moepack-ddr/1'")
        }
        try m.model.validate(file: file)
        guard let layout = DDRLayout(rawValue: m.layout) else {
            throw bad("layout", "'\(m.layout)' is not one of \(DDRLayout.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard Quantization(rawValue: m.quantization.mode) != nil else {
            throw bad("quantization.mode", "'\(m.quantization.mode)' is not an ap_fixed quantization mode")
        }
        guard Overflow(rawValue: m.quantization.overflow) != nil else {
            throw bad("quantization.overflow", "'\(m.quantization.overflow)' is not an ap_fixed overflow mode")
        }
        try checkPlainName(m.image.file, field: "image.file", file: file)
        guard let header = m.header else { throw bad("header", "missing (the C header moepack_ddr.h and its SHA-256)") }
        try checkPlainName(header.file, field: "header.file", file: file)
        guard header.file != m.image.file, ![m.image.file, header.file].contains(where: { ["manifest.json", manifestDigestFile].contains($0) }) else {
            throw bad("header.file", "image.file, header.file, manifest.json and \(manifestDigestFile) must be four different files")
        }
        for (field, digest) in [("image.sha256", m.image.sha256), ("header.sha256", header.sha256)] where !isSHA256Hex(digest) {
            throw bad(field, "not a SHA-256 (64 lower-case hex digits)")
        }
        guard m.image.bytes >= 0, header.bytes >= 0 else { throw bad("image.bytes", "negative size") }

        // The profile: the embedded definition (file profiles, .hwh registers) or the built-in one.
        let profile: KernelProfile
        if let embedded = m.profile_definition {
            try embedded.validate(file: "\(file): profile_definition")
            guard embedded.name == m.profile else {
                throw bad("profile", "'\(m.profile)', but profile_definition is named '\(embedded.name)'")
            }
            profile = embedded
        } else {
            guard let p = try resolve(m.profile) else {
                throw bad("profile", "'\(m.profile)' is not a built-in profile and the manifest embeds none (profile_definition)")
            }
            profile = p
        }
        try checkAgainstProfile(m, profile, bad: bad)

        // Task and gates: the task is the checkpoint's; --task all lists every task's gates once.
        guard m.task >= 0, m.task < max(m.model.tasks, 1) else {
            throw bad("task", "\(m.task) is not one of the model's \(m.model.tasks) task(s)")
        }
        if let gates = m.task_gates {
            guard m.task == 0, gates.map(\.task).sorted() == Array(0..<max(m.model.tasks, 1)) else {
                throw bad("task_gates", "tasks \(gates.map(\.task)), expected each of 0…\(max(m.model.tasks, 1) - 1) once (and task 0 in moe_w_gate)")
            }
        }

        // The plan from the profile and the manifest's options gives every offset, size and record.
        let plan: DDRPlan
        do {
            plan = try DDRPlan(profile: profile, layout: layout, task: m.task, allTasks: m.task_gates != nil, tasks: m.model.tasks)
        } catch let e as MoepackError {
            throw bad("profile", e.message)
        }
        try checkAgainstPlan(m, plan, bad: bad)
        guard m.image.bytes == plan.totalBytes else {
            throw bad("image.bytes", "\(m.image.bytes), the layout gives \(plan.totalBytes)")
        }
        if let folds = m.folds {
            guard folds.mean.count == m.model.inChans, folds.std.count == m.model.inChans,
                  (folds.mean + folds.std).allSatisfy(\.isFinite), folds.std.allSatisfy({ $0 > 0 }) else {
                throw bad("folds", "mean and std need \(m.model.inChans) finite values each, std > 0")
            }
        }
    }

    /// Model, types, registers and alignment against the profile's.
    static func checkAgainstProfile(_ m: Manifest, _ p: KernelProfile, bad: (String, String) -> MoepackError) throws {
        // The task count is the checkpoint's (gates per MoE block), not the bitstream's.
        var model = m.model
        model.tasks = p.model.tasks
        if model != p.model {
            let mine = Mirror(reflecting: model).children, theirs = Mirror(reflecting: p.model).children
            for (a, b) in zip(mine, theirs) where "\(a.value)" != "\(b.value)" {
                throw bad("model.\(a.label ?? "?")", "\(a.value), profile \(p.name) says \(b.value)")
            }
            throw bad("model", "differs from profile \(p.name)'s")
        }
        guard m.kernel == p.kernel else { throw bad("kernel", "'\(m.kernel)', profile \(p.name) says '\(p.kernel)'") }
        guard m.alignment == p.alignment else { throw bad("alignment", "\(m.alignment), profile \(p.name) says \(p.alignment)") }
        for k in Set(m.types.keys).union(p.types.keys).sorted() where m.types[k] != p.types[k] {
            throw bad("types.\(k)", "\(m.types[k] ?? "missing"), profile \(p.name) says \(p.types[k] ?? "none")")
        }
        for k in Set(m.registers.keys).union(p.registers.keys).sorted() where m.registers[k] != p.registers[k] {
            throw bad("registers.\(k)", "\(m.registers[k].map(String.init) ?? "missing"), profile \(p.name) says \(p.registers[k].map(String.init) ?? "none")")
        }
    }

    /// Buffers, expert records and task gates against the plan.
    static func checkAgainstPlan(_ m: Manifest, _ plan: DDRPlan, bad: (String, String) -> MoepackError) throws {
        guard m.buffers.count == plan.buffers.count else {
            throw bad("buffers", "\(m.buffers.count) buffers, the profile and layout give \(plan.buffers.count)")
        }
        for (i, (b, p)) in zip(m.buffers, plan.buffers).enumerated() {
            let field = "buffers[\(i)]"
            guard b.name == p.buffer.name else { throw bad("\(field).name", "'\(b.name)', the profile gives '\(p.buffer.name)' here") }
            let checks: [(String, String, String)] = [
                ("offset", "\(b.offset)", "\(p.offset)"), ("bytes", "\(b.bytes)", "\(p.bytes)"),
                ("type", b.type, p.buffer.type), ("ctype", b.ctype, p.type.baseDescription),
                ("element_bytes", "\(b.element_bytes)", "\(p.type.containerBytes)"),
                ("shape", shapeString(b.shape), shapeString(p.buffer.shape)),
                ("register", b.register.map(String.init) ?? "none", p.buffer.register.map(String.init) ?? "none"),
                ("role", b.role.rawValue, p.buffer.role.rawValue),
            ]
            for (key, got, want) in checks where got != want {
                throw bad("buffers.\(b.name).\(key)", "\(got), the profile gives \(want)")
            }
            guard isSHA256Hex(b.sha256) else { throw bad("buffers.\(b.name).sha256", "not a SHA-256 (64 lower-case hex digits)") }
        }
        // Expert records: exactly those of the plan's record layout (none in the kernel layout).
        let expected = plan.expertRecords()
        let got = m.expert_records ?? []
        guard got.count == expected.count, (m.expert_records == nil) == expected.isEmpty else {
            throw bad("expert_records", "\(m.expert_records.map { "\($0.count) records" } ?? "missing"), the \(m.layout) layout gives \(expected.isEmpty ? "none" : "\(expected.count)")")
        }
        if let i = got.indices.first(where: { got[$0] != expected[$0] }) {
            throw bad("expert_records[\(i)]", "block \(got[i].block) expert \(got[i].expert) at \(got[i].offset) (\(got[i].bytes) bytes; parts \(got[i].w1), \(got[i].b1), \(got[i].w2), \(got[i].b2)), the layout gives block \(expected[i].block) expert \(expected[i].expert) at \(expected[i].offset) (\(expected[i].bytes) bytes; parts \(expected[i].w1), \(expected[i].b1), \(expected[i].w2), \(expected[i].b2))")
        }
        let expectedTypes = plan.expertLayout?.partTypeNames
        guard m.expert_types == expectedTypes else {
            throw bad("expert_types", "\(m.expert_types.map { "\($0.sorted { $0.key < $1.key })" } ?? "none"), the profile gives \(expectedTypes.map { "\($0.sorted { $0.key < $1.key })" } ?? "none")")
        }
        // Task gates, in task order: each task's copy of moe_w_gate where the layout puts it.
        for (i, (g, want)) in zip(m.task_gates ?? [], plan.taskGates()).enumerated() where g != want {
            throw bad("task_gates[\(i)]", "task \(g.task) at offset \(g.offset), \(g.bytes) bytes; the layout gives task \(want.task) at offset \(want.offset), \(want.bytes) bytes")
        }
    }

    /// `name` is one path component inside the folder: not empty, no `/` or NUL, not `.` or `..`.
    /// - Throws: ``MoepackError`` `.badInput` naming `field`.
    public static func checkPlainName(_ name: String, field: String, file: String) throws {
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.contains("\0"), name.utf8.count <= 255 else {
            throw MoepackError(.badInput, file: file, item: field, "'\(name)' is not a plain file name inside the image folder")
        }
    }

    /// Text of `manifest.sha256` for a manifest's bytes: `sha256sum` format.
    public static func manifestDigestText(_ manifestBytes: some Collection<UInt8>) -> String {
        let bytes = Array(manifestBytes)
        return "\(hex(SHA256.hash(data: bytes)))  manifest.json\n"
    }

    /// Checks `manifest.sha256` (the text read beside the manifest, nil when missing) against the
    /// manifest's bytes.
    /// - Throws: ``MoepackError`` `.badInput` naming the digest file.
    public static func checkManifestDigest(_ manifestBytes: Data, digestText: Data?, digestFile: String) throws {
        guard let digestText else {
            throw MoepackError(.badInput, file: digestFile, "missing: the manifest's SHA-256 is not recorded (pack the image again)")
        }
        let recorded = String(decoding: digestText.prefix(64), as: UTF8.self)
        guard digestText.count <= 4096, isSHA256Hex(recorded) else {
            throw MoepackError(.badInput, file: digestFile, "not a SHA-256 line ('<64 hex digits>  manifest.json')")
        }
        let actual = hex(SHA256.hash(data: [UInt8](manifestBytes)))
        guard recorded == actual else {
            throw MoepackError(.badInput, file: digestFile, "manifest.json has SHA-256 \(actual.prefix(16))…, this file records \(recorded.prefix(16))… (manifest.json edited or from another image)")
        }
    }

    static func isSHA256Hex(_ s: String) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}

/// Size of the regular file at `path` (symbolic links followed); nil when missing or not a regular file.
func regularFileSize(_ path: String) -> Int? {
    var st = stat()
    guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
    return Int(st.st_size)
}
