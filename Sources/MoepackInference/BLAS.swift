import COpenBLAS
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// OpenBLAS settings for the task heads' convolutions (`cblas_sgemm` in MoepackHeads); the backbone
/// uses moepack's own kernels (`PackedLinear`, `moepack_attention_f32`).
///
/// Thread count: when the environment sets `OPENBLAS_NUM_THREADS` (or `OMP_NUM_THREADS`), OpenBLAS
/// honours it itself and moepack leaves it alone; otherwise moepack uses one BLAS thread: the
/// matrices are small (129 tokens), OpenBLAS worker threads spin between calls, and moepack runs
/// several frames in parallel across the cores instead (measured faster on the 2-core machines here).
///
/// Kernel selection: a DYNAMIC_ARCH OpenBLAS that does not know the CPU model (0.3.21 and newer
/// Xeons, e.g. family 6 model 207) falls back to its generic `Prescott` SSE3 kernels, about 2.5×
/// slower here. When `OPENBLAS_CORETYPE` is unset and OpenBLAS reports `Prescott`, moepack picks the
/// core from the CPU flags in /proc/cpuinfo (AVX-512 F/BW/VL/DQ/CD → `SkylakeX`, AVX2+FMA →
/// `Haswell`, AVX → `Sandybridge`), sets `OPENBLAS_CORETYPE` and re-runs OpenBLAS's
/// `gotoblas_dynamic_quit`/`gotoblas_dynamic_init` (exported by DYNAMIC_ARCH builds, found with
/// `dlsym`; skipped when absent) before the first BLAS call. Set `OPENBLAS_CORETYPE` to override.
enum BLAS {
    /// OpenBLAS core (kernel set) in use after the check above, e.g. `SkylakeX`.
    static let coreName: String = {
        if environmentValue("OPENBLAS_CORETYPE") == nil, currentCoreName().lowercased() == "prescott",
           let target = preferredCore(flags: cpuFlags()),
           let quit = dlsym(nil, "gotoblas_dynamic_quit"), let reinit = dlsym(nil, "gotoblas_dynamic_init") {
            typealias VoidFn = @convention(c) () -> Void
            setenv("OPENBLAS_CORETYPE", target, 0)
            unsafeBitCast(quit, to: VoidFn.self)()
            unsafeBitCast(reinit, to: VoidFn.self)()
        }
        return currentCoreName()
    }()

    /// Threads OpenBLAS uses; configured once, lazily and thread-safely (Swift global initialisation).
    static let threads: Int = {
        _ = coreName
        if let env = environmentValue("OPENBLAS_NUM_THREADS") ?? environmentValue("OMP_NUM_THREADS"),
           let n = Int(env), n > 0 {
            return Int(openblas_get_num_threads())
        }
        openblas_set_num_threads(1)
        // OpenBLAS starts its worker threads when the library loads, and they spin (sched_yield) for
        // a while before sleeping: a core taken from the command's own work. With one BLAS thread
        // they are never used, so stop them (`blas_thread_shutdown_`, exported by the pthread
        // builds; OpenBLAS restarts them by itself if a threaded call ever comes).
        if let shutdown = dlsym(nil, "blas_thread_shutdown_") {
            typealias IntFn = @convention(c) () -> Int32
            _ = unsafeBitCast(shutdown, to: IntFn.self)()
        }
        return 1
    }()

    static func currentCoreName() -> String {
        guard let p = openblas_get_corename() else { return "" }
        return String(cString: p)
    }

    /// The `flags` line of /proc/cpuinfo as a set (empty when unreadable).
    static func cpuFlags() -> Set<Substring> {
        guard let f = fopen("/proc/cpuinfo", "r") else { return [] }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 1 << 14)
        while fgets(&line, Int32(line.count), f) != nil {
            let s = line.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            if s.hasPrefix("flags"), let colon = s.firstIndex(of: ":") {
                return Set(s[s.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\n" }))
            }
        }
        return []
    }

    /// OpenBLAS core name for a set of CPU flags (nil: keep OpenBLAS's choice).
    static func preferredCore(flags: Set<Substring>) -> String? {
        if ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"].allSatisfy({ flags.contains($0[...]) }) {
            return "SkylakeX"
        }
        if flags.contains("avx2"), flags.contains("fma") { return "Haswell" }
        if flags.contains("avx") { return "Sandybridge" }
        return nil
    }
}

/// Settles OpenBLAS's threads (see ``BLAS``): one BLAS thread unless `OPENBLAS_NUM_THREADS` or
/// `OMP_NUM_THREADS` says otherwise, and then its idle worker threads stopped. The CLI calls this at
/// start, so that commands that never multiply matrices (`pack`, `inspect`, …) do not share the cores
/// with spinning BLAS workers.
public func configureBLASThreads() { _ = BLAS.threads }

/// `getenv` as a Swift string (nil when unset).
func environmentValue(_ name: String) -> String? {
    guard let p = getenv(name) else { return nil }
    return String(cString: p)
}
