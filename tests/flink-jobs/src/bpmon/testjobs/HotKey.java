package bpmon.testjobs;

import org.apache.flink.api.common.functions.MapFunction;

/** Gives nine records in ten the key 0 and spreads the rest over 1..100: one hot key. */
public final class HotKey implements MapFunction<Long, Long> {
    private static final long serialVersionUID = 1L;

    @Override
    public Long map(Long value) {
        return value % 10 == 0 ? 1 + (value / 10) % 100 : 0L;
    }
}
