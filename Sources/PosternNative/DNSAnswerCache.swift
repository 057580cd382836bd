import Foundation
import Synchronization

/// Answers by (name, type) until their TTL passes; at most `capacity` of them.
final class AnswerCache: Sendable {
    struct Key: Hashable, Sendable {
        var name: String
        var type: DNSRecordType
    }

    private struct Entry {
        var answer: DNSAnswer
        var expires: ContinuousClock.Instant
    }

    private let capacity: Int
    private let entries = Mutex<[Key: Entry]>([:])

    init(capacity: Int) { self.capacity = max(0, capacity) }

    func get(_ key: Key, now: ContinuousClock.Instant) -> DNSAnswer? {
        entries.withLock { map in
            guard let entry = map[key] else { return nil }
            if entry.expires <= now {
                map[key] = nil
                return nil
            }
            return entry.answer
        }
    }

    /// When full: the expired entries go, then (if still full) a tenth of the rest.
    func put(_ key: Key, _ answer: DNSAnswer, until expires: ContinuousClock.Instant) {
        guard capacity > 0 else { return }
        entries.withLock { map in
            if map[key] == nil, map.count >= capacity {
                let now = ContinuousClock.now
                map = map.filter { $0.value.expires > now }
                if map.count >= capacity {
                    for victim in map.keys.prefix(max(1, capacity / 10)) { map[victim] = nil }
                }
            }
            map[key] = Entry(answer: answer, expires: expires)
        }
    }
}
