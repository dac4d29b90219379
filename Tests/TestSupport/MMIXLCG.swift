/// The 64-bit linear congruential generator with Knuth's MMIX constants, for tests that draw from its
/// raw states: the same seed gives the same sequence on every machine. `next()` returns the whole new
/// state; callers take the bits they want (high bits are the best ones of an LCG).
public struct MMIXLCG {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }

    public mutating func next() -> UInt64 {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return state
    }
}
