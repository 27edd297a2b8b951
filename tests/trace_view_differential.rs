//! The in-place trace reader against prost on many inputs: the SDK fixtures, requests written field by
//! field from the OTLP layouts (fields repeated, unknown fields of every wire type, wrong wire types,
//! invalid UTF-8, deep nesting), and byte-level mutations of them. For each, prost decodes it exactly
//! when the view accepts it, and when both do, the consumers see the same (see
//! `differential/trace_view.rs`).

#[path = "differential/trace_view.rs"]
mod differential;

use differential::{check, Verdict};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// What a field of the OTLP layouts holds.
#[derive(Clone, Copy)]
enum F {
    Varint,
    Fixed32,
    Fixed64,
    Bytes,
    Str,
    Msg(M),
}

/// The OTLP messages of a trace export.
#[derive(Clone, Copy, PartialEq)]
enum M {
    Request,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// The known fields of each message, restated from opentelemetry-proto's generated code.
fn fields(m: M) -> &'static [(u32, F)] {
    use F::*;
    match m {
        M::Request => &[(1, Msg(M::ResourceSpans))],
        M::ResourceSpans => &[(1, Msg(M::Resource)), (2, Msg(M::ScopeSpans)), (3, Str)],
        M::Resource => &[(1, Msg(M::KeyValue)), (2, Varint), (3, Msg(M::EntityRef))],
        M::EntityRef => &[(1, Str), (2, Str), (3, Str), (4, Str)],
        M::ScopeSpans => &[(1, Msg(M::Scope)), (2, Msg(M::Span)), (3, Str)],
        M::Scope => &[(1, Str), (2, Str), (3, Msg(M::KeyValue)), (4, Varint)],
        M::Span => &[
            (1, Bytes),
            (2, Bytes),
            (3, Str),
            (4, Bytes),
            (5, Str),
            (6, Varint),
            (7, Fixed64),
            (8, Fixed64),
            (9, Msg(M::KeyValue)),
            (10, Varint),
            (11, Msg(M::Event)),
            (12, Varint),
            (13, Msg(M::Link)),
            (14, Varint),
            (15, Msg(M::Status)),
            (16, Fixed32),
        ],
        M::Event => &[(1, Fixed64), (2, Str), (3, Msg(M::KeyValue)), (4, Varint)],
        M::Link => &[
            (1, Bytes),
            (2, Bytes),
            (3, Str),
            (4, Msg(M::KeyValue)),
            (5, Varint),
            (6, Fixed32),
        ],
        M::Status => &[(2, Str), (3, Varint)],
        M::KeyValue => &[(1, Str), (2, Msg(M::AnyValue)), (3, Varint)],
        M::AnyValue => &[
            (1, Str),
            (2, Varint),
            (3, Varint),
            (4, Fixed64),
            (5, Msg(M::ArrayValue)),
            (6, Msg(M::KeyValueList)),
            (7, Bytes),
            (8, Varint),
        ],
        M::ArrayValue => &[(1, Msg(M::AnyValue))],
        M::KeyValueList => &[(1, Msg(M::KeyValue))],
    }
}

/// Strings the consumers look for, and some they must not trip on.
const WORDS: &[&str] = &[
    "service.name",
    "http.route",
    "http.request.method",
    "http.method",
    "http.response.status_code",
    "http.status_code",
    "rpc.service",
    "rpc.method",
    "db.system",
    "db.system.name",
    "db.statement",
    "db.query.text",
    "db.query.summary",
    "db.operation.name",
    "db.operation",
    "db.collection.name",
    "db.sql.table",
    "postgresql",
    "redis",
    "SELECT * FROM orders WHERE id = 42",
    "GET",
    "BREW",
    "/users/{id}",
    "503",
    "200",
    "shop",
    "",
    "ünïcødé",
];

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(tag: u32, wire_type: u8, out: &mut Vec<u8>) {
    varint((u64::from(tag) << 3) | u64::from(wire_type), out);
}

fn len_field(tag: u32, body: &[u8], out: &mut Vec<u8>) {
    key(tag, 2, out);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A value a varint field might hold: small, an enum, a status code, or huge.
fn varint_value(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => rng.below(6),
        1 => 2,
        2 => rng.below(600),
        3 => u64::MAX - rng.below(3),
        4 => 1 << rng.below(64),
        _ => rng.next(),
    }
}

/// One field of kind `f` with number `tag`, sometimes with a wrong wire type or invalid UTF-8.
fn field(rng: &mut Rng, tag: u32, f: F, depth: u32, out: &mut Vec<u8>) {
    if rng.percent(2) {
        // A wrong wire type for a known field.
        let wrong = [0u8, 1, 2, 5][rng.below(4) as usize];
        key(tag, wrong, out);
        match wrong {
            0 => varint(varint_value(rng), out),
            1 => out.extend_from_slice(&rng.next().to_le_bytes()),
            5 => out.extend_from_slice(&(rng.next() as u32).to_le_bytes()),
            _ => {
                varint(1, out);
                out.push(0x08);
            }
        }
        return;
    }
    match f {
        F::Varint => {
            key(tag, 0, out);
            varint(varint_value(rng), out);
        }
        F::Fixed32 => {
            key(tag, 5, out);
            out.extend_from_slice(&(rng.next() as u32).to_le_bytes());
        }
        F::Fixed64 => {
            key(tag, 1, out);
            let v = match rng.below(3) {
                0 => 1_700_000_000_000_000_000 + rng.below(5_000_000_000),
                1 => rng.below(10),
                _ => rng.next(),
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        F::Bytes => {
            let n = [16usize, 8, 0, 3, 16, 8][rng.below(6) as usize];
            let zero = rng.percent(10);
            let b: Vec<u8> = (0..n)
                .map(|_| if zero { 0 } else { rng.next() as u8 })
                .collect();
            len_field(tag, &b, out);
        }
        F::Str => {
            let mut s = WORDS[rng.below(WORDS.len() as u64) as usize]
                .as_bytes()
                .to_vec();
            if rng.percent(2) {
                s.push(0xff);
            }
            len_field(tag, &s, out);
        }
        F::Msg(m) => {
            let body = message(rng, m, depth + 1);
            len_field(tag, &body, out);
        }
    }
}

/// A message of layout `m`: mostly its own fields, some twice, some unknown fields of every wire type.
fn message(rng: &mut Rng, m: M, depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let known = fields(m);
    let (min, spread) = match m {
        M::Request => (1, 2),
        M::ResourceSpans | M::ScopeSpans => (1, 4),
        M::Span => (4, 14),
        M::KeyValue => (2, 2),
        M::AnyValue => (1, 2),
        _ => (0, 4),
    };
    let n = min + rng.below(spread);
    for _ in 0..n {
        if rng.percent(8) {
            unknown(rng, depth, &mut out);
            continue;
        }
        let (tag, f) = known[rng.below(known.len() as u64) as usize];
        // Keep the tree shallow, except on purpose.
        if let F::Msg(_) = f {
            if depth > 9 && !rng.percent(20) {
                continue;
            }
        }
        field(rng, tag, f, depth, &mut out);
    }
    out
}

/// An unknown field (number 17 to 40) of a random wire type, groups nested.
fn unknown(rng: &mut Rng, depth: u32, out: &mut Vec<u8>) {
    let tag = 17 + rng.below(24) as u32;
    match rng.below(5) {
        0 => {
            key(tag, 0, out);
            varint(varint_value(rng), out);
        }
        1 => {
            key(tag, 1, out);
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
        2 => {
            let b: Vec<u8> = (0..rng.below(6)).map(|_| rng.next() as u8).collect();
            len_field(tag, &b, out);
        }
        3 => {
            key(tag, 5, out);
            out.extend_from_slice(&(rng.next() as u32).to_le_bytes());
        }
        _ => {
            key(tag, 3, out);
            if depth < 12 && rng.percent(50) {
                unknown(rng, depth + 1, out);
            }
            // Sometimes the group is closed with another number.
            let end = if rng.percent(5) { tag + 1 } else { tag };
            key(end, 4, out);
        }
    }
}

/// A request whose one attribute value is `depth` arrays nested, the innermost holding `inner`.
fn deep(depth: usize, inner: &[u8]) -> Vec<u8> {
    let mut any = inner.to_vec();
    for _ in 0..depth {
        let mut array = Vec::new();
        len_field(1, &any, &mut array);
        any.clear();
        len_field(5, &array, &mut any);
    }
    let mut kv = Vec::new();
    len_field(1, b"deep", &mut kv);
    len_field(2, &any, &mut kv);
    let mut span = Vec::new();
    len_field(9, &kv, &mut span);
    let mut out = span;
    for tag in [2, 2, 1] {
        let mut outer = Vec::new();
        len_field(tag, &out, &mut outer);
        out = outer;
    }
    out
}

/// Byte-level damage: a flipped byte, a cut, an inserted byte, a removed byte.
fn mutate(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    if d.is_empty() {
        return vec![rng.next() as u8];
    }
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(d.len() as u64) as usize;
        match rng.below(4) {
            0 => d[at] ^= 1 << rng.below(8),
            1 => d.truncate(at),
            2 => d.insert(at, rng.next() as u8),
            _ => {
                d.remove(at);
            }
        }
        if d.is_empty() {
            break;
        }
    }
    d
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/otlp")
        .join(name);
    let json = std::fs::read(&path).expect("fixture is readable");
    let req: ExportTraceServiceRequest =
        serde_json::from_slice(&json).expect("fixture is OTLP/JSON");
    req.encode_to_vec()
}

#[test]
fn sdk_fixtures_and_their_mutations_read_alike() {
    let mut rng = Rng(0x5eed_0001);
    for name in ["sdk-python-traces.json", "sdk-node-traces.json"] {
        let bytes = fixture(name);
        assert_eq!(check(&bytes), Verdict::Accepted, "{name}");
        // Every prefix: all but the whole are cut somewhere.
        for end in 0..bytes.len() {
            check(&bytes[..end]);
        }
        for _ in 0..2000 {
            check(&mutate(&mut rng, &bytes));
        }
    }
}

#[test]
fn generated_requests_read_alike() {
    let mut rng = Rng(0x5eed_0002);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let bytes = message(&mut rng, M::Request, 0);
        let data = if rng.percent(25) {
            mutate(&mut rng, &bytes)
        } else {
            bytes
        };
        match check(&data) {
            Verdict::Accepted => accepted += 1,
            Verdict::Refused => refused += 1,
        }
    }
    // Both kinds of input were well represented, or the check proved little.
    assert!(
        accepted > 5_000 && refused > 2_000,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn nesting_around_the_limit_reads_alike() {
    // Request, ResourceSpans, ScopeSpans, Span, KeyValue, AnyValue: the value is 5 levels down; each
    // array adds two. 47 arrays reach level 99; 48 pass prost's limit of 100.
    let unknown_varint = [0xb8, 0x01, 0x01];
    let group = [0xbb, 0x01, 0xb8, 0x01, 0x01, 0xbc, 0x01];
    for depth in 40..55 {
        for inner in [&[][..], &[0x18, 0x01], &unknown_varint, &group] {
            check(&deep(depth, inner));
        }
    }
    assert_eq!(check(&deep(47, &[0x18, 0x01])), Verdict::Accepted);
    assert_eq!(check(&deep(48, &[])), Verdict::Refused);
}

#[test]
fn concatenated_requests_merge_alike() {
    // Two encodings one after the other are one message with both sets of fields: prost merges them.
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..2000 {
        let a = message(&mut rng, M::Request, 0);
        let b = message(&mut rng, M::Request, 0);
        check(&[a, b].concat());
    }
}
