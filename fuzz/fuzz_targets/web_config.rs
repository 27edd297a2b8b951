//! Fuzzes what the metrics listener reads from outside besides the request stream: the web config
//! file's YAML (parsed and checked as at start), a basic-auth `Authorization` header, and the `Accept`
//! value the exposition format is negotiated from. The parts are separated by NUL bytes. Beyond no
//! panic: a header that parses gives back exactly the user and password that were encoded into it.
#![no_main]

use base64::Engine;
use vitals::export::http::web_config::{basic_credentials, WebConfig};
use vitals::export::prometheus::Format;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let yaml = parts.next().unwrap_or_default();
    let header = parts.next().unwrap_or_default();
    let accept = parts.next().unwrap_or_default();
    if let Ok(yaml) = std::str::from_utf8(yaml) {
        // A valid hash above cost 6 makes start-up hash at that cost (by design); left out for speed.
        let slow = yaml
            .match_indices("$2")
            .any(|(i, _)| yaml.get(i + 4..i + 6).and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| c > 6));
        if !slow {
            let _ = WebConfig::parse(yaml, std::path::Path::new("/nonexistent/web.yml"));
        }
    }
    if let Ok(header) = std::str::from_utf8(header) {
        if let Some((user, password)) = basic_credentials(header) {
            assert!(!user.contains(':'), "user {user:?} holds the separator");
            let again = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            assert_eq!(basic_credentials(&again), Some((user, password)));
        }
    }
    if let Ok(accept) = std::str::from_utf8(accept) {
        let f = Format::negotiate(Some(accept));
        assert!(!f.content_type().is_empty());
    }
});
