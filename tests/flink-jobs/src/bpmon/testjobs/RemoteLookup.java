package bpmon.testjobs;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.Socket;
import org.apache.flink.api.common.functions.MapFunction;

/**
 * Looks every record up in an external service over TCP (8 bytes out, 8 bytes back), blocking
 * in the socket read until the service answers: an operator waiting on I/O. The connection is
 * opened on the first record (no {@code open()}: its signature differs between Flink 1.x and 2.x).
 */
public final class RemoteLookup implements MapFunction<Long, Long> {
    private static final long serialVersionUID = 1L;
    private final String host;
    private final int port;
    private transient Socket socket;
    private transient DataInputStream in;
    private transient DataOutputStream out;

    public RemoteLookup(String hostPort) {
        int colon = hostPort.lastIndexOf(':');
        this.host = hostPort.substring(0, colon);
        this.port = Integer.parseInt(hostPort.substring(colon + 1));
    }

    @Override
    public Long map(Long value) {
        try {
            if (socket == null) {
                socket = new Socket(host, port);
                socket.setTcpNoDelay(true);
                in = new DataInputStream(socket.getInputStream());
                out = new DataOutputStream(socket.getOutputStream());
            }
            out.writeLong(value);
            out.flush();
            return in.readLong();
        } catch (IOException e) {
            throw new UncheckedIOException("lookup service at " + host + ":" + port, e);
        }
    }
}
