import Foundation
import CCrypto

/// SHA-256 (FIPS 180-4) through OpenSSL's libcrypto EVP interface, streamed.
///
/// `var h = SHA256(); h.update(...); h.finalize()` gives the 32-byte digest `sha256sum` prints in hex.
/// A value owns its own OpenSSL context; copying a hasher shares it, so give each stream its own.
public struct SHA256: @unchecked Sendable {
    private final class Context {
        let ctx: OpaquePointer
        init() {
            // Allocation and EVP_sha256 initialisation fail only when the process is out of memory.
            guard let c = EVP_MD_CTX_new(), EVP_DigestInit_ex(c, EVP_sha256(), nil) == 1 else {
                fatalError("OpenSSL: cannot initialise a SHA-256 context")
            }
            ctx = c
        }
        deinit { EVP_MD_CTX_free(ctx) }
    }
    private let context = Context()

    public init() {}

    /// Adds bytes to the digest.
    public mutating func update(bufferPointer: UnsafeRawBufferPointer) {
        guard let base = bufferPointer.baseAddress, bufferPointer.count > 0 else { return }
        EVP_DigestUpdate(context.ctx, base, bufferPointer.count)
    }

    /// Adds bytes to the digest.
    public mutating func update<D: ContiguousBytes>(data: D) {
        data.withUnsafeBytes { update(bufferPointer: $0) }
    }

    /// The 32-byte digest; the hasher is spent afterwards.
    public func finalize() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var n: UInt32 = 0
        EVP_DigestFinal_ex(context.ctx, &out, &n)
        return out
    }

    /// The 32-byte digest of `data`.
    public static func hash<D: ContiguousBytes>(data: D) -> [UInt8] {
        var h = SHA256()
        h.update(data: data)
        return h.finalize()
    }
}
