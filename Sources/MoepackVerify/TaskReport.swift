import Foundation
import MoepackCore
import MoepackInference
import MoepackHeads

/// The report's task section: the frame, each task's rendering from the float model and from the
/// image (fixed path) side by side with a mask of the pixels that differ, and the experts each MoE
/// block picks per patch, drawn over the frame.
public struct TaskReportSection: Sendable {
    /// `[3, height, width]` uint8, the model-size frame.
    public var frame: [UInt8]
    public var height: Int
    public var width: Int
    public var patch: Int
    public var experts: Int
    /// Datapath of the image side.
    public var mode: InferenceMode
    public var outputs: HeadsFrameOutputs
    public var fidelity: [TaskFidelity]
    public var taskMap: [String: Int]

    public init(frame: [UInt8], height: Int, width: Int, patch: Int, experts: Int, mode: InferenceMode,
                outputs: HeadsFrameOutputs, fidelity: [TaskFidelity], taskMap: [String: Int]) {
        self.frame = frame
        self.height = height
        self.width = width
        self.patch = patch
        self.experts = experts
        self.mode = mode
        self.outputs = outputs
        self.fidelity = fidelity
        self.taskMap = taskMap
    }

    /// The frame as a picture.
    func framePicture(dim: Float = 1) -> RGBImage {
        var img = RGBImage(width: width, height: height)
        let n = width * height
        for p in 0..<n {
            func ch(_ k: Int) -> UInt8 { UInt8((Float(frame[k * n + p]) * dim).rounded()) }
            img[p % width, p / width] = (ch(0), ch(1), ch(2))
        }
        return img
    }

    /// The frame dimmed to grey with the differing pixels in red.
    func maskPicture(_ mask: [Bool]) -> RGBImage {
        var img = RGBImage(width: width, height: height)
        let n = width * height
        for p in 0..<n {
            if mask[p] { img[p % width, p / width] = (230, 20, 20); continue }
            let luma: Float = 0.299 * Float(frame[p]) + 0.587 * Float(frame[n + p]) + 0.114 * Float(frame[2 * n + p])
            let g = UInt8(luma * 0.5 + 100)
            img[p % width, p / width] = (g, g, g)
        }
        return img
    }

    /// The frame with each patch tinted by the expert of its first choice and labelled with its number.
    func expertPicture(_ routing: MoERouting, k: Int) -> RGBImage {
        let s = TaskRenderer.scale
        var img = RGBImage(width: width * s, height: height * s)
        img.paste(framePicture(), x: 0, y: 0, scale: s)
        let gw = width / patch, gh = height / patch
        let palette = Palette.numbered(experts).colors
        for p in 0..<(gw * gh) {
            let tok = p + 1   // token 0 is the cls token
            guard (tok + 1) * k <= routing.topExperts.count else { break }
            let e = Int(routing.topExperts[tok * k])
            let col = palette[e % palette.count]
            let x0 = (p % gw) * patch * s, y0 = (p / gw) * patch * s
            for y in y0..<(y0 + patch * s) {
                for x in x0..<(x0 + patch * s) {
                    let o = img[x, y]
                    func mix(_ a: UInt8, _ b: UInt8) -> UInt8 {
                        let m: Float = 0.5 * Float(a) + 0.5 * Float(b)
                        return UInt8(m.rounded())
                    }
                    img[x, y] = (mix(o.0, col.0), mix(o.1, col.1), mix(o.2, col.2))
                }
            }
            img.fillRect(x: x0, y: y0, w: patch * s, h: 1, (255, 255, 255))
            img.fillRect(x: x0, y: y0, w: 1, h: patch * s, (255, 255, 255))
            img.fillRect(x: x0 + 2, y: y0 + 2, w: RGBImage.textWidth("\(e)") + 2, h: 9, (255, 255, 255))
            img.text("\(e)", x: x0 + 3, y: y0 + 3)
        }
        return img
    }

    static func dataURI(_ img: RGBImage) -> String {
        let png = (try? img.pngData()) ?? []
        return "data:image/png;base64," + Data(png).base64EncodedString()
    }

    func figure(_ h: inout HTMLBuilder, _ img: RGBImage, caption: String, cls: String) {
        h.raw("<figure class=\"\(cls)\"><img alt=\"")
        h.text(caption)
        h.raw("\" src=\"\(Self.dataURI(img))\"><figcaption>")
        h.text(caption)
        h.raw("</figcaption></figure>\n")
    }

    func html(_ h: inout HTMLBuilder, topK: Int) {
        h.raw("<section id=\"tasks\">\n<h2>Task outputs</h2>\n<p>Each decoder on the float model's backbone output and on the image's (\(mode.rawValue) datapath), both with the task's gates; red pixels differ (another class; depth off by more than 1% of its range).</p>\n")
        var frameImg = RGBImage(width: width * TaskRenderer.scale, height: height * TaskRenderer.scale)
        frameImg.paste(framePicture(), x: 0, y: 0, scale: TaskRenderer.scale)
        figure(&h, frameImg, caption: "frame \((outputs.frame as NSString).lastPathComponent)", cls: "frame")
        for (i, (got, want)) in zip(outputs.image, outputs.float).enumerated() {
            h.raw("<div class=\"task\" data-task=\"")
            h.text(got.task)
            h.raw("\">\n<h3>")
            h.text("\(got.task) (task \(got.backboneTask ?? 0)'s gates)")
            h.raw("</h3>\n")
            if i < fidelity.count { h.raw("<p class=\"mono\">"); h.text(fidelityLine(fidelity[i])); h.raw("</p>\n") }
            h.raw("<div class=\"row\">\n")
            figure(&h, TaskRenderer.render(task: want.task, output: want.values, channels: want.channels, height: want.height, width: want.width, frame: frame),
                   caption: "float model", cls: "float")
            figure(&h, TaskRenderer.render(task: got.task, output: got.values, channels: got.channels, height: got.height, width: got.width, frame: frame),
                   caption: "\(mode.rawValue) path (image)", cls: "image")
            var mask = RGBImage(width: width * TaskRenderer.scale, height: height * TaskRenderer.scale)
            mask.paste(maskPicture(differingPixels(got, want)), x: 0, y: 0, scale: TaskRenderer.scale)
            figure(&h, mask, caption: "pixels that differ", cls: "mask")
            h.raw("</div>\n</div>\n")
        }
        h.raw("</section>\n<section id=\"expert-choice\">\n<h2>Expert choice per patch</h2>\n<p>First-choice expert of every patch in each MoE block (image, \(mode.rawValue) datapath), tinted by expert and numbered, over the frame.</p>\n")
        for t in outputs.backbone.keys.sorted() {
            h.raw("<h3>task \(t)</h3>\n<div class=\"row\">\n")
            for r in outputs.backbone[t]!.routing {
                figure(&h, expertPicture(r, k: topK), caption: "block \(r.block)", cls: "experts")
            }
            h.raw("</div>\n")
        }
        h.raw("</section>\n")
    }

    func fidelityLine(_ r: TaskFidelity) -> String {
        var parts: [String] = []
        if let v = r.pixel_agreement { parts.append(String(format: "pixel agreement %.4f", v)) }
        if let v = r.miou { parts.append(String(format: "mIoU %.4f", v)) }
        if let v = r.abs_rel { parts.append(String(format: "abs-rel %.4g", v)) }
        if let v = r.rmse { parts.append(String(format: "RMSE %.4g", v)) }
        if let v = r.mean_angular_error_deg { parts.append(String(format: "mean angular error %.3g°", v)) }
        if let v = r.mean_probability_error { parts.append(String(format: "mean |Δ probability| %.3g", v)) }
        parts.append("\(r.differing_pixels) pixels differ")
        return parts.joined(separator: ", ")
    }

    static let css = """
    #tasks figure, #expert-choice figure { display: inline-block; margin: 4px 10px 4px 0; vertical-align: top; }
    #tasks figcaption, #expert-choice figcaption { font-size: 12px; color: #555; }
    #tasks img, #expert-choice img { image-rendering: pixelated; border: 1px solid #ccc; }
    .row { display: flex; flex-wrap: wrap; align-items: flex-start; }

    """
}
