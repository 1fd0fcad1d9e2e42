//! Length-prefixed frames on a blocking TCP stream, with deadlines.
//!
//! A frame is a 2-byte big-endian length followed by that many bytes, so no
//! frame exceeds 65535 bytes: the largest Noise message. Reading is bounded in
//! time as well as size: the wait for a frame's first byte has its own
//! (optional) deadline, and once a frame has started the rest of it must
//! arrive within a frame timeout, so a peer trickling bytes cannot hold a
//! reader forever.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Largest frame body: the Noise protocol's maximum message length.
pub const MAX_FRAME_LEN: usize = 65535;
/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 2;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    #[error("empty frame")]
    Empty,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("network error: {0}")]
    Io(#[from] io::Error),
}

/// Writes one frame (length prefix and body in a single write).
pub fn write_frame(mut stream: &TcpStream, body: &[u8]) -> Result<(), FrameError> {
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    let len = u16::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    let mut frame = Vec::with_capacity(LENGTH_PREFIX_LEN + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame).map_err(map_io)?;
    stream.flush().map_err(map_io)
}

/// Reads one frame into `buf` (cleared first) and returns `Ok(true)`, or
/// `Ok(false)` when the peer closed the connection cleanly between frames.
///
/// `first_byte_deadline` bounds the wait for the frame to begin (`None`
/// waits indefinitely); once it has begun, the whole frame must arrive within
/// `frame_timeout` (and never after `first_byte_deadline`).
pub fn read_frame(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    first_byte_deadline: Option<Instant>,
    frame_timeout: Duration,
) -> Result<bool, FrameError> {
    buf.clear();
    let mut prefix = [0u8; LENGTH_PREFIX_LEN];
    let first = read_some(stream, &mut prefix, first_byte_deadline)?;
    if first == 0 {
        return Ok(false);
    }
    let started = Instant::now() + frame_timeout;
    let frame_deadline = match first_byte_deadline {
        Some(d) if d < started => d,
        _ => started,
    };
    // `read` never reports more bytes than the buffer it filled.
    let rest = prefix.get_mut(first..).unwrap_or_default();
    read_full(stream, rest, frame_deadline)?;
    let len = usize::from(u16::from_be_bytes(prefix));
    if len == 0 {
        return Err(FrameError::Empty);
    }
    // `len` is at most 65535, so this allocation is bounded.
    buf.resize(len, 0);
    read_full(stream, buf, frame_deadline)?;
    Ok(true)
}

/// Fills `buf` completely before `deadline`, or fails.
fn read_full(stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), FrameError> {
    let mut rest = buf;
    // Each pass reads at least one byte or fails, so this ends after at most
    // `buf.len()` passes.
    while !rest.is_empty() {
        let n = read_some(stream, rest, Some(deadline))?;
        if n == 0 {
            return Err(FrameError::Truncated);
        }
        // `read` never reports more bytes than the buffer it filled.
        rest = std::mem::take(&mut rest).get_mut(n..).unwrap_or_default();
    }
    Ok(())
}

/// One `read` call that gives up at `deadline` (`None`: no deadline).
/// Returns 0 only at end of stream.
fn read_some(
    mut stream: &TcpStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<usize, FrameError> {
    debug_assert!(!buf.is_empty());
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(FrameError::Timeout);
                }
                Some(left)
            }
        };
        stream.set_read_timeout(timeout)?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            // A signal interrupted the call: retry; the deadline still bounds us.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(map_io(e)),
        }
    }
}

fn map_io(e: io::Error) -> FrameError {
    match e.kind() {
        // Socket timeouts surface as WouldBlock on Unix and TimedOut on Windows.
        ErrorKind::WouldBlock | ErrorKind::TimedOut => FrameError::Timeout,
        _ => FrameError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn frames_round_trip_and_clean_close_is_reported() {
        let (a, b) = pair();
        write_frame(&a, b"hello").unwrap();
        write_frame(&a, &vec![7u8; MAX_FRAME_LEN]).unwrap();
        drop(a);
        let mut buf = Vec::new();
        assert!(read_frame(&b, &mut buf, None, Duration::from_secs(5)).unwrap());
        assert_eq!(buf, b"hello");
        assert!(read_frame(&b, &mut buf, None, Duration::from_secs(5)).unwrap());
        assert_eq!(buf.len(), MAX_FRAME_LEN);
        assert!(!read_frame(&b, &mut buf, None, Duration::from_secs(5)).unwrap());
    }

    #[test]
    fn oversize_and_empty_frames_are_refused_on_write() {
        let (a, _b) = pair();
        assert!(matches!(
            write_frame(&a, &vec![0u8; MAX_FRAME_LEN + 1]),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(write_frame(&a, &[]), Err(FrameError::Empty)));
    }

    #[test]
    fn truncated_frame_and_empty_frame_are_errors() {
        let (mut a, b) = pair();
        a.write_all(&[0, 10, 1, 2, 3]).unwrap();
        drop(a);
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&b, &mut buf, None, Duration::from_secs(5)),
            Err(FrameError::Truncated)
        ));

        let (mut a, b) = pair();
        a.write_all(&[0, 0]).unwrap();
        assert!(matches!(
            read_frame(&b, &mut buf, None, Duration::from_secs(5)),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn a_stalled_frame_times_out() {
        let (mut a, b) = pair();
        // Half a length prefix, then nothing.
        a.write_all(&[0]).unwrap();
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&b, &mut buf, None, Duration::from_millis(50)),
            Err(FrameError::Timeout)
        ));
        // Nothing at all before the first-byte deadline.
        let (_a, b) = pair();
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            read_frame(&b, &mut buf, Some(deadline), Duration::from_secs(5)),
            Err(FrameError::Timeout)
        ));
    }
}
