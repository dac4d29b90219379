import MoepackCore

/// An exact integer N produced by scaling and quantization, before the overflow step:
/// N = ±(magnitude) where `low` holds |N| mod 2^64 and `big` says |N| ≥ 2^64.
@usableFromInline
struct _ScaledInteger {
    @usableFromInline var negative: Bool
    @usableFromInline var low: UInt64
    @usableFromInline var big: Bool

    @inlinable init(negative: Bool, low: UInt64, big: Bool) {
        self.negative = negative && (low != 0 || big)  // −0 is 0
        self.low = low
        self.big = big
    }
}

extension FixedType {
    // MARK: Exact conversion core

    /// Quantizes ±m · 2^s (m an unsigned integer of any fixed width, s any shift) to an integer with
    /// this type's quantization mode. Exact: the bits shifted out decide the rounding through the
    /// half bit (weight ½) and the sticky bit (anything below ½).
    @inlinable
    func _quantizeScaled<M: FixedWidthInteger & UnsignedInteger>(negative: Bool, magnitude m: M,
                                                                  shift s: Int) -> _ScaledInteger {
        if m == 0 { return _ScaledInteger(negative: false, low: 0, big: false) }
        let significantBits = M.bitWidth - m.leadingZeroBitCount
        if s >= 0 {
            // Integer already: no quantization; |N| = m · 2^s.
            let low: UInt64 = s >= 64 ? 0 : UInt64(truncatingIfNeeded: m) << UInt64(s)
            return _ScaledInteger(negative: negative, low: low, big: significantBits + s > 64)
        }
        let k = -s  // bits to drop, ≥ 1
        let t: M = k >= M.bitWidth ? 0 : m >> M(k)
        let half: Bool
        let sticky: Bool
        if k - 1 >= M.bitWidth {
            half = false
            sticky = true  // m ≠ 0 and every bit of m is below the half bit
        } else {
            half = (m >> M(k - 1)) & 1 == 1
            sticky = k - 1 == 0 ? false : (m & ((M(1) << M(k - 1)) &- 1)) != 0
        }
        // Rounding of the magnitude |y| = t + frac (frac > 0 iff half || sticky), per sign.
        let up: Bool
        switch quantization {
        case .AP_TRN:         up = negative && (half || sticky)            // floor of −|y| rounds |y| up
        case .AP_TRN_ZERO:    up = false                                   // toward zero
        case .AP_RND:         up = half && (!negative || sticky)           // tie toward +∞
        case .AP_RND_ZERO:    up = half && sticky                          // tie toward zero
        case .AP_RND_MIN_INF: up = half && (negative || sticky)            // tie toward −∞
        case .AP_RND_INF:     up = half                                    // tie away from zero
        case .AP_RND_CONV:    up = half && (sticky || t & 1 == 1)          // tie to even
        }
        let r = up ? t + 1 : t  // t < 2^(bitWidth−1), cannot overflow
        let big = M.bitWidth > 64 && (r >> 64) != 0
        return _ScaledInteger(negative: negative, low: UInt64(truncatingIfNeeded: r), big: big)
    }

    /// Applies the overflow mode to an exact quantized integer and returns the code.
    @inlinable
    func _applyOverflow(_ n: _ScaledInteger) -> (raw: Int64, overflowed: Bool) {
        let w = width
        precondition(w >= 1 && w <= 64, "FixedType: invalid width \(w)")
        let symmetric = overflow == .AP_SAT_SYM && signed && w > 1
        if !n.big {
            if !n.negative {
                let posLimit: UInt64 = signed ? (UInt64(1) << UInt64(w - 1)) - 1
                    : (w == 64 ? UInt64.max : (UInt64(1) << UInt64(w)) - 1)
                if n.low <= posLimit { return (Int64(bitPattern: n.low), false) }
            } else if signed {
                let negLimit: UInt64 = (UInt64(1) << UInt64(w - 1)) - (symmetric ? 1 : 0)
                if n.low <= negLimit { return (Int64(bitPattern: 0 &- n.low), false) }
            }
        }
        switch overflow {
        case .AP_WRAP:
            return (signExtend(n.negative ? 0 &- n.low : n.low), true)
        case .AP_SAT:
            return (n.negative ? minRaw : maxRaw, true)
        case .AP_SAT_ZERO:
            return (0, true)
        case .AP_SAT_SYM:
            if !signed { return (n.negative ? 0 : maxRaw, true) }
            return (n.negative ? (symmetric ? -maxRaw : minRaw) : maxRaw, true)
        }
    }

    // MARK: Public conversions

    /// Converts a finite Double (Float32 inputs: widen with `Double(x)`, which is exact) to this type exactly as Vitis `ap_fixed` assignment does: the exact
    /// value x (decomposed as integer mantissa × 2^e, so any magnitude works) is quantized to a
    /// multiple of the LSB with ``quantization``, then ``overflow`` is applied.
    ///
    /// - Returns: `raw`, the W-bit code (sign-extended for `ap_fixed`, zero-extended for `ap_ufixed`),
    ///   and `overflowed`, true when the quantized value was outside [min, max] (for signed
    ///   `AP_SAT_SYM`: outside [−max, max]) and the overflow mode changed it.
    ///   NaN and ±∞ are not converted: the result is `(0, true)`; use
    ///   ``quantizeChecked(_:tensor:file:)`` to get an error instead.
    @inlinable
    public func quantize(_ x: Double) -> (raw: Int64, overflowed: Bool) {
        guard x.isFinite else { return (0, true) }
        if x == 0 { return (0, false) }
        let expBits = Int(x.exponentBitPattern)
        let sig = x.significandBitPattern
        let m: UInt64 = expBits == 0 ? sig : sig | (UInt64(1) << 52)
        let e = expBits == 0 ? -1074 : expBits - 1075
        return _applyOverflow(_quantizeScaled(negative: x.sign == .minus, magnitude: m,
                                              shift: e + fractionBits))
    }

    /// ``quantize(_:)`` that refuses NaN/±∞.
    /// - Throws: `MoepackError(.numeric)` naming `file` and `tensor`.
    public func quantizeChecked(_ x: Double, tensor: String? = nil, file: String? = nil) throws
        -> (raw: Int64, overflowed: Bool) {
        guard x.isFinite else {
            throw MoepackError(.numeric, file: file, item: tensor,
                               "value \(x) cannot be converted to \(description)")
        }
        return quantize(x)
    }

    /// The value after conversion, `value(raw: quantize(x).raw)` (NaN for non-finite x).
    @inlinable
    public func quantized(_ x: Double) -> Double {
        guard x.isFinite else { return .nan }
        return value(raw: quantize(x).raw)
    }

    /// Changes the format of a code of type `source` to this type, with this type's quantization and
    /// overflow modes, exactly (like assigning one `ap_fixed` to another in Vitis C simulation).
    /// `raw` is read as a `source` code (its low W_source bits, per `source.signed`).
    @inlinable
    public func convert(raw: Int64, from source: FixedType) -> (raw: Int64, overflowed: Bool) {
        let v = source.signExtend(UInt64(bitPattern: raw))
        if source.signed {
            return _applyOverflow(_quantizeScaled(negative: v < 0, magnitude: v.magnitude,
                                                  shift: fractionBits - source.fractionBits))
        }
        return _applyOverflow(_quantizeScaled(negative: false, magnitude: UInt64(bitPattern: v),
                                              shift: fractionBits - source.fractionBits))
    }

    /// Converts the exact value `value · 2^−fractionBits` (any signed or unsigned integer type,
    /// e.g. an `Int64` product of two codes, whose fraction bits add, or an `Int128` accumulator)
    /// to this type with this type's modes.
    @inlinable
    public func convert<T: FixedWidthInteger>(exact value: T, fractionBits sourceFractionBits: Int)
        -> (raw: Int64, overflowed: Bool) {
        _applyOverflow(_quantizeScaled(negative: value < 0, magnitude: value.magnitude,
                                       shift: fractionBits - sourceFractionBits))
    }

    // MARK: Raw-code helpers

    /// Reads the low W bits of `bits` as a code: sign-extended for `ap_fixed`, zero-extended for
    /// `ap_ufixed`.
    @inlinable
    public func signExtend(_ bits: UInt64) -> Int64 {
        let w = width
        precondition(w >= 1 && w <= 64, "FixedType: invalid width \(w)")
        let sh = UInt64(64 - w)
        if signed { return Int64(bitPattern: bits << sh) >> Int64(sh) }
        return Int64(bitPattern: (bits << sh) >> sh)
    }

    /// Sign-extends (or zero-extends when `signed` is false) the low `width` bits of `bits`.
    @inlinable
    public static func signExtend(_ bits: UInt64, width: Int, signed: Bool = true) -> Int64 {
        FixedType(width: width, integerBits: 0, signed: signed).signExtend(bits)
    }

    /// `AP_WRAP` of an integer code: keeps its low W bits (two's complement, so this is the value
    /// modulo 2^W) and sign-/zero-extends them. Works for any integer type (`Int64`, `Int128`, …).
    @inlinable
    public func wrap<T: BinaryInteger>(_ x: T) -> Int64 {
        signExtend(UInt64(truncatingIfNeeded: x))
    }

    /// The value of a code, raw · 2^(I−W), as the nearest Double (exact for W ≤ 53 unless the result
    /// leaves the Double range).
    @inlinable
    public func value(raw: Int64) -> Double {
        let r = signExtend(UInt64(bitPattern: raw))
        let d = signed ? Double(r) : Double(UInt64(bitPattern: r))
        return Double(sign: .plus, exponent: -fractionBits, significand: d)
    }

    /// The value of a code as the nearest Float (for W ≤ 24 exact unless out of Float range).
    @inlinable
    public func floatValue(raw: Int64) -> Float {
        let r = signExtend(UInt64(bitPattern: raw))
        let f = signed ? Float(r) : Float(UInt64(bitPattern: r))
        return Float(sign: .plus, exponent: -fractionBits, significand: f)
    }
}
