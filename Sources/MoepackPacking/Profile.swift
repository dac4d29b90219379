import Foundation
import MoepackCore
import MoepackModel
import MoepackFixedPoint

/// A kernel's hardware profile: its argument table (names, C shapes, element types, roles, control
/// registers) and the model configuration the bitstream was built for. Profiles are data (JSON,
/// format `moepack-profile/1`); the built-in `edge-moe-zcu102` is the published Edge-MoE build's
/// `ViT_compute` argument table (`../shared/edge-moe/README.md`) with the register offsets of its
/// `.hwh` file.
public struct KernelProfile: Sendable, Codable, Equatable {
    /// One pointer argument of the kernel = one DDR buffer.
    public struct Buffer: Sendable, Codable, Equatable {
        /// Kernel argument name (e.g. `moe_weights_l1`).
        public var name: String
        /// C shape as declared, outermost first.
        public var shape: [Int]
        /// Element type name, a key of ``KernelProfile/types`` (e.g. `wt_linear_t`).
        public var type: String
        /// `weight` (filled by pack), `input` (frame slot), `output` (x), `scratch`.
        public var role: KernelArgumentRole
        /// s_axi_control offset of the pointer's low word (`NAME_1`); the high word follows at +4.
        public var register: Int?

        public init(name: String, shape: [Int], type: String, role: KernelArgumentRole, register: Int?) {
            self.name = name; self.shape = shape; self.type = type; self.role = role; self.register = register
        }

        /// The kernel argument this buffer is (nil for a name the argument table does not know).
        public var argument: KernelArgument? { KernelArgument(name: name) }
    }

    public var format: String
    public var name: String
    public var description: String?
    public var kernel: String
    public var model: M3ViTConfig
    /// Type name → `ap_fixed<W,I>` / `ap_ufixed<W,I>` spelling.
    public var types: [String: String]
    /// Buffer start alignment in bytes (4096: a page, so no AXI burst crosses a 4 KiB boundary).
    public var alignment: Int
    /// Alignment of parts inside an expert record (64 bytes, the kernel's AXI alignment).
    public var axiAlignment: Int?
    /// Scalar control registers (CTRL, num_images, …) by name → offset.
    public var registers: [String: Int]
    public var buffers: [Buffer]
    /// Where the kernel's `s_axi_control` block sits in the processor's address map (absent: unknown,
    /// host programs then need `--ctrl-base`).
    public var control: ControlBlock?

    /// The AXI-Lite register block of the kernel instance in a Vivado design: `C_S_AXI_CONTROL_BASEADDR`
    /// and `…_HIGHADDR` of the instance's `MODULE` in the `.hwh`.
    public struct ControlBlock: Sendable, Codable, Equatable {
        /// Instance name in the block design (PYNQ's `ip_dict` key), e.g. `ViT_compute_0`.
        public var instance: String
        /// Physical byte address of register 0 (CTRL).
        public var baseAddress: UInt64
        /// Bytes of the register window (HIGHADDR − BASEADDR + 1).
        public var range: UInt64

        public init(instance: String, baseAddress: UInt64, range: UInt64) {
            self.instance = instance; self.baseAddress = baseAddress; self.range = range
        }
    }

    /// Names of the built-in profiles.
    public static let builtinNames = ["edge-moe-zcu102", "tiny-test"]

    /// The built-in profile named `name`, or nil when there is none (read once per process).
    /// - Throws: ``MoepackError`` when the bundled profile cannot be read.
    public static func builtin(_ name: String) throws -> KernelProfile? {
        guard builtinNames.contains(name) else { return nil }
        if let p = builtinLock.withLock({ builtinCache[name] }) { return p }
        let p = try load(name)
        builtinLock.withLock { builtinCache[name] = p }
        return p
    }
    private static let builtinLock = NSLock()
    nonisolated(unsafe) private static var builtinCache: [String: KernelProfile] = [:]

    /// Loads a built-in profile by name, or a JSON file by path.
    /// - Throws: ``MoepackError`` `.badInput` naming the file and the problem.
    public static func load(_ nameOrPath: String) throws -> KernelProfile {
        let data: Data
        let file: String
        if builtinNames.contains(nameOrPath) {
            guard let url = Bundle.module.url(forResource: nameOrPath, withExtension: "json", subdirectory: "Profiles")
                ?? Bundle.module.url(forResource: nameOrPath, withExtension: "json") else {
                throw MoepackError(.io, item: nameOrPath, "built-in profile missing from the bundle")
            }
            data = try Data(contentsOf: url)
            file = nameOrPath
        } else {
            guard FileManager.default.fileExists(atPath: nameOrPath) else {
                throw MoepackError(.usage, file: nameOrPath,
                                   "no such profile (built-in: \(builtinNames.joined(separator: ", ")))")
            }
            do { data = try Data(contentsOf: URL(fileURLWithPath: nameOrPath)) } catch {
                throw MoepackError(.io, file: nameOrPath, "cannot read profile")
            }
            file = nameOrPath
        }
        let profile: KernelProfile
        do {
            profile = try JSONDecoder().decode(KernelProfile.self, from: data)
        } catch let e as DecodingError {
            throw MoepackError(.badInput, file: file, "not a moepack profile: \(describe(e))")
        }
        try profile.validate(file: file)
        return profile
    }

    /// Checks types parse, shapes are positive, names unique, alignment a power of two.
    public func validate(file: String) throws {
        guard format == "moepack-profile/1" else {
            throw MoepackError(.badInput, file: file, "format '\(format)', expected 'moepack-profile/1'")
        }
        try model.validate(file: file)
        guard alignment > 0, alignment <= 1 << 30, alignment & (alignment - 1) == 0 else {
            throw MoepackError(.badInput, file: file, item: "alignment", "\(alignment) is not a power of two in 1…2^30")
        }
        if let a = axiAlignment, !(a > 0 && a <= alignment && a & (a - 1) == 0) {
            throw MoepackError(.badInput, file: file, item: "axiAlignment", "\(a) is not a power of two in 1…alignment (\(alignment))")
        }
        try validateRegisters(file: file)
        var seen = Set<String>()
        for b in buffers {
            guard seen.insert(b.name).inserted else {
                throw MoepackError(.badInput, file: file, item: b.name, "buffer listed twice")
            }
            guard !b.shape.isEmpty, b.shape.allSatisfy({ $0 > 0 && $0 < 1 << 31 }) else {
                throw MoepackError(.badInput, file: file, item: b.name, "bad shape \(shapeString(b.shape))")
            }
            _ = try fixedType(b.type, file: file)
            // A buffer named after a kernel argument is that argument: its role and, where the model
            // dimensions give one, its C shape are the argument table's.
            if let arg = b.argument {
                guard b.role == arg.role else {
                    throw MoepackError(.badInput, file: file, item: b.name, "role '\(b.role.rawValue)', the kernel's \(b.name) is '\(arg.role.rawValue)'")
                }
                if let want = arg.shape(model), want != b.shape {
                    throw MoepackError(.badInput, file: file, item: b.name, "shape \(shapeString(b.shape)), the model gives \(shapeString(want))")
                }
            }
        }
    }

    /// This profile with element type `typeName` spelled `spelling` (`pack --type NAME=TYPE`): every
    /// buffer declared with that type name takes the new type. The spelling is a base type
    /// (`ap_fixed<W,I>` / `ap_ufixed<W,I>`); conversion modes come from `--quantization`/`--overflow`.
    /// - Throws: ``MoepackError`` `.usage` naming the type when the profile has no such type name, or
    ///   the spelling does not parse or carries modes.
    public func overriding(type typeName: String, with spelling: String) throws -> KernelProfile {
        guard types[typeName] != nil else {
            throw MoepackError(.usage, item: "--type", "no element type '\(typeName)' in profile \(name) (types: \(types.keys.sorted().joined(separator: ", ")))")
        }
        let t: FixedType
        do { t = try FixedType(parsing: spelling) } catch let e as MoepackError {
            throw MoepackError(.usage, item: "--type", "\(typeName)=\(spelling): \(e.message)")
        }
        guard t == FixedType(width: t.width, integerBits: t.integerBits, signed: t.signed) else {
            throw MoepackError(.usage, item: "--type", "\(typeName)=\(spelling): give the type as ap_fixed<W,I> or ap_ufixed<W,I>; conversion modes come from --quantization and --overflow")
        }
        var p = self
        p.types[typeName] = t.baseDescription
        return p
    }

    /// ``overriding(type:with:)`` for each `NAME=TYPE` of `assignments`, in order.
    /// - Throws: ``MoepackError`` `.usage` naming the assignment that is not `NAME=TYPE` or is refused.
    public func overriding(typeAssignments assignments: [String]) throws -> KernelProfile {
        var p = self
        var seen = Set<String>()
        for a in assignments {
            guard let eq = a.firstIndex(of: "="), eq != a.startIndex, a.index(after: eq) != a.endIndex else {
                throw MoepackError(.usage, item: "--type", "'\(a)' is not NAME=TYPE (e.g. 'wt_linear_t=ap_fixed<8,1>')")
            }
            let name = String(a[..<eq]).trimmingCharacters(in: .whitespaces)
            guard seen.insert(name).inserted else {
                throw MoepackError(.usage, item: "--type", "'\(name)' is given twice; give each element type once")
            }
            p = try p.overriding(type: name, with: String(a[a.index(after: eq)...]))
        }
        return p
    }

    /// The s_axi_control map must be plausible: every offset word-aligned in 0…0xFFFC, and no two
    /// registers (scalars, each pointer's low word and its high word at +4) at one offset.
    func validateRegisters(file: String) throws {
        var used: [Int: String] = [:]
        let words = registers.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
            + buffers.compactMap { b in b.register.map { ("\(b.name)_1", $0) } }
            + buffers.compactMap { b in b.register.map { ("\(b.name)_2", $0 &+ 4) } }
        for (name, off) in words {
            guard off >= 0, off <= 0xFFFC, off % 4 == 0 else {
                throw MoepackError(.badInput, file: file, item: name, "register offset \(off) is not a word-aligned offset in 0…0xFFFC")
            }
            if let other = used[off] {
                throw MoepackError(.badInput, file: file, item: name, "register offset \(off) is also \(other)'s")
            }
            used[off] = name
        }
    }

    /// The `FixedType` of a type name, with Vitis default modes (AP_TRN, AP_WRAP).
    public func fixedType(_ typeName: String, file: String? = nil) throws -> FixedType {
        guard let spelled = types[typeName] else {
            throw MoepackError(.badInput, file: file ?? name, item: typeName, "unknown element type")
        }
        do { return try FixedType(parsing: spelled) } catch let e as MoepackError {
            throw MoepackError(.badInput, file: file ?? name, item: typeName, e.message)
        }
    }

    /// The buffer named `name`.
    public func buffer(_ name: String) -> Buffer? { buffers.first { $0.name == name } }

    /// Replaces register offsets with those found in a Vivado hardware hand-off (`.hwh`) file.
    /// - Throws: ``MoepackError`` when the file has no `s_axi_control` registers for the buffers.
    public mutating func applyHWH(path: String) throws {
        let regs = try HWHRegisterMap.read(path: path)
        // Every pointer argument that has a register in the profile must have one in the .hwh: a
        // partial match means another kernel's bitstream, and silently mixing offsets would be wrong.
        let pointers = buffers.filter { $0.register != nil }.map(\.name)
        let pointerRegisters: [String] = pointers.flatMap { (name: String) -> [String] in [name + "_1", name + "_2"] }
        let missing: [String] = pointerRegisters.filter { regs[$0] == nil } + registers.keys.sorted().filter { regs[$0] == nil }
        guard missing.isEmpty else {
            throw MoepackError(.mismatch, file: path, "no s_axi_control register for \(missing.joined(separator: ", ")) (is this the bitstream of kernel \(kernel)?)")
        }
        // The map must be a plausible s_axi_control block: word-aligned, each pointer's high word right
        // after its low word, and no two registers at one offset.
        var used: [Int: String] = [:]
        for name in pointers.flatMap({ ["\($0)_1", "\($0)_2"] }) + registers.keys.sorted() {
            let off = regs[name]!
            guard off >= 0, off % 4 == 0 else {
                throw MoepackError(.badInput, file: path, item: name, "register offset \(off) is not word-aligned")
            }
            if let other = used[off] {
                throw MoepackError(.badInput, file: path, item: name, "register offset \(off) is also \(other)'s")
            }
            used[off] = name
        }
        for p in pointers where regs["\(p)_2"]! != regs["\(p)_1"]! + 4 {
            throw MoepackError(.badInput, file: path, item: "\(p)_2", "high word at \(regs["\(p)_2"]!), expected \(regs["\(p)_1"]! + 4) (low word + 4)")
        }
        for i in buffers.indices {
            if let off = regs["\(buffers[i].name)_1"] { buffers[i].register = off }
        }
        for key in registers.keys { if let off = regs[key] { registers[key] = off } }
        if let block = try HWHRegisterMap.controlBlock(path: path, kernel: kernel) { control = block }
    }
}

/// JSON path of a coding path: `source.tensors[0].name`.
func jsonPath(_ path: [any CodingKey]) -> String {
    var s = ""
    for k in path {
        if let i = k.intValue { s += "[\(i)]" } else { s += (s.isEmpty ? "" : ".") + k.stringValue }
    }
    return s
}

func describe(_ e: DecodingError) -> String {
    switch e {
    case .keyNotFound(let k, let c): return "missing key '\(jsonPath(c.codingPath + [k]))'"
    case .typeMismatch(_, let c), .valueNotFound(_, let c):
        return "wrong type at '\(jsonPath(c.codingPath))'"
    case .dataCorrupted(let c): return c.debugDescription
    @unknown default: return "invalid JSON"
    }
}

/// Reads control-register offsets from a Vivado `.hwh` (XML) file: each `<REGISTER NAME="…">` with a
/// `<PROPERTY NAME="ADDRESS_OFFSET" VALUE="…"/>` inside the kernel's `s_axi_control` block.
public enum HWHRegisterMap {
    /// Register name → byte offset.
    /// - Throws: ``MoepackError`` when the file cannot be read or has no registers.
    public static func read(path: String) throws -> [String: Int] {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw MoepackError(.io, file: path, "cannot read .hwh file")
        }
        var regs: [String: Int] = [:]
        var rest = Substring(text)
        let open = "<REGISTER NAME=\""
        while let r = rest.range(of: open) {
            rest = rest[r.upperBound...]
            guard let q = rest.firstIndex(of: "\"") else { break }
            let name = String(rest[..<q])
            guard let end = rest.range(of: "</REGISTER>") else { break }
            let body = rest[..<end.lowerBound]
            if let p = body.range(of: "NAME=\"ADDRESS_OFFSET\" VALUE=\"") {
                let v = body[p.upperBound...]
                if let q2 = v.firstIndex(of: "\"") {
                    let s = String(v[..<q2])
                    let value = s.hasPrefix("0x") || s.hasPrefix("0X") ? Int(s.dropFirst(2), radix: 16) : Int(s)
                    if let value, regs[name] == nil { regs[name] = value }
                }
            }
            rest = rest[end.upperBound...]
        }
        guard !regs.isEmpty else { throw MoepackError(.badInput, file: path, "no <REGISTER> entries found") }
        return regs
    }

    /// The `s_axi_control` window of the first `<MODULE … MODTYPE="kernel">`: its `INSTANCE` and the
    /// `C_S_AXI_CONTROL_BASEADDR`/`_HIGHADDR` parameters inside it; nil when the module or either
    /// parameter is absent.
    /// - Throws: ``MoepackError`` when the file cannot be read or HIGHADDR is below BASEADDR.
    public static func controlBlock(path: String, kernel: String) throws -> KernelProfile.ControlBlock? {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw MoepackError(.io, file: path, "cannot read .hwh file")
        }
        guard let m = text.range(of: "MODTYPE=\"\(kernel)\"") else { return nil }
        let tagStart = text[..<m.lowerBound].range(of: "<MODULE ", options: .backwards)?.lowerBound ?? m.lowerBound
        let tail = text[tagStart...]
        let module = tail[..<(tail.range(of: "</MODULE>")?.lowerBound ?? tail.endIndex)]
        func attribute(_ name: String, in s: Substring) -> String? {
            guard let r = s.range(of: " \(name)=\"") else { return nil }
            let v = s[r.upperBound...]
            return v.firstIndex(of: "\"").map { String(v[..<$0]) }
        }
        func parameter(_ name: String) -> UInt64? {
            guard let r = module.range(of: "<PARAMETER NAME=\"\(name)\" VALUE=\"") else { return nil }
            let v = module[r.upperBound...]
            guard let q = v.firstIndex(of: "\"") else { return nil }
            let s = v[..<q]
            return s.hasPrefix("0x") || s.hasPrefix("0X") ? UInt64(s.dropFirst(2), radix: 16) : UInt64(s)
        }
        let tag = module[..<(module.firstIndex(of: ">") ?? module.endIndex)]
        guard let instance = attribute("INSTANCE", in: tag),
              let base = parameter("C_S_AXI_CONTROL_BASEADDR"), let high = parameter("C_S_AXI_CONTROL_HIGHADDR") else { return nil }
        guard high >= base else {
            throw MoepackError(.badInput, file: path, item: "C_S_AXI_CONTROL_HIGHADDR", "0x\(String(high, radix: 16)) is below C_S_AXI_CONTROL_BASEADDR 0x\(String(base, radix: 16))")
        }
        return KernelProfile.ControlBlock(instance: instance, baseAddress: base, range: high - base + 1)
    }
}
