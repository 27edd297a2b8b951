//! Where vitals' own log lines go: stderr (each line marked in `run` mode, so it stands apart from the
//! child's output) or a file. Writing a log line never fails loudly: a closed stderr (a pipe into `head`, a
//! log shipper that restarted) must not stop vitals, which still has a child to reap.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// The destination of log lines.
#[derive(Clone)]
pub enum LogSink {
    /// Standard error, each line starting with `prefix` (empty for none).
    Stderr {
        /// Written before every line, e.g. `"[vitals] "`.
        prefix: &'static str,
    },
    /// An append-only file opened once at start-up.
    File(Arc<Mutex<File>>),
}

impl LogSink {
    /// Opens `path` for appending (created if missing), naming the flag in the error.
    pub fn file(path: &std::path::Path) -> Result<LogSink, String> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| LogSink::File(Arc::new(Mutex::new(f))))
            .map_err(|e| format!("--log-file {}: {e}", path.display()))
    }
}

/// One log line's writer: buffers the formatted event and writes it in one call when dropped, ignoring
/// every error (EPIPE, ENOSPC): there is nowhere left to report them.
pub struct LineWriter {
    sink: LogSink,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match &self.sink {
            LogSink::Stderr { prefix } => {
                let mut line = Vec::with_capacity(prefix.len() + self.buf.len());
                line.extend_from_slice(prefix.as_bytes());
                line.extend_from_slice(&self.buf);
                let _ = io::stderr().lock().write_all(&line);
            }
            LogSink::File(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(&self.buf);
                }
            }
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            sink: self.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

/// Prints a start-up error to stderr without panicking when stderr is closed.
pub fn print_error(message: &str) {
    let _ = writeln!(io::stderr().lock(), "error: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_writes_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vitals.log");
        let sink = LogSink::file(&path).unwrap();
        {
            let mut w = sink.make_writer();
            w.write_all(b"one ").unwrap();
            w.write_all(b"line\n").unwrap();
        }
        sink.make_writer().write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one line\ntwo\n");
        let e = LogSink::file(std::path::Path::new("/nonexistent/dir/v.log"))
            .err()
            .unwrap();
        assert!(e.contains("--log-file /nonexistent/dir/v.log"), "{e}");
    }
}
