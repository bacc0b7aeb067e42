//! Newline-delimited JSON: gzip encoding of landed lines and bounded, streaming line reading.

use std::io::Write;

use flate2::{write::GzEncoder, Compression};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Longest line the readers accept; a longer one is reported, skipped, and never held in memory whole.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Gzips lines into one NDJSON member, each line followed by `\n`.
///
/// The output is a pure function of the lines: the gzip header carries no timestamp or file name, so the
/// same lines always give the same bytes.
pub fn gzip_lines<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for line in lines {
        gz.write_all(line)?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

/// One line read from a stream: its 1-based number and its bytes, or the fact that it was too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line without its terminator (`\r\n` or `\n`), never empty.
    Text {
        /// 1-based line number in the object.
        number: u64,
        /// The line's bytes.
        bytes: Vec<u8>,
    },
    /// A line longer than [`MAX_LINE_BYTES`]; its bytes were discarded.
    TooLong {
        /// 1-based line number in the object.
        number: u64,
        /// The line's first bytes, for the quarantine record.
        head: Vec<u8>,
    },
}

/// Reads lines from a buffered stream holding at most one line ([`MAX_LINE_BYTES`]) in memory.
pub struct LineReader<R> {
    inner: R,
    number: u64,
    buf: Vec<u8>,
}

impl<R> std::fmt::Debug for LineReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader").field("line", &self.number).finish_non_exhaustive()
    }
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// Wraps a buffered reader.
    pub fn new(inner: R) -> Self {
        Self { inner, number: 0, buf: Vec::new() }
    }

    /// The next non-blank line, or `None` at the end of the stream.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            self.buf.clear();
            let limit = (MAX_LINE_BYTES + 2) as u64;
            let n = (&mut self.inner).take(limit).read_until(b'\n', &mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.number += 1;
            let terminated = self.buf.last() == Some(&b'\n');
            if !terminated && n as u64 == limit {
                // Over-long line: keep a head for the report, drain the rest without buffering it.
                let head = self.buf[..256].to_vec();
                self.skip_rest_of_line().await?;
                return Ok(Some(Line::TooLong { number: self.number, head }));
            }
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            if self.buf.len() > MAX_LINE_BYTES {
                // Over-long by a byte or two: the whole line is already consumed.
                return Ok(Some(Line::TooLong { number: self.number, head: self.buf[..256].to_vec() }));
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Line::Text { number: self.number, bytes: std::mem::take(&mut self.buf) }));
        }
    }

    async fn skip_rest_of_line(&mut self) -> std::io::Result<()> {
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                return Ok(());
            }
            if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                self.inner.consume(i + 1);
                return Ok(());
            }
            let len = chunk.len();
            self.inner.consume(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_compression::tokio::bufread::GzipDecoder;
    use tokio::io::BufReader;

    #[test]
    fn gzip_is_deterministic() {
        let lines: [&[u8]; 2] = [b"{\"a\":1}", b"{\"b\":2}"];
        assert_eq!(gzip_lines(lines).unwrap(), gzip_lines(lines).unwrap());
    }

    #[tokio::test]
    async fn a_truncated_gzip_stream_is_an_error_not_a_short_read() {
        let lines: Vec<Vec<u8>> =
            (0..3000).map(|i| format!("{{\"n\":{i},\"pad\":\"{i:0>40}\"}}").into_bytes()).collect();
        let gz = gzip_lines(lines.iter().map(Vec::as_slice)).unwrap();
        let cut = &gz[..gz.len() * 9 / 10];
        let mut decoder = GzipDecoder::new(BufReader::new(cut));
        decoder.multiple_members(true);
        let mut reader = LineReader::new(BufReader::new(decoder));
        let mut read = 0;
        let end = loop {
            match reader.next_line().await {
                Ok(Some(_)) => read += 1,
                other => break other,
            }
        };
        assert!(end.is_err(), "read {read} lines, then {end:?}");
    }

    #[tokio::test]
    async fn the_limit_is_exact() {
        for (len, accepted) in [(MAX_LINE_BYTES, true), (MAX_LINE_BYTES + 1, false), (MAX_LINE_BYTES + 2, false)] {
            let mut text = vec![b'y'; len];
            text.extend_from_slice(b"\r\n{}\n");
            let mut reader = LineReader::new(BufReader::new(text.as_slice()));
            let first = reader.next_line().await.unwrap().unwrap();
            assert_eq!(matches!(first, Line::Text { ref bytes, .. } if bytes.len() == len), accepted, "{len}");
            assert_eq!(
                reader.next_line().await.unwrap(),
                Some(Line::Text { number: 2, bytes: b"{}".to_vec() }),
                "{len}"
            );
        }
    }

    #[tokio::test]
    async fn reads_lines_back_through_gzip_skipping_blanks_and_overlong_lines() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let lines: Vec<&[u8]> = vec![b"{\"a\":1}\r", b"", long.as_slice(), b"{\"b\":2}"];
        let gz = gzip_lines(lines).unwrap();
        let mut reader = LineReader::new(BufReader::new(GzipDecoder::new(BufReader::new(gz.as_slice()))));
        let mut got = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            got.push(line);
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Line::Text { number: 1, bytes: b"{\"a\":1}".to_vec() });
        assert!(matches!(&got[1], Line::TooLong { number: 3, head } if head.len() == 256));
        assert_eq!(got[2], Line::Text { number: 4, bytes: b"{\"b\":2}".to_vec() });
    }
}
