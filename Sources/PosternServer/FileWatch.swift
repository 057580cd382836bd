import Dispatch
import Glibc
import Synchronization

/// Watches files by polling their stamps (mtime, inode, size): the policy and its lists and
/// GeoIP databases, the AUTH credentials file. A change is acted on once it has been stable
/// for one interval, so a file being written is not read half-way; an atomic rename (as
/// geoipupdate and editors do) is seen as a new inode.
enum FileWatch {
    /// How often the files are checked.
    static let interval: DispatchTimeInterval = .seconds(2)

    struct Stamp: Equatable {
        var modified: Int
        var inode: UInt64
        var size: Int64
    }

    static func stamps(_ files: [String]) -> [String: Stamp] {
        var result: [String: Stamp] = [:]
        for path in files {
            var info = stat()
            guard stat(path, &info) == 0 else { continue }
            result[path] = Stamp(modified: info.st_mtim.tv_sec * 1_000_000_000 + info.st_mtim.tv_nsec, inode: UInt64(info.st_ino), size: Int64(info.st_size))
        }
        return result
    }

    /// Calls `changed` when any of `files()` has changed and stayed so for one interval.
    /// The list is read again after each call (a reload may change which files count).
    /// Runs until the returned timer is cancelled.
    static func watch(_ files: @escaping @Sendable () -> [String], changed: @escaping @Sendable () -> Void) -> DispatchSourceTimer {
        let timer = DispatchSource.makeTimerSource(queue: .global())
        let state = Mutex<(seen: [String: Stamp], pending: [String: Stamp]?)>((stamps(files()), nil))
        timer.schedule(deadline: .now() + interval, repeating: interval)
        timer.setEventHandler {
            let now = stamps(files())
            let settled: Bool = state.withLock { state in
                if now == state.seen { state.pending = nil; return false }
                // Changed: wait one more interval for it to settle.
                guard let pending = state.pending, pending == now else { state.pending = now; return false }
                state.seen = now
                state.pending = nil
                return true
            }
            guard settled else { return }
            changed()
            let after = stamps(files())
            state.withLock { $0.seen = after }
        }
        timer.resume()
        return timer
    }
}
