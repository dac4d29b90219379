/// A dense float32 tensor in C (row-major) order.
///
/// `shape` lists axis sizes outermost first; `values.count == shape.reduce(1, *)`.
public struct Tensor: Sendable, Equatable {
    public var shape: [Int]
    public var values: [Float]

    public init(shape: [Int], values: [Float]) {
        precondition(values.count == shape.reduce(1, *), "Tensor: \(values.count) values for shape \(shape)")
        self.shape = shape
        self.values = values
    }

    public init(zeros shape: [Int]) {
        self.init(shape: shape, values: [Float](repeating: 0, count: shape.reduce(1, *)))
    }

    public var count: Int { values.count }
}

/// Formats a shape the way moepack prints it in messages: `[16,384,192]`.
public func shapeString(_ shape: [Int]) -> String {
    "[" + shape.map(String.init).joined(separator: ",") + "]"
}

/// The product of `shape`'s sizes (multiplied outermost first), then times `elementBytes`, or nil
/// when a size is negative or a partial product overflows `Int` or exceeds `limit`. Shapes come from
/// files anyone can edit (npy headers, manifests, profiles): sizes computed from them go through here.
public func checkedElementCount(_ shape: [Int], elementBytes: Int = 1, limit: Int = .max) -> Int? {
    var n = 1
    for d in shape + [elementBytes] {
        let (p, o) = n.multipliedReportingOverflow(by: d)
        guard d >= 0, !o, p <= limit else { return nil }
        n = p
    }
    return n
}
