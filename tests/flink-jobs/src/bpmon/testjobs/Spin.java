package bpmon.testjobs;

import org.apache.flink.api.common.functions.MapFunction;

/** Burns CPU in user code for about {@code millis} per record (hashing loop, no sleeping). */
public final class Spin implements MapFunction<Long, Long> {
    private static final long serialVersionUID = 1L;
    private final long nanos;

    public Spin(long millis) {
        this.nanos = millis * 1_000_000L;
    }

    @Override
    public Long map(Long value) {
        return burn(value, nanos);
    }

    /** Mixes {@code seed} until {@code nanos} have passed; the result keeps the JIT from removing the loop. */
    static long burn(long seed, long nanos) {
        long deadline = System.nanoTime() + nanos;
        long h = seed;
        do {
            for (int i = 0; i < 1000; i++) {
                h ^= h >>> 33;
                h *= 0xff51afd7ed558ccdL;
                h ^= h >>> 33;
            }
        } while (System.nanoTime() < deadline);
        return h;
    }
}
