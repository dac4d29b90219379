import Foundation
import MoepackCore
import MoepackPacking
import MoepackFixedPoint

/// `DIR/host/`: the programs that run a packed image on the board, generated from the manifest (the
/// same typed argument table as `manifest.json` and `moepack_ddr.h`) by filling the templates in
/// `Sources/MoepackBoard/Templates/`.
///
/// - `moepack_host.c` + `moepack_host_table.h` + `Makefile`: plain Linux, registers through
///   `/dev/mem`, the image in a u-dma-buf buffer (`make -C DIR/host`; `make CC=aarch64-linux-gnu-gcc`).
/// - `moepack_pynq.py`: the same through PYNQ 2.7/3.0 (`Overlay`, `pynq.allocate`, MMIO).
///
/// Both check `ddr.bin` and `manifest.json` against the SHA-256 digests recorded here
/// (`image.sha256` and the digest of the manifest's exact bytes) before writing to the device.
public enum HostFolder {
    /// Subfolder of the pack output.
    public static let folder = "host"
    /// Template resource → file written.
    static let files = ["moepack_host.c", "moepack_host_table.h", "Makefile", "moepack_pynq.py"]

    /// The files of `DIR/host/`, paths relative to DIR.
    /// - Parameters:
    ///   - manifest: the manifest as written; `manifestBytes` its exact bytes (hashed for the hosts).
    ///   - control: the kernel's `s_axi_control` block (profile or `--hwh`); nil: the published
    ///     build's `ViT_compute_0` at 0xA0000000, overridable with `--ctrl-base`.
    ///   - tool: the generating tool's name and version.
    /// - Throws: ``MoepackError`` when the manifest lacks a register the hosts need, or a template is missing.
    public static func render(manifest: Manifest, manifestBytes: [UInt8], control: KernelProfile.ControlBlock?,
                              tool: String) throws -> [(path: String, bytes: [UInt8])] {
        let data = try templateData(manifest: manifest, manifestBytes: manifestBytes, control: control, tool: tool)
        return try files.map { name in
            (path: "\(folder)/\(name)", bytes: Array(try Template.load(name).render(data).utf8))
        }
    }

    /// Writes the files of ``render(manifest:manifestBytes:control:tool:)`` into the pack output
    /// `directory` (a staging folder before it is put in place), from its `manifest.json` bytes.
    /// - Throws: ``MoepackError`` `.io` when the manifest cannot be read or a file written.
    public static func write(into directory: String, manifest: Manifest, control: KernelProfile.ControlBlock?, tool: String) throws {
        let manifestPath = (directory as NSString).appendingPathComponent("manifest.json")
        guard let bytes = FileManager.default.contents(atPath: manifestPath) else {
            throw MoepackError(.io, file: manifestPath, "cannot read the manifest just written")
        }
        try FileManager.default.createDirectory(atPath: (directory as NSString).appendingPathComponent(folder), withIntermediateDirectories: true)
        for file in try render(manifest: manifest, manifestBytes: [UInt8](bytes), control: control, tool: tool) {
            try AtomicFileWriter.write(file.bytes, to: (directory as NSString).appendingPathComponent(file.path))
        }
    }

    /// Default control block when neither the profile nor a `.hwh` gives one (the published design).
    static let publishedControl = KernelProfile.ControlBlock(instance: "ViT_compute_0", baseAddress: 0xA000_0000, range: 0x1_0000)

    static func templateData(manifest m: Manifest, manifestBytes: [UInt8], control: KernelProfile.ControlBlock?,
                             tool: String) throws -> Template.Data {
        let ctrl = control ?? publishedControl
        func reg(_ name: String) throws -> Int {
            guard let r = m.registers[name] else {
                throw MoepackError(.badInput, file: "manifest.json", item: name, "no such control register: the host programs need it")
            }
            return r
        }
        guard let input = m.buffers.first(where: { $0.role == .input }),
              let output = m.buffers.first(where: { $0.role == .output }) else {
            throw MoepackError(.badInput, file: "manifest.json", "no input (images) or output (x) buffer")
        }
        let c = m.model
        let pixelBytes = input.element_bytes, fmBytes = output.element_bytes
        let gateArg = "moe_w_gate"
        // Every packed task's gates; a single-task image: the gates moe_w_gate holds.
        let gates: [(task: Int, offset: Int, bytes: Int)] = m.task_gates?.map { ($0.task, $0.offset, $0.bytes) }
            ?? m.buffer(gateArg).map { [(m.task, $0.offset, $0.bytes)] } ?? []
        let fm: FixedType
        do { fm = try FixedType(parsing: output.ctype) } catch {
            throw MoepackError(.badInput, file: "manifest.json", item: output.name, "type '\(output.ctype)' is not an ap_fixed spelling")
        }
        var d = Template.Data()
        d.values = [
            "tool": tool, "profile": m.profile, "kernel": m.kernel, "instance": ctrl.instance,
            "ctrl_base": literal(ctrl.baseAddress), "ctrl_range": String(ctrl.range),
            "image_file": m.image.file, "image_bytes": String(m.image.bytes), "image_sha256": m.image.sha256,
            "manifest_sha256": hex(SHA256.hash(data: manifestBytes)),
            "task": String(m.task), "depth": String(c.depth),
            "pixel_ctype": input.ctype, "fm_ctype": output.ctype, "fm_bytes": String(fmBytes),
            "fm_fraction_bits": String(fm.fractionBits),
            "channels": String(c.inChans), "height": String(c.imageHeight), "width": String(c.imageWidth),
            "frame_bytes": String(c.inChans * c.imageHeight * c.imageWidth * pixelBytes),
            "x_bytes": String(c.tokens * c.embedDim * fmBytes),
            "tokens": String(c.tokens), "dim": String(c.embedDim),
            "reg_ctrl": literal(try reg("CTRL")), "reg_num_images": literal(try reg("num_images")),
            "reg_reload": literal(try reg("reload_one_time_weights")), "reg_debug_id": literal(try reg("debug_id")),
            "gate_arg": gateArg,
            "debug_patch_embedding": String(DebugPoint.patchEmbeddingID), "debug_stride": String(DebugPoint.stride),
            "debug_last_step": String(DebugPoint.lastStep),
        ]
        d.lists["args"] = m.buffers.map { b in
            ["name": b.name, "offset": String(b.offset), "bytes": String(b.bytes),
             "reg": b.register.map { literal($0) } ?? "0xFFFFFFFF", "reg_py": b.register.map { literal($0) } ?? "None",
             "role": b.role.rawValue, "role_upper": b.role.rawValue.uppercased(), "type": b.type, "ctype": b.ctype,
             "element_bytes": String(b.element_bytes), "shape": b.shape.map(String.init).joined(separator: ", ")]
        }
        d.lists["gates"] = gates.sorted { $0.task < $1.task }.map {
            ["task": String($0.task), "offset": String($0.offset), "bytes": String($0.bytes)]
        }
        d.lists["registers"] = m.registers.sorted { $0.value < $1.value }.map { ["reg_name": $0.key, "reg_offset": literal($0.value)] }
        return d
    }

    /// `0x…` hexadecimal literal (C and Python).
    static func literal<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16, uppercase: true) }
}

