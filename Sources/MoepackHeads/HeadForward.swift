import Foundation
import COpenBLAS
import MoepackCore
import MoepackModel
import MoepackInference

/// A task decoder ready to run: M³ViT's `VisionTransformerUpHead` in eval mode, then the multi-task
/// model's resize to the input size (models/vit_up_head.py, models/models.py).
public struct TaskHead: Sendable {
    public let weights: TaskHeadWeights
    /// Image size the backbone was built for (`img_size`): the patch grid is `imageHeight/patch × imageWidth/patch`.
    public let imageHeight: Int
    public let imageWidth: Int
    public let patch: Int

    /// Each convolution's weights tap by tap (``ConvTaps``), laid out once here rather than per frame.
    let taps: [ConvTaps]

    public init(weights: TaskHeadWeights, imageHeight: Int, imageWidth: Int, patch: Int = 16) {
        self.weights = weights
        self.imageHeight = imageHeight
        self.imageWidth = imageWidth
        self.patch = patch
        taps = weights.convs.map(ConvTaps.init)
    }

    public var task: String { weights.info.task }
    public var outChannels: Int { weights.info.outChannels }

    /// Runs the decoder on one frame's backbone output.
    ///
    /// - Parameters:
    ///   - tokens: backbone output `[T, D]` float32 row-major (the kernel's `x` after the last block).
    ///     As in M³ViT, the first (cls) token is dropped when `T % 48 != 0`; the rest must be the
    ///     `h·w` patches in row-major order.
    ///   - outHeight/outWidth: the input frame's size, to which the output is resized (bilinear,
    ///     align_corners=False, as F.interpolate); default the image size.
    /// - Returns: `[C, outHeight, outWidth]` float32 (logits for segmentation, raw values otherwise).
    /// - Throws: ``MoepackError`` `.mismatch` when the token count or width does not fit the grid.
    public func run(tokens: [Float], outHeight: Int? = nil, outWidth: Int? = nil) throws -> [Float] {
        let info = weights.info
        let d = info.embedDim
        let gh = imageHeight / patch, gw = imageWidth / patch
        guard d > 0, tokens.count % d == 0 else {
            throw MoepackError(.mismatch, item: "features", "\(tokens.count) values are not [tokens, \(d)] for decoder '\(task)'")
        }
        var t = tokens.count / d
        let dropCls = t % 48 != 0
        if dropCls { t -= 1 }
        guard t == gh * gw else {
            throw MoepackError(.mismatch, item: "features",
                               "\(tokens.count / d) tokens\(dropCls ? " (cls dropped: \(t))" : ""), decoder '\(task)' expects \(gh)×\(gw) = \(gh * gw) patches for a \(imageHeight)×\(imageWidth) image")
        }
        configureBLASThreads()
        var map = tokens.withUnsafeBufferPointer { layerNormToMap($0.baseAddress! + (dropCls ? d : 0), tokens: t, d: d) }
        var h = gh, w = gw, c = d
        for step in weights.steps {
            switch step {
            case .conv(let i):
                let conv = weights.convs[i]
                map = convolve(map, channels: c, height: h, width: w, conv, taps: taps[i])
                c = conv.outChannels
            case .upsample2:
                map = bilinear(map, channels: c, inH: h, inW: w, outH: 2 * h, outW: 2 * w); h *= 2; w *= 2
            case .upsampleSquare4w:
                map = bilinear(map, channels: c, inH: h, inW: w, outH: 4 * w, outW: 4 * w); h = 4 * w; w = h
            case .resizeToImage:
                map = bilinear(map, channels: c, inH: h, inW: w, outH: imageHeight, outW: imageWidth); h = imageHeight; w = imageWidth
            }
        }
        let oh = outHeight ?? imageHeight, ow = outWidth ?? imageWidth
        return bilinear(map, channels: c, inH: h, inW: w, outH: oh, outW: ow)
    }

    /// The decoder's LayerNorm over each token (eps 1e-6, statistics in float64), written transposed
    /// as the feature map `[D, h·w]`.
    func layerNormToMap(_ x: UnsafePointer<Float>, tokens t: Int, d: Int) -> [Float] {
        var out = [Float](repeating: 0, count: d * t)
        for p in 0..<t {
            let row = x + p * d
            var mean = 0.0
            for j in 0..<d { mean += Double(row[j]) }
            mean /= Double(d)
            var v = 0.0
            for j in 0..<d { let z = Double(row[j]) - mean; v += z * z }
            let inv = 1 / (v / Double(d) + Double(HeadNameTable.layerNormEps)).squareRoot()
            for j in 0..<d {
                out[j * t + p] = Float((Double(row[j]) - mean) * inv) * weights.normWeight[j] + weights.normBias[j]
            }
        }
        return out
    }
}

/// A convolution's weights regrouped by kernel tap: `[k·k, Cout, Cin]` float32, tap `ky·k + kx`, so
/// that each tap is the A matrix of one GEMM (PyTorch's `[Cout, Cin, k, k]` interleaves the taps).
struct ConvTaps: Sendable {
    let weights: [Float]

    init(_ conv: FoldedConv) {
        let k2 = conv.kernel * conv.kernel, cin = conv.inChannels, cout = conv.outChannels
        // One tap: the layout is already `[Cout, Cin]` (the array's storage is shared, not copied).
        if k2 == 1 { weights = conv.weight; return }
        var t = [Float](repeating: 0, count: conv.weight.count)
        for o in 0..<cout {
            for c in 0..<cin {
                for k in 0..<k2 { t[(k * cout + o) * cin + c] = conv.weight[(o * cin + c) * k2 + k] }
            }
        }
        weights = t
    }
}

/// Convolution (stride 1; 3×3 with padding 1, or 1×1) with its folded bias and optional ReLU, on
/// OpenBLAS `sgemm` (one BLAS thread per core, tiles of output rows spread over the cores).
///
/// A 3×3 convolution is nine accumulated GEMMs, one per tap, on the zero-padded map `[Cin, H+2, W+2]`
/// shifted by the tap: output pixel (y, x) of tap (ky, kx) reads padded (y+ky, x+kx), so with the
/// output rows computed `W+2` wide every tap's B matrix is the padded map at offset `ky·(W+2) + kx`
/// with row stride `(H+2)·(W+2)`; the two extra columns per row are dropped. No im2col matrix is built.
/// - Parameters: `input` `[Cin, H, W]`; `taps`: `conv`'s weights by tap; returns `[Cout, H, W]`.
func convolve(_ input: [Float], channels cin: Int, height h: Int, width w: Int, _ conv: FoldedConv, taps: ConvTaps) -> [Float] {
    let hw = h * w, cout = conv.outChannels
    var out = [Float](repeating: 0, count: cout * hw)
    let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
    if conv.kernel == 1 {
        let tile = max(64, min(512, (hw + cores - 1) / cores))
        input.withUnsafeBufferPointer { src in
            taps.weights.withUnsafeBufferPointer { wt in
                out.withUnsafeMutableBufferPointer { dst in
                    nonisolated(unsafe) let src = src.baseAddress!, wt = wt.baseAddress!, dst = dst.baseAddress!
                    DispatchQueue.concurrentPerform(iterations: (hw + tile - 1) / tile) { ti in
                        let n0 = ti * tile, n = min(tile, hw - n0)
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(cout), blasint(n), blasint(cin),
                                    1, wt, blasint(cin), src + n0, blasint(hw), 0, dst + n0, blasint(hw))
                        addBias(conv, rows: dst + n0, rowStride: hw, count: n)
                    }
                }
            }
        }
        return out
    }
    let pw = w + 2, plane = (h + 2) * pw
    let padded = zeroPadded(input, channels: cin, height: h, width: w)
    // Rows per tile: about 512 GEMM columns, and at least one tile per core.
    let rows = max(1, min((h + cores - 1) / cores, (512 + pw - 1) / pw))
    padded.withUnsafeBufferPointer { src in
        taps.weights.withUnsafeBufferPointer { wt in
            out.withUnsafeMutableBufferPointer { dst in
                nonisolated(unsafe) let src = src.baseAddress!, wt = wt.baseAddress!, dst = dst.baseAddress!
                DispatchQueue.concurrentPerform(iterations: (h + rows - 1) / rows) { ti in
                    let y0 = ti * rows, r = min(rows, h - y0), n = r * pw
                    // Tap 0's GEMM overwrites (beta 0): no need to zero the accumulator.
                    let a = UnsafeMutablePointer<Float>.allocate(capacity: cout * n)
                    defer { a.deallocate() }
                    for tap in 0..<9 {
                        let b = src + (y0 + tap / 3) * pw + tap % 3
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(cout), blasint(n), blasint(cin),
                                    1, wt + tap * cout * cin, blasint(cin), b, blasint(plane), tap == 0 ? 0 : 1, a, blasint(n))
                    }
                    for o in 0..<cout {
                        for y in 0..<r {
                            (dst + o * hw + (y0 + y) * w).update(from: a + o * n + y * pw, count: w)
                        }
                    }
                    addBias(conv, rows: dst + y0 * w, rowStride: hw, count: r * w)
                }
            }
        }
    }
    return out
}

/// `[Cin, H, W]` inside a zero border of one pixel: `[Cin, H+2, W+2]`, plus two zeros at the end so
/// that the last tap's shifted read of the two dropped columns stays inside the buffer.
func zeroPadded(_ input: [Float], channels cin: Int, height h: Int, width w: Int) -> [Float] {
    let pw = w + 2, plane = (h + 2) * pw
    var padded = [Float](repeating: 0, count: cin * plane + 2)
    input.withUnsafeBufferPointer { src in
        padded.withUnsafeMutableBufferPointer { dst in
            for c in 0..<cin {
                for y in 0..<h {
                    (dst.baseAddress! + c * plane + (y + 1) * pw + 1).update(from: src.baseAddress! + (c * h + y) * w, count: w)
                }
            }
        }
    }
    return padded
}

/// Adds the folded bias to `count` columns of each output channel's row (`rows + o·rowStride`), then ReLU when the layer has one.
private func addBias(_ conv: FoldedConv, rows: UnsafeMutablePointer<Float>, rowStride: Int, count n: Int) {
    for o in 0..<conv.outChannels {
        let row = rows + o * rowStride
        let b = conv.bias[o]
        if conv.relu {
            for j in 0..<n { row[j] = max(row[j] + b, 0) }
        } else {
            for j in 0..<n { row[j] += b }
        }
    }
}

/// Bilinear resize of `[C, inH, inW]` to `[C, outH, outW]` as PyTorch's F.interpolate(mode='bilinear',
/// align_corners=False) with an output size: scale = in/out (float32), source = scale·(dst + 0.5) − 0.5
/// clamped at 0, neighbours floor(source) and the next one (clamped to the edge), weights in float32.
public func bilinear(_ x: [Float], channels c: Int, inH: Int, inW: Int, outH: Int, outW: Int) -> [Float] {
    if inH == outH && inW == outW { return x }
    func axis(_ inN: Int, _ outN: Int) -> [(Int, Int, Float, Float)] {
        let scale = Float(inN) / Float(outN)
        return (0..<outN).map { o in
            let s = max(scale * (Float(o) + 0.5) - 0.5, 0)
            let i0 = Int(s)
            let i1 = i0 + (i0 < inN - 1 ? 1 : 0)
            let l1 = s - Float(i0)
            return (i0, i1, 1 - l1, l1)
        }
    }
    let ys = axis(inH, outH), xs = axis(inW, outW)
    var out = [Float](repeating: 0, count: c * outH * outW)
    x.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            for ch in 0..<c {
                let plane = src.baseAddress! + ch * inH * inW
                let o = dst.baseAddress! + ch * outH * outW
                for (oy, (y0, y1, ly0, ly1)) in ys.enumerated() {
                    let r0 = plane + y0 * inW, r1 = plane + y1 * inW
                    let orow = o + oy * outW
                    for (ox, (x0, x1, lx0, lx1)) in xs.enumerated() {
                        orow[ox] = ly0 * (lx0 * r0[x0] + lx1 * r0[x1]) + ly1 * (lx0 * r1[x0] + lx1 * r1[x1])
                    }
                }
            }
        }
    }
    return out
}

/// Every decoder of a checkpoint, in task order.
public struct TaskHeads: Sendable {
    public let heads: [TaskHead]

    /// Reads and folds the decoders (only now are their tensors read).
    /// - Parameters: `tasks`: names to load (default all, in task order).
    public init(checkpoint: TaskHeadsCheckpoint, imageHeight: Int, imageWidth: Int, patch: Int = 16,
                tasks: [String]? = nil, twoConvUpsampling: TwoConvUpsampling = .one) throws {
        let names = tasks ?? checkpoint.heads.map(\.task)
        heads = try names.map {
            TaskHead(weights: try TaskHeadWeights(checkpoint: checkpoint, task: $0, twoConvUpsampling: twoConvUpsampling),
                     imageHeight: imageHeight, imageWidth: imageWidth, patch: patch)
        }
    }
}

extension TaskHeads {
    /// Runs every decoder on backbone outputs: `tokens(t)` gives the `[T, D]` output computed with
    /// backbone task `t`'s gates; `taskMap` says which task feeds which decoder (nil: the same
    /// features for every decoder, `tokens(0)`).
    public func run(tokens: (Int) throws -> [Float], taskMap: [String: Int]?, outHeight: Int? = nil, outWidth: Int? = nil) throws -> [TaskOutput] {
        try heads.map { head in
            let t = taskMap?[head.task]
            let v = try head.run(tokens: try tokens(t ?? 0), outHeight: outHeight, outWidth: outWidth)
            return TaskOutput(task: head.task, channels: head.outChannels, height: outHeight ?? head.imageHeight,
                              width: outWidth ?? head.imageWidth, values: v, backboneTask: t)
        }
    }
}
