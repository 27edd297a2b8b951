//! What vitals says about its target: a warning and a 503 from /readyz while none is found, the attached
//! process on / and in `vitals_target_info{selected_by}`, and a switch to another running match that is
//! not counted as a restart.

mod common;

use std::time::{Duration, Instant};

use common::{TestChild, Vitals};

#[test]
fn a_missing_target_is_logged_and_not_ready() {
    // pid_max is at most 2^22, so this pid cannot exist.
    let v = Vitals::start(&["--pid", "999999999", "--interval", "100ms"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let (code, body) = loop {
        let (code, _, body) = v.get("/readyz", None);
        if body.contains("no target") || Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body,
        "not ready: no target: no process found for pid 999999999\n"
    );
    let e = v.scrape();
    assert_eq!(e.get("vitals_target_up", &[]), Some(0.0));
    let (_, _, page) = v.get("/", None);
    assert!(
        page.contains("no target: no process found for pid 999999999"),
        "{page}"
    );
    // Several ticks later the warning was logged once (it repeats once a minute).
    std::thread::sleep(Duration::from_millis(500));
    let log = v.log.lock().unwrap().clone();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("no process found for pid 999999999"))
        .count();
    assert_eq!(warnings, 1, "{log}");
}

#[test]
fn switching_to_the_surviving_match_is_not_a_restart() {
    let tag = format!("0.0{}7", std::process::id());
    let first = TestChild::hold(&["--spin", &tag]);
    let second = TestChild::hold(&["--spin", &tag]);
    let v = Vitals::start(&[
        "--process",
        &format!("hold\\.py --spin {}", tag.replace('.', "\\.")),
        "--interval",
        "100ms",
    ]);
    let (first_pid, second_pid) = (first.pid().to_string(), second.pid().to_string());
    v.wait_until(Duration::from_secs(10), "oldest match attached", |e| {
        e.find(
            "vitals_target_info",
            &[("pid", &first_pid), ("selected_by", "process")],
        )
        .is_some()
    });
    // The page names the target once its first sample (the whole tree's) is taken.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let page = loop {
        let (code, _, page) = v.get("/", None);
        assert_eq!(code, 200);
        if page.contains(&format!("watching pid {first_pid} (python3"))
            || std::time::Instant::now() > deadline
        {
            break page;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        page.contains(&format!("watching pid {first_pid} (python3")),
        "{page}"
    );
    assert_eq!(v.get("/readyz", None).0, 200);

    drop(first);
    let e = v.wait_until(Duration::from_secs(10), "survivor attached", |e| {
        e.find("vitals_target_info", &[("pid", &second_pid)])
            .is_some()
    });
    assert_eq!(
        e.get("vitals_target_restarts_total", &[]),
        Some(0.0),
        "the survivor was running all along"
    );

    drop(second);
    let third = TestChild::hold(&["--spin", &tag]);
    let third_pid = third.pid().to_string();
    let e = v.wait_until(Duration::from_secs(10), "new instance attached", |e| {
        e.find("vitals_target_info", &[("pid", &third_pid)])
            .is_some()
    });
    assert_eq!(
        e.get("vitals_target_restarts_total", &[]),
        Some(1.0),
        "a process started after the last one exited is a restart"
    );
}
