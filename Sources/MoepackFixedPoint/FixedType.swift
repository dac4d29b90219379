import MoepackCore

/// Quantization (rounding) modes of Vitis HLS `ap_fixed` (UG1399, "Arbitrary Precision Fixed-Point
/// Data Types", quantization modes): what happens to the bits of the exact value below the LSB
/// (LSB = 2^(I−W)).
///
/// Written for the exact value y = x / LSB; ⌊y⌋ is the largest integer ≤ y:
/// - `AP_TRN`: ⌊y⌋, i.e. truncation toward −∞ (the Vitis default).
/// - `AP_TRN_ZERO`: truncation toward zero.
/// - `AP_RND`: nearest, ties (exactly ½ LSB) toward +∞.
/// - `AP_RND_ZERO`: nearest, ties toward zero.
/// - `AP_RND_MIN_INF`: nearest, ties toward −∞.
/// - `AP_RND_INF`: nearest, ties away from zero.
/// - `AP_RND_CONV`: nearest, ties to the even neighbour (convergent rounding).
public enum Quantization: String, Sendable, Codable, CaseIterable {
    case AP_TRN, AP_TRN_ZERO, AP_RND, AP_RND_ZERO, AP_RND_MIN_INF, AP_RND_INF, AP_RND_CONV
}

/// Overflow modes of Vitis HLS `ap_fixed` (UG1399, overflow modes): what happens when the quantized
/// value lies outside [min, max] of the type. Applied after quantization, so rounding can itself
/// overflow.
/// - `AP_WRAP`: keep the low W bits (two's complement for `ap_fixed`; the Vitis default).
/// - `AP_SAT`: clamp to [min, max].
/// - `AP_SAT_ZERO`: the result is 0 on overflow.
/// - `AP_SAT_SYM`: for `ap_fixed`, clamp to [−max, max] (so the most negative code is never produced;
///   the exact value `min` also becomes −max and counts as overflowed, as in the Vitis header); for
///   `ap_ufixed`, and for the degenerate `ap_fixed<1,…>` (max = 0), the same as `AP_SAT`.
/// The Vitis saturation-bit count N (5th template argument) is always 0 here.
public enum Overflow: String, Sendable, Codable, CaseIterable {
    case AP_WRAP, AP_SAT, AP_SAT_ZERO, AP_SAT_SYM
}

/// `ap_fixed<W,I,Q,O>` / `ap_ufixed<W,I,Q,O>` of Vitis HLS (UG1399): W total bits, I integer bits
/// (sign bit included for `ap_fixed`), F = W − I fraction bits, LSB = 2^(I−W) = 2^−F.
///
/// A value is stored as its W-bit integer code `raw` (value = raw · LSB). In moepack APIs `raw` is an
/// `Int64`: sign-extended from W bits for `ap_fixed`, zero-extended for `ap_ufixed` (for
/// `ap_ufixed<64,…>` the `Int64` holds the 64-bit pattern, so codes ≥ 2^63 look negative).
/// In memory (DDR images) each element sits in the smallest 1/2/4/8-byte little-endian container
/// (``containerBytes``), sign-extended to the container for `ap_fixed`, zero-extended for `ap_ufixed`.
///
/// Supported: 1 ≤ W ≤ 64 and −1024 ≤ I ≤ 1024 (I may be negative or larger than W, as in Vitis).
/// Use ``init(parsing:)`` or ``validate()`` for types that come from user input; the other members
/// assume a valid type (a precondition checks the width).
public struct FixedType: Sendable, Hashable, Codable, CustomStringConvertible {
    /// W, the total number of bits, 1…64.
    public var width: Int
    /// I, the number of integer bits (sign included for `ap_fixed`); may be negative or > W.
    public var integerBits: Int
    /// `true` for `ap_fixed` (two's complement), `false` for `ap_ufixed`.
    public var signed: Bool
    /// Q, applied first to the exact value.
    public var quantization: Quantization
    /// O, applied to the quantized value.
    public var overflow: Overflow

    /// Supported range of W.
    public static let widthRange: ClosedRange<Int> = 1...64
    /// Supported range of I.
    public static let integerBitsRange: ClosedRange<Int> = -1024...1024

    /// Makes a type without checking it (see ``validate()``). Defaults are Vitis's: `AP_TRN`, `AP_WRAP`.
    public init(width: Int, integerBits: Int, signed: Bool = true,
                quantization: Quantization = .AP_TRN, overflow: Overflow = .AP_WRAP) {
        self.width = width
        self.integerBits = integerBits
        self.signed = signed
        self.quantization = quantization
        self.overflow = overflow
    }

    /// The full Vitis spelling, e.g. `ap_fixed<16,2,AP_TRN,AP_WRAP>`; ``init(parsing:)`` reads it back.
    public var description: String {
        "\(signed ? "ap_fixed" : "ap_ufixed")<\(width),\(integerBits),\(quantization.rawValue),\(overflow.rawValue)>"
    }

    /// Throws `MoepackError(.unsupported)` naming the type when W or I is outside the supported range.
    public func validate() throws {
        guard Self.widthRange.contains(width) else {
            throw MoepackError(.unsupported, item: description,
                               "width W=\(width) is outside the supported 1...64")
        }
        guard Self.integerBitsRange.contains(integerBits) else {
            throw MoepackError(.unsupported, item: description,
                               "integer bits I=\(integerBits) is outside the supported -1024...1024")
        }
    }

    /// A copy with other modes (nil keeps the current one).
    public func with(quantization: Quantization? = nil, overflow: Overflow? = nil) -> FixedType {
        var t = self
        if let quantization { t.quantization = quantization }
        if let overflow { t.overflow = overflow }
        return t
    }

    // MARK: Derived sizes and ranges

    /// F = W − I, the number of fraction bits (negative when I > W).
    public var fractionBits: Int { width - integerBits }

    /// Bytes of the little-endian container: 1 (W ≤ 8), 2 (≤ 16), 4 (≤ 32), 8 (≤ 64).
    public var containerBytes: Int {
        width <= 8 ? 1 : width <= 16 ? 2 : width <= 32 ? 4 : 8
    }

    /// Value of one LSB, 2^(I−W) (0 or +∞ if outside the Double range).
    public var lsb: Double { Double(sign: .plus, exponent: integerBits - width, significand: 1) }

    /// Smallest code: −2^(W−1) for `ap_fixed`, 0 for `ap_ufixed`. `AP_SAT_SYM` never produces it
    /// (it clamps to −``maxRaw``).
    public var minRaw: Int64 {
        precondition(Self.widthRange.contains(width), "FixedType: invalid width \(width)")
        return signed ? (width == 64 ? Int64.min : -(Int64(1) << (width - 1))) : 0
    }

    /// Largest code: 2^(W−1) − 1 for `ap_fixed`, 2^W − 1 for `ap_ufixed` (for `ap_ufixed<64,…>` the
    /// bit pattern of 2^64 − 1, i.e. −1 as `Int64`).
    public var maxRaw: Int64 {
        precondition(Self.widthRange.contains(width), "FixedType: invalid width \(width)")
        if signed { return width == 64 ? Int64.max : (Int64(1) << (width - 1)) - 1 }
        return Int64(bitPattern: width == 64 ? UInt64.max : (UInt64(1) << width) - 1)
    }

    /// Smallest representable value, ``minRaw`` · LSB (nearest Double).
    public var minValue: Double { value(raw: minRaw) }
    /// Largest representable value, ``maxRaw`` · LSB (nearest Double).
    public var maxValue: Double { value(raw: maxRaw) }

    // MARK: Codable (same keys as the stored properties; validated on decode)

    private enum CodingKeys: String, CodingKey {
        case width, integerBits, signed, quantization, overflow
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(width: try c.decode(Int.self, forKey: .width),
                  integerBits: try c.decode(Int.self, forKey: .integerBits),
                  signed: try c.decodeIfPresent(Bool.self, forKey: .signed) ?? true,
                  quantization: try c.decodeIfPresent(Quantization.self, forKey: .quantization) ?? .AP_TRN,
                  overflow: try c.decodeIfPresent(Overflow.self, forKey: .overflow) ?? .AP_WRAP)
        do { try validate() } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                    debugDescription: "\(error)"))
        }
    }
}

// MARK: - Parsing

extension FixedType {
    /// Parses the Vitis spelling `ap_fixed<W,I>`, `ap_fixed<W,I,Q>`, `ap_fixed<W,I,Q,O>`,
    /// `ap_fixed<W,I,Q,O,N>` (N must be 0) or the same with `ap_ufixed`. Spaces are allowed between
    /// tokens; omitted modes default to `AP_TRN` / `AP_WRAP` as in Vitis (UG1399).
    ///
    /// - Throws: `MoepackError(.badInput)` whose item is the given string, saying what is wrong
    ///   (e.g. `'ap_fixd<16,2>': not a fixed-point type: expected ap_fixed<W,I[,Q[,O]]> or ap_ufixed<…>`),
    ///   or `.unsupported` for W outside 1…64, I outside −1024…1024, or N ≠ 0.
    public init(parsing text: String) throws {
        func fail(_ why: String) -> MoepackError {
            MoepackError(.badInput, item: text,
                         "not a fixed-point type: \(why) (expected ap_fixed<W,I[,Q[,O]]> or ap_ufixed<W,I[,Q[,O]]>)")
        }
        let trimmed = text.trimmingWhitespace()
        let isSigned: Bool
        let rest: Substring
        if trimmed.hasPrefix("ap_fixed") {
            isSigned = true; rest = trimmed.dropFirst("ap_fixed".count)
        } else if trimmed.hasPrefix("ap_ufixed") {
            isSigned = false; rest = trimmed.dropFirst("ap_ufixed".count)
        } else {
            throw fail("it does not start with ap_fixed or ap_ufixed")
        }
        let body = rest.trimmingWhitespace()
        guard body.first == "<", body.last == ">", body.count >= 2 else {
            throw fail("missing <...> after the type name")
        }
        let args = body.dropFirst().dropLast().split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingWhitespace() }
        guard (2...5).contains(args.count) else {
            throw fail("\(args.count) template arguments, expected 2 to 5")
        }
        guard let w = Int(args[0]) else { throw fail("width '\(args[0])' is not an integer") }
        guard let i = Int(args[1]) else { throw fail("integer bits '\(args[1])' is not an integer") }
        var q = Quantization.AP_TRN
        var o = Overflow.AP_WRAP
        if args.count >= 3 {
            guard let qq = Quantization(rawValue: String(args[2])) else {
                throw fail("unknown quantization mode '\(args[2])'")
            }
            q = qq
        }
        if args.count >= 4 {
            guard let oo = Overflow(rawValue: String(args[3])) else {
                throw fail("unknown overflow mode '\(args[3])'")
            }
            o = oo
        }
        if args.count == 5 {
            guard let n = Int(args[4]) else { throw fail("saturation bits '\(args[4])' is not an integer") }
            guard n == 0 else {
                throw MoepackError(.unsupported, item: text, "saturation bits N=\(n) are not supported (only 0)")
            }
        }
        self.init(width: w, integerBits: i, signed: isSigned, quantization: q, overflow: o)
        do { try validate() } catch var e as MoepackError {
            e.item = text
            throw e
        }
    }
}

extension StringProtocol {
    fileprivate func trimmingWhitespace() -> Substring {
        let s = Substring(self)
        guard let a = s.firstIndex(where: { !$0.isWhitespace }),
              let b = s.lastIndex(where: { !$0.isWhitespace }) else { return s[s.endIndex...] }
        return s[a...b]
    }
}
