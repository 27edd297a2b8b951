//! Request bodies to OTLP messages: gzip inflated under a size limit (a bomb is refused while inflating),
//! then protobuf or OTLP/JSON. A decoder panic is an undecodable body, never a crash.

use std::io::Read;

use serde::de::DeserializeOwned;

/// Body encodings OTLP/HTTP allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP/JSON).
    Json,
}

/// Why a body could not become a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Larger than the limit, before or after inflating.
    #[error("request body exceeds the {limit}-byte limit (after decompression)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not valid for the declared encoding.
    #[error("cannot decode request body: {0}")]
    Undecodable(String),
}

/// Inflates a gzip body, stopping as soon as the output would pass `limit`.
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let mut dec = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| DecodeError::Undecodable(format!("gzip: {e}")))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

/// Decodes an OTLP message.
pub fn decode<T>(bytes: &[u8], encoding: Encoding) -> Result<T, DecodeError>
where
    T: prost::Message + DeserializeOwned + Default,
{
    let run = || match encoding {
        Encoding::Protobuf => T::decode(bytes).map_err(|e| DecodeError::Undecodable(e.to_string())),
        Encoding::Json => serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Undecodable(format!("JSON: {e}"))),
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
        Err(DecodeError::Undecodable(
            "decoder failed on this input".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_bomb_is_refused_while_inflating() {
        let bomb = gz(&vec![0u8; 64 << 20]);
        assert!(
            bomb.len() < 100 << 10,
            "64 MiB of zeros compresses to {} bytes",
            bomb.len()
        );
        assert_eq!(
            gunzip(&bomb, 1 << 20),
            Err(DecodeError::TooLarge { limit: 1 << 20 })
        );
        assert_eq!(gunzip(&gz(b"hello"), 5).unwrap(), b"hello");
        assert!(matches!(
            gunzip(b"not gzip", 100),
            Err(DecodeError::Undecodable(_))
        ));
    }

    #[test]
    fn garbage_is_undecodable_not_a_panic() {
        for body in [&b"\xff\xff\xff\xff"[..], b"{", b"\x0a\x05\x0a\x03\x0a"] {
            let enc = if body[0] == b'{' {
                Encoding::Json
            } else {
                Encoding::Protobuf
            };
            assert!(matches!(
                decode::<ExportTraceServiceRequest>(body, enc),
                Err(DecodeError::Undecodable(_))
            ));
        }
        assert_eq!(
            decode::<ExportTraceServiceRequest>(b"", Encoding::Protobuf).unwrap(),
            ExportTraceServiceRequest::default()
        );
    }
}
