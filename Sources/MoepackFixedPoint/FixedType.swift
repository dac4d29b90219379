import MoepackCore

/// Quantization (rounding) modes of Vitis HLS `ap_fixed` (UG1399, "Arbitrary Precision Fixed-Point
/// Data Types"): what happens to bits below the LSB.
public enum Quantization: String, Sendable, Codable, CaseIterable {
    case AP_TRN, AP_TRN_ZERO, AP_RND, AP_RND_ZERO, AP_RND_MIN_INF, AP_RND_INF, AP_RND_CONV
}

/// Overflow modes of Vitis HLS `ap_fixed`: what happens to values outside the representable range.
public enum Overflow: String, Sendable, Codable, CaseIterable {
    case AP_WRAP, AP_SAT, AP_SAT_ZERO, AP_SAT_SYM
}

/// `ap_fixed<W,I,Q,O>` / `ap_ufixed<W,I,Q,O>`: W total bits, I integer bits (sign included for
/// `ap_fixed`), LSB = 2^(I−W). Stored in the smallest 1/2/4/8-byte little-endian two's-complement
/// container. (Placeholder; the FixedPoint stage fills this in.)
public struct FixedType: Sendable, Hashable, Codable, CustomStringConvertible {
    public var width: Int
    public var integerBits: Int
    public var signed: Bool
    public var quantization: Quantization
    public var overflow: Overflow

    public init(width: Int, integerBits: Int, signed: Bool = true,
                quantization: Quantization = .AP_TRN, overflow: Overflow = .AP_WRAP) {
        self.width = width
        self.integerBits = integerBits
        self.signed = signed
        self.quantization = quantization
        self.overflow = overflow
    }

    public var description: String {
        "\(signed ? "ap_fixed" : "ap_ufixed")<\(width),\(integerBits),\(quantization.rawValue),\(overflow.rawValue)>"
    }
}
