import COpenBLAS
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin wrappers over OpenBLAS `cblas_sgemm` (row-major, float32) used by the float reference.
///
/// Thread count: when the environment sets `OPENBLAS_NUM_THREADS` (or `OMP_NUM_THREADS`), OpenBLAS
/// honours it itself and moepack leaves it alone; otherwise moepack sets
/// `min(2, online cores)` once, before the first matrix product.
enum BLAS {
    /// Threads OpenBLAS uses; configured once, lazily and thread-safely (Swift global initialisation).
    static let threads: Int = {
        if let env = environmentValue("OPENBLAS_NUM_THREADS") ?? environmentValue("OMP_NUM_THREADS"),
           let n = Int(env), n > 0 {
            return Int(openblas_get_num_threads())
        }
        let cores = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        let n = min(2, cores)
        openblas_set_num_threads(Int32(n))
        return n
    }()

    /// C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C, all row-major.
    ///
    /// `transA`/`transB` select Aᵀ/Bᵀ; `lda`, `ldb`, `ldc` are the row strides (in elements) of the
    /// matrices as stored.
    @inline(__always)
    static func gemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                     alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                     b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        _ = threads
        if m == 0 || n == 0 { return }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                    beta, c, blasint(ldc))
    }

    /// Kernel-form linear layer: Y[m, out] = X[m, in] · W[out, in]ᵀ + bias[out]; with `accumulate`,
    /// Y += X · Wᵀ + bias. `ldx`/`ldy` are row strides (default: `inDim` / `outDim`).
    static func linear(x: UnsafePointer<Float>, m: Int, inDim: Int, ldx: Int? = nil,
                       weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, outDim: Int,
                       y: UnsafeMutablePointer<Float>, ldy: Int? = nil, accumulate: Bool = false) {
        let ldy = ldy ?? outDim
        if let bias {
            for r in 0..<m {
                let row = y + r * ldy
                if accumulate {
                    for j in 0..<outDim { row[j] += bias[j] }
                } else {
                    row.update(from: bias, count: outDim)
                }
            }
        }
        let beta: Float = (bias != nil || accumulate) ? 1 : 0
        gemm(transB: true, m: m, n: outDim, k: inDim, a: x, lda: ldx ?? inDim, b: weight, ldb: inDim,
             beta: beta, c: y, ldc: ldy)
    }
}

/// `getenv` as a Swift string (nil when unset).
func environmentValue(_ name: String) -> String? {
    guard let p = getenv(name) else { return nil }
    return String(cString: p)
}
