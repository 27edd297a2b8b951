// A test target for pauses in a JVM's first seconds: builds a live set of MILLIONS million small linked
// objects, twice (young collections while it grows), calls System.gc() once (a full collection of both),
// drops the second half and calls System.gc() FULL_GCS - 1 more times (shorter full collections of what
// is left: the longest pause comes first), prints "done" and idles, so its counters stop moving.
//
// java EarlyPauses MILLIONS FULL_GCS
public class EarlyPauses {
    static final class Node {
        Node next;
        long payload;

        Node(Node next, long payload) {
            this.next = next;
            this.payload = payload;
        }
    }

    static Node[] roots;
    static Node[] extra;

    public static void main(String[] args) throws Exception {
        int millions = Integer.parseInt(args[0]);
        int fullGcs = Integer.parseInt(args[1]);
        roots = new Node[1024];
        extra = new Node[1024];
        for (int i = 0; i < millions * 1_000_000; i++) {
            int r = i & 1023;
            roots[r] = new Node(roots[r], i);
            extra[r] = new Node(extra[r], i);
        }
        System.gc();
        extra = null;
        for (int i = 1; i < fullGcs; i++) {
            System.gc();
        }
        System.out.println("done");
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }
}
