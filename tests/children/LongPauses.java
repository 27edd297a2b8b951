// A test target for long stop-the-world pauses: builds a large live set of small linked objects (slow to
// mark and compact), prints "ready", then on each line "gc" read from stdin calls System.gc() (a full
// collection of the whole live set under -XX:+UseSerialGC) and prints "done <ms>".
import java.io.BufferedReader;
import java.io.InputStreamReader;

public class LongPauses {
    static final class Node {
        Node next;
        long payload;
        Node(Node next, long payload) {
            this.next = next;
            this.payload = payload;
        }
    }

    static Node[] roots;

    public static void main(String[] args) throws Exception {
        int millions = args.length > 0 ? Integer.parseInt(args[0]) : 8;
        roots = new Node[1024];
        for (int i = 0; i < millions * 1_000_000; i++) {
            int r = i & 1023;
            roots[r] = new Node(roots[r], i);
        }
        System.out.println("ready");
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.trim().equals("gc")) {
                long t = System.nanoTime();
                System.gc();
                System.out.println("done " + (System.nanoTime() - t) / 1_000_000);
                System.out.flush();
            }
        }
    }
}
