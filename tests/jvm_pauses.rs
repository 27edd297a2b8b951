//! A real JVM churning garbage: vitals' pause counts and times from hsperfdata equal what `jstat -gc`
//! reports for the same process; safepoints are counted; the runtime is detected as jvm.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{require_tool, Vitals};

struct Jvm(std::process::Child);
impl Drop for Jvm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn jstat_gc(pid: u32) -> std::collections::HashMap<String, f64> {
    let out = Command::new(require_tool(
        "jstat",
        "apt-get install -y openjdk-17-jdk-headless",
    ))
    .args(["-gc", &pid.to_string()])
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let heads: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let vals: Vec<f64> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect();
    assert_eq!(heads.len(), vals.len(), "jstat output: {text}");
    heads.into_iter().map(str::to_owned).zip(vals).collect()
}

#[test]
fn hsperfdata_pauses_match_jstat() {
    let javac = require_tool("javac", "apt-get install -y openjdk-17-jdk-headless");
    let classes = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/children/Churn.java");
    let ok = Command::new(javac)
        .arg("-d")
        .arg(classes.path())
        .arg(src)
        .status()
        .unwrap();
    assert!(ok.success());
    let mut child = Command::new(require_tool(
        "java",
        "apt-get install -y openjdk-17-jdk-headless",
    ))
    .args(["-Xmx64m", "-XX:+UseG1GC", "-XX:+UsePerfData", "-cp"])
    .arg(classes.path())
    .args(["Churn", "1500", "2"])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let jvm = Jvm(child);
    let pid = jvm.0.id();

    let v = Vitals::start(&["--pid", &pid.to_string(), "--interval", "200ms"]);
    let e = v.wait_until(Duration::from_secs(15), "hsperfdata pauses", |e| {
        e.find("vitals_gc_pauses_total", &[("source", "hsperfdata")])
            .is_some()
            && e.has("vitals_safepoints_total")
    });
    let j = jstat_gc(pid);
    // The churn is over: the counters no longer move, so both readings are of the same state.
    let count = |collector_word: &str| -> (f64, f64) {
        let s = e
            .all("vitals_gc_pauses_total")
            .into_iter()
            .find(|s| {
                s.labels
                    .iter()
                    .any(|(k, v)| k == "collector" && v.contains(collector_word))
            })
            .unwrap();
        let collector = s
            .labels
            .iter()
            .find(|(k, _)| k == "collector")
            .unwrap()
            .1
            .clone();
        let t = e
            .get(
                "vitals_gc_pause_seconds_total",
                &[("collector", &collector), ("source", "hsperfdata")],
            )
            .unwrap();
        (s.value, t)
    };
    let (young, young_t) = count("young");
    let (full, full_t) = count("full");
    let (conc, conc_t) = count("concurrent");
    assert!(
        j["YGC"] > 10.0,
        "the churn should have caused many young pauses: {j:?}"
    );
    assert_eq!(young, j["YGC"]);
    assert_eq!(full, j["FGC"]);
    assert_eq!(conc, j["CGC"]);
    // jstat prints seconds with three decimals.
    assert!(
        (young_t - j["YGCT"]).abs() <= 0.0005 + 1e-9,
        "young {young_t} vs jstat {}",
        j["YGCT"]
    );
    assert!(
        (full_t - j["FGCT"]).abs() <= 0.0005 + 1e-9,
        "full {full_t} vs jstat {}",
        j["FGCT"]
    );
    assert!(
        (conc_t - j["CGCT"]).abs() <= 0.0005 + 1e-9,
        "concurrent-cycle pauses {conc_t} vs jstat {}",
        j["CGCT"]
    );
    assert!(
        ((young_t + full_t + conc_t) - j["GCT"]).abs() <= 0.0015 + 1e-9,
        "total vs GCT {}",
        j["GCT"]
    );
    assert!(e.get("vitals_safepoints_total", &[]).unwrap() >= young + full);
    assert!(e.get("vitals_safepoint_seconds_total", &[]).unwrap() > 0.0);
    assert!(e
        .find("vitals_target_info", &[("runtime", "jvm")])
        .is_some());
    assert!(e
        .get(
            "vitals_gc_pause_max_seconds",
            &[("runtime", "jvm"), ("source", "hsperfdata")]
        )
        .is_some());
}
