package bpmon.testjobs;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.util.Collector;

/** Emits {@code copies} records of {@code size} bytes per input: far more than fits the output buffers. */
public final class Explode implements FlatMapFunction<Long, byte[]> {
    private static final long serialVersionUID = 1L;
    private final int copies;
    private final int size;

    public Explode(int copies, int size) {
        this.copies = copies;
        this.size = size;
    }

    @Override
    public void flatMap(Long value, Collector<byte[]> out) {
        byte[] payload = new byte[size];
        payload[0] = value.byteValue();
        for (int i = 0; i < copies; i++) {
            out.collect(payload);
        }
    }
}
