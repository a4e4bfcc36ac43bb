package bpmon.testjobs;

import java.util.concurrent.TimeUnit;
import org.apache.flink.streaming.api.datastream.AsyncDataStream;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

/**
 * Streaming jobs whose back-pressure behaviour is known in advance, for bpmon's end-to-end tests.
 *
 * <p>Usage: {@code TestJobs <mode> <job name>} with mode one of {@code hard}, {@code soft},
 * {@code idle}, {@code busy}. Vertex names do not contain the job name, so submitting the same
 * mode twice yields two jobs with identical vertex names.
 *
 * <p>Only APIs present in Flink 1.18, 1.20 and 2.x are used here: the FLIP-27 {@code fromSequence}
 * source and Sink V2. The legacy {@code SourceFunction} moved packages in 2.0, so {@link
 * LegacyNumbers} has one copy per major version ({@code src-flink1}, {@code src-flink2}); so has
 * {@link Discard}, the "discard" sink (Flink's Sink V2 {@code DiscardingSink}, missing in 1.18).
 * Every vertex boundary is placed explicitly with {@code rebalance()} or {@code startNewChain()}
 * so the vertex names are predictable.
 */
public final class TestJobs {
    private TestJobs() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            throw new IllegalArgumentException("usage: TestJobs <hard|soft|idle|busy> <job name>");
        }
        String mode = args[0];
        String jobName = args[1];
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        switch (mode) {
            case "hard":
                hard(env);
                break;
            case "soft":
                soft(env);
                break;
            case "idle":
                idle(env);
                break;
            case "busy":
                busy(env);
                break;
            case "legacy":
                legacy(env);
                break;
            case "async":
                async(env);
                break;
            case "skew":
                skew(env);
                break;
            case "mimic":
                mimic(env);
                break;
            case "cpu":
                cpu(env);
                break;
            case "lock":
                lock(env);
                break;
            case "io":
                if (args.length < 3) {
                    throw new IllegalArgumentException("usage: TestJobs io <job name> <host:port>");
                }
                io(env, args[2]);
                break;
            case "sleep":
                sleep(env);
                break;
            case "hotkey":
                hotKey(env);
                break;
            case "gc":
                gc(env);
                break;
            case "remote":
                remote(env);
                break;
            case "phases":
                if (args.length < 3) {
                    throw new IllegalArgumentException("usage: TestJobs phases <job name> <period ms>");
                }
                phases(env, Long.parseLong(args[2]));
                break;
            case "wide":
                if (args.length < 4) {
                    throw new IllegalArgumentException("usage: TestJobs wide <job name> <parallelism> <depth>");
                }
                wide(env, Integer.parseInt(args[2]), Integer.parseInt(args[3]));
                break;
            case "throughput":
                if (args.length < 3) {
                    throw new IllegalArgumentException("usage: TestJobs throughput <job name> <records>");
                }
                throughput(env, Long.parseLong(args[2]));
                break;
            default:
                throw new IllegalArgumentException("unknown mode: " + mode);
        }
        env.execute(jobName);
    }

    /**
     * "Source: numbers -> explode" is HARD back-pressured: each input becomes 10000 records of 1 KiB
     * (~10 MiB, far more than the output buffer pool), so the task thread blocks inside
     * LocalBufferPool.requestBufferBuilderBlocking while still inside Explode.flatMap. Between two
     * inputs it is soft back-pressured until the queues drain below the per-channel limit; the
     * large fan-out keeps that gap small (with 1000 records per input it was ~35% of the time).
     * "slow consumer" (sleeps 1 ms per record) is busy and exerts the back-pressure.
     */
    static void hard(StreamExecutionEnvironment env) {
        DataStream<byte[]> exploded =
                env.fromSequence(0, Long.MAX_VALUE)
                        .name("numbers")
                        .setParallelism(2)
                        .flatMap(new Explode(10000, 1024))
                        .name("explode")
                        .setParallelism(2);
        exploded.rebalance()
                .map(new Slow<byte[]>(1))
                .name("slow consumer")
                .setParallelism(2)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(2);
    }

    /**
     * "Source: numbers" is SOFT back-pressured: small records, so the output is checked for
     * availability before every record and the task waits in the mailbox instead of blocking.
     * "slow consumer" (sleeps 1 ms per record) is busy.
     */
    static void soft(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(2)
                .rebalance()
                .map(new Slow<Long>(1))
                .name("slow consumer")
                .setParallelism(2)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(2);
    }

    /**
     * "idle sink" is IDLE: "Source: numbers -> throttle" sleeps 100 ms per record, so the sink
     * vertex receives ~10 records/s per subtask and waits for input almost all the time.
     */
    static void idle(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(2)
                .map(new Throttle(100))
                .name("throttle")
                .setParallelism(2)
                .rebalance()
                .map(new Slow<Long>(0))
                .name("idle sink")
                .setParallelism(2)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(2);
    }

    /**
     * Back-pressure that comes and goes: "Source: numbers -> pace" sends ~900 records of 1 KiB a
     * second to "phased consumer", which in every other period of {@code periodMs} sleeps 4 ms
     * per record (~240 records/s): then the source is back-pressured within a second or two;
     * in the periods between, it is not (busy pacing).
     */
    static void phases(StreamExecutionEnvironment env, long periodMs) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(1)
                .map(new Pace(1))
                .name("pace")
                .setParallelism(1)
                .rebalance()
                .map(new Phased(periodMs, 4))
                .name("phased consumer")
                .setParallelism(1)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(1);
    }

    /**
     * Many task threads for the cost benchmark: a source, a pacing map (1 ms of sleep per record,
     * ~900 records/s per subtask), {@code depth - 3} identity maps and a discarding sink, each its
     * own task ({@code disableChaining}, forward edges) with {@code parallelism} subtasks: {@code
     * parallelism * depth} task threads, most of them idle part of the time, as in a TaskManager
     * that keeps up with its input. Paced, the job leaves CPU to spare, and what sampling costs
     * shows as the TaskManager's CPU.
     */
    static void wide(StreamExecutionEnvironment env, int parallelism, int depth) {
        env.setParallelism(parallelism);
        env.disableOperatorChaining();
        org.apache.flink.streaming.api.datastream.DataStream<Long> stream =
                env.fromSequence(0, Long.MAX_VALUE).name("numbers").map(new Throttle(1)).name("pace");
        for (int i = 0; i < depth - 3; i++) {
            stream = stream.map(new Slow<Long>(0)).name("stage " + i);
        }
        stream.sinkTo(Discard.sink()).name("discard");
    }

    /**
     * A bounded job for the sampling-overhead benchmark: {@code records} numbers, each given a
     * fixed amount of work in "Source: numbers -> work", then shuffled to "discard: Writer". Its
     * running time measures throughput: a JVM stopped for thread dumps finishes later.
     */
    static void throughput(StreamExecutionEnvironment env, long records) {
        env.fromSequence(0, records - 1)
                .name("numbers")
                .setParallelism(2)
                .map(new Work(2_000))
                .name("work")
                .setParallelism(2)
                .rebalance()
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(2);
    }

    /**
     * "spin" is BUSY on CPU: it hashes in a loop for ~1 ms per record. Parallelism 1 everywhere so
     * only one core burns. "Source: numbers" is soft back-pressured by it.
     */
    static void busy(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(1)
                .map(new Spin(1))
                .name("spin")
                .setParallelism(1)
                .startNewChain()
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(1);
    }

    /**
     * "Source: legacy numbers" is a legacy SourceFunction: its Legacy Source Thread is HARD
     * back-pressured by "slow consumer" (sleeps 1 ms per record), and Flink reports its busy time
     * as NaN.
     */
    static void legacy(StreamExecutionEnvironment env) {
        env.addSource(new LegacyNumbers(), "legacy numbers")
                .setParallelism(1)
                .rebalance()
                .map(new Slow<Long>(1))
                .name("slow consumer")
                .setParallelism(1)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(1);
    }

    /**
     * "async lookup" waits for a 5 ms asynchronous lookup with room for one request in flight, so
     * its task thread parks in MailboxExecutorImpl.yield: busy for Flink, and for bpmon. "Source:
     * numbers" is soft back-pressured by it.
     */
    static void async(StreamExecutionEnvironment env) {
        DataStream<Long> numbers =
                env.fromSequence(0, Long.MAX_VALUE).name("numbers").setParallelism(1).rebalance();
        AsyncDataStream.unorderedWait(numbers, new SlowLookup(5), 10, TimeUnit.SECONDS, 1)
                .name("async lookup")
                .setParallelism(1)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(1);
    }

    /**
     * "skewed consumer" is slow in subtask 0 only (sleeps 1 ms per record there): subtask 0 is
     * busy, subtask 1 mostly idle, and "Source: numbers", which rebalances over both, is soft
     * back-pressured by the slow one. The bottleneck with skew.
     */
    static void skew(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(2)
                .rebalance()
                .map(new SkewedSlow<Long>(1))
                .name("skewed consumer")
                .setParallelism(2)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(2);
    }

    /**
     * The hard job's behaviour under the idle job's vertex names: "Source: numbers -> throttle"
     * is HARD back-pressured (Explode) by "idle sink" (sleeps 1 ms per record). Run beside the idle
     * job, same-named task threads on one TaskManager then behave in opposite ways, so telling
     * them apart wrongly shows.
     */
    static void mimic(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(2)
                .flatMap(new Explode(10000, 1024))
                .name("throttle")
                .setParallelism(2)
                .rebalance()
                .map(new Slow<byte[]>(1))
                .name("idle sink")
                .setParallelism(2)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(2);
    }

    // ---- Jobs whose bottleneck has a known cause (bpmon's cause tests). Each has one source
    // subtask feeding the bottleneck over a rebalance, so the source is back-pressured by it.

    /** "enrich" is CPU-bound in user code: it hashes for ~1 ms per record. */
    static void cpu(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(1)
                .rebalance()
                .map(new Spin(1))
                .name("enrich")
                .setParallelism(1)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(1);
    }

    /**
     * "shared client"'s three subtasks serialise on one monitor (a client shared by the
     * TaskManager, held 1 ms per call): two of three wait BLOCKED at any time.
     */
    static void lock(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(1)
                .rebalance()
                .map(new SharedClient<Long>(1))
                .name("shared client")
                .setParallelism(3)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(3);
    }

    /** "lookup" waits in a socket read for an external service at {@code hostPort} per record. */
    static void io(StreamExecutionEnvironment env, String hostPort) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(1)
                .rebalance()
                .map(new RemoteLookup(hostPort))
                .name("lookup")
                .setParallelism(1)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(1);
    }

    /** "rate limiter" sleeps 1 ms per record on purpose. */
    static void sleep(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(1)
                .rebalance()
                .map(new Slow<Long>(1))
                .name("rate limiter")
                .setParallelism(1)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(1);
    }

    /**
     * "per-key count" (2 subtasks, 1 ms per record) is keyed by a key that nine records in ten
     * share: the subtask owning it receives almost every record, the other almost none.
     */
    static void hotKey(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(1)
                .map(new HotKey())
                .name("key")
                .setParallelism(1)
                .keyBy(new Identity())
                .map(new Slow<Long>(1))
                .name("per-key count")
                .setParallelism(2)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(2);
    }

    /**
     * "retain" allocates 64 KiB per record and keeps the last 320 MiB alive on a heap not much
     * larger: the TaskManager spends its time in GC. Its input arrives over a local channel.
     */
    static void gc(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(1)
                .rebalance()
                .map(new Retain(64, 320))
                .name("retain")
                .setParallelism(1)
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(1);
    }

    /**
     * "receiver" runs in a slot sharing group of its own, so on a TaskManager other than the
     * source's when each has one free slot: 1 KiB records cross the network between them, and a
     * slow link holds the source up while "receiver" waits for input.
     */
    static void remote(StreamExecutionEnvironment env) {
        env.fromSequence(0, Long.MAX_VALUE)
                .name("numbers")
                .setParallelism(1)
                .flatMap(new Explode(1, 1024))
                .name("pad")
                .setParallelism(1)
                .rebalance()
                .map(new Slow<byte[]>(0))
                .name("receiver")
                .setParallelism(1)
                .slotSharingGroup("receiver")
                .sinkTo(Discard.sink())
                .name("discard")
                .setParallelism(1)
                .slotSharingGroup("receiver");
    }

    /** Keys a record by itself. */
    static final class Identity implements org.apache.flink.api.java.functions.KeySelector<Long, Long> {
        private static final long serialVersionUID = 1L;

        @Override
        public Long getKey(Long value) {
            return value;
        }
    }
}
