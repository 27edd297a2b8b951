//! Pressure stall information (PSI): the cumulative time tasks stalled on cpu, memory or io, per cgroup on
//! v2 and system-wide from /proc/pressure otherwise.

use super::procfs::ParseError;

/// Cumulative stall totals of one resource, in microseconds. `full` is absent for cpu on older kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// Time at least one task stalled.
    pub some_us: u64,
    /// Time all non-idle tasks stalled at once.
    pub full_us: Option<u64>,
}

/// Parses a `*.pressure` or `/proc/pressure/*` file.
pub fn parse_pressure(buf: &[u8]) -> Result<Pressure, ParseError> {
    let err = |what: String| ParseError {
        file: "pressure",
        what,
    };
    let text = std::str::from_utf8(buf).map_err(|_| err("not UTF-8".into()))?;
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let kind = line.split_ascii_whitespace().next();
        // total= is the last field: found from the end, not by splitting every field.
        let total = line.rfind(" total=").map(|i| {
            line[i + 7..]
                .trim_end()
                .parse::<u64>()
                .map_err(|_| err(format!("total is not a number in {line:?}")))
        });
        match (kind, total) {
            (Some("some"), Some(t)) => some = Some(t?),
            (Some("full"), Some(t)) => full = Some(t?),
            (Some("some" | "full"), None) => return Err(err(format!("no total= in {line:?}"))),
            _ => {}
        }
    }
    let some_us = some.ok_or_else(|| err("no 'some' line".into()))?;
    Ok(Pressure {
        some_us,
        full_us: full,
    })
}

/// The three PSI resources, in label order.
pub const RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_some_and_full() {
        let p = parse_pressure(
            b"some avg10=1.09 avg60=1.48 avg300=0.44 total=1665190\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=42\n",
        )
        .unwrap();
        assert_eq!(
            p,
            Pressure {
                some_us: 1_665_190,
                full_us: Some(42)
            }
        );
    }

    #[test]
    fn cpu_without_full_line() {
        let p = parse_pressure(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!(p.full_us, None);
    }

    #[test]
    fn malformed() {
        assert!(parse_pressure(b"").is_err());
        assert!(parse_pressure(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=x\n").is_err());
        assert!(parse_pressure(b"some avg10=0.00 avg60=0.00\n").is_err());
        assert!(parse_pressure(b"full avg10=0.00 total=3\n").is_err());
    }
}
