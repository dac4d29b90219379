import Foundation

/// `moepack sweep`'s text table: one row per candidate (swept types, image size, MoE DDR traffic per
/// frame, output MSE and cosine against the float model, lowest routing agreement, Pareto mark),
/// then the routing agreement per task and MoE block.
public func renderSweepTable(_ r: SweepReport) -> String {
    func mib(_ b: Double) -> String { String(format: "%.3f", b / 1_048_576) }
    let typeWidth = r.varied.map { name in
        max(name.count, r.candidates.map { ($0.types[name] ?? "").count }.max() ?? 0)
    }
    func typeCells(_ c: SweepCandidate) -> String {
        zip(r.varied, typeWidth).map { ($0.1 == 0 ? "" : (c.types[$0.0] ?? "")).padding(toLength: $0.1, withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }
    var s = "sweep of \(r.checkpoint) (profile \(r.profile), \(r.frames.count) frame(s), task(s) \(r.tasks.map(String.init).joined(separator: ","))): fixed-point emulation against the float model\n"
    let header = zip(r.varied, typeWidth).map { $0.0.padding(toLength: $0.1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
    s += "  \(header)  \("image MiB".leftPadded(9))  \("MoE MiB/frame".leftPadded(13))  \("MSE".leftPadded(10))  \("cosine".leftPadded(9))  \("min routing".leftPadded(11))  \("wraps".leftPadded(7))  pareto\n"
    for c in r.candidates {
        let minRouting = c.routing.map(\.agreement).min() ?? 1
        s += "  \(typeCells(c))  \(mib(Double(c.image_bytes)).leftPadded(9))  \(mib(c.moe_bytes_per_frame).leftPadded(13))  "
        s += "\(String(format: "%.4g", c.mse).leftPadded(10))  \(String(format: "%.6f", c.cosine).leftPadded(9))  "
        s += "\(String(format: "%.4f", minRouting).leftPadded(11))  \(String(c.overflow).leftPadded(7))  \(c.pareto ? "*" : "")\n"
    }
    let blocks = Array(Set(r.candidates.flatMap { $0.routing.map(\.block) })).sorted()
    for t in r.tasks where !blocks.isEmpty {
        s += "  routing agreement, task \(t) (MoE block →): \(header)  " + blocks.map { "b\($0)".leftPadded(6) }.joined(separator: " ") + "\n"
        for c in r.candidates {
            let cells = blocks.map { b in
                c.routing.first { $0.task == t && $0.block == b }.map { String(format: "%.3f", $0.agreement) } ?? "-"
            }
            s += "  \(String(repeating: " ", count: 41))\(typeCells(c))  " + cells.map { $0.leftPadded(6) }.joined(separator: " ") + "\n"
        }
    }
    let decoders = r.candidates.first?.task_agreement.map(\.task) ?? []
    if !decoders.isEmpty {
        s += "  task decoders on the candidate vs the float backbone (pixel agreement, else cosine): \(header)  " + decoders.map { $0.leftPadded(10) }.joined(separator: " ") + "\n"
        for c in r.candidates {
            let cells = c.task_agreement.map { a in a.pixel_agreement.map { String(format: "%.4f px", $0) } ?? String(format: "%.5f", a.cosine) }
            s += "  \(String(repeating: " ", count: 82))\(typeCells(c))  " + cells.map { $0.leftPadded(10) }.joined(separator: " ") + "\n"
        }
    }
    return s.hasSuffix("\n") ? String(s.dropLast()) : s
}

/// A self-contained HTML page of a sweep: an inline SVG of output MSE (log scale) against the DDR
/// bytes the MoE schedule fetches per frame, one `<circle class="candidate">` per candidate, the
/// Pareto front joined by a line and its points filled; then the table of figures.
public func sweepHTML(_ r: SweepReport) -> String {
    let w = 760.0, h = 420.0, left = 80.0, right = 20.0, top = 20.0, bottom = 50.0
    // MoE traffic in MiB, or KiB when below 1 MiB (the tiny test model).
    let kib = (r.candidates.map(\.moe_bytes_per_frame).max() ?? 0) < 1_048_576
    let unit = kib ? "KiB" : "MiB"
    let xs = r.candidates.map { $0.moe_bytes_per_frame / (kib ? 1024 : 1_048_576) }
    // MSE on a log axis; an exact 0 sits at the axis floor.
    let positive = r.candidates.map(\.mse).filter { $0 > 0 }
    let floorMSE = (positive.min() ?? 1e-12) / 2
    let ys = r.candidates.map { log10(max($0.mse, floorMSE)) }
    func span(_ v: [Double]) -> (Double, Double) {
        let lo = v.min() ?? 0, hi = v.max() ?? 1
        let pad = hi > lo ? (hi - lo) * 0.08 : max(abs(lo) * 0.05, 0.5)
        return (lo - pad, hi + pad)
    }
    let (x0, x1) = span(xs), (y0, y1) = span(ys)
    func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * (w - left - right) }
    func py(_ y: Double) -> Double { top + (1 - (y - y0) / (y1 - y0)) * (h - top - bottom) }
    func f(_ v: Double) -> String { String(format: "%.1f", v) }
    func label(_ c: SweepCandidate) -> String { r.varied.map { "\($0)=\(c.types[$0] ?? "")" }.joined(separator: " ") }

    var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" viewBox=\"0 0 \(Int(w)) \(Int(h))\" role=\"img\" aria-label=\"output MSE against MoE DDR bytes per frame\">\n"
    svg += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(w - left - right))\" height=\"\(f(h - top - bottom))\" fill=\"#fafafa\" stroke=\"#999\"/>\n"
    for i in 0...4 {
        let xv = x0 + (x1 - x0) * Double(i) / 4, yv = y0 + (y1 - y0) * Double(i) / 4
        svg += "<text x=\"\(f(px(xv)))\" y=\"\(f(h - bottom + 18))\" text-anchor=\"middle\" font-size=\"11\">\(String(format: "%.3g", xv))</text>\n"
        svg += "<text x=\"\(f(left - 6))\" y=\"\(f(py(yv) + 4))\" text-anchor=\"end\" font-size=\"11\">\(String(format: "%.1e", pow(10, yv)))</text>\n"
    }
    svg += "<text x=\"\(f(left + (w - left - right) / 2))\" y=\"\(f(h - 10))\" text-anchor=\"middle\" font-size=\"12\">MoE DDR \(unit) fetched per frame</text>\n"
    svg += "<text transform=\"translate(14,\(f(top + (h - top - bottom) / 2))) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">output MSE vs float model (log)</text>\n"
    let front = r.candidates.indices.filter { r.candidates[$0].pareto }.sorted { xs[$0] < xs[$1] }
    if front.count > 1 {
        svg += "<polyline class=\"pareto\" fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\" points=\"" + front.map { "\(f(px(xs[$0]))),\(f(py(ys[$0])))" }.joined(separator: " ") + "\"/>\n"
    }
    var placedLabels: [(x: Double, y: Double)] = []
    for (i, c) in r.candidates.enumerated() {
        let fill = c.pareto ? "#c0392b" : "#ffffff"
        svg += "<circle class=\"candidate\" cx=\"\(f(px(xs[i])))\" cy=\"\(f(py(ys[i])))\" r=\"5\" fill=\"\(fill)\" stroke=\"#c0392b\" stroke-width=\"1.5\"><title>\(escapeHTML(label(c))): \(String(format: "%.3f", xs[i])) \(unit), MSE \(String(format: "%.4g", c.mse))\(c.pareto ? " (Pareto)" : "")</title></circle>\n"
        let onRight = px(xs[i]) < left + (w - left - right) * 0.6
        // A label that would overprint an earlier one is left to the point's tooltip.
        if placedLabels.contains(where: { abs($0.x - px(xs[i])) < 120 && abs($0.y - py(ys[i])) < 11 }) { continue }
        placedLabels.append((px(xs[i]), py(ys[i])))
        svg += "<text x=\"\(f(px(xs[i]) + (onRight ? 7 : -7)))\" y=\"\(f(py(ys[i]) - 7))\" text-anchor=\"\(onRight ? "start" : "end")\" font-size=\"10\" fill=\"#333\">\(escapeHTML(r.varied.map { c.types[$0] ?? "" }.joined(separator: " ")))</text>\n"
    }
    svg += "</svg>"

    var rows = ""
    for c in r.candidates {
        rows += "<tr\(c.pareto ? " class=\"pareto\"" : "")>" + r.varied.map { "<td>\(escapeHTML(c.types[$0] ?? ""))</td>" }.joined()
        rows += "<td>\(String(format: "%.2f", Double(c.image_bytes) / 1_048_576))</td><td>\(String(format: "%.3f", c.moe_bytes_per_frame / 1_048_576))</td>"
        rows += "<td>\(String(format: "%.4g", c.mse))</td><td>\(String(format: "%.6f", c.cosine))</td>"
        rows += "<td>\(String(format: "%.4f", c.routing.map(\.agreement).min() ?? 1))</td>"
        rows += c.task_agreement.map { a in "<td>\(a.pixel_agreement.map { String(format: "%.4f", $0) } ?? String(format: "%.5f", a.cosine))</td>" }.joined()
        rows += "<td>\(c.overflow)</td><td>\(c.pareto ? "★" : "")</td></tr>\n"
    }
    let heads = r.varied.map { "<th>\(escapeHTML($0))</th>" }.joined()
    let decoderHeads = (r.candidates.first?.task_agreement ?? []).map { a in
        "<th>\(escapeHTML(a.task)) \(a.pixel_agreement == nil ? "cosine" : "pixel agreement")</th>"
    }.joined()
    return """
    <!DOCTYPE html>
    <html lang="en"><head><meta charset="utf-8"><title>moepack sweep: \(escapeHTML(r.checkpoint))</title>
    <style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin-top:16px}
    td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}th{background:#eee}
    tr.pareto td{background:#fdecea}p{max-width:760px}</style></head><body>
    <h1>Precision sweep</h1>
    <p>\(escapeHTML(r.checkpoint)), profile \(escapeHTML(r.profile)), \(r.frames.count) frame(s), task(s) \(r.tasks.map(String.init).joined(separator: ", ")).
    Each candidate was packed and run through the bit-accurate fixed-point emulation; errors are against the float model
    of the checkpoint (mean over frames and tasks). Filled points and shaded rows: the Pareto front (no other candidate
    fetches fewer MoE bytes with a lower MSE).</p>
    \(svg)
    <table><tr>\(heads)<th>image MiB</th><th>MoE MiB/frame</th><th>MSE</th><th>cosine</th><th>min routing agreement</th>\(decoderHeads)<th>wraps</th><th>Pareto</th></tr>
    \(rows)</table>
    </body></html>

    """
}

extension String {
    fileprivate func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
