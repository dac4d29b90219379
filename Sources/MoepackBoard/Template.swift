import Foundation
import MoepackCore

/// A text template kept as a resource (`Sources/MoepackBoard/Templates/`), filled with data.
///
/// Syntax (a small subset of Mustache): `{{key}}` is replaced by the value of `key`;
/// `{{#rows}}…{{/rows}}` repeats its body once per row of the list `rows`, with the row's keys
/// visible inside. Values are inserted as given: callers pass text already in the target language's
/// literal form (numbers, quoted strings). A key without a value is an error, so a template and the
/// data it is filled with cannot drift apart silently.
struct Template {
    /// Values for one fill: scalars by key and lists of rows by section name.
    struct Data {
        var values: [String: String] = [:]
        var lists: [String: [[String: String]]] = [:]
    }

    let name: String
    let text: String

    /// Loads `Templates/<name>` from the module's resources.
    /// - Throws: ``MoepackError`` `.io` when the resource is missing from the bundle.
    static func load(_ name: String) throws -> Template {
        let ns = name as NSString
        guard let url = Bundle.module.url(forResource: ns.deletingPathExtension, withExtension: ns.pathExtension, subdirectory: "Templates"),
              let data = FileManager.default.contents(atPath: url.path) else {
            throw MoepackError(.io, item: name, "host program template missing from the bundle")
        }
        return Template(name: name, text: String(decoding: data, as: UTF8.self))
    }

    /// The filled text.
    /// - Throws: ``MoepackError`` `.badInput` naming the template and the key without a value or the
    ///   unclosed section.
    func render(_ data: Data) throws -> String {
        try render(Substring(text), data.values, data.lists)
    }

    private func render(_ s: Substring, _ values: [String: String], _ lists: [String: [[String: String]]]) throws -> String {
        var out = ""
        var rest = s
        while let open = rest.range(of: "{{") {
            out += rest[..<open.lowerBound]
            guard let close = rest[open.upperBound...].range(of: "}}") else {
                throw MoepackError(.badInput, file: name, "unclosed {{")
            }
            let tag = String(rest[open.upperBound..<close.lowerBound])
            rest = rest[close.upperBound...]
            if tag.hasPrefix("#") {
                let section = String(tag.dropFirst())
                guard let end = rest.range(of: "{{/\(section)}}") else {
                    throw MoepackError(.badInput, file: name, item: section, "section without {{/\(section)}}")
                }
                guard let rows = lists[section] else {
                    throw MoepackError(.badInput, file: name, item: section, "no rows for this section")
                }
                let body = rest[..<end.lowerBound]
                for row in rows {
                    out += try render(body, values.merging(row) { $1 }, lists)
                }
                rest = rest[end.upperBound...]
            } else {
                guard let v = values[tag] else { throw MoepackError(.badInput, file: name, item: tag, "no value for this key") }
                out += v
            }
        }
        out += rest
        return out
    }
}
