// A test target for the JVM pause signals: allocates garbage for a given time (forcing young and, with
// System.gc(), full collections), prints "ready", then stays idle so its counters stop moving.
public class Churn {
    static volatile Object sink;

    public static void main(String[] args) throws Exception {
        long millis = args.length > 0 ? Long.parseLong(args[0]) : 2000;
        int fullGcs = args.length > 1 ? Integer.parseInt(args[1]) : 2;
        long end = System.currentTimeMillis() + millis;
        while (System.currentTimeMillis() < end) {
            for (int i = 0; i < 1000; i++) {
                sink = new byte[1024 + (i % 64) * 64];
            }
        }
        for (int i = 0; i < fullGcs; i++) {
            System.gc();
        }
        System.out.println("ready");
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }
}
