/// The one error type every moepack stage throws for bad input.
///
/// Its `description` is a single line that names the file, the tensor or record (when there is one)
/// and what is wrong, e.g.
/// `models/x.pth: tensor 'blocks.1.mlp.experts.htoh4.weight': shape [8,384,192], expected [16,384,192]`.
/// The CLI prints exactly that line on stderr and exits with ``exitCode`` (2 for refused input).
public struct MoepackError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Broad class of the failure; selects the process exit code.
    public enum Kind: String, Sendable {
        /// The input is malformed, truncated, hostile or inconsistent (exit 2).
        case badInput
        /// The input is well formed but asks for something moepack does not do (exit 2).
        case unsupported
        /// Shapes or configuration do not match the hardware profile (exit 2).
        case mismatch
        /// NaN/Inf or out-of-range values refused (exit 2).
        case numeric
        /// A verification threshold was not met (exit 1).
        case verificationFailed
        /// The operating system refused a read or write (exit 1).
        case io
        /// Command-line usage error (exit 64).
        case usage
    }

    public var kind: Kind
    /// The file or folder the problem is in, as the user named it.
    public var file: String?
    /// The tensor, record, dataset or buffer the problem is in.
    public var item: String?
    /// What is wrong, in one line, without a trailing period.
    public var message: String

    public init(_ kind: Kind, file: String? = nil, item: String? = nil, _ message: String) {
        self.kind = kind
        self.file = file
        self.item = item
        self.message = message
    }

    public var description: String {
        var parts: [String] = []
        if let file { parts.append(Self.oneLine(file)) }
        if let item { parts.append("'\(Self.oneLine(item))'") }
        parts.append(Self.oneLine(message))
        return parts.joined(separator: ": ")
    }

    /// Names come from the input (zip record names, state_dict keys): control characters are shown as
    /// `\n`, `\r`, `\t` or `\u{..}` so the description stays one line.
    static func oneLine(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0 == "\u{2028}" || $0 == "\u{2029}" }) else { return s }
        var out = ""
        for u in s.unicodeScalars {
            switch u {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.properties.generalCategory == .control || u == "\u{2028}" || u == "\u{2029}" {
                    out += "\\u{\(String(u.value, radix: 16))}"
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out
    }

    /// Process exit status for this error (2 refused input, 1 verification/IO failure, 64 usage).
    public var exitCode: Int32 {
        switch kind {
        case .badInput, .unsupported, .mismatch, .numeric: return 2
        case .verificationFailed, .io: return 1
        case .usage: return 64
        }
    }

    /// Returns a copy with `file` set when it was not set yet (readers throw without knowing the path).
    public func inFile(_ path: String) -> MoepackError {
        var e = self
        if e.file == nil { e.file = path }
        return e
    }
}
