import MoepackCore
import MoepackFixedPoint
import MoepackModel
import MoepackPacking

/// Which element types the fixed-point emulation reproduces, and how each kernel argument's type
/// enters the arithmetic of `ViT_compute` (sharc-lab/Edge-MoE src/*.cpp).
///
/// Where the types enter (read from the kernel's source):
/// - `fm_t` is every activation, accumulator and the `pos_embed` argument. Its width is bound to the
///   kernel's block packing (hardware.hpp: FEATURE_BLOCK_SIZE = 256 / fm_t::width features per AXI
///   beat, eight per block), so it stays `ap_fixed<32,10>` with Vitis's default AP_TRN / AP_WRAP.
/// - `pixel_t` (`images`) is the frame's byte, value b/256: `ap_ufixed<8,0>`.
/// - Linear weights (`wt_linear_t`: attn_weights, moe_w_gate, moe_weights_l1/l2, vit_weights_l1/l2):
///   linear.cpp `addend = in * w` and moe.cpp `addend += in * w` form the exact fm_t × weight
///   product (22 + F fraction bits) and assign it to fm_t: floor by F bits, wrap to 32 bits.
/// - Linear biases (`wt_attn_bias_t`, `wt_bias_t`): linear.hpp widens both to
///   `wt_wbias_t = ap_fixed<max F + max I, max I>`, an exact widening for signed types, and
///   compute_linear_on_stream assigns it to fm_t (`out_block = bias_block`): floor to 22 fraction
///   bits. `patch_embed_bias` is assigned to fm_t the same way (conv.cpp `bias_block = ...`), and
///   `norm_bias` is added exactly to an fm_t (`x_dim += bias[dim]`), which floors the same.
/// - `norm_weights` (`wt_norm_t`): layernorm.cpp `x_dim *= weights[dim]`, floor by F bits.
/// - `patch_embed_weights` (`wt_patch_embed_t`): conv.cpp `addend_dim += pixel * weight`, the exact
///   product has 8 + F fraction bits and is floored to fm_t's 22.
///
/// The weight types are only ever read from DDR, never assigned to inside the kernel, so their
/// quantization and overflow modes decide only how `pack` converts the checkpoint, not the
/// arithmetic. The DDR container of a W-bit element is 1, 2, 4 or 8 bytes (W ≤ 8, 16, 32, 64), in C
/// order. The published loaders `static_assert` that LINEAR_IN_SIZE (16) is a multiple of
/// 256 / W; a kernel re-synthesized for other widths changes only that assertion (linear.cpp), its
/// arithmetic is the one above.
public enum FixedEmulation {
    /// How a kernel argument's elements enter the datapath.
    public enum Operand: String, Sendable, CaseIterable {
        case featureMap = "fm_t"
        case pixel = "pixel_t"
        case linearWeight = "linear weight"
        case linearBias = "linear bias"
        case patchWeight = "patch-embedding weight"
        case patchBias = "patch-embedding bias"
        case normWeight = "LayerNorm weight"
        case normBias = "LayerNorm bias"
    }

    /// How `argument`'s elements enter the datapath (include/kernel.hpp and the kernel's use of each
    /// argument). Exhaustive over the argument table, so a new argument has to say how it enters.
    public static func operand(of argument: KernelArgument) -> Operand {
        switch argument {
        case .images: return .pixel
        case .x, .tmp1, .tmp2, .tmp3, .tmp4, .tmp_hidden, .attn, .attn_softmax_info, .pos_embed: return .featureMap
        case .patch_embed_weights: return .patchWeight
        case .patch_embed_bias: return .patchBias
        case .attn_weights, .moe_w_gate, .moe_weights_l1, .moe_weights_l2, .vit_weights_l1, .vit_weights_l2: return .linearWeight
        case .attn_bias, .moe_bias_l1, .moe_bias_l2, .vit_bias_l1, .vit_bias_l2: return .linearBias
        case .norm_weights: return .normWeight
        case .norm_bias: return .normBias
        }
    }

    /// fm_t: `ap_fixed<32,10>`, AP_TRN, AP_WRAP (datatypes.hpp).
    public static let featureMap = FixedType(width: fmWidth, integerBits: fmWidth - fmFrac)
    /// pixel_t: `ap_ufixed<8,0>` (datatypes.hpp); a frame byte b is the value b/256.
    public static let pixel = FixedType(width: 8, integerBits: 0, signed: false)

    /// The linear-weight type the 16-bit SIMD linear kernels are written for, `ap_fixed<16,2>`
    /// (raw Int16 with 14 fraction bits). Any signed type whose values all lie on that grid and range
    /// (F ≤ 14, I ≤ 2) runs them too: the kernel's product floor(x·w·2^−F) depends on the value of w
    /// only, and w·2^(14−F) is that value exactly in the fast form.
    public static let fastLinearWeight = FixedType(width: 16, integerBits: 2)
    /// The patch-embedding weight type the unchecked 16-term accumulation is written for,
    /// `ap_fixed<16,0>`; narrower types with F = 16 embed the same way.
    public static let fastPatchWeight = FixedType(width: 16, integerBits: 0)

    /// Widest weight element the emulation holds (raw values are Int32; fm_t × weight products stay
    /// within Int64).
    static let maxWeightWidth = 32
    /// Largest fraction-bit count of a weight (products are shifted within Int64).
    static let maxWeightFrac = 62

    /// Checks that the emulation reproduces what the kernel computes with `type` as the element type
    /// of `argument` (a `ViT_compute` argument name; names it does not know are not read by the
    /// emulation and pass).
    ///
    /// - Throws: `MoepackError(.unsupported)` naming the argument, its type and the reason: fm_t
    ///   other than `ap_fixed<32,10,AP_TRN,AP_WRAP>`, pixel_t other than `ap_ufixed<8,0>`, an
    ///   unsigned weight or bias, a weight wider than 32 bits, negative fraction bits (I > W), or a
    ///   bias with more integer bits than fm_t (its values would wrap when assigned to fm_t).
    public static func check(_ type: FixedType, argument: String) throws {
        guard let known = KernelArgument(rawValue: argument) else { return }
        let operand = operand(of: known)
        func refuse(_ why: String) -> MoepackError {
            MoepackError(.unsupported, item: argument,
                         "element type \(type) (\(operand.rawValue)): \(why)")
        }
        switch operand {
        case .featureMap:
            guard type == featureMap else {
                throw refuse("fm_t is bound to the kernel's 8-per-beat feature blocks; only \(featureMap) is emulated")
            }
        case .pixel:
            guard type.width == pixel.width, type.integerBits == pixel.integerBits, !type.signed else {
                throw refuse("frames are bytes, value b/256; only ap_ufixed<8,0> is emulated")
            }
        case .linearWeight, .patchWeight, .normWeight, .linearBias, .patchBias, .normBias:
            guard type.signed else { throw refuse("only signed ap_fixed weights are emulated") }
            guard type.width <= maxWeightWidth else {
                throw refuse("wider than the \(maxWeightWidth) bits the emulation holds per element")
            }
            guard type.fractionBits >= 0 else { throw refuse("integer bits I > W (negative fraction bits)") }
            switch operand {
            case .linearBias, .patchBias, .normBias:
                guard type.integerBits <= featureMap.integerBits else {
                    throw refuse("more integer bits than fm_t (\(featureMap.integerBits)): values would wrap when the kernel assigns them to fm_t")
                }
            default:
                guard type.fractionBits <= maxWeightFrac else {
                    throw refuse("more than \(maxWeightFrac) fraction bits")
                }
            }
        }
    }

    /// Checks every argument's element type with ``check(_:argument:)``; `pack` calls this so an
    /// image the emulation cannot run is refused before it is written.
    /// - Parameter types: element type by `ViT_compute` argument name.
    /// - Throws: `MoepackError(.unsupported)` for the first argument (in name order) refused.
    public static func supports(types: [String: FixedType]) throws {
        for name in types.keys.sorted() { try check(types[name]!, argument: name) }
    }

    /// ``supports(types:)`` for every buffer of `profile` (its declared element types), so that `pack`
    /// and `sweep` refuse, before anything is written, a profile whose image `run --mode fixed` could
    /// not emulate.
    /// - Throws: `MoepackError(.unsupported)` naming the argument; `.badInput` for a type that does not parse.
    public static func supports(profile: KernelProfile) throws {
        var types: [String: FixedType] = [:]
        for b in profile.buffers { types[b.name] = try profile.fixedType(b.type) }
        try supports(types: types)
    }

    /// ``supports(profile:)`` for a profile whose type names `overridden` were set on the command line
    /// with `option` (`--type`, `--vary`): a refusal of one of those is the command line's mistake, so
    /// it names the option and the type name before the argument and the reason.
    /// - Throws: `MoepackError(.usage)` for an overridden type; other refusals as ``supports(profile:)``.
    public static func supports(profile: KernelProfile, overridden: Set<String>, option: String) throws {
        do {
            try supports(profile: profile)
        } catch let e as MoepackError {
            guard let argument = e.item, let typeName = profile.buffer(argument)?.type, overridden.contains(typeName) else { throw e }
            throw MoepackError(.usage, item: option, "\(typeName) (\(argument)): \(e.message)")
        }
    }

    /// True when a linear weight type runs the 16-bit fast kernels (see ``fastLinearWeight``).
    static func linearFast(_ t: FixedType) -> Bool { embeds(t, in: fastLinearWeight) }
    /// True when a patch weight type runs the unchecked fast accumulation (see ``fastPatchWeight``).
    static func patchFast(_ t: FixedType) -> Bool { t.signed && t.fractionBits == fastPatchWeight.fractionBits && t.width <= fastPatchWeight.width }

    /// Every value of signed `t` is a value of signed `wide` (same or coarser grid, range inside).
    static func embeds(_ t: FixedType, in wide: FixedType) -> Bool {
        t.signed && wide.signed && t.fractionBits >= 0 && t.fractionBits <= wide.fractionBits
            && t.integerBits <= wide.integerBits
    }

    /// A bias raw code with `frac` fraction bits as an fm_t raw value: floor(raw · 2^(22 − frac))
    /// (exact for frac ≤ 22; AP_TRN otherwise). The result fits fm_t for the types ``check`` accepts.
    static func biasToFm(_ raw: Int32, frac: Int) -> Int32 {
        frac <= fmFrac ? raw << (fmFrac - frac) : raw >> (frac - fmFrac)
    }
}
