import Foundation
import MoepackModel
import TestSupport
@testable import MoepackInference

/// The synthetic full-size (Edge-MoE ZCU102, D = 192) kernel arrays the timing and golden-hash tests
/// run: seeded splitmix64 + Box–Muller normals, each array at its kernel type's width and fraction
/// bits; `weightScale` multiplies the standard deviation of the linear weights (6 makes nearly every
/// unit wrap). The same seed and draw order always give the same arrays (the golden hashes rely on it).
func syntheticFullSizeArrays(weightScale s: Double = 1) throws -> KernelArrays {
    let c = M3ViTConfig.edgeMoE
    var rng = SplitMix64(seed: 0x9E37_79B9_7F4A_7C15)
    func normal() -> Double {   // Box–Muller on open-interval uniforms (the golden hashes fix this form)
        func next() -> Double { (Double(rng.next() >> 11) + 0.5) / 9_007_199_254_740_992.0 }
        return (-2 * log(next())).squareRoot() * cos(2 * Double.pi * next())
    }
    func arr(_ shape: [Int], width: Int, frac: Int, std: Double, mean: Double = 0) -> RawArray {
        let n = shape.reduce(1, *)
        let lim = Double((1 << (width - 1)) - 1)
        let raw = (0..<n).map { _ in Int32(max(-lim, min(lim, ((mean + std * normal()) * Double(1 << frac)).rounded()))) }
        return RawArray(raw: raw, shape: shape, fracBits: frac, width: width)
    }
    let D = c.embedDim, L = c.depth, E = c.experts, He = c.expertHidden, Hm = c.mlpHidden
    let nM = c.moeBlocks.count, nD = c.denseBlocks.count
    let arrays: [String: RawArray] = [
        "patch_embed_weights": arr([D, 3, 16, 16], width: 16, frac: 16, std: 0.02),
        "patch_embed_bias": arr([D], width: 16, frac: 11, std: 0.1),
        "pos_embed": arr([c.tokens, D], width: 32, frac: 22, std: 0.5),
        "attn_weights": arr([L, 4, D, D], width: 16, frac: 14, std: 0.07 * s),
        "attn_bias": arr([L, 4, D], width: 16, frac: 9, std: 0.05),
        "moe_w_gate": arr([nM, E, D], width: 16, frac: 14, std: 0.1),
        "moe_weights_l1": arr([nM, E, He, D], width: 16, frac: 14, std: 0.07 * s),
        "moe_bias_l1": arr([nM, E, He], width: 16, frac: 11, std: 0.05),
        "moe_weights_l2": arr([nM, E, D, He], width: 16, frac: 14, std: 0.05 * s),
        "moe_bias_l2": arr([nM, E, D], width: 16, frac: 11, std: 0.05),
        "vit_weights_l1": arr([nD, Hm, D], width: 16, frac: 14, std: 0.07 * s),
        "vit_bias_l1": arr([nD, Hm], width: 16, frac: 11, std: 0.05),
        "vit_weights_l2": arr([nD, D, Hm], width: 16, frac: 14, std: 0.035 * s),
        "vit_bias_l2": arr([nD, D], width: 16, frac: 11, std: 0.05),
        "norm_weights": arr([L, 2, D], width: 16, frac: 11, std: 0.1, mean: 1),
        "norm_bias": arr([L, 2, D], width: 16, frac: 11, std: 0.05),
    ]
    return KernelArrays(config: c, arrays: arrays)
}
