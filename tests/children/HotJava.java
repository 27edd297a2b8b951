// A JVM target for the profiling test: one hot method. vitals asks this JVM for its perf map through the
// attach protocol; no JDK tool runs. Runs for the seconds in args[0].
public class HotJava {
    static long hotMethodForVitals(long n, long x) {
        for (long i = 0; i < n; i++) {
            x = (x * 31 + i) % 1000003;
        }
        return x;
    }

    public static void main(String[] args) {
        long end = System.nanoTime() + (long) (Double.parseDouble(args.length > 0 ? args[0] : "30") * 1e9);
        long sink = 0;
        while (System.nanoTime() < end) {
            sink += hotMethodForVitals(1_000_000, sink);
        }
        System.out.println(sink);
    }
}
