package org.apache.flink.runtime.taskexecutor;

import java.net.InetAddress;
import java.net.ServerSocket;
import java.util.concurrent.locks.LockSupport;

/**
 * A JVM that the agent's discovery takes for a Flink TaskManager (its main class is Flink's), with
 * task threads named like Flink's and a listening port like a TaskManager's RPC port, for the
 * daemon tests. Prints "READY <port>" once every thread runs, then waits until killed.
 */
public class TaskManagerRunner {
    public static void main(String[] args) throws Exception {
        start("Source: numbers -> explode (1/2)#0", () -> { while (true) LockSupport.park(); });
        start("Map (1/2)#0", TaskManagerRunner::sleepForever);
        start("Sink: out (2/2)#0", TaskManagerRunner::sleepForever);
        try (ServerSocket rpc = new ServerSocket(0, 50, InetAddress.getLoopbackAddress())) {
            System.out.println("READY " + rpc.getLocalPort());
            System.out.flush();
            while (true) Thread.sleep(60_000);
        }
    }

    private static void sleepForever() {
        while (true) {
            try { Thread.sleep(1000); } catch (InterruptedException e) { return; }
        }
    }

    private static void start(String name, Runnable body) {
        Thread t = new Thread(body, name);
        t.setDaemon(true);
        t.start();
    }
}
