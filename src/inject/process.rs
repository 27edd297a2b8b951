//! The `--process` regex for an app container, read from its `command` and `args`: the program it runs,
//! seen through the wrappers (`sh -c`, `tini`, `env`) and interpreters (`java -jar`, `python -m`) that
//! would otherwise make every app look alike.

/// Programs that start another program named in their arguments.
const WRAPPERS: &[&str] = &["tini", "dumb-init", "env", "nohup", "setsid"];
/// Shells, whose `-c` script names the program.
const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh"];
/// Interpreters, whose script, jar or module names the app.
const INTERPRETERS: &[&str] = &[
    "java", "python", "python2", "python3", "pypy", "pypy3", "node", "nodejs", "bun", "deno",
    "ruby", "perl", "php", "dotnet",
];
/// Interpreter options that take the next argument as their value.
const VALUE_OPTIONS: &[&str] = &[
    "-cp",
    "-classpath",
    "--class-path",
    "-p",
    "--module-path",
    "-r",
    "--require",
    "-W",
    "-X",
    "-c",
    "-e",
];

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn is_interpreter(prog: &str) -> bool {
    INTERPRETERS.contains(&prog)
        || prog
            .strip_prefix("python")
            .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// The regex that selects the container's main process, or None when the manifest does not say what
/// runs (no command, and no args that start with a program: the image's entrypoint is not known here).
///
/// With `command`, the process' argv[0] is the program as written, so the regex is anchored at the
/// start of the command line (`^java .*shop\.jar`). With `args` only, the image's entrypoint comes
/// first, so the program's name is matched as a word anywhere.
pub fn process_regex(command: &[String], args: &[String]) -> Option<String> {
    let (mut argv, anchored): (Vec<String>, bool) = if !command.is_empty() {
        (command.iter().chain(args).cloned().collect(), true)
    } else if args.first().is_some_and(|a| !a.starts_with('-')) {
        (args.to_vec(), false)
    } else {
        return None;
    };
    // Wrappers and shells, repeatedly (`tini -- sh -c 'exec java …'`).
    for _ in 0..4 {
        let prog = basename(argv.first()?).to_owned();
        if WRAPPERS.contains(&prog.as_str()) {
            let rest: Vec<String> = argv
                .iter()
                .skip(1)
                .skip_while(|a| a.starts_with('-') || (prog == "env" && a.contains('=')))
                .cloned()
                .collect();
            if rest.is_empty() {
                break;
            }
            argv = rest;
        } else if SHELLS.contains(&prog.as_str()) {
            let c = argv
                .iter()
                .position(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'))?;
            let script = argv.get(c + 1)?;
            let words: Vec<String> = script
                .split_whitespace()
                .skip_while(|w| *w == "exec" || (w.contains('=') && !w.starts_with('-')))
                .take_while(|w| !w.contains([';', '&', '|', '<', '>', '(', ')', '`']))
                .map(str::to_owned)
                .collect();
            let first = words.first()?;
            if first.contains(['$', '"', '\'', '\\', '*', '?', '[']) {
                return None;
            }
            argv = words;
        } else {
            break;
        }
    }
    let program = argv.first()?;
    let prog = basename(program);
    if prog.is_empty() {
        return None;
    }
    let head = if anchored {
        format!("^{}", regex::escape(program))
    } else {
        format!("(^|[ /]){}", regex::escape(prog))
    };
    if is_interpreter(prog) {
        if let Some(main) = interpreter_main(&argv[1..]) {
            let main = basename(main.trim_end_matches('/'));
            if !main.is_empty() {
                return Some(format!("{head} .*{}", regex::escape(main)));
            }
        }
    }
    Some(format!("{head}( |$)"))
}

/// The script, jar or module an interpreter runs: the value of `-jar`/`-m`, else its first argument
/// that is not an option.
fn interpreter_main(args: &[String]) -> Option<&str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-jar" || a == "-m" {
            return it.next().map(String::as_str);
        }
        if VALUE_OPTIONS.contains(&a.as_str()) {
            it.next();
            continue;
        }
        if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(command: &[&str], args: &[&str]) -> Option<String> {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        process_regex(&v(command), &v(args))
    }

    /// The regex and the command lines (argv joined by spaces, as vitals matches them) it must and must
    /// not match.
    fn check(regex: &str, yes: &[&str], no: &[&str]) {
        let r = regex::Regex::new(regex).unwrap();
        for y in yes {
            assert!(r.is_match(y), "{regex} should match {y:?}");
        }
        for n in no {
            assert!(!r.is_match(n), "{regex} should not match {n:?}");
        }
    }

    #[test]
    fn plain_programs_are_anchored_on_argv0() {
        let r = re(&["/usr/local/bin/api-server"], &["--port=8080"]).unwrap();
        assert_eq!(r, r"^/usr/local/bin/api\-server( |$)");
        check(
            &r,
            &["/usr/local/bin/api-server --port=8080"],
            &["/usr/local/bin/api-server2", "sh /usr/local/bin/api-server"],
        );
        let r = re(&["nginx", "-g", "daemon off;"], &[]).unwrap();
        check(
            &r,
            &["nginx -g daemon off;", "nginx"],
            &["nginx: worker process"],
        );
    }

    #[test]
    fn interpreters_name_their_script_jar_or_module() {
        let r = re(&["java", "-XX:+UsePerfData", "-jar", "/app/shop.jar"], &[]).unwrap();
        assert_eq!(r, r"^java .*shop\.jar");
        check(
            &r,
            &["java -XX:+UsePerfData -jar /app/shop.jar"],
            &["java -jar /app/other.jar", "jstat -gc 7"],
        );
        let r = re(&["python3"], &["-u", "-m", "gunicorn", "app:app"]).unwrap();
        assert_eq!(r, r"^python3 .*gunicorn");
        let r = re(&["java", "-cp", "/app/lib/*", "com.shop.Main"], &[]).unwrap();
        assert_eq!(r, r"^java .*com\.shop\.Main");
        let r = re(&["node", "--max-old-space-size=512", "dist/server.js"], &[]).unwrap();
        assert_eq!(r, r"^node .*server\.js");
        let r = re(&["python3.12", "/srv/app/"], &[]).unwrap();
        assert_eq!(r, r"^python3\.12 .*app");
    }

    #[test]
    fn wrappers_and_shells_are_seen_through() {
        let r = re(&["sh", "-c", "exec java -jar /app/shop.jar"], &[]).unwrap();
        assert_eq!(r, r"^java .*shop\.jar");
        let r = re(
            &[
                "/bin/bash",
                "-ec",
                "FOO=1 exec gunicorn app:app --workers 4",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(r, r"^gunicorn( |$)");
        let r = re(&["tini", "--"], &["node", "server.js"]).unwrap();
        assert_eq!(r, r"^node .*server\.js");
        let r = re(&["env", "-i", "A=b", "ruby", "app.rb"], &[]).unwrap();
        assert_eq!(r, r"^ruby .*app\.rb");
        assert_eq!(
            re(&["sh", "-c", "$APP_CMD"], &[]),
            None,
            "a variable names nothing"
        );
    }

    #[test]
    fn args_alone_match_the_program_as_a_word() {
        let r = re(&[], &["postgres", "-c", "max_connections=50"]).unwrap();
        assert_eq!(r, r"(^|[ /])postgres( |$)");
        check(
            &r,
            &[
                "postgres -c max_connections=50",
                "/docker-entrypoint.sh postgres",
            ],
            &["postgres_exporter", "/usr/bin/pgpostgres"],
        );
        assert_eq!(
            re(&[], &["--port=80"]),
            None,
            "flags are for an unknown entrypoint"
        );
        assert_eq!(re(&[], &[]), None);
    }
}
