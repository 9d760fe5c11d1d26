//! Line splitting for the local API, both sides: cancel-safe and bounded.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes read at a time.
pub(super) const READ_CHUNK: usize = 8 * 1024;

/// One piece of a line-delimited stream.
#[derive(Debug)]
pub(super) enum Line {
    /// A line, without its newline.
    Complete(Vec<u8>),
    /// A line longer than the limit was skipped (its bytes were not kept).
    TooLong,
}

/// Splits a byte stream into lines with a buffer of its own: cancel-safe (a read cancelled
/// half-way leaves what was read in the buffer for the next call) and bounded (a line over
/// `max` is skipped as it streams by, keeping nothing of it).
#[derive(Debug)]
pub(super) struct LineReader {
    pub(super) buf: Vec<u8>,
    /// Bytes at the start of `buf` known to hold no newline.
    scanned: usize,
    /// Inside an oversize line: dropping bytes until its newline.
    skipping: bool,
    max: usize,
}

impl LineReader {
    pub(super) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            skipping: false,
            max,
        }
    }

    /// The next line; `None` at the end of the stream (a last line without a newline counts).
    pub(super) async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> io::Result<Option<Line>> {
        loop {
            if let Some(line) = self.take_line() {
                return Ok(Some(line));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = r.read(&mut chunk).await?;
            if n == 0 {
                if self.skipping {
                    self.skipping = false;
                    return Ok(Some(Line::TooLong));
                }
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.scanned = 0;
                return Ok(Some(Line::Complete(std::mem::take(&mut self.buf))));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn take_line(&mut self) -> Option<Line> {
        let found = self.buf[self.scanned..].iter().position(|b| *b == b'\n');
        match found {
            Some(pos) => {
                let end = self.scanned + pos;
                let rest = self.buf.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                self.scanned = 0;
                if std::mem::take(&mut self.skipping) || end > self.max {
                    // An idle connection does not keep the oversize line's capacity.
                    self.buf.shrink_to(READ_CHUNK);
                    return Some(Line::TooLong);
                }
                line.truncate(end);
                Some(Line::Complete(line))
            }
            None => {
                if self.skipping || self.buf.len() > self.max {
                    // Oversize: nothing of it is kept.
                    self.buf.clear();
                    self.skipping = true;
                }
                self.scanned = self.buf.len();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{io::AsyncWriteExt, net::UnixStream};

    use super::*;
    use crate::api::MAX_LINE;

    /// An oversize line is skipped with a bounded buffer, and the next line is read whole.
    #[tokio::test]
    async fn an_oversize_line_is_skipped_without_keeping_it() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let writer = tokio::spawn(async move {
            a.write_all(&vec![b'z'; 3 * MAX_LINE]).await.unwrap();
            a.write_all(b"\n{\"ok\":1}\n").await.unwrap();
        });
        let mut lines = LineReader::new(MAX_LINE);
        let mut peak = 0;
        let first = loop {
            tokio::select! {
                l = lines.next(&mut b) => break l.unwrap(),
                () = tokio::time::sleep(Duration::from_micros(50)) => {}
            }
            peak = peak.max(lines.buf.capacity());
        };
        assert!(matches!(first, Some(Line::TooLong)), "{first:?}");
        assert!(
            peak <= 2 * (MAX_LINE + READ_CHUNK),
            "buffer grew to {peak} bytes"
        );
        match lines.next(&mut b).await.unwrap() {
            Some(Line::Complete(l)) => assert_eq!(l, b"{\"ok\":1}"),
            other => panic!("{other:?}"),
        }
        writer.await.unwrap();
    }
}
