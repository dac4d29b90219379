import ArgumentParser
import Foundation
import MoepackCore
import MoepackPacking
import MoepackBoard

/// Parses `0x…` or decimal addresses.
struct Address: ExpressibleByArgument {
    var value: UInt64
    init?(argument: String) {
        let s = argument.lowercased()
        guard let v = s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : UInt64(s) else { return nil }
        value = v
    }
}

struct BoardSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "board-sim",
        abstract: "Simulate the kernel on a board for host programs: registers in a /dev/mem stand-in, memory in a u-dma-buf stand-in.",
        discussion: """
        Creates DEVMEM (a sparse file: offset = physical address, the kernel's s_axi_control block at --ctrl-base), DMA (the CPU's view of a u-dma-buf buffer at --dma-phys) and the u-dma-buf sysfs folder (phys_addr, size, sync_offset, sync_size, sync_direction; sync_for_device and sync_for_cpu as FIFOs), prints 'ready', then polls CTRL. Each ap_start runs the fixed-point emulation on the arrays at the addresses in the pointer registers (types from the profile: the bitstream's), honouring num_images, reload_one_time_weights and debug_id, writes x and raises ap_done. The device sees only what the host made visible with sync_for_device. A host fault (wrong pointer, overlapping arguments, data never made visible, started before copying, first run without reload_one_time_weights) is reported on one line and ap_done is never raised; exit status 2.
        Run the generated host against it: moepack_host --devmem DEVMEM --dma DMA --udmabuf-sysfs SYSFS --image FRAME.bin -o OUT.bin
        """)

    @OptionGroup var profileOptions: ProfileOptions

    @Option(help: "File standing for /dev/mem (created, sparse).")
    var devmem: String

    @Option(help: "File standing for /dev/udmabuf0 (created).")
    var dma: String

    @Option(help: "Physical address of the DMA buffer (page-aligned).")
    var dmaPhys: Address = Address(argument: "0x60000000")!

    @Option(help: "Size of the DMA buffer in bytes (u-dma-buf's size).")
    var dmaBytes: Int = 64 << 20

    @Option(help: "Folder standing for /sys/class/u-dma-buf/udmabuf0 (default: DMA.sysfs).")
    var udmabufSysfs: String?

    @Option(help: "Address of the s_axi_control block (default: the profile's or the .hwh's C_S_AXI_CONTROL_BASEADDR).")
    var ctrlBase: Address?

    @Option(help: "Exit after this many runs (default: serve until --idle-timeout passes without an ap_start).")
    var runs: Int?

    @Option(help: "Seconds to wait for an ap_start before giving up.")
    var idleTimeout: Double = 60

    @Flag(help: "At the end, a JSON summary on stdout (files, addresses, runs) instead of the text line.")
    var json = false

    func run() throws {
        try guarded {
            guard idleTimeout > 0, idleTimeout.isFinite else { throw MoepackError(.usage, item: "--idle-timeout", "must be a positive number of seconds") }
            guard dmaBytes > 0 else { throw MoepackError(.usage, item: "--dma-bytes", "must be positive") }
            if let runs, runs < 1 { throw MoepackError(.usage, item: "--runs", "must be at least 1") }
            let profile = try profileOptions.load()
            guard let base = ctrlBase?.value ?? profile.control?.baseAddress else {
                throw MoepackError(.usage, item: "--ctrl-base", "the profile gives no s_axi_control address: give --ctrl-base or --hwh")
            }
            let files = BoardFiles(devmem: devmem, dma: dma, dmaPhys: dmaPhys.value, dmaBytes: dmaBytes,
                                   sysfs: udmabufSysfs ?? dma + ".sysfs", ctrlBase: base)
            let board = try SimulatedBoard(profile: profile, files: files) { note($0) }
            FileHandle.standardOutput.write(Data("board-sim: ready: \(profile.kernel) s_axi_control at 0x\(String(base, radix: 16)) in \(devmem), \(dmaBytes) bytes of DMA memory at 0x\(String(dmaPhys.value, radix: 16)) in \(dma), u-dma-buf sysfs \(files.sysfs)\n".utf8))
            try board.serve(maxRuns: runs, idleTimeout: idleTimeout)
            if json {
                struct Summary: Encodable { var kernel: String; var devmem: String; var ctrl_base: UInt64; var dma: String; var dma_phys: UInt64; var dma_bytes: Int; var udmabuf_sysfs: String; var runs: Int }
                try printJSON(Summary(kernel: profile.kernel, devmem: devmem, ctrl_base: base, dma: dma, dma_phys: dmaPhys.value,
                                      dma_bytes: dmaBytes, udmabuf_sysfs: files.sysfs, runs: board.runs))
            } else {
                print("board-sim: \(board.runs) run(s) done")
            }
        }
    }
}
