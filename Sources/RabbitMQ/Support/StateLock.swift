#if RABBITMQ_TSAN_LOCKS
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The lock around state shared between tasks and I/O threads.
///
/// Normally `Synchronization.Mutex`. ThreadSanitizer cannot see the ordering `Mutex` gives on Linux (its
/// prebuilt module is not instrumented: two threads incrementing a Mutex-guarded counter are reported as a race),
/// so `make test-tsan` builds with `RABBITMQ_TSAN_LOCKS` and this `pthread_mutex_t`-based lock, which the
/// sanitizer understands, with the same `withLock` API.
final class StateLock<Value>: @unchecked Sendable {
    private var value: Value
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
#else
import Synchronization

/// The lock around state shared between tasks and I/O threads: `Synchronization.Mutex`, or, in ThreadSanitizer
/// builds (`RABBITMQ_TSAN_LOCKS`), a `pthread_mutex_t`-based lock the sanitizer can follow.
typealias StateLock<Value> = Mutex<Value>
#endif
