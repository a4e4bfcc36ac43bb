package bpmon.testjobs;

import org.apache.flink.api.common.functions.MapFunction;

/** Passes records through, sleeping {@code millis} per record (0 = no sleep). */
public final class Slow<T> implements MapFunction<T, T> {
    private static final long serialVersionUID = 1L;
    private final long millis;

    public Slow(long millis) {
        this.millis = millis;
    }

    @Override
    public T map(T value) throws InterruptedException {
        if (millis > 0) {
            Thread.sleep(millis);
        }
        return value;
    }
}
