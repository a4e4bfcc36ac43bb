package bpmon.testjobs;

import org.apache.flink.api.common.functions.MapFunction;

/** Limits the rate: sleeps {@code millis} per record. */
public final class Throttle implements MapFunction<Long, Long> {
    private static final long serialVersionUID = 1L;
    private final long millis;

    public Throttle(long millis) {
        this.millis = millis;
    }

    @Override
    public Long map(Long value) throws InterruptedException {
        Thread.sleep(millis);
        return value;
    }
}
