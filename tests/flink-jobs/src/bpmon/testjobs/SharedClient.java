package bpmon.testjobs;

import org.apache.flink.api.common.functions.MapFunction;

/**
 * Every subtask calls one client shared by the whole TaskManager and guarded by its monitor, as
 * code does with a non-thread-safe client held in a static field: each call holds the monitor for
 * {@code millis}, so all but one subtask wait BLOCKED on it. More parallelism makes it worse.
 */
public final class SharedClient<T> implements MapFunction<T, T> {
    private static final long serialVersionUID = 1L;
    /** The one client of the TaskManager (its monitor is what the subtasks contend for). */
    static final Client CLIENT = new Client();

    private final long millis;

    public SharedClient(long millis) {
        this.millis = millis;
    }

    @Override
    public T map(T value) throws InterruptedException {
        CLIENT.call(millis);
        return value;
    }

    /** A client that is not thread-safe, so its callers serialise on it. */
    static final class Client {
        synchronized void call(long millis) throws InterruptedException {
            Thread.sleep(millis);
        }
    }
}
