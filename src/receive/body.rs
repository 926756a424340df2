//! Request bodies: reading under a cap, and decompression (gzip, zstd, deflate) under the
//! same cap, applied to the decompressed size.

use std::io::Read;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use super::admission::Refused;
use crate::error::Error;

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Bytes, Error> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge { limit }),
        Err(e) => match Refused::in_chain(e.as_ref()) {
            Some(refused) => Err(Error::Admission(refused.error.clone())),
            None => Err(Error::Body(e.to_string())),
        },
    }
}

/// Reads a body under the cap and decompresses it per its `Content-Encoding`, under the
/// same cap; the decompressed bytes are reserved with `reserve` as they are produced.
/// Returns the body and the bytes reserved for it beyond those read.
pub async fn read_body(
    headers: &http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
    reserve: &mut (dyn FnMut(u64) -> Result<(), Error> + Send),
) -> Result<(Bytes, u64), Error> {
    let raw = read_limited(body, limit).await?;
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    decompress(encoding.as_deref(), raw, limit, reserve)
}

/// Decompresses `body` per its `Content-Encoding`, refusing a result over `limit` bytes;
/// the memory of the result is reserved with `reserve` before it is allocated. Returns
/// the result and the bytes reserved for it (0 for an uncompressed body).
pub fn decompress(
    content_encoding: Option<&str>,
    body: Bytes,
    limit: usize,
    reserve: &mut (dyn FnMut(u64) -> Result<(), Error> + Send),
) -> Result<(Bytes, u64), Error> {
    let encoding = content_encoding.map(str::trim).unwrap_or("");
    let lower = encoding.to_ascii_lowercase();
    let out = Output { limit, reserve };
    match lower.as_str() {
        "" | "identity" => Ok((body, 0)),
        "gzip" | "x-gzip" => out.inflate("gzip", flate2::read::MultiGzDecoder::new(&body[..])),
        "zstd" => {
            let corrupt = |e: std::io::Error| Error::Decompress {
                encoding: "zstd",
                message: e.to_string(),
            };
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(&body[..]).map_err(corrupt)?;
            // A frame may not ask for a window larger than the body may be (nor the
            // library's default maximum): its memory would be spent before any byte is
            // counted against the cap.
            decoder
                .window_log_max(zstd_window_log(limit))
                .map_err(corrupt)?;
            out.inflate("zstd", decoder)
        }
        // HTTP's "deflate" is zlib-wrapped; some clients send raw deflate instead. The
        // zlib header says which, so the body is decompressed once.
        "deflate" if is_zlib(&body) => {
            out.inflate("deflate", flate2::read::ZlibDecoder::new(&body[..]))
        }
        "deflate" => out.inflate("deflate", flate2::read::DeflateDecoder::new(&body[..])),
        _ => Err(Error::UnsupportedEncoding(encoding.to_string())),
    }
}

/// Whether `body` starts with a zlib header (RFC 1950: method 8, the check bits).
fn is_zlib(body: &[u8]) -> bool {
    match body {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// The largest zstd window (log2 bytes) a body under `limit` may use: enough for any
/// frame compressed at the body's own size, at most 2^27 (zstd's default decoder maximum).
fn zstd_window_log(limit: usize) -> u32 {
    let needed = usize::BITS - limit.max(1 << 10).saturating_sub(1).leading_zeros();
    needed.clamp(10, 27)
}

/// Where a decompressed body goes: at most `limit` bytes, each allocation reserved first.
struct Output<'a> {
    limit: usize,
    reserve: &'a mut (dyn FnMut(u64) -> Result<(), Error> + Send),
}

impl Output<'_> {
    fn inflate(self, encoding: &'static str, mut reader: impl Read) -> Result<(Bytes, u64), Error> {
        let corrupt = |e: std::io::Error| Error::Decompress {
            encoding,
            message: e.to_string(),
        };
        // Inflated straight into the vector's reserved room: its capacity grows by doubling
        // (as a vector's would), never past the cap, and every growth is reserved first.
        let mut out: Vec<u8> = Vec::new();
        loop {
            if out.len() == out.capacity() {
                if out.len() == self.limit {
                    // Full at the cap: one more byte means too large.
                    let mut probe = [0u8; 1];
                    if reader.read(&mut probe).map_err(corrupt)? > 0 {
                        return Err(Error::TooLarge { limit: self.limit });
                    }
                    break;
                }
                let grown = (out.capacity() * 2).max(64 << 10).min(self.limit);
                (self.reserve)((grown - out.capacity()) as u64)?;
                out.reserve_exact(grown - out.len());
            }
            let room = (out.capacity() - out.len()) as u64;
            if (&mut reader)
                .take(room)
                .read_to_end(&mut out)
                .map_err(corrupt)?
                == 0
            {
                break;
            }
        }
        let reserved = out.capacity() as u64;
        Ok((Bytes::from(out), reserved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Decompresses without a budget.
    fn dec(encoding: Option<&str>, body: Bytes, limit: usize) -> Result<Bytes, Error> {
        decompress(encoding, body, limit, &mut |_| Ok(())).map(|(b, _)| b)
    }

    #[test]
    fn decompressed_bytes_are_reserved_before_they_are_held() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 8 << 20]).unwrap();
        let bomb = Bytes::from(enc.finish().unwrap());
        let mut reserved = 0u64;
        let mut budget = |n: u64| {
            reserved += n;
            if reserved > 1 << 20 {
                Err(Error::Admission(
                    crate::receive::admission::AdmissionError::Bytes { limit: 1 << 20 },
                ))
            } else {
                Ok(())
            }
        };
        let refused = decompress(Some("gzip"), bomb.clone(), 64 << 20, &mut budget);
        assert!(matches!(refused, Err(Error::Admission(_))), "{refused:?}");
        let (body, held) = decompress(Some("gzip"), bomb, 64 << 20, &mut |_| Ok(())).unwrap();
        assert_eq!(body.len(), 8 << 20);
        assert!(held >= body.len() as u64);
    }

    #[test]
    fn gzip_and_caps() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&[7u8; 1000]).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        assert_eq!(dec(Some("GZIP"), gz.clone(), 1000).unwrap().len(), 1000);
        assert!(matches!(
            dec(Some("gzip"), gz, 999),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            dec(Some("gzip"), Bytes::from_static(b"not gzip"), 10),
            Err(Error::Decompress { .. })
        ));
        assert!(matches!(
            dec(Some("br"), Bytes::new(), 10),
            Err(Error::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"hello").unwrap();
        assert_eq!(
            &dec(Some("deflate"), Bytes::from(z.finish().unwrap()), 10).unwrap()[..],
            b"hello"
        );
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(b"hello").unwrap();
        assert_eq!(
            &dec(Some("deflate"), Bytes::from(d.finish().unwrap()), 10).unwrap()[..],
            b"hello"
        );
    }

    #[test]
    fn a_zstd_frame_asking_for_a_huge_window_is_refused() {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(26))
            .unwrap();
        enc.write_all(&[1u8; 4096]).unwrap();
        let frame = Bytes::from(enc.finish().unwrap());
        assert!(matches!(
            dec(Some("zstd"), frame.clone(), 1 << 20),
            Err(Error::Decompress { .. })
        ));
        assert_eq!(dec(Some("zstd"), frame, 64 << 20).unwrap().len(), 4096);
    }

    #[test]
    fn zlib_headers() {
        assert!(is_zlib(&[0x78, 0x9c]));
        assert!(is_zlib(&[0x78, 0x01]));
        assert!(!is_zlib(&[0x78, 0x9d]));
        assert!(!is_zlib(b"x"));
    }
}
