//! Several targets per sidecar: the app under `vitals run` and a real nginx (master and two workers) as a
//! second named target; each target family carries `target`, the nginx tree is counted whole, and the
//! figures match /proc.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{child_script, require_tool, Vitals};

struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        common::unsafe_kill(self.0.id(), "QUIT");
        let _ = self.0.wait();
    }
}

#[test]
fn nginx_beside_the_app_is_a_second_named_target() {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| require_tool("nginx", "apt-get install -y nginx-light"));
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let d = dir.path().display();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\"; }} }}\n}}\n"
        ),
    )
    .unwrap();
    let proxy = Nginx(
        Command::new(&nginx)
            .args(["-c", conf.to_str().unwrap(), "-p", &d.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    let pattern = format!(
        "nginx: master process .*{}",
        regex_escape(conf.to_str().unwrap())
    );
    let v = Vitals::start(&[
        "--target",
        &format!("proxy=process:{pattern}"),
        "--interval",
        "300ms",
        "run",
        "--",
        "python3",
        child_script("hold.py").to_str().unwrap(),
        "--threads",
        "3",
    ]);
    let e = v.wait_until(Duration::from_secs(20), "both targets", |e| {
        e.get("vitals_target_up", &[("target", "app")]) == Some(1.0)
            && e.get("vitals_target_up", &[("target", "proxy")]) == Some(1.0)
            && e.get("vitals_target_processes", &[("target", "proxy")]) == Some(3.0)
            && e.get("process_threads", &[("target", "app")]) == Some(3.0)
    });
    let master = proxy.0.id();
    let info = e
        .find("vitals_target_info", &[("target", "proxy")])
        .unwrap();
    assert!(
        info.labels
            .iter()
            .any(|(k, v)| k == "pid" && *v == master.to_string()),
        "{info:?}"
    );
    // Every target family is labelled: no series of a target family lacks `target`.
    for s in &e.samples {
        if s.name.starts_with("process_") || s.name.starts_with("vitals_target_") {
            assert!(
                s.labels.iter().any(|(k, _)| k == "target"),
                "{} has no target label",
                s.name
            );
        }
    }
    assert_eq!(e.get("process_threads", &[("target", "app")]), Some(3.0));
    // nginx's memory and threads are its three processes' (read with the procfs crate).
    let page = procfs::page_size() as f64;
    let mut rss = 0.0;
    let mut threads = 0.0;
    for p in procfs::process::all_processes().unwrap().flatten() {
        let Ok(s) = p.stat() else { continue };
        if s.pid as u32 == master || s.ppid as u32 == master {
            rss += s.rss as f64 * page;
            threads += s.num_threads as f64;
        }
    }
    let seen = e
        .get("process_memory_usage_bytes", &[("target", "proxy")])
        .unwrap();
    eprintln!(
        "figure: nginx master + 2 workers: rss {seen} (truth {rss}), threads truth {threads}"
    );
    assert!((seen - rss).abs() <= 0.02 * rss, "{seen} vs {rss}");
    assert_eq!(
        e.get("process_threads", &[("target", "proxy")]),
        Some(threads)
    );
    drop(proxy);
    let e = v.wait_until(Duration::from_secs(10), "proxy down", |e| {
        e.get("vitals_target_up", &[("target", "proxy")]) == Some(0.0)
    });
    assert_eq!(e.get("vitals_target_up", &[("target", "app")]), Some(1.0));
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}
