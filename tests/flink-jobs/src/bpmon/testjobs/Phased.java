package bpmon.testjobs;

import org.apache.flink.api.common.functions.MapFunction;

/**
 * Back-pressure that comes and goes on the wall clock: in odd periods ({@code (now / periodMs) %
 * 2 == 1}) each record costs {@code slowMillis} of sleep, in even ones nothing. Every subtask and
 * the test agree on the phase without talking. The first record of each phase prints the change
 * (the TaskManager's .out file), so a person can check the times.
 */
public final class Phased implements MapFunction<byte[], byte[]> {
    private static final long serialVersionUID = 1L;
    private final long periodMs;
    private final long slowMillis;
    private transient long lastPhase = -1;

    public Phased(long periodMs, long slowMillis) {
        this.periodMs = periodMs;
        this.slowMillis = slowMillis;
    }

    /** Whether the period containing {@code epochMs} is a slow one. */
    static boolean slow(long epochMs, long periodMs) {
        return (epochMs / periodMs) % 2 == 1;
    }

    @Override
    public byte[] map(byte[] value) throws InterruptedException {
        long now = System.currentTimeMillis();
        long phase = now / periodMs;
        if (phase != lastPhase) {
            lastPhase = phase;
            System.out.println(
                    "bpmon-phase " + (slow(now, periodMs) ? "slow" : "free") + " at " + (phase * periodMs)
                            + " (first record at " + now + ")");
        }
        if (slow(now, periodMs)) {
            Thread.sleep(slowMillis);
        }
        return value;
    }
}
