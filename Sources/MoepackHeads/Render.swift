import Foundation
import CPNG
import MoepackCore

/// How a task's output is drawn, chosen from M³ViT's task names.
public enum TaskKind: Sendable, Equatable {
    /// Per-pixel argmax over class logits, palette blended over the frame, with a legend.
    case segmentation(Palette)
    /// One channel of depth, a colour map (near = bright) with its scale.
    case depth
    /// Three channels of surface normals, normalised, drawn as RGB = (n + 1)/2.
    case normals
    /// One channel of logits (saliency `sal`, `edge`), drawn as grey sigmoid(x).
    case grey

    /// `semseg`/`human_parts` → segmentation, `depth`, `normals`, `sal`/`edge` → grey; other one-channel
    /// tasks are grey, other multi-channel tasks segmentation.
    public static func of(task: String, channels: Int) -> TaskKind {
        switch task {
        case "depth" where channels == 1: return .depth
        case "normals" where channels == 3: return .normals
        case "sal", "edge": return .grey
        default: return channels == 1 ? .grey : .segmentation(Palette.forTask(task, classes: channels))
        }
    }
}

/// An 8-bit RGB picture, rows top to bottom, `[height][width][3]`.
public struct RGBImage: Sendable, Equatable {
    public var width: Int
    public var height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, fill: (UInt8, UInt8, UInt8) = (255, 255, 255)) {
        self.width = width
        self.height = height
        pixels = [UInt8](repeating: 0, count: width * height * 3)
        fillRect(x: 0, y: 0, w: width, h: height, fill)
    }

    public subscript(x: Int, y: Int) -> (UInt8, UInt8, UInt8) {
        get { let i = (y * width + x) * 3; return (pixels[i], pixels[i + 1], pixels[i + 2]) }
        set {
            guard x >= 0, y >= 0, x < width, y < height else { return }
            let i = (y * width + x) * 3
            pixels[i] = newValue.0; pixels[i + 1] = newValue.1; pixels[i + 2] = newValue.2
        }
    }

    public mutating func fillRect(x: Int, y: Int, w: Int, h: Int, _ c: (UInt8, UInt8, UInt8)) {
        let x0 = max(0, x), x1 = min(width, x + w), y0 = max(0, y), y1 = min(height, y + h)
        guard x0 < x1, y0 < y1 else { return }
        for yy in y0..<y1 {
            for xx in x0..<x1 { self[xx, yy] = c }
        }
    }

    /// Draws `text` with the 5×7 bitmap font, top-left at (x, y).
    public mutating func text(_ text: String, x: Int, y: Int, scale: Int = 1, color: (UInt8, UInt8, UInt8) = (20, 20, 20)) {
        for (i, ch) in text.enumerated() {
            for (gx, gy) in BitmapFont.ink(ch) {
                fillRect(x: x + (i * BitmapFont.advance + gx) * scale, y: y + gy * scale, w: scale, h: scale, color)
            }
        }
    }

    /// Width in pixels of `text` drawn by ``text(_:x:y:scale:color:)``.
    public static func textWidth(_ text: String, scale: Int = 1) -> Int { BitmapFont.measure(text, scale: scale) }

    /// Copies `other` with its top-left at (x, y), each pixel as a `scale`×`scale` block.
    public mutating func paste(_ other: RGBImage, x: Int, y: Int, scale: Int = 1) {
        for oy in 0..<other.height {
            for ox in 0..<other.width { fillRect(x: x + ox * scale, y: y + oy * scale, w: scale, h: scale, other[ox, oy]) }
        }
    }

    /// PNG bytes (8-bit RGB, libpng's simplified write API).
    /// - Throws: ``MoepackError`` `.io` when libpng refuses.
    public func pngData() throws -> [UInt8] {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = UInt32(PNG_FORMAT_RGB)
        var size = 0
        let ok = pixels.withUnsafeBytes { px in
            png_image_write_to_memory(&image, nil, &size, 0, px.baseAddress, Int32(width * 3), nil)
        }
        guard ok != 0, size > 0 else { throw MoepackError(.io, item: "png", "libpng could not size the image") }
        var out = [UInt8](repeating: 0, count: size)
        let ok2 = out.withUnsafeMutableBytes { dst in
            pixels.withUnsafeBytes { px in
                png_image_write_to_memory(&image, dst.baseAddress, &size, 0, px.baseAddress, Int32(width * 3), nil)
            }
        }
        png_image_free(&image)
        guard ok2 != 0 else { throw MoepackError(.io, item: "png", "libpng could not write the image") }
        return Array(out.prefix(size))
    }

    /// Writes the PNG atomically (staged, then renamed into place).
    public func writePNG(to path: String) throws {
        try AtomicFileWriter.write(try pngData(), to: path)
    }
}

/// Draws task outputs: the picture alone (``picture(kind:output:channels:height:width:frame:)``) and
/// the full rendering with a title and a legend or scale strip.
public enum TaskRenderer {
    /// Pixels are drawn `scale`× (nearest) so that a 128×256 frame stays readable.
    public static let scale = 2
    /// Weight of the class colour over the frame.
    public static let blend: Float = 0.55
    static let ink: (UInt8, UInt8, UInt8) = (20, 20, 20)

    /// Class per pixel: argmax over channels (first maximum), `[H·W]`.
    public static func argmax(_ output: [Float], channels c: Int, pixels n: Int) -> [Int] {
        (0..<n).map { p in
            var best = 0
            var bv = output[p]
            for k in 1..<max(c, 1) where output[k * n + p] > bv { bv = output[k * n + p]; best = k }
            return best
        }
    }

    /// Depth colour map (viridis stops), t in 0…1.
    static let viridis: [(Float, Float, Float)] = [(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
                                                   (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)]
    static func colormap(_ t: Float) -> (UInt8, UInt8, UInt8) {
        let x = min(max(t.isFinite ? t : 0, 0), 1) * Float(viridis.count - 1)
        let i = min(Int(x), viridis.count - 2), f = x - Float(i)
        let a = viridis[i], b = viridis[i + 1]
        return (UInt8((a.0 + (b.0 - a.0) * f).rounded()), UInt8((a.1 + (b.1 - a.1) * f).rounded()), UInt8((a.2 + (b.2 - a.2) * f).rounded()))
    }

    /// The output drawn at its own size: `output` `[C, H, W]`; `frame` `[3, H, W]` uint8 to blend
    /// segmentation over (nil: colours alone).
    /// - Returns: the picture and the value range used (depth), for the scale.
    public static func picture(kind: TaskKind, output: [Float], channels c: Int, height h: Int, width w: Int,
                               frame: [UInt8]?) -> (RGBImage, ClosedRange<Float>?) {
        var img = RGBImage(width: w, height: h)
        let n = h * w
        switch kind {
        case .segmentation(let palette):
            let cls = argmax(output, channels: c, pixels: n)
            for p in 0..<n {
                let col = palette.colors[min(cls[p], palette.colors.count - 1)]
                var rgb = [Float(col.0), Float(col.1), Float(col.2)]
                if let frame, frame.count == 3 * n {
                    for k in 0..<3 { rgb[k] = blend * rgb[k] + (1 - blend) * Float(frame[k * n + p]) }
                }
                img[p % w, p / w] = (UInt8(rgb[0].rounded()), UInt8(rgb[1].rounded()), UInt8(rgb[2].rounded()))
            }
            return (img, nil)
        case .depth:
            let finite = output.prefix(n).filter(\.isFinite)
            let lo = finite.min() ?? 0, hi = finite.max() ?? 1
            let span = hi > lo ? hi - lo : 1
            for p in 0..<n { img[p % w, p / w] = colormap((hi - output[p]) / span) }
            return (img, lo...hi)
        case .normals:
            for p in 0..<n {
                let v = (0..<3).map { output[$0 * n + p] }
                let norm = max((v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).squareRoot(), 1e-12)
                let q = v.map { UInt8(min(max((($0 / norm) + 1) / 2 * 255, 0), 255).rounded()) }
                img[p % w, p / w] = (q[0], q[1], q[2])
            }
            return (img, nil)
        case .grey:
            for p in 0..<n {
                let s = 1 / (1 + exp(-output[p]))
                let g = UInt8(min(max(s * 255, 0), 255).rounded())
                img[p % w, p / w] = (g, g, g)
            }
            return (img, nil)
        }
    }

    /// The full rendering of one task: a title line, the picture at ``scale``×, and a legend (classes),
    /// a scale (depth, grey) or a note (normals) below it.
    public static func render(task: String, output: [Float], channels c: Int, height h: Int, width w: Int,
                              frame: [UInt8]?) -> RGBImage {
        let kind = TaskKind.of(task: task, channels: c)
        let (pic, range) = picture(kind: kind, output: output, channels: c, height: h, width: w, frame: frame)
        let pw = w * scale, ph = h * scale, pad = 6, line = 11
        let title: String
        var legend: [(String, (UInt8, UInt8, UInt8))] = []
        var scaleBar: (ClosedRange<Float>, String)? = nil
        var noteText: String? = nil
        switch kind {
        case .segmentation(let p):
            title = "\(task): argmax of \(c) classes - \(p.name)"
            legend = zip(p.classes, p.colors).map { ($0, $1) }
        case .depth:
            title = "\(task): \(c) channel"
            scaleBar = (range ?? 0...1, "near (small) - far (large)")
        case .normals:
            title = "\(task): RGB = (n/|n| + 1)/2"
            noteText = "x red, y green, z blue"
        case .grey:
            title = "\(task): sigmoid of the logit"
            scaleBar = (0...1, "grey = probability")
        }
        let colWidth = 12 + (legend.map { BitmapFont.measure($0.0) }.max() ?? 0) + 10
        let cols = max(1, (pw - pad) / max(colWidth, 1))
        let legendRows = legend.isEmpty ? 0 : (legend.count + cols - 1) / cols
        let footer = legendRows * line + (scaleBar != nil ? 34 : 0) + (noteText != nil ? line : 0)
        let width = max(pw + 2 * pad, BitmapFont.measure(title) + 2 * pad)
        var img = RGBImage(width: width, height: pad + line + ph + pad + footer + pad)
        img.text(title, x: pad, y: pad, color: ink)
        let top = pad + line
        img.paste(pic, x: pad, y: top, scale: scale)
        var y = top + ph + pad
        for (i, (name, col)) in legend.enumerated() {
            let x = pad + (i % cols) * colWidth, yy = y + (i / cols) * line
            img.fillRect(x: x, y: yy, w: 9, h: 8, ink)
            img.fillRect(x: x + 1, y: yy + 1, w: 7, h: 6, col)
            img.text(name, x: x + 12, y: yy + 1, color: ink)
        }
        y += legendRows * line
        if let (r, label) = scaleBar {
            let barW = min(pw, 256)
            for x in 0..<barW {
                let t = Float(x) / Float(barW - 1)
                let col: (UInt8, UInt8, UInt8)
                if case .depth = kind { col = colormap(1 - t) } else { let g = UInt8((t * 255).rounded()); col = (g, g, g) }
                img.fillRect(x: pad + x, y: y, w: 1, h: 10, col)
            }
            let lo = formatValue(r.lowerBound), hi = formatValue(r.upperBound)
            img.text(lo, x: pad, y: y + 13, color: ink)
            img.text(hi, x: pad + barW - BitmapFont.measure(hi), y: y + 13, color: ink)
            img.text(label, x: pad, y: y + 24, color: ink)
            y += 34
        }
        if let noteText { img.text(noteText, x: pad, y: y, color: ink) }
        return img
    }

    /// A number for a scale label: 4 significant digits.
    static func formatValue(_ v: Float) -> String {
        String(format: "%.4g", Double(v))
    }
}
