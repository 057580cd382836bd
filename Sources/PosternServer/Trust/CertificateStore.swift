import Dispatch
import Logging
import NIOSSL
import Synchronization

/// The STARTTLS certificate and key in force, reloaded in place (SIGHUP, or when either file
/// changes): new handshakes use the new pair; a session already in TLS keeps the context it
/// started with. A pair that does not load (unreadable, not PEM, the key not the
/// certificate's) is logged and counted, and the old one stays.
final class CertificateStore: Sendable {
    let files: PosternConfiguration.TLSFiles
    private let current: Mutex<NIOSSLContext>
    private let logger: Logger
    private let counted: @Sendable (String) -> Void

    /// `counted` hears each reload's result: success, failure.
    init(files: PosternConfiguration.TLSFiles, context: NIOSSLContext, logger: Logger, counted: @escaping @Sendable (String) -> Void) {
        self.files = files
        current = Mutex(context)
        self.logger = logger
        self.counted = counted
    }

    /// The context for the next handshake.
    var context: NIOSSLContext { current.withLock { $0 } }

    /// Reads the pair again; true when it loaded (and is now in force).
    @discardableResult
    func reload() -> Bool {
        switch ServerPreparation.makeTLSContext(files) {
        case .success(let context):
            current.withLock { $0 = context }
            counted("success")
            logger.notice("TLS certificate reloaded", metadata: [
                "certificate": "\(files.certificate)", "serial": "\(Self.serial(files.certificate) ?? "?")",
            ])
            return true
        case .failure(let problem):
            counted("failure")
            logger.error("TLS certificate not reloaded; the previous one stays in use", metadata: ["error": "\(problem.description)"])
            return false
        }
    }

    /// Reloads when the certificate or the key changes on disk.
    func watchFiles() -> DispatchSourceTimer {
        FileWatch.watch({ [files] in [files.certificate, files.privateKey] }) { [self] in
            logger.notice("TLS certificate files changed: reloading")
            reload()
        }
    }

    /// The leaf certificate's serial number in hex, as `openssl x509 -serial` prints it.
    static func serial(_ path: String) -> String? {
        guard let leaf = try? NIOSSLCertificate.fromPEMFile(path).first else { return nil }
        return leaf.serialNumber.map { byte in
            let hex = String(byte, radix: 16, uppercase: true)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }
}
