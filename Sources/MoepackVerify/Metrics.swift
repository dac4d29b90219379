import Foundation
import MoepackCore

/// Error of an output against a reference of the same shape.
public struct ComparisonMetrics: Sendable, Codable, Equatable {
    /// Mean of (a − ref)².
    public var mse: Double
    /// max |a − ref|.
    public var max_abs_error: Double
    /// a·ref / (‖a‖‖ref‖); 1 when both are zero.
    public var cosine: Double
    /// sqrt(mean(ref²)), the scale the errors compare to.
    public var reference_rms: Double

    /// Compares `a` with `reference` element by element (float64 accumulation).
    public init(_ a: [Float], reference: [Float]) {
        precondition(a.count == reference.count)
        var se = 0.0, maxe = 0.0, dot = 0.0, na = 0.0, nr = 0.0
        for i in 0..<a.count {
            let x = Double(a[i]), r = Double(reference[i])
            let e = x - r
            se += e * e
            maxe = max(maxe, abs(e))
            dot += x * r; na += x * x; nr += r * r
        }
        let n = Double(max(a.count, 1))
        mse = se / n
        max_abs_error = maxe
        cosine = (na == 0 && nr == 0) ? 1 : dot / (na.squareRoot() * nr.squareRoot() + 1e-300)
        reference_rms = (nr / n).squareRoot()
    }
}

/// Fraction of tokens whose top-k expert *set* is the same in `a` and `reference`
/// (both [tokens, k] expert indices).
public func routingAgreement(_ a: [Int32], _ reference: [Int32], k: Int) -> Double {
    precondition(a.count == reference.count && k > 0)
    let tokens = a.count / k
    guard tokens > 0 else { return 1 }
    var same = 0
    for t in 0..<tokens {
        let x = Set(a[(t * k)..<((t + 1) * k)]), y = Set(reference[(t * k)..<((t + 1) * k)])
        if x == y { same += 1 }
    }
    return Double(same) / Double(tokens)
}
