package bpmon.testjobs;

import java.util.Collections;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.apache.flink.streaming.api.functions.async.AsyncFunction;
import org.apache.flink.streaming.api.functions.async.ResultFuture;

/**
 * An asynchronous lookup that answers after a fixed delay, from a timer thread. With an async
 * capacity of 1, the task thread spends its time in MailboxExecutorImpl.yield waiting for room in
 * the queue — which Flink counts as busy, although the thread is parked in the mailbox.
 */
public class SlowLookup implements AsyncFunction<Long, Long> {
    private static final ScheduledExecutorService TIMER =
            Executors.newSingleThreadScheduledExecutor(
                    r -> {
                        Thread t = new Thread(r, "bpmon-slow-lookup");
                        t.setDaemon(true);
                        return t;
                    });

    private final long delayMs;

    public SlowLookup(long delayMs) {
        this.delayMs = delayMs;
    }

    @Override
    public void asyncInvoke(Long input, ResultFuture<Long> result) {
        TIMER.schedule(
                () -> result.complete(Collections.singleton(input)), delayMs, TimeUnit.MILLISECONDS);
    }
}
