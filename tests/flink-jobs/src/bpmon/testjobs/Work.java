package bpmon.testjobs;

import org.apache.flink.api.common.functions.MapFunction;

/**
 * A fixed amount of CPU work per record ({@code rounds} hashing rounds), unlike {@link Spin}'s
 * fixed time: a JVM that is paused or slowed processes fewer records per second, which is what
 * the sampling-overhead benchmark measures.
 */
public final class Work implements MapFunction<Long, Long> {
    private static final long serialVersionUID = 1L;
    private final int rounds;

    public Work(int rounds) {
        this.rounds = rounds;
    }

    @Override
    public Long map(Long value) {
        long h = value;
        for (int i = 0; i < rounds; i++) {
            h ^= h >>> 33;
            h *= 0xff51afd7ed558ccdL;
            h ^= h >>> 33;
        }
        return h;
    }
}
