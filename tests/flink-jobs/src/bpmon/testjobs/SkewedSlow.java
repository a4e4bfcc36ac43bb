package bpmon.testjobs;

import org.apache.flink.api.common.functions.MapFunction;

/**
 * Passes records through, sleeping {@code millis} per record, but only in subtask 0: one slow
 * subtask among fast ones, as a hot key or a slow TaskManager makes it. The subtask is read from
 * the task thread's name ("name (1/2)#0"), which every Flink version writes the same way.
 */
public final class SkewedSlow<T> implements MapFunction<T, T> {
    private static final long serialVersionUID = 1L;
    private final long millis;
    private transient Boolean slow;

    public SkewedSlow(long millis) {
        this.millis = millis;
    }

    @Override
    public T map(T value) throws InterruptedException {
        if (slow == null) {
            slow = Thread.currentThread().getName().contains("(1/");
        }
        if (slow) {
            Thread.sleep(millis);
        }
        return value;
    }
}
