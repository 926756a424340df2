//! Request bodies: reading under a cap, and decompression (gzip, zstd, deflate) under the
//! same cap, applied to the decompressed size.

use std::io::Read;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use crate::error::Error;

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Bytes, Error> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge { limit }),
        Err(e) => Err(Error::Body(e.to_string())),
    }
}

/// Reads a body under the cap and decompresses it per its `Content-Encoding`, under the
/// same cap.
pub async fn read_body(
    headers: &http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Bytes, Error> {
    let raw = read_limited(body, limit).await?;
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    decompress(encoding.as_deref(), raw, limit)
}

/// Decompresses `body` per its `Content-Encoding`, refusing a result over `limit` bytes.
pub fn decompress(
    content_encoding: Option<&str>,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, Error> {
    let encoding = content_encoding.map(str::trim).unwrap_or("");
    let lower = encoding.to_ascii_lowercase();
    match lower.as_str() {
        "" | "identity" => Ok(body),
        "gzip" | "x-gzip" => inflate("gzip", flate2::read::MultiGzDecoder::new(&body[..]), limit),
        "zstd" => {
            let decoder = zstd::stream::read::Decoder::with_buffer(&body[..]).map_err(|e| {
                Error::Decompress {
                    encoding: "zstd",
                    message: e.to_string(),
                }
            })?;
            inflate("zstd", decoder, limit)
        }
        // HTTP's "deflate" is zlib-wrapped; some clients send raw deflate instead.
        "deflate" => inflate("deflate", flate2::read::ZlibDecoder::new(&body[..]), limit).or_else(
            |zlib_err| match inflate(
                "deflate",
                flate2::read::DeflateDecoder::new(&body[..]),
                limit,
            ) {
                Ok(b) => Ok(b),
                Err(Error::TooLarge { limit }) => Err(Error::TooLarge { limit }),
                Err(_) => Err(zlib_err),
            },
        ),
        _ => Err(Error::UnsupportedEncoding(encoding.to_string())),
    }
}

fn inflate(encoding: &'static str, reader: impl Read, limit: usize) -> Result<Bytes, Error> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Decompress {
            encoding,
            message: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(Error::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_and_caps() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&[7u8; 1000]).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        assert_eq!(
            decompress(Some("GZIP"), gz.clone(), 1000).unwrap().len(),
            1000
        );
        assert!(matches!(
            decompress(Some("gzip"), gz, 999),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            decompress(Some("gzip"), Bytes::from_static(b"not gzip"), 10),
            Err(Error::Decompress { .. })
        ));
        assert!(matches!(
            decompress(Some("br"), Bytes::new(), 10),
            Err(Error::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"hello").unwrap();
        assert_eq!(
            &decompress(Some("deflate"), Bytes::from(z.finish().unwrap()), 10).unwrap()[..],
            b"hello"
        );
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(b"hello").unwrap();
        assert_eq!(
            &decompress(Some("deflate"), Bytes::from(d.finish().unwrap()), 10).unwrap()[..],
            b"hello"
        );
    }
}
