@testable import MoepackInference

/// The unsigned-offset operands of `moepack_qk_scores` for one query `q` [hd] against `keys` key rows
/// `k` [keys, hd], built the way its contract (include/moepack_kernels.h) states them: every value
/// offset by 2^31 (u = x + 2^31 as UInt32), K transposed [hd, keys], and per block of 8 dims the sum of
/// the offset values mod 2^32 shifted left by 9 (`qBlock9` [hd/8], `kBlock9T` [hd/8, keys]).
struct QKOperands {
    var qU: [UInt32]
    var qBlock9: [UInt32]
    var kT: [UInt32]
    var kBlock9T: [UInt32]

    init(q: [Int32], k: [Int32], keys: Int, hd: Int) {
        let off: UInt32 = 0x8000_0000
        let blocks = hd / 8
        qU = q.map { UInt32(bitPattern: $0) ^ off }
        kT = [UInt32](repeating: 0, count: hd * keys)
        kBlock9T = [UInt32](repeating: 0, count: blocks * keys)
        qBlock9 = [UInt32](repeating: 0, count: blocks)
        for b in 0..<blocks {
            for j in (b * 8)..<(b * 8 + 8) { qBlock9[b] &+= qU[j] }
            qBlock9[b] <<= 9
            for key in 0..<keys {
                var bs: UInt32 = 0
                for j in (b * 8)..<(b * 8 + 8) {
                    let u = UInt32(bitPattern: k[key * hd + j]) ^ off
                    kT[j * keys + key] = u
                    bs &+= u
                }
                kBlock9T[b * keys + key] = bs << 9
            }
        }
    }
}

/// attention.cpp's Q·K for one query, statement by statement: per block of 8 dims the floored products
/// summed mod 2^32 (the block sum as `moepack_qk_scores`'s block-safe path takes it), times `scale`,
/// added to the score (``mulFm``/``addFm``, which count those wraps into `wraps`). Scores [keys].
func qkReplay(q: [Int32], k: [Int32], keys: Int, hd: Int, scale: Int32, wraps: inout Int) -> [Int32] {
    (0..<keys).map { key in
        var score: Int32 = 0
        for b in 0..<(hd / 8) {
            var blockSum: Int32 = 0
            for j in (b * 8)..<(b * 8 + 8) {
                blockSum &+= Int32(truncatingIfNeeded: (Int64(q[j]) * Int64(k[key * hd + j])) >> 22)
            }
            score = addFm(Int64(score), Int64(mulFm(blockSum, scale, &wraps)), &wraps)
        }
        return score
    }
}
