package bpmon.testjobs;

import org.apache.flink.streaming.api.functions.source.legacy.SourceFunction;

/**
 * A legacy (pre-FLIP-27) source: it emits from its own "Legacy Source Thread", which never checks
 * output availability and so blocks in LocalBufferPool when the output is full (hard
 * back-pressure), while the task's mailbox thread just waits. The interface's package differs
 * between Flink 1.x and 2.x, hence one copy of this class per major version.
 */
public class LegacyNumbers implements SourceFunction<Long> {
    private volatile boolean running = true;

    @Override
    public void run(SourceContext<Long> ctx) {
        long n = 0;
        while (running) {
            synchronized (ctx.getCheckpointLock()) {
                ctx.collect(n++);
            }
        }
    }

    @Override
    public void cancel() {
        running = false;
    }
}
