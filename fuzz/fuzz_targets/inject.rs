//! Fuzzes `vitals inject` on arbitrary text (seed it with tests/fixtures/inject): any input is injected or
//! refused, never a panic; what is injected is stable under a second inject, still parses, and
//! `--uninject` takes it back to what uninjecting the input gives.
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
    assert_eq!(back.output, plain.output, "uninject(inject(x)) != uninject(x)");
    if !text.trim_start().starts_with(['{', '[']) {
        for doc in yaml_serde::Deserializer::from_str(&once.output) {
            let _: yaml_serde::Value =
                serde::Deserialize::deserialize(doc).expect("injected YAML parses");
        }
    }
});
