package bpmon.testjobs;

import java.util.ArrayDeque;
import org.apache.flink.api.common.functions.MapFunction;

/**
 * Allocates {@code chunkKiB} per record and keeps the last {@code retainMiB} of them alive, as a
 * cache without bounds or a window holding too much on the heap does: the live set stays close to
 * the heap's size, so the JVM spends most of its time collecting garbage.
 */
public final class Retain implements MapFunction<Long, Long> {
    private static final long serialVersionUID = 1L;
    private final int chunkKiB;
    private final int retainMiB;
    private transient ArrayDeque<byte[]> kept;

    public Retain(int chunkKiB, int retainMiB) {
        this.chunkKiB = chunkKiB;
        this.retainMiB = retainMiB;
    }

    @Override
    public Long map(Long value) {
        if (kept == null) {
            kept = new ArrayDeque<>();
        }
        byte[] chunk = new byte[chunkKiB * 1024];
        chunk[0] = value.byteValue();
        kept.addLast(chunk);
        while ((long) kept.size() * chunkKiB > retainMiB * 1024L) {
            kept.removeFirst();
        }
        return value + kept.size();
    }
}
