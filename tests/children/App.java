/** A stand-in application for target selection tests: holds some heap and waits to be killed. */
public class App {
    public static void main(String[] args) throws Exception {
        byte[][] held = new byte[8][];
        for (int i = 0; i < held.length; i++) {
            held[i] = new byte[1 << 20];
        }
        System.out.println("app running, holding " + held.length + " MiB");
        Thread.sleep(Long.MAX_VALUE);
    }
}
