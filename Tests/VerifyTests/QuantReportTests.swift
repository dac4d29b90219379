import XCTest
import Foundation
import MoepackCore
import MoepackModel
@testable import MoepackPacking
@testable import MoepackVerify

/// A manifest with three packed tensors whose report numbers are chosen by hand.
func threeTensorManifest() -> Manifest {
    let tensors = [
        // ap_fixed<16,2>: LSB 2^-14. |x| ≤ 0.5 → needed I = 0; max error 2^-15 = 0.5 LSB.
        Manifest.TensorReport(name: "blocks.0.attn.proj.weight", buffer: "attn_weights", type: "wt_linear_t", count: 16,
                              min: -0.5, max: 0.25, overflow: 0, sqnr_db: 60.5, max_abs_error: 0x1p-15),
        // ap_fixed<16,5>: range [−16, 16 − 2^-11]; −20 overflows → needed I = 6; error 4 = 8192 LSB.
        Manifest.TensorReport(name: "evil<script>alert(1)</script>", buffer: "moe_bias_l1", type: "wt_bias_t", count: 8,
                              min: -20, max: 3, overflow: 2, sqnr_db: 12.25, max_abs_error: 4),
        // ap_fixed<32,10>: |x| in [0.125, 0.75] → needed I = 1; exact.
        Manifest.TensorReport(name: "pos_embed+cls_token", buffer: "pos_embed", type: "fm_t", count: 4,
                              min: 0.125, max: 0.75, overflow: 0, sqnr_db: nil, max_abs_error: 0),
    ]
    let cfg = M3ViTConfig(embedDim: 4, depth: 2, heads: 1, moeBlocks: [1], experts: 2, expertHidden: 3,
                          mlpHidden: 5, tasks: 2, tokens: 3, patchSize: 2, inChans: 3, imageHeight: 2, imageWidth: 4)
    return Manifest(
        format: "moepack-ddr/1", tool: "moepack test", profile: "unit & <test>", kernel: "ViT_compute", task: 1,
        layout: "kernel", model: cfg, folds: nil,
        quantization: Manifest.Quantization(mode: "AP_RND_CONV", overflow: "AP_SAT", tensors: tensors),
        source: Manifest.Source(path: "models/\"odd\" name.pth", container: .pytorchZip, sha256: String(repeating: "ab", count: 32), notes: []),
        image: Manifest.Image(file: "ddr.bin", bytes: 4096, sha256: String(repeating: "cd", count: 32)),
        alignment: 4096,
        types: ["wt_linear_t": "ap_fixed<16,2>", "wt_bias_t": "ap_fixed<16,5>", "fm_t": "ap_fixed<32,10>"],
        registers: ["CTRL": 0], buffers: [], expert_records: nil, task_gates: nil, notes: [])
}

/// Contents of every `<td>` of every `<tr class="tensor…">` row, in page order.
func tensorRows(_ html: String) -> [[String]] {
    var rows: [[String]] = []
    var rest = Substring(html)
    while let r = rest.range(of: "<tr class=\"tensor") {
        rest = rest[r.upperBound...]
        guard let end = rest.range(of: "</tr>") else { break }
        var row = rest[..<end.lowerBound]
        var cells: [String] = []
        while let o = row.range(of: "<td"), let gt = row[o.upperBound...].firstIndex(of: ">"),
              let c = row[gt...].range(of: "</td>") {
            cells.append(String(row[row.index(after: gt)..<c.lowerBound]))
            row = row[c.upperBound...]
        }
        rows.append(cells)
        rest = rest[end.upperBound...]
    }
    return rows
}

final class QuantReportTests: XCTestCase {
    func testOneRowPerTensorWorstFirstWithHandComputedNumbers() {
        let html = QuantReport.html(manifest: threeTensorManifest(), routing: nil)
        let rows = tensorRows(html)
        XCTAssertEqual(rows.count, 3)
        // Columns: #, tensor, buffer, type, count, min, max, max|x|, needed I, overflow, SQNR, max|err|, max|err|/LSB.
        XCTAssertEqual(rows[0], ["1", "evil&lt;script&gt;alert(1)&lt;/script&gt;", "moe_bias_l1", "wt_bias_t = ap_fixed&lt;16,5&gt;",
                                 "8", "-20", "3", "20", "6", "2", "12.25", "4", "8192.00"])
        XCTAssertEqual(rows[1], ["2", "blocks.0.attn.proj.weight", "attn_weights", "wt_linear_t = ap_fixed&lt;16,2&gt;",
                                 "16", "-0.5", "0.25", "0.5", "0", "0", "60.50", "3.05176e-05", "0.50"])
        XCTAssertEqual(rows[2], ["3", "pos_embed+cls_token", "pos_embed", "fm_t = ap_fixed&lt;32,10&gt;",
                                 "4", "0.125", "0.75", "0.75", "1", "0", "exact", "0", "0.00"])
        XCTAssertEqual(html.components(separatedBy: "<tr class=\"tensor overflow\">").count - 1, 1)
        // Type table: ranges and LSBs from UG1399's formulas.
        XCTAssertTrue(html.contains("<td class=\"num\">2^-14</td><td class=\"num\">[-2, 1.99994]</td>"))
        XCTAssertTrue(html.contains("<td class=\"num\">2^-11</td><td class=\"num\">[-16, 15.9995]</td>"))
        XCTAssertTrue(html.contains("<td class=\"num\">2^-22</td><td class=\"num\">[-512, 512]</td>"))
        XCTAssertTrue(html.contains("<td class=\"num\">6 (now 5)</td>"))
        XCTAssertTrue(html.contains("1 tensor(s) overflow: 2 value(s) outside their type&#39;s range."))
        XCTAssertTrue(html.contains("Worst SQNR 12.25 dB."))
    }

    func testChartGeometryMatchesHandComputation() {
        let html = QuantReport.html(manifest: threeTensorManifest(), routing: nil)
        // Axis: smallest LSB 2^-22 (fm_t) → k0 = −23; largest max 2^9 (fm_t, 512 − LSB) → k1 = 10.
        // Label column: longest name "evil<script>alert(1)</script>" has 29 characters → round(29·6.2 + 14) = 194 px.
        // x(k) = 194 + (k + 23)·760/33. pos_embed bar: |x| from 0.125 (k = −3) to 0.75.
        let x = { (k: Double) in 194 + (k + 23) * 760 / 33 }
        let x0 = x(-3), x1 = x(log2(0.75))
        XCTAssertEqual(QuantReport.p(x0), "654.61")
        XCTAssertTrue(html.contains("<rect class=\"bar\" x=\"654.61\" y=\"55.5\" width=\"\(QuantReport.p(x1 - x0))\""), "pos_embed bar")
        // fm_t band from LSB 2^-22 to 512 − 2^-22 on row 2 (y = 26 + 2·13 + 1).
        XCTAssertTrue(html.contains("<rect class=\"band\" x=\"\(QuantReport.p(x(-22)))\" y=\"53\""))
        // The overflowing row is marked and its part beyond 16 is red.
        XCTAssertTrue(html.contains("<g class=\"row over\">"))
        XCTAssertTrue(html.contains("<rect class=\"bar out\" x=\"\(QuantReport.p(x(log2(16 - 0x1p-11))))\""))
        XCTAssertEqual(html.components(separatedBy: "<g class=\"row").count - 1, 3)
    }

    func testSelfContainedAndEscaped() {
        let html = QuantReport.html(manifest: threeTensorManifest(), routing: nil)
        XCTAssertTrue(html.hasPrefix("<!DOCTYPE html>"))
        XCTAssertTrue(html.contains("<svg"))
        XCTAssertFalse(html.lowercased().contains("<script"))
        XCTAssertTrue(html.contains("evil&lt;script&gt;alert(1)&lt;/script&gt;"))
        XCTAssertTrue(html.contains("unit &amp; &lt;test&gt;"))
        XCTAssertTrue(html.contains("models/&quot;odd&quot; name.pth"))
        let stripped = html.replacingOccurrences(of: "xmlns=\"http://www.w3.org/2000/svg\"", with: "")
        XCTAssertFalse(stripped.contains("http://"))
        XCTAssertFalse(stripped.contains("https://"))
        XCTAssertFalse(stripped.contains("url("))
        XCTAssertFalse(stripped.contains("@import"))
        XCTAssertEqual(escapeHTML("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;")
    }

    /// A `--task all` image holds every task's gates: the header says so instead of naming task 0 only.
    func testTaskLineNamesEveryTaskOfAnAllTasksPack() {
        var m = threeTensorManifest()
        XCTAssertTrue(QuantReport.html(manifest: m, routing: nil).contains("<th>task</th><td>1 (gates in moe_w_gate)</td>"))
        m.task = 0
        m.task_gates = [.init(task: 0, offset: 4096, bytes: 64), .init(task: 1, offset: 8192, bytes: 64)]
        let html = QuantReport.html(manifest: m, routing: nil)
        XCTAssertTrue(html.contains("<th>task</th><td>all 2 tasks (0, 1): each task&#39;s gates in its task_gates region; task 0 loaded in moe_w_gate</td>"), html)
        XCTAssertFalse(html.contains("0 (gates in moe_w_gate)"))
    }

    func testRoutingHeatmapCells() {
        // 2 experts × 3 tokens, top-1: token 0 → expert 1 (0.75), token 1 → expert 0 (0.5), token 2 → expert 1 (1).
        let rt = RoutingHeatmap(tasks: [0, 1], blocks: [1], experts: 2, tokens: 3,
                                weights: [[[0, 0.75, 0.5, 0, 0, 1]], [[0, 0, 0]]],
                                agreement: [[0.5], [1]], agreementLabel: "float vs <fixed>")
        let html = QuantReport.html(manifest: threeTensorManifest(), routing: rt)
        XCTAssertTrue(html.contains("<title>token 0, expert 1: 0.750</title>"))
        XCTAssertTrue(html.contains("<title>token 1, expert 0: 0.500</title>"))
        XCTAssertTrue(html.contains("<title>token 2, expert 1: 1.000</title>"))
        XCTAssertEqual(html.components(separatedBy: "<title>token ").count - 1, 3, "only picked cells are drawn")
        XCTAssertTrue(html.contains("<title>expert 1: 2 tokens</title>"))
        XCTAssertTrue(html.contains("Block 1 · agreement 50.0%"))
        XCTAssertTrue(html.contains("task 0, block 1: 50.0% agreement"))
        XCTAssertTrue(html.contains("float vs &lt;fixed&gt;"))
        // A malformed block is reported, not drawn.
        let bad = RoutingHeatmap(tasks: [0], blocks: [3], experts: 16, tokens: 129, weights: [[[1, 2]]])
        XCTAssertTrue(QuantReport.html(manifest: threeTensorManifest(), routing: bad)
            .contains("Block 3: routing weights malformed (expected 16 experts × 129 tokens, got 2 values)"))
    }

    func testPageSizeForTheEdgeMoEModel() {
        // 192-d model: 196 packed tensors and 2 tasks × 6 MoE blocks of 16 experts × 129 tokens, top-2.
        var m = threeTensorManifest()
        m.quantization.tensors = []
        for i in 0..<196 {
            let d = Double(i)
            let lo: Double = -0.3 - d / 100, hi: Double = 0.2 + d / 90, sqnr: Double = 50 + Double(i % 17)
            m.quantization.tensors.append(Manifest.TensorReport(
                name: "blocks.\(i % 12).attn.qkv.weight[q]", buffer: "attn_weights", type: "wt_linear_t", count: 36864,
                min: lo, max: hi, overflow: i % 50 == 0 ? 3 : 0, sqnr_db: sqnr, max_abs_error: 0x1p-15))
        }
        var w: [[[Float]]] = []
        for t in 0..<2 {
            w.append((0..<6).map { b in
                var v = [Float](repeating: 0, count: 129 * 16)
                for tok in 0..<129 {
                    let first = (tok + b + t) % 16, second = (first + 1 + tok % 5) % 16
                    v[tok * 16 + first] = 0.4
                    v[tok * 16 + second] = 0.2
                }
                return v
            })
        }
        let rt = RoutingHeatmap(tasks: [0, 1], blocks: [1, 3, 5, 7, 9, 11], experts: 16, tokens: 129, weights: w,
                                agreement: [[1, 0.98, 0.97, 0.99, 0.9, 0.95], [1, 1, 0.99, 0.97, 0.96, 0.93]])
        let html = QuantReport.html(manifest: m, routing: rt)
        XCTAssertEqual(tensorRows(html).count, 196)
        XCTAssertLessThan(html.utf8.count, 2_000_000)
    }
}
