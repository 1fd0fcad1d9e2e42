//! A TCP link with a fixed one-way delay, for running a loopback testnet as
//! if its nodes sat in different data centres (`net-bench
//! --link-delay-ms`): the kernel's `netem` needs a module and privileges a
//! container may lack, this needs neither.
//!
//! A [`DelayLink`] listens on a loopback port and forwards every accepted
//! connection to its target. Each direction holds every chunk it reads for
//! the delay before writing it on, in order, so a round trip through the
//! link takes at least twice the delay. Bandwidth is not limited; the bytes
//! in flight are (per direction, [`MAX_CHUNKS_IN_FLIGHT`] chunks of at most
//! [`CHUNK_BYTES`]): a full delay line stops reading, and TCP's flow
//! control pushes back on the sender as a slow link would.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Largest chunk one read takes off a socket.
pub const CHUNK_BYTES: usize = 64 << 10;
/// Chunks held in one direction's delay line, at most.
pub const MAX_CHUNKS_IN_FLIGHT: usize = 256;
/// Connections one link forwards over its life, at most.
pub const MAX_CONNECTIONS: usize = 1024;
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// Longest delay accepted: a misplaced unit (seconds for milliseconds)
/// would otherwise look like a hung testnet.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// A listening delay line to one target; every connection is closed and
/// every thread ends when it is dropped.
pub struct DelayLink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Both ends of every connection accepted so far, to shut down on drop
    /// (which wakes the threads blocked reading them).
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    /// Bytes carried so far, both directions of every connection.
    carried: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

impl DelayLink {
    /// Listens on a free loopback port; each connection to it is forwarded
    /// to `target`, `one_way` late in each direction.
    pub fn start(target: SocketAddr, one_way: Duration) -> io::Result<Self> {
        if one_way > MAX_DELAY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a link delay of {one_way:?} is over {MAX_DELAY:?}"),
            ));
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let carried = Arc::new(AtomicU64::new(0));
        let accept = {
            let (stop, sockets, carried) = (stop.clone(), sockets.clone(), carried.clone());
            let line = Line { one_way, carried };
            thread::Builder::new()
                .name("delay-accept".into())
                .spawn(move || accept_loop(&listener, target, &line, &stop, &sockets))?
        };
        Ok(DelayLink {
            addr,
            stop,
            sockets,
            carried,
            accept: Some(accept),
        })
    }

    /// Bytes the link has carried so far (read off either end).
    pub fn carried_bytes(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }

    /// Where to connect to reach the target through the delay.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        for socket in sockets.iter() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// What every connection of a link shares: its delay and its byte count.
#[derive(Clone)]
struct Line {
    one_way: Duration,
    carried: Arc<AtomicU64>,
}

fn accept_loop(
    listener: &TcpListener,
    target: SocketAddr,
    line: &Line,
    stop: &AtomicBool,
    sockets: &Mutex<Vec<TcpStream>>,
) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((inbound, _)) => {
                if let Err(e) = forward(inbound, target, line, sockets) {
                    eprintln!("delay link to {target}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) => {
                eprintln!("delay link to {target}: accept: {e}");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// Connects to `target` and starts both directions of the delay line.
fn forward(
    inbound: TcpStream,
    target: SocketAddr,
    line: &Line,
    sockets: &Mutex<Vec<TcpStream>>,
) -> io::Result<()> {
    inbound.set_nonblocking(false)?;
    if sockets.lock().unwrap_or_else(|e| e.into_inner()).len() >= 2 * MAX_CONNECTIONS {
        return Err(io::Error::other(format!(
            "over {MAX_CONNECTIONS} connections; refused"
        )));
    }
    let outbound = TcpStream::connect(target)?;
    for socket in [&inbound, &outbound] {
        // The delay is the link's; Nagle's algorithm would add its own.
        socket.set_nodelay(true)?;
    }
    {
        let mut sockets = sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.push(inbound.try_clone()?);
        sockets.push(outbound.try_clone()?);
    }
    delay_line(inbound.try_clone()?, outbound.try_clone()?, line.clone())?;
    delay_line(outbound, inbound, line.clone())
}

/// Copies `from` to `to`, each chunk `one_way` after it was read: a reader
/// thread stamps chunks into a bounded queue, a writer thread sends each
/// when it is due. EOF is passed on as a write shutdown once the queue has
/// drained; an error on either side ends both threads.
fn delay_line(from: TcpStream, to: TcpStream, line: Line) -> io::Result<()> {
    let (queue, due) = sync_channel::<(Instant, Vec<u8>)>(MAX_CHUNKS_IN_FLIGHT);
    thread::Builder::new()
        .name("delay-read".into())
        .spawn(move || read_chunks(from, &queue, &line))?;
    thread::Builder::new()
        .name("delay-write".into())
        .spawn(move || write_when_due(to, &due))?;
    Ok(())
}

fn read_chunks(mut from: TcpStream, queue: &SyncSender<(Instant, Vec<u8>)>, line: &Line) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        line.carried.fetch_add(n as u64, Ordering::Relaxed);
        let chunk = buf.get(..n).unwrap_or_default().to_vec();
        // Blocks while the line is full; fails once the writer is gone.
        if queue.send((Instant::now() + line.one_way, chunk)).is_err() {
            let _ = from.shutdown(Shutdown::Read);
            return;
        }
    }
}

fn write_when_due(mut to: TcpStream, due: &Receiver<(Instant, Vec<u8>)>) {
    // Ends when the reader hangs up and everything it queued is written.
    while let Ok((at, chunk)) = due.recv() {
        thread::sleep(at.saturating_duration_since(Instant::now()));
        if to.write_all(&chunk).is_err() {
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port; answers every connection until it closes.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for stream in listener.incoming().take(8) {
                let Ok(mut stream) = stream else { return };
                thread::spawn(move || {
                    let mut reader = stream.try_clone().expect("clone");
                    let _ = io::copy(&mut reader, &mut stream);
                });
            }
        });
        addr
    }

    #[test]
    fn a_round_trip_takes_at_least_twice_the_delay_and_bytes_arrive_intact() {
        let one_way = Duration::from_millis(40);
        let link = DelayLink::start(echo_server(), one_way).expect("link");
        let mut stream = TcpStream::connect(link.addr()).expect("connect");
        // More than a chunk and a socket buffer, in a pattern that shows
        // reordering or loss.
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        let mut writer = stream.try_clone().expect("clone");
        let to_send = sent.clone();
        let writing = thread::spawn(move || writer.write_all(&to_send));
        let mut echoed = vec![0u8; sent.len()];
        stream.read_exact(&mut echoed).expect("echo");
        let elapsed = started.elapsed();
        writing.join().expect("writer").expect("write");
        assert!(echoed == sent, "bytes changed on the way");
        assert!(elapsed >= 2 * one_way, "round trip took {elapsed:?}");
        // Every byte crossed twice: there and back.
        assert_eq!(link.carried_bytes(), 2 * sent.len() as u64);
    }

    #[test]
    fn dropping_the_link_closes_its_connections() {
        let link = DelayLink::start(echo_server(), Duration::from_millis(1)).expect("link");
        let mut stream = TcpStream::connect(link.addr()).expect("connect");
        stream.write_all(b"ping").expect("write");
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).expect("echo");
        assert_eq!(&back, b"ping");
        drop(link);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut rest = [0u8; 1];
        assert_eq!(stream.read(&mut rest).expect("EOF, not a timeout"), 0);
    }

    #[test]
    fn a_delay_over_the_limit_is_refused() {
        let err = DelayLink::start(echo_server(), MAX_DELAY * 2)
            .err()
            .expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
