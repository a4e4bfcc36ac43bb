import java.util.concurrent.locks.LockSupport;

/**
 * A JVM with threads named like Flink task threads, in known states, for the agent's attach tests.
 * Prints READY once every thread is running, then waits until killed.
 *
 *   java FakeTaskManager [extraThreads]
 */
public class FakeTaskManager {
    public static void main(String[] args) throws Exception {
        int extra = args.length > 0 ? Integer.parseInt(args[0]) : 0;
        start("Source: numbers -> explode (1/2)#0", () -> { while (true) LockSupport.park(); });
        start("Map \"quoted\" (x) -> Sink: out (2/2)#1", () -> {
            while (true) {
                try { Thread.sleep(1000); } catch (InterruptedException e) { return; }
            }
        });
        for (int i = 0; i < extra; i++) {
            start("Filler " + i + " (1/1)#0", () -> { while (true) LockSupport.park(); });
        }
        System.out.println("READY");
        System.out.flush();
        while (true) Thread.sleep(60_000);
    }

    private static void start(String name, Runnable body) {
        Thread t = new Thread(body, name);
        t.setDaemon(true);
        t.start();
    }
}
