//! Fuzzes `vitals inject` on arbitrary text (seed it with tests/fixtures/inject): any input is injected or
//! refused, never a panic; what is injected is stable under a second inject, still parses, and
//! `--uninject` takes it back to what uninjecting the input gives (the same text for YAML, the same JSON
//! value for JSON, which is respaced where it changes).
#![no_main]

use vitals::inject::{transform, Mode, Settings, DEFAULT_IMAGE};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let settings = Settings {
        image: DEFAULT_IMAGE.to_owned(),
        native: data.len() % 2 == 0,
        container: None,
        sidecar_args: Vec::new(),
        metrics_port: 19464,
    };
    let Ok(once) = transform(text, &settings, Mode::Inject) else {
        return;
    };
    let twice = transform(&once.output, &settings, Mode::Inject).expect("injected text injects again");
    assert_eq!(twice.output, once.output, "a second inject changed the text");
    let back = transform(&once.output, &settings, Mode::Uninject).expect("injected text uninjects");
    let plain = transform(text, &settings, Mode::Uninject).expect("input that injects uninjects");
    let json = text.trim_start().starts_with(['{', '[']);
    if json {
        // A JSON document that changes is written again with normal spacing, one left alone is copied:
        // the two agree as JSON, not byte for byte.
        let value = |t: &str| serde_json::from_str::<serde_json::Value>(t).ok();
        assert_eq!(
            value(&back.output),
            value(&plain.output),
            "uninject(inject(x)) != uninject(x) as JSON"
        );
    } else {
        assert_eq!(back.output, plain.output, "uninject(inject(x)) != uninject(x)");
    }
    if !json {
        for doc in yaml_serde::Deserializer::from_str(&once.output) {
            let _: yaml_serde::Value =
                serde::Deserialize::deserialize(doc).expect("injected YAML parses");
        }
    }
});
