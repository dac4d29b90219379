import CMoepackKernels

/// A float32 linear layer y = x·Wᵀ + bias whose weights are packed once, when the float backbone is
/// built, for moepack's own GEMM (`moepack_sgemm_linear`, Sources/CMoepackKernels/float_gemm.c).
///
/// Why not OpenBLAS: `cblas_sgemm` re-packs W on every call, which dominated the MoE experts
/// (16 experts × 2 products × 6 blocks per frame on ~16 token rows each), and it cannot fuse the
/// bias, GELU or the experts' weighted scatter into its write-back.
///
/// Packed layout (moepack_float_gemm.h): ⌈out/16⌉ panels of [in + 1][16] float32, panel p holding
/// W[16p + j][k] at [k][j] and bias[16p + j] at [in][j], outputs past `out` zero; 64-byte aligned.
///
/// Every output element is one multiply-add chain over the input axis in ascending order, so a
/// row's result does not depend on the other rows in the call (frames and tokens are independent).
/// The AVX2 and AVX-512 forms fuse each multiply-add; the portable form does not and may differ in
/// the last bits. Immutable after init; shared between threads.
final class PackedLinear: @unchecked Sendable {
    /// Input features (`in`) and outputs (`out`).
    let inDim: Int, outDim: Int
    private let packed: UnsafeMutablePointer<Float>
    private let isa: moepack_isa

    /// Packs W = `weight[offset ..< offset + out·in]` ([out, in] row-major, PyTorch `nn.Linear.weight`)
    /// and `bias[biasOffset ..< biasOffset + out]` (nil: no bias); traps when the arrays are shorter
    /// (the float backbone checks every length first, `FloatBackbone.validate`). `isa`: kernel form
    /// (default: the process's choice, `moepack_kernels_isa`).
    convenience init(weight: [Float], offset: Int = 0, bias: [Float]?, biasOffset: Int = 0, outDim: Int, inDim: Int,
                     isa: moepack_isa = moepack_kernels_isa()) {
        precondition(offset >= 0 && offset + outDim * inDim <= weight.count, "PackedLinear: weight too short")
        precondition(bias.map { biasOffset >= 0 && biasOffset + outDim <= $0.count } ?? true, "PackedLinear: bias too short")
        self.init(outDim: outDim, inDim: inDim, isa: isa) { dst in
            weight.withUnsafeBufferPointer { w in
                let wp = w.baseAddress.map { $0 + offset }
                guard let bias else { return moepack_sgemm_pack(wp, nil, outDim, inDim, dst) }
                bias.withUnsafeBufferPointer { b in
                    moepack_sgemm_pack(wp, b.baseAddress.map { $0 + biasOffset }, outDim, inDim, dst)
                }
            }
        }
    }

    private init(outDim: Int, inDim: Int, isa: moepack_isa, fill: (UnsafeMutablePointer<Float>) -> Void) {
        self.inDim = inDim; self.outDim = outDim; self.isa = isa
        let count = max(moepack_sgemm_packed_count(outDim, inDim), 1)
        packed = UnsafeMutableRawPointer.allocate(byteCount: count * MemoryLayout<Float>.stride, alignment: 64)
            .bindMemory(to: Float.self, capacity: count)
        fill(packed)
    }

    deinit { packed.deallocate() }

    /// Applies the layer to `rows` input rows and writes them through `epilogue`.
    ///
    /// Row r is read at x + xr·ldx and written at y + yr·ldy, xr = xRows[r] (nil: r) and yr likewise
    /// from yRows (e.g. an expert's token queue: gather and scatter without copies). With v = x·Wᵀ + bias:
    /// `.store` y = v; `.gelu` y = GELU(v) (exact GELU, `moepack_gelu_f32`); `.accumulate` y += v;
    /// `.accumulateScaled` y += rowScale[r]·v. Output rows must not overlap input rows.
    func apply(rows: Int, x: UnsafePointer<Float>, ldx: Int? = nil, xRows: UnsafePointer<Int32>? = nil,
               _ epilogue: Epilogue, rowScale: UnsafePointer<Float>? = nil,
               y: UnsafeMutablePointer<Float>, ldy: Int? = nil, yRows: UnsafePointer<Int32>? = nil) {
        moepack_sgemm_linear(isa, rows, x, ldx ?? inDim, xRows, inDim, packed, outDim, epilogue.c, rowScale,
                             y, ldy ?? outDim, yRows)
    }

    /// What the layer does with v = x·Wᵀ + bias (`moepack_epilogue`).
    enum Epilogue {
        case store, gelu, accumulate, accumulateScaled

        var c: moepack_epilogue {
            switch self {
            case .store: MOEPACK_EPILOGUE_STORE
            case .gelu: MOEPACK_EPILOGUE_GELU
            case .accumulate: MOEPACK_EPILOGUE_ACCUMULATE
            case .accumulateScaled: MOEPACK_EPILOGUE_ACCUMULATE_SCALED
            }
        }
    }
}
