import NIOCore

/// A task executor that runs jobs on one NIO event loop. A session task that prefers its
/// connection's loop resumes there after every await on that connection, instead of being
/// woken on another thread and hopping back: fewer context switches per command.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: EventLoop

    init(_ eventLoop: EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        eventLoop.execute { job.runSynchronously(on: executor) }
    }
}
