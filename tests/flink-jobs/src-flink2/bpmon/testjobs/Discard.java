package bpmon.testjobs;

import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;

/** The jobs' "discard" sink on Flink 2.x: Flink's Sink V2 {@code DiscardingSink}. */
final class Discard {
    private Discard() {}

    static <T> Sink<T> sink() {
        return new DiscardingSink<>();
    }
}
