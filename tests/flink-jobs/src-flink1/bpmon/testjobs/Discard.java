package bpmon.testjobs;

import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;

/**
 * The jobs' Sink V2 "discard" sink on Flink 1.x. Flink's own Sink V2 {@code DiscardingSink}
 * ({@code org.apache.flink.streaming.api.functions.sink.v2}) is used where it exists (1.19+,
 * so 1.20 runs exactly what 2.x runs); 1.18 only has the legacy {@code SinkFunction} one, whose
 * vertex would be called "Sink: discard", so there an equivalent Sink V2 of ours is used.
 * Either way the vertex is called "discard: Writer". Found at run time (not compile time)
 * because the same sources build against 1.18 and 1.20.
 */
final class Discard {
    private static final String FLINK_SINK =
            "org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink";

    private Discard() {}

    @SuppressWarnings("unchecked")
    static <T> Sink<T> sink() {
        try {
            return (Sink<T>) Class.forName(FLINK_SINK).getDeclaredConstructor().newInstance();
        } catch (ReflectiveOperationException e) {
            return new NullSink<>();
        }
    }

    /** Drops every record (Flink 1.18's missing Sink V2 {@code DiscardingSink}). */
    static final class NullSink<T> implements Sink<T> {
        private static final long serialVersionUID = 1L;

        @Override
        @SuppressWarnings("deprecation")
        public SinkWriter<T> createWriter(InitContext context) {
            return new SinkWriter<T>() {
                @Override
                public void write(T element, Context context) {}

                @Override
                public void flush(boolean endOfInput) {}

                @Override
                public void close() {}
            };
        }
    }
}
