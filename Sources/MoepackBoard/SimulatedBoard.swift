import Foundation
import MoepackCore
import MoepackFixedPoint
import MoepackInference
import MoepackModel
import MoepackPacking

/// Files through which host programs reach a ``SimulatedBoard``, standing for the board's devices.
public struct BoardFiles: Sendable {
    /// Stands for `/dev/mem`: file offset = physical address; the kernel's `s_axi_control` block
    /// sits at `ctrlBase` (a sparse file).
    public var devmem: String
    /// Stands for `/dev/udmabuf0`: the CPU's view of the DMA buffer (what `mmap` of the device gives
    /// with the CPU cache on), `dmaBytes` long, at physical address `dmaPhys`.
    public var dma: String
    public var dmaPhys: UInt64
    public var dmaBytes: Int
    /// Stands for `/sys/class/u-dma-buf/udmabuf0`: `phys_addr`, `size`, `sync_offset`, `sync_size`,
    /// `sync_direction` (files) and `sync_for_device`, `sync_for_cpu` (FIFOs the board reads).
    public var sysfs: String
    public var ctrlBase: UInt64

    public init(devmem: String, dma: String, dmaPhys: UInt64, dmaBytes: Int, sysfs: String, ctrlBase: UInt64) {
        self.devmem = devmem; self.dma = dma; self.dmaPhys = dmaPhys; self.dmaBytes = dmaBytes
        self.sysfs = sysfs; self.ctrlBase = ctrlBase
    }
}

/// A register-level model of the `ViT_compute` IP on a board, for running host programs without one.
///
/// **Registers.** The `s_axi_control` block is a window of the `devmem` file at `ctrlBase`, with the
/// offsets of the profile (or `.hwh`): CTRL (bit 0 ap_start, bit 1 ap_done, bit 2 ap_idle),
/// `num_images`, `reload_one_time_weights`, `debug_id` and every pointer as two 32-bit words. The
/// board polls CTRL; on ap_start it takes every argument's address from the registers — never from a
/// manifest — and runs. Unlike the real IP, ap_done is not cleared by a read (a file has no read
/// side effects); it is cleared at the next ap_start.
///
/// **Memory and caches.** The `dma` file is what the CPU sees; the device sees its own copy of the
/// memory, which only u-dma-buf cache maintenance updates: a write of `1` to `sync_for_device`
/// copies `[sync_offset, sync_offset + sync_size)` (whole 64-byte Cortex-A53 cache lines) from the
/// CPU's view to memory, `sync_for_cpu` the other way. (With the u-dma-buf driver these are sysfs
/// attributes; here they are FIFOs, so the board sees each request, in order, before it looks at
/// ap_start.) The result `x` is written to memory only: the CPU may still hold lines of `x`, so a
/// host sees it only after sync_for_cpu (a host that forgets that invalidate reads stale `x`).
///
/// **Faults** (one line each, the run is refused and ap_done never comes, as a hung kernel): a pointer
/// outside the DMA buffer, two arguments overlapping, input or weight bytes never made visible to the
/// device, the CPU's view differing from memory at ap_start (written after the last sync), an input
/// made visible only after ap_start (the host started before copying), and a first run without
/// `reload_one_time_weights` (the patch embedding and constants are never loaded).
///
/// The arithmetic is ``FixedBackbone`` (moepack's bit-exact emulation) on the arrays read at the
/// registers' addresses, with the element types of the profile (the bitstream's).
public final class SimulatedBoard {
    public let profile: KernelProfile
    public let files: BoardFiles
    /// Completed runs (ap_done raised).
    public private(set) var runs = 0

    static let lineBytes = 64
    static let apStart: UInt32 = 1, apDone: UInt32 = 2, apIdle: UInt32 = 4

    private let regs: UnsafeMutableRawPointer
    private let regsMapping: (UnsafeMutableRawPointer, Int)
    private let cpu: UnsafeMutableRawPointer
    private var memory: [UInt8]
    private var visible: [Bool]
    private var syncFDs: [(fd: Int32, toDevice: Bool)] = []
    /// Patch embedding weights and bias loaded on chip by `reload_one_time_weights` (nil: never).
    private var onChip: (weights: RawArray, bias: RawArray)?
    /// Argument ranges [start, end) of inputs and weights of the run in progress.
    private var readRanges: [(name: String, range: Range<Int>)] = []
    private let log: (String) -> Void

    /// Creates (or reuses) the files and maps them; the register window starts with ap_idle set.
    /// - Throws: ``MoepackError`` `.io` when a file cannot be created or mapped, `.usage` for a
    ///   DMA buffer address that is not page-aligned or a profile without a needed register.
    public init(profile: KernelProfile, files: BoardFiles, log: @escaping (String) -> Void = { _ in }) throws {
        self.profile = profile
        self.files = files
        self.log = log
        for r in ["CTRL", "num_images", "reload_one_time_weights", "debug_id"] where profile.registers[r] == nil {
            throw MoepackError(.usage, file: profile.name, item: r, "the profile has no such register")
        }
        guard files.dmaPhys % 4096 == 0, files.dmaBytes > 0 else {
            throw MoepackError(.usage, item: "--dma-phys", "0x\(String(files.dmaPhys, radix: 16)) is not page-aligned (or the buffer is empty)")
        }
        let dmaEnd = files.dmaPhys.addingReportingOverflow(UInt64(files.dmaBytes))
        guard !dmaEnd.overflow else {
            throw MoepackError(.usage, item: "--dma-phys", "0x\(String(files.dmaPhys, radix: 16)) + \(files.dmaBytes) bytes passes the end of the 64-bit address space")
        }
        let needed = try Self.argumentBytes(profile)
        guard files.dmaBytes >= needed else {
            throw MoepackError(.usage, item: "--dma-bytes", "\(files.dmaBytes) bytes cannot hold the kernel's arguments for one image (\(needed) bytes)")
        }
        let range = Int(profile.control?.range ?? 0x1_0000)
        let ctrlEnd = files.ctrlBase.addingReportingOverflow(UInt64(range))
        guard !ctrlEnd.overflow, ctrlEnd.partialValue <= UInt64(Int.max) else {
            throw MoepackError(.usage, item: "--ctrl-base", "0x\(String(files.ctrlBase, radix: 16)) + the \(range)-byte s_axi_control block is past the largest file offset of \(files.devmem)")
        }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let mapBase = files.ctrlBase & ~UInt64(page - 1)
        let skip = Int(files.ctrlBase - mapBase)
        let window = try Self.map(files.devmem, size: Int(mapBase) + skip + range, offset: Int(mapBase), length: skip + range)
        regsMapping = (window, skip + range)
        regs = window + skip
        memset(regs, 0, range)
        cpu = try Self.map(files.dma, size: files.dmaBytes, offset: 0, length: files.dmaBytes)
        memory = [UInt8](repeating: 0, count: files.dmaBytes)
        visible = [Bool](repeating: false, count: (files.dmaBytes + Self.lineBytes - 1) / Self.lineBytes)
        try makeSysfs()
        storeReg("CTRL", Self.apIdle)
    }

    deinit {
        munmap(regsMapping.0, regsMapping.1)
        munmap(cpu, files.dmaBytes)
        for s in syncFDs { close(s.fd) }
    }

    /// Maps `length` bytes at `offset` of `path`, creating the file and growing it (sparse) to `size`.
    static func map(_ path: String, size: Int, offset: Int, length: Int) throws -> UnsafeMutableRawPointer {
        let fd = open(path, O_RDWR | O_CREAT, 0o644)
        guard fd >= 0 else { throw MoepackError(.io, file: path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        if Int(st.st_size) < size, ftruncate(fd, off_t(size)) != 0 {
            throw MoepackError(.io, file: path, "cannot size to \(size) bytes: \(String(cString: strerror(errno)))")
        }
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(offset)), p != MAP_FAILED else {
            throw MoepackError(.io, file: path, "cannot map \(length) bytes at \(offset): \(String(cString: strerror(errno)))")
        }
        return p
    }

    private func makeSysfs() throws {
        let dir = files.sysfs
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        func put(_ name: String, _ value: String) throws {
            try Data((value + "\n").utf8).write(to: URL(fileURLWithPath: (dir as NSString).appendingPathComponent(name)))
        }
        try put("phys_addr", "0x" + String(files.dmaPhys, radix: 16))
        try put("size", String(files.dmaBytes))
        for a in ["sync_offset", "sync_size", "sync_direction"] { try put(a, "0") }
        for (name, toDevice) in [("sync_for_device", true), ("sync_for_cpu", false)] {
            let path = (dir as NSString).appendingPathComponent(name)
            unlink(path)
            guard mkfifo(path, 0o644) == 0 else {
                throw MoepackError(.io, file: path, "cannot create FIFO: \(String(cString: strerror(errno)))")
            }
            // Read-write, so the FIFO always has a writer: reads never see end-of-file.
            let fd = open(path, O_RDWR | O_NONBLOCK)
            guard fd >= 0 else { throw MoepackError(.io, file: path, "cannot open FIFO: \(String(cString: strerror(errno)))") }
            syncFDs.append((fd, toDevice))
        }
    }

    // MARK: registers

    private func reg(_ offset: Int) -> UInt32 { regs.load(fromByteOffset: offset, as: UInt32.self) }
    private func storeReg(_ name: String, _ v: UInt32) { regs.storeBytes(of: v, toByteOffset: profile.registers[name]!, as: UInt32.self) }
    private func scalar(_ name: String) -> UInt32 { reg(profile.registers[name]!) }
    private func pointer(_ register: Int) -> UInt64 { UInt64(reg(register)) | UInt64(reg(register + 4)) << 32 }

    // MARK: cache maintenance

    /// Applies every pending u-dma-buf sync request; returns the ranges made visible to the device.
    @discardableResult
    private func serviceSyncRequests() -> [Range<Int>] {
        var synced: [Range<Int>] = []
        for s in syncFDs {
            var byte: UInt8 = 0
            var pending: Int32 = 0
            // The attributes are read before the request byte is taken: a writer that waits until
            // its byte is gone (FIONREAD) may then write the next request's attributes.
            while ioctl(s.fd, UInt(FIONREAD), &pending) == 0, pending > 0 {
                let (offset, size) = (attribute("sync_offset"), attribute("sync_size"))
                let valid = offset >= 0 && size >= 0 && offset <= files.dmaBytes && size <= files.dmaBytes - offset
                let start = offset / Self.lineBytes * Self.lineBytes
                let end = valid ? min(files.dmaBytes, (offset + size + Self.lineBytes - 1) / Self.lineBytes * Self.lineBytes) : 0
                // sync_for_cpu is done before its byte is taken: a host that waits until the byte is
                // gone then reads the fresh x (an extra invalidate for a stray byte is harmless).
                if !s.toDevice, valid, start < end {
                    memory.withUnsafeBytes { m in _ = memcpy(cpu + start, m.baseAddress! + start, end - start) }
                }
                guard read(s.fd, &byte, 1) == 1 else { break }
                guard byte == UInt8(ascii: "1") else { continue }   // newlines and other bytes
                guard valid else {
                    log("board-sim: warning: sync request [\(offset), +\(size)) outside the \(files.dmaBytes)-byte buffer ignored")
                    continue
                }
                guard start < end, s.toDevice else { continue }
                memory.withUnsafeMutableBytes { m in _ = memcpy(m.baseAddress! + start, cpu + start, end - start) }
                for l in (start / Self.lineBytes)..<(end / Self.lineBytes) { visible[l] = true }
                synced.append(start..<end)
            }
        }
        return synced
    }

    private func attribute(_ name: String) -> Int {
        let path = (files.sysfs as NSString).appendingPathComponent(name)
        let text = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return text.hasPrefix("0x") ? Int(text.dropFirst(2), radix: 16) ?? -1 : Int(text) ?? -1
    }

    // MARK: serving

    /// Polls for ap_start and runs the kernel each time, until `maxRuns` runs are done.
    /// - Parameters:
    ///   - maxRuns: stop after this many runs (nil: serve until `idleTimeout`).
    ///   - idleTimeout: seconds without an ap_start after which serving ends (never hangs).
    /// - Throws: ``MoepackError`` `.badInput` naming the register or argument for a host fault (the
    ///   kernel is then left without ap_done, as a hung kernel); `.io` when no host started it in time.
    public func serve(maxRuns: Int?, idleTimeout: Double) throws {
        var lastActivity = Date()
        defer { linger() }
        while maxRuns.map({ runs < $0 }) ?? true {
            serviceSyncRequests()
            if reg(profile.registers["CTRL"]!) & Self.apStart != 0 {
                try runKernel()
                lastActivity = Date()
                continue
            }
            if Date().timeIntervalSince(lastActivity) > idleTimeout {
                if maxRuns == nil && runs > 0 { return }
                throw MoepackError(.io, item: "CTRL", "no ap_start within \(idleTimeout) s (\(runs) run(s) done)")
            }
            usleep(100)
        }
    }

    /// After the last run, serves the host's sync_for_cpu of x until the FIFOs stay quiet for 0.5 s.
    private func linger() {
        var quietSince = Date()
        while Date().timeIntervalSince(quietSince) < 0.5 {
            var pending: Int32 = 0
            for s in syncFDs where ioctl(s.fd, UInt(FIONREAD), &pending) == 0 && pending > 0 { quietSince = Date() }
            serviceSyncRequests()
            usleep(1000)
        }
    }

    /// One ap_start: checks, emulation, x written back, ap_done.
    func runKernel() throws {
        storeReg("CTRL", 0)   // ap_start taken, not idle; a previous ap_done is cleared
        serviceSyncRequests()
        let started = Date()
        let c = profile.model
        let numImages = Int(scalar("num_images"))
        let reload = scalar("reload_one_time_weights") & 1 != 0
        let debug = try DebugPoint(validating: Int(scalar("debug_id")), depth: c.depth)
        guard reload || onChip != nil else {
            throw fault("reload_one_time_weights", "first ap_start with reload_one_time_weights = 0: the patch embedding and the constants (attn_scale, norm_eps) were never loaded")
        }
        let args = try argumentRanges(numImages: numImages)
        readRanges = args.filter { [.weight, .input].contains($0.role) }.map { ($0.name, $0.range) }
        if numImages > 0 { try checkVisible() }

        var arrays: [String: RawArray] = [:]
        for a in args where a.role == .weight { arrays[a.name] = try rawArray(a) }
        if reload { onChip = (arrays["patch_embed_weights"]!, arrays["patch_embed_bias"]!) }
        arrays["patch_embed_weights"] = onChip!.weights
        arrays["patch_embed_bias"] = onChip!.bias
        let images = args.first { $0.role == .input }!, x = args.first { $0.role == .output }!
        let frameBytes = images.range.count / max(numImages, 1), xBytes = x.range.count / max(numImages, 1)
        var outputs: [(Int, [Int32])] = []
        if numImages > 0 {
            let backbone: FixedBackbone
            do { backbone = try FixedBackbone(arrays: KernelArrays(config: c, arrays: arrays)) } catch let e as MoepackError {
                throw fault(e.item ?? "weights", "the kernel cannot run on these arrays: \(e.message)")
            }
            for i in 0..<(debug.returnsEarly ? 1 : numImages) {
                let start = images.range.lowerBound + i * frameBytes
                let pixels = Array(memory[start..<(start + c.inChans * c.imageHeight * c.imageWidth)])
                let r = try backbone.forward(pixels: pixels, stopAfter: debug.stopPoint)
                outputs.append((x.range.lowerBound + i * xBytes, r.outputRaw))
            }
        }
        // Requests that arrive while the kernel runs: a host that makes its inputs visible only now
        // started the kernel before copying them.
        for late in serviceSyncRequests() {
            if let hit = readRanges.first(where: { $0.range.overlaps(late) }) {
                throw fault(hit.name, "made visible to the device (sync_for_device at offset \(late.lowerBound)) after ap_start: the host started the kernel before copying its data")
            }
        }
        for (offset, raw) in outputs {
            raw.withUnsafeBytes { src in
                memory.withUnsafeMutableBytes { m in _ = memcpy(m.baseAddress! + offset, src.baseAddress!, src.count) }
            }
        }
        runs += 1
        log("board-sim: run \(runs): num_images \(numImages), reload_one_time_weights \(reload ? 1 : 0), debug_id \(scalar("debug_id")), \(String(format: "%.3f", Date().timeIntervalSince(started))) s")
        storeReg("CTRL", Self.apDone | Self.apIdle)
    }

    /// Bytes of every pointer argument for one image (the smallest DMA buffer a run can use).
    static func argumentBytes(_ profile: KernelProfile) throws -> Int {
        try profile.buffers.filter { $0.register != nil }.reduce(0) { sum, b in
            var shape = b.shape
            if b.role == .input || b.role == .output { shape[0] = 1 }
            return sum + shape.reduce(1, *) * (try profile.fixedType(b.type)).containerBytes
        }
    }

    struct Argument { let name: String; let role: KernelArgumentRole; let type: FixedType; let shape: [Int]; let range: Range<Int> }

    /// Every pointer argument's byte range in the DMA buffer, from its registers: inside the buffer
    /// and not overlapping another.
    func argumentRanges(numImages: Int) throws -> [Argument] {
        var out: [Argument] = []
        for b in profile.buffers {
            guard let register = b.register else { continue }
            let type = try profile.fixedType(b.type)
            var shape = b.shape
            // images[] and x[] are indexed by image: num_images of them.
            if b.role == .input || b.role == .output { shape[0] = max(numImages, 1) }
            let bytes = shape.reduce(1, *) * type.containerBytes
            let address = pointer(register)
            let end = address.addingReportingOverflow(UInt64(bytes))
            guard address >= files.dmaPhys, !end.overflow, end.partialValue <= files.dmaPhys + UInt64(files.dmaBytes) else {
                throw fault("\(b.name)_1", "pointer 0x\(String(address, radix: 16)) + \(bytes) bytes is outside the device memory [0x\(String(files.dmaPhys, radix: 16)), 0x\(String(files.dmaPhys + UInt64(files.dmaBytes), radix: 16))) (a wrong pointer)")
            }
            let start = Int(address - files.dmaPhys)
            let a = Argument(name: b.name, role: b.role, type: type, shape: shape, range: start..<(start + bytes))
            if let other = out.first(where: { $0.range.overlaps(a.range) }) {
                throw fault("\(b.name)_1", "[0x\(String(address, radix: 16)), +\(bytes)) overlaps \(other.name) at 0x\(String(UInt64(other.range.lowerBound) + files.dmaPhys, radix: 16)) (a wrong pointer)")
            }
            out.append(a)
        }
        return out
    }

    /// Every byte the kernel reads (inputs and weights) was made visible to the device and still
    /// equals what the CPU sees.
    func checkVisible() throws {
        for (name, range) in readRanges {
            let lines = (range.lowerBound / Self.lineBytes)..<((range.upperBound + Self.lineBytes - 1) / Self.lineBytes)
            if let l = lines.first(where: { !visible[$0] }) {
                throw fault(name, "\(lines.filter { !visible[$0] }.count) cache line(s) from offset \(l * Self.lineBytes) were never made visible to the device before ap_start (no sync_for_device/flush, or ap_start before the copy)")
            }
            let differs = memory.withUnsafeBytes { m in memcmp(m.baseAddress! + range.lowerBound, cpu + range.lowerBound, range.count) != 0 }
            if differs {
                throw fault(name, "the CPU's view differs from memory at ap_start: written after the last sync_for_device/flush")
            }
        }
    }

    func rawArray(_ a: Argument) throws -> RawArray {
        let ints = PackedImage.ints(memory[a.range], type: a.type)
        return RawArray(raw: ints, shape: a.shape, fracBits: a.type.fractionBits, width: a.type.width, signed: a.type.signed)
    }

    func fault(_ item: String, _ message: String) -> MoepackError {
        MoepackError(.badInput, file: profile.kernel, item: item, message)
    }
}
