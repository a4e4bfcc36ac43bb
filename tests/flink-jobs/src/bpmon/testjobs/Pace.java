package bpmon.testjobs;

import org.apache.flink.api.common.functions.MapFunction;

/**
 * A paced source's records: each number becomes 1 KiB, after a sleep of {@code millis}, so the
 * network buffers between it and a slow consumer fill within a second or two.
 */
public final class Pace implements MapFunction<Long, byte[]> {
    private static final long serialVersionUID = 1L;
    private final long millis;

    public Pace(long millis) {
        this.millis = millis;
    }

    @Override
    public byte[] map(Long value) throws InterruptedException {
        Thread.sleep(millis);
        byte[] record = new byte[1024];
        record[0] = (byte) (long) value;
        return record;
    }
}
