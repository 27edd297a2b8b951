// A test target for the heap live set: holds a constant live set, keeps replacing a ring of medium-lived
// chunks (they survive a young collection, are promoted and die in the old generation, so old occupancy
// climbs between old collections with no growth of the live set), and optionally leaks into a static list.
//
// java LiveSet LIVE_MIB RING_MIB CHURN_MIB_PER_S LEAK_KIB_PER_S [RING_GROWTH_MIB_PER_S]
// Prints "ready" once the live set is built. With a ring growth, the ring starts at RING_MIB and holds that
// much more every second (up to 4 times RING_MIB plus 64 MiB), so young pauses copy more and more.
// With -Dstart=stdin it first waits for a line on its standard input, before it allocates anything: a test
// holds it there until vitals has the JVM's hsperfdata file, so that every pause comes after vitals' first
// reading of it.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.List;

public class LiveSet {
    static final int CHUNK = 64 * 1024;
    static final List<byte[]> LEAKED = new ArrayList<>();
    static byte[][] live;
    static byte[][] ring;

    public static void main(String[] args) throws Exception {
        int liveMib = Integer.parseInt(args[0]);
        int ringMib = Integer.parseInt(args[1]);
        double churnMibPerSec = Double.parseDouble(args[2]);
        double leakKibPerSec = Double.parseDouble(args[3]);
        if ("stdin".equals(System.getProperty("start"))) {
            new BufferedReader(new InputStreamReader(System.in)).readLine();
        }
        live = new byte[liveMib * 16][];
        for (int i = 0; i < live.length; i++) {
            live[i] = new byte[CHUNK];
        }
        double growth = args.length > 4 ? Double.parseDouble(args[4]) : 0;
        int ringStart = Math.max(1, ringMib * 16);
        ring = new byte[growth > 0 ? ringStart * 4 + 64 * 16 : ringStart][];
        System.out.println("ready");
        System.out.flush();
        long start = System.nanoTime();
        long churned = 0;
        long leaked = 0;
        while (true) {
            double t = (System.nanoTime() - start) / 1e9;
            for (; churned < t * churnMibPerSec * 16; churned++) {
                int len = (int) Math.min(ring.length, ringStart + t * growth * 16);
                ring[(int) (churned % len)] = new byte[CHUNK];
            }
            for (; leaked < t * leakKibPerSec / 64; leaked++) {
                LEAKED.add(new byte[CHUNK]);
            }
            Thread.sleep(5);
        }
    }
}
