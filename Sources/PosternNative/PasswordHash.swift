import CCrypt

/// Verifies a password against a crypt(3) hash, as `/etc/shadow`, `mkpasswd` and
/// `openssl passwd` write them: yescrypt (`$y$`), SHA-512-crypt (`$6$`), SHA-256-crypt
/// (`$5$`), bcrypt (`$2b$`). Legacy DES and MD5 hashes are refused: they can be cracked.
///
/// Verification is slow on purpose (yescrypt takes tens of milliseconds): call it off the
/// event loop.
public enum PasswordHash {
    /// The hash prefixes Postern accepts.
    public static let acceptedPrefixes = ["$y$", "$gy$", "$7$", "$6$", "$5$", "$2b$", "$2y$"]

    /// Whether `hash` is of an accepted scheme (checked when the credentials file loads).
    public static func isSupported(_ hash: String) -> Bool {
        acceptedPrefixes.contains { hash.hasPrefix($0) } && hash.utf8.count < 512
    }

    /// True when `password` hashes to `hash`. Constant-time comparison of the results;
    /// false for an unsupported or malformed hash.
    public static func verify(_ password: String, against hash: String) -> Bool {
        guard isSupported(hash), !password.utf8.contains(0) else { return false }
        // crypt_rn with a heap-allocated crypt_data: thread-safe, and the ~32 KiB state
        // stays off the stack.
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        defer {
            UnsafeMutableRawPointer(data).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<crypt_data>.size)
            data.deallocate()
        }
        UnsafeMutableRawPointer(data).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<crypt_data>.size)
        guard let result = crypt_rn(password, hash, data, Int32(MemoryLayout<crypt_data>.size)) else { return false }
        // Failure is a string starting with '*' (never a valid hash).
        let computed = Array(String(cString: result).utf8)
        let expected = Array(hash.utf8)
        guard computed.first != UInt8(ascii: "*"), computed.count == expected.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(computed, expected) { difference |= a ^ b }
        return difference == 0
    }
}
