/**
 * A JVM with known resource use, for the agent's resource tests. Prints READY once its threads run,
 * then waits until killed.
 *
 *   java ResourceLoad spin    "bpmon-spin" spins on CPU, "bpmon-sleep" sleeps
 *   java ResourceLoad alloc   "bpmon-alloc" allocates arrays, keeping the last 16 MiB in a ring
 *                             (run it with a small heap: it collects all the time)
 *   java ResourceLoad quiet   nothing runs
 */
public class ResourceLoad {
    static volatile long sink;

    public static void main(String[] args) throws Exception {
        String mode = args.length > 0 ? args[0] : "quiet";
        switch (mode) {
            case "spin":
                start("bpmon-spin", ResourceLoad::spin);
                start("bpmon-sleep", ResourceLoad::sleep);
                break;
            case "alloc":
                start("bpmon-alloc", ResourceLoad::alloc);
                break;
            case "quiet":
                break;
            default:
                throw new IllegalArgumentException(mode);
        }
        System.out.println("READY");
        System.out.flush();
        while (true) Thread.sleep(60_000);
    }

    static void spin() {
        long x = 1;
        while (true) {
            x = x * 6364136223846793005L + 1442695040888963407L;
            if ((x & 0xffff) == 0) sink = x;
        }
    }

    static void sleep() {
        while (true) {
            try { Thread.sleep(1000); } catch (InterruptedException e) { return; }
        }
    }

    static void alloc() {
        byte[][] ring = new byte[512][];
        int i = 0;
        while (true) ring[i++ & 511] = new byte[32 * 1024];
    }

    private static void start(String name, Runnable body) {
        Thread t = new Thread(body, name);
        t.setDaemon(true);
        t.start();
    }
}
