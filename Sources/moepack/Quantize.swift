import ArgumentParser
import Foundation
import MoepackCore
import MoepackCheckpoint
import MoepackFixedPoint

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a float .npy array to ap_fixed raw container integers (or back with --dequantize).",
        discussion: """
        The raw values are W-bit two's complement (ap_fixed) or unsigned (ap_ufixed) integers in the smallest container (int8/16/32/64, uint for ap_ufixed), as the kernel reads them from DDR. Mode names may be omitted and then default as in Vitis HLS: AP_TRN and AP_WRAP. Use it to make HLS testbench vectors:
          moepack quantize w.npy --type 'ap_fixed<16,2>' -o raw.npy
          moepack quantize raw.npy --type 'ap_fixed<16,2>' --dequantize -o back.npy
        """)

    @Argument(help: "Input .npy (float for quantize; integer raw values for --dequantize).")
    var input: String

    @Option(name: .long, help: "Target type, e.g. 'ap_fixed<16,2,AP_RND_CONV,AP_SAT>' or 'ap_ufixed<8,0>'.")
    var type: String

    @Option(name: .shortAndLong, help: "Output .npy.")
    var output: String

    @Flag(help: "Raw integers → float32 values.")
    var dequantize = false

    @Flag(help: "Values outside the type's range are errors.")
    var strict = false

    @Flag(help: "JSON summary on stdout (shape, dtype written, value count, overflow and SQNR).")
    var json = false

    func run() throws {
        try guarded {
            let t: FixedType
            do { t = try FixedType(parsing: type) } catch let e as MoepackError {
                throw MoepackError(.usage, item: "--type", "\(type): \(e.message)")
            }
            let src = try NpySource(path: input)
            guard let entry = src.entries.first else { throw MoepackError(.badInput, file: input, "no array") }
            if dequantize {
                guard !entry.dtype.isFloatingPoint else {
                    throw MoepackError(.badInput, file: input, item: entry.name, "dtype \(entry.dtype.rawValue): --dequantize expects raw integers")
                }
                let bytes = try src.readRaw(entry.name)
                let eb = entry.dtype.byteSize
                let unsigned: Bool = [.uint8, .uint16, .uint32, .uint64, .bool].contains(entry.dtype)
                let raw: [Int64] = stride(from: 0, to: bytes.count, by: eb).map { i in
                    var v: UInt64 = 0
                    for k in 0..<eb { v |= UInt64(bytes[i + k]) << (8 * k) }
                    if unsigned || eb == 8 { return Int64(bitPattern: v) }
                    let shift = UInt64(64 - 8 * eb)
                    return Int64(bitPattern: v << shift) >> Int64(shift)
                }
                // A raw value outside W bits is not a code of this type (a wider type's raws, say).
                // (Every Int64 is a code of a 64-bit type.)
                if t.width < 64, let i = raw.firstIndex(where: { $0 < t.minRaw || $0 > t.maxRaw }) {
                    throw MoepackError(.numeric, file: input, item: entry.name,
                                       "raw value \(raw[i]) at flat index \(i) is outside \(t.description)'s \(t.width)-bit codes \(t.minRaw)…\(t.maxRaw)")
                }
                let out = raw.map { Float(t.value(raw: t.signExtend(UInt64(bitPattern: $0)))) }
                try NpyWriter.write(Tensor(shape: entry.shape, values: out), to: output)
                if json {
                    return try printJSON(QuantizeSummary(input: input, output: output, direction: .dequantize, type: t.description,
                                                         shape: entry.shape, dtype: DType.float32.rawValue, values: out.count))
                }
                print("wrote \(output): \(out.count) float32 values of \(t.description)")
                return
            }
            guard entry.dtype.isFloatingPoint else {
                throw MoepackError(.badInput, file: input, item: entry.name, "dtype \(entry.dtype.rawValue): quantize expects floats")
            }
            let values = try src.readFloat32(entry.name)
            var stats = QuantizationStats()
            var bytes = [UInt8](repeating: 0, count: values.count * t.containerBytes)
            values.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { t.encode(v, into: $0, stats: &stats) } }
            try stats.checkFinite(tensor: entry.name, file: input)
            if stats.overflowCount > 0 {
                let msg = "\(stats.overflowCount) value(s) outside \(t.description) range [\(t.minValue), \(t.maxValue)], largest |value| \(stats.maxOverflowMagnitude)"
                if strict { throw MoepackError(.numeric, file: input, item: entry.name, msg + " (--strict)") }
                note("moepack: warning: \(input): '\(entry.name)': \(msg) (\(t.overflow.rawValue))")
            }
            let dtype: DType
            switch (t.containerBytes, t.signed) {
            case (1, true): dtype = .int8
            case (1, false): dtype = .uint8
            case (2, true): dtype = .int16
            case (2, false): dtype = .uint16
            case (4, true): dtype = .int32
            case (4, false): dtype = .uint32
            case (_, true): dtype = .int64
            default: dtype = .uint64
            }
            try NpyWriter.writeRaw(bytes: bytes, dtype: dtype, shape: entry.shape, to: output)
            if json {
                return try printJSON(QuantizeSummary(input: input, output: output, direction: .quantize, type: t.description,
                                                     shape: entry.shape, dtype: dtype.rawValue, values: values.count,
                                                     overflow: stats.overflowCount, sqnr_db: stats.sqnrDB))
            }
            print("wrote \(output): \(values.count) raw \(dtype.rawValue) values of \(t.description); SQNR \(stats.sqnrDB.isFinite ? String(format: "%.1f dB", stats.sqnrDB) : "∞ (exact)"), \(stats.overflowCount) overflow")
        }
    }
}
