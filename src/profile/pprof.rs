//! The pprof `Profile` message (profile.proto of github.com/google/pprof, written out as prost structs:
//! eight small messages, which a build script and protoc would not make simpler) and the folded-stack
//! text, both built from a [`CpuProfile`].

use std::collections::HashMap;

use super::CpuProfile;

/// `perftools.profiles.Profile`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    /// What each sample value is.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// Mapped files.
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// Code locations.
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Every string, index 0 the empty one.
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// When the profile started, ns since the epoch.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// How long it ran.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// What the period counts.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// The sampling period.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form notes (string table indices).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// Which sample type a viewer shows first (string index).
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// `ValueType`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    /// Type name (string index).
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// Unit (string index).
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// `Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Locations, leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per sample type.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// Labels.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// `Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// Key (string index).
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// String value (string index).
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// Numeric value.
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// Unit of `num` (string index).
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// `Mapping`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    /// Unique, non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// First address.
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    /// One past the last.
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// File offset of `memory_start`.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// Path (string index).
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// Build id (string index).
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    /// Locations in it carry function names.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    /// And file names.
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    /// And line numbers.
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    /// And inlined frames.
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// `Location`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    /// Unique, non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its mapping, 0 for none.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// The address.
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Functions, innermost inlined first.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

/// `Line`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    /// The function.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// Source line.
    #[prost(int64, tag = "2")]
    pub line: i64,
}

/// `Function`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    /// Unique, non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Name (string index).
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// Name as in the binary (string index).
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// Source file (string index).
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Interns strings into a string table.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        let mut s = Strings::default();
        s.get("");
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// The profile as a pprof message.
pub fn to_pprof(p: &CpuProfile) -> Profile {
    let mut strings = Strings::new();
    let samples_t = ValueType {
        r#type: strings.get("samples"),
        unit: strings.get("count"),
    };
    let cpu_t = ValueType {
        r#type: strings.get("cpu"),
        unit: strings.get("nanoseconds"),
    };
    let mapping = p
        .symbols
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.end,
            file_offset: m.offset,
            filename: strings.get(&m.path),
            build_id: m.build_id.as_deref().map_or(0, |b| strings.get(b)),
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        })
        .collect();
    let mut functions: HashMap<(String, Option<String>), u64> = HashMap::new();
    let mut function = Vec::new();
    let mut location = Vec::with_capacity(p.symbols.locations.len());
    for (i, loc) in p.symbols.locations.iter().enumerate() {
        let mut line = Vec::with_capacity(loc.lines.len());
        for l in &loc.lines {
            let key = (l.function.clone(), l.file.clone());
            let id = match functions.get(&key) {
                Some(&id) => id,
                None => {
                    let id = function.len() as u64 + 1;
                    let name = strings.get(&l.function);
                    function.push(Function {
                        id,
                        name,
                        system_name: name,
                        filename: l.file.as_deref().map_or(0, |f| strings.get(f)),
                    });
                    functions.insert(key, id);
                    id
                }
            };
            line.push(Line {
                function_id: id,
                line: i64::from(l.line),
            });
        }
        location.push(Location {
            id: i as u64 + 1,
            mapping_id: loc.mapping.map_or(0, |m| m as u64 + 1),
            address: loc.address,
            line,
        });
    }
    let pid_key = strings.get("pid");
    let sample = p
        .stacks
        .iter()
        .map(|s| Sample {
            location_id: s.locations.iter().map(|&l| l as u64 + 1).collect(),
            value: vec![s.count as i64, (s.count * p.period_ns) as i64],
            label: vec![Label {
                key: pid_key,
                num: i64::from(s.pid),
                ..Default::default()
            }],
        })
        .collect();
    let comment = p.notes.iter().map(|n| strings.get(n)).collect();
    let default_sample_type = cpu_t.r#type;
    Profile {
        sample_type: vec![samples_t, cpu_t.clone()],
        sample,
        mapping,
        location,
        function,
        time_nanos: p.started_unix_ns as i64,
        duration_nanos: p.duration.as_nanos() as i64,
        period_type: Some(cpu_t),
        period: p.period_ns as i64,
        comment,
        default_sample_type,
        string_table: strings.table,
    }
}

/// The profile gzipped, as `go tool pprof` and Pyroscope read it.
pub fn to_pprof_gzip(p: &CpuProfile) -> Vec<u8> {
    use prost::Message;
    use std::io::Write;
    let bytes = to_pprof(p).encode_to_vec();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = e.write_all(&bytes);
    e.finish().unwrap_or_default()
}

/// Folded stacks: one line per distinct stack, frames root first separated by `;`, then the sample
/// count. Inlined functions are frames of their own.
pub fn to_folded(p: &CpuProfile) -> String {
    let mut merged: HashMap<String, u64> = HashMap::new();
    for s in &p.stacks {
        let mut names: Vec<&str> = Vec::new();
        for &l in s.locations.iter().rev() {
            if let Some(loc) = p.symbols.locations.get(l) {
                names.extend(loc.lines.iter().rev().map(|l| l.function.as_str()));
            }
        }
        let line: String = names
            .iter()
            .map(|n| n.replace([';', '\n'], "_"))
            .collect::<Vec<_>>()
            .join(";");
        *merged.entry(line).or_default() += s.count;
    }
    let mut lines: Vec<(String, u64)> = merged.into_iter().collect();
    lines.sort();
    let mut out = String::new();
    for (stack, n) in lines {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&n.to_string());
        out.push('\n');
    }
    out
}

/// Folded stacks of a gzipped pprof profile (as [`to_pprof_gzip`] writes), for the captures the
/// continuous profiler keeps in that form: one line per distinct stack, frames root first, then the
/// sample count (the first sample value). None when the bytes are no such profile.
pub fn folded_from_gzip(gz: &[u8]) -> Option<String> {
    use prost::Message;
    use std::io::Read;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .ok()?;
    let p = Profile::decode(bytes.as_slice()).ok()?;
    let string = |i: i64| p.string_table.get(i as usize).map_or("", String::as_str);
    let functions: HashMap<u64, &str> = p.function.iter().map(|f| (f.id, string(f.name))).collect();
    let locations: HashMap<u64, &Location> = p.location.iter().map(|l| (l.id, l)).collect();
    let mut merged: HashMap<String, i64> = HashMap::new();
    for s in &p.sample {
        let mut names: Vec<String> = Vec::new();
        for id in s.location_id.iter().rev() {
            if let Some(loc) = locations.get(id) {
                for line in loc.line.iter().rev() {
                    let name = functions.get(&line.function_id).copied().unwrap_or("");
                    names.push(name.replace([';', '\n'], "_"));
                }
            }
        }
        *merged.entry(names.join(";")).or_default() += s.value.first().copied().unwrap_or(0);
    }
    let mut lines: Vec<(String, i64)> = merged.into_iter().collect();
    lines.sort();
    let mut out = String::new();
    for (stack, n) in lines {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&n.to_string());
        out.push('\n');
    }
    Some(out)
}
