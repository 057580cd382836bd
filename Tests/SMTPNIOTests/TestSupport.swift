import NIOCore
import NIOEmbedded
import SMTPCore
import SMTPNIO
import XCTest

extension ByteBuffer {
    init(bytes: [UInt8]) {
        self.init()
        self.writeBytes(bytes)
    }

    var text: String { String(decoding: readableBytesView, as: UTF8.self) }
}

/// Holds the outcome of a future completed on an `EmbeddedEventLoop`, so a test can look at
/// it without blocking.
final class FutureOutcome<Value: Sendable>: @unchecked Sendable {
    private(set) var result: Result<Value, Error>?

    init(_ future: EventLoopFuture<Value>) {
        future.whenComplete { self.result = $0 }
    }

    var isComplete: Bool { result != nil }

    var value: Value? {
        if case .success(let value) = result { return value }
        return nil
    }

    var error: Error? {
        if case .failure(let error) = result { return error }
        return nil
    }
}

/// Makes an `EmbeddedChannel` active, as a connected socket would be.
func activate(_ channel: EmbeddedChannel, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertNoThrow(try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 25)).wait(), file: file, line: line)
}
