//! Mutually authenticated, encrypted device-to-device sessions over TCP.
//!
//! # Handshake
//! `Noise_XX_25519_ChaChaPoly_BLAKE2s`, with each device's *registered* static
//! X25519 key as its Noise static key. XX because neither side needs the
//! other's key in advance: the key travels in the handshake together with a
//! stapled proof that the registry binds it to the claimed name, so two
//! devices can authenticate each other with no node reachable. The prologue
//! binds the session to a protocol version and a context (the chain id), so
//! devices of different registries never complete a handshake.
//!
//! ```text
//! -> e                          (empty payload: nothing to encrypt it with yet)
//! <- e, ee, s, es  Hello(responder)     initiator verifies the responder
//! -> s, se         Hello(initiator)     responder verifies the initiator
//! <- Accept | Refuse(reason)            first transport message
//! ```
//!
//! The initiator verifies the responder *before* it sends its own static key,
//! so it reveals its identity only to a verified peer. Neither side sends
//! application data before both verified: the responder sends only after its
//! verification succeeds (its first transport message is `Accept`), and the
//! initiator's `initiate` returns only after it has read `Accept`. A refused
//! peer therefore never receives application data, and a refused initiator
//! learns why (authenticated, in `Refuse`).
//!
//! # Transport
//! Every transport frame is one Noise message (at most 65535 bytes) whose
//! plaintext starts with a frame-kind byte. Messages longer than one frame
//! are split into `DataContinued` frames ended by a `Data` frame, up to a
//! configured maximum message length. Rekeying is driven by the sender: after
//! every `rekey_interval` frames (or on demand) it sends a `Rekey` frame under
//! the old key and then rekeys its outgoing cipher; the receiver rekeys its
//! incoming cipher when it reads that frame. Both sides thus switch keys at
//! exactly the same message, whatever their local configuration. A `Close`
//! frame ends a session cleanly; a connection that ends without one is
//! reported as [`SessionError::UnexpectedEof`] (possible truncation).

use std::fmt;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bincode::{Decode, Encode};
use keyreg_consensus::codec::Canonical;
use thiserror::Error;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::framing::{read_frame, write_frame, FrameError, MAX_FRAME_LEN};

/// The Noise protocol every keyreg session runs.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Prefix of the Noise prologue; the session context follows it.
const PROLOGUE_PREFIX: &[u8] = b"keyreg/session/v1\0";
/// Poly1305 tag appended to every encrypted Noise payload.
const TAG_LEN: usize = 16;
/// X25519 public key length.
const DH_LEN: usize = 32;
/// Largest plaintext of one transport frame, kind byte included.
const MAX_FRAME_PLAINTEXT: usize = MAX_FRAME_LEN - TAG_LEN;
/// Largest piece of application data one frame carries.
pub const MAX_CHUNK_LEN: usize = MAX_FRAME_PLAINTEXT - 1;
/// Largest encoded [`Hello`]: what fits into the second handshake message
/// (the larger of the two that carry one: e, s + tag, payload + tag).
pub const MAX_HELLO_LEN: usize = MAX_FRAME_LEN - DH_LEN - (DH_LEN + TAG_LEN) - TAG_LEN;
/// Upper bound on a claimed device name (the registry's own rules are
/// stricter; this only bounds what a session will even look at).
pub const MAX_PEER_NAME_LEN: usize = 256;
/// Upper bound on a refusal reason sent to a peer.
const MAX_REFUSAL_TEXT_LEN: usize = 512;

/// What the first byte of a transport frame's plaintext says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum FrameKind {
    Accept = 1,
    Refuse = 2,
    Data = 3,
    DataContinued = 4,
    Rekey = 5,
    Close = 6,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        [
            FrameKind::Accept,
            FrameKind::Refuse,
            FrameKind::Data,
            FrameKind::DataContinued,
            FrameKind::Rekey,
            FrameKind::Close,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

/// The payload each side puts into its handshake message: who it claims to
/// be, its staple (opaque here: the light client's encoded proof that the
/// registry binds its static key to that name) and the newest certified
/// header it knows (so peers can detect a split view of the chain).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    pub version: u8,
    pub name: String,
    pub staple: Option<Vec<u8>>,
    pub newest_header: Option<Vec<u8>>,
}

impl Canonical for Hello {
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.version
    }
}

/// Why a peer was refused. Produced by a [`PeerVerifier`] or by the session's
/// own checks; sent (as text) to a refused initiator.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RefusalReason {
    #[error("device {0} is not registered")]
    UnknownDevice(String),
    #[error("device {0} is revoked")]
    Revoked(String),
    #[error("device {0}'s registration has expired")]
    Expired(String),
    #[error("the peer's static key is not the key registered for {0}")]
    KeyMismatch(String),
    #[error("expected to reach {expected}, the peer claims to be {claimed}")]
    UnexpectedPeer { expected: String, claimed: String },
    #[error("the peer's proof is stale: {0}")]
    StaleProof(String),
    #[error("the peer's proof is invalid: {0}")]
    InvalidProof(String),
    #[error("the peer's view of the chain forks from ours: {0}")]
    Fork(String),
    #[error("the peer could not be verified: {0}")]
    Unverifiable(String),
}

/// How a peer's registration was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerificationSource {
    /// From the proof the peer stapled to its handshake, checked offline.
    Staple,
    /// From a proof fetched from a registry node.
    Lookup,
    /// From a key pinned locally (no registry involved).
    Pinned,
}

/// A peer whose claimed name and static key a [`PeerVerifier`] accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPeer {
    pub name: String,
    /// The X25519 key registered for `name`; the session checks it equals the
    /// static key the peer proved possession of in the handshake.
    pub static_key: [u8; 32],
    /// Height of the certified block the registration was verified under
    /// (0 when `source` is [`VerificationSource::Pinned`]).
    pub height: u64,
    pub source: VerificationSource,
}

/// Decides whether a peer is who it claims to be. The light client
/// implements it with registry proofs; tests and pinned deployments can use
/// simpler ones.
pub trait PeerVerifier {
    /// The newest certified header this side knows (encoded), sent to the
    /// peer in the handshake. `None` when there is nothing to share.
    fn newest_header(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// Accepts or refuses a peer. `remote_static` is the static key the peer
    /// proved possession of in the Noise handshake: an implementation must
    /// accept only when it is the X25519 key registered for `claimed_name`.
    fn verify_peer(
        &mut self,
        claimed_name: &str,
        remote_static: &[u8; 32],
        staple: Option<&[u8]>,
        newest_header: Option<&[u8]>,
    ) -> Result<VerifiedPeer, RefusalReason>;
}

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("refused the peer: {0}")]
    Refused(RefusalReason),
    #[error("the peer refused us: {0}")]
    RefusedByPeer(String),
    #[error("timed out ({0})")]
    Timeout(&'static str),
    #[error("the connection ended without a close message (possible truncation)")]
    UnexpectedEof,
    #[error("message failed authentication: tampered, replayed or out of order")]
    Decrypt,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    MessageTooLarge { len: usize, max: usize },
    #[error("the session is closed")]
    Closed,
    #[error("the session failed earlier and cannot be used")]
    Broken,
    #[error("noise: {0}")]
    Noise(String),
    #[error("network error: {0}")]
    Io(std::io::Error),
}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Timeout => SessionError::Timeout("waiting for the peer"),
            FrameError::Truncated => SessionError::UnexpectedEof,
            FrameError::Empty | FrameError::TooLarge(_) => SessionError::Protocol(e.to_string()),
            FrameError::Io(io) => SessionError::Io(io),
        }
    }
}

impl From<snow::Error> for SessionError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Decrypt => SessionError::Decrypt,
            other => SessionError::Noise(other.to_string()),
        }
    }
}

/// Timeouts and limits of a session. Both sides may differ in everything but
/// `context`.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Bound into the Noise prologue (use the chain id): peers with different
    /// contexts fail the handshake.
    pub context: String,
    /// The whole handshake (connect included) must finish within this.
    pub handshake_timeout: Duration,
    /// How long `recv` waits for the next frame to begin; `None` waits
    /// indefinitely (interactive pipes).
    pub idle_timeout: Option<Duration>,
    /// Once a frame has begun, all of it must arrive within this.
    pub frame_timeout: Duration,
    /// Bound on each blocking write.
    pub write_timeout: Duration,
    /// Frames sent between automatic rekeys (0: only on demand).
    pub rekey_interval: u64,
    /// Largest application message sent or accepted.
    pub max_message_len: usize,
}

impl SessionConfig {
    pub fn new(context: impl Into<String>) -> Self {
        SessionConfig {
            context: context.into(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            frame_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            rekey_interval: 4096,
            max_message_len: 1 << 20,
        }
    }

    fn prologue(&self) -> Vec<u8> {
        let mut p = PROLOGUE_PREFIX.to_vec();
        p.extend_from_slice(self.context.as_bytes());
        p
    }
}

/// This device: its registered name, its registered X25519 secret and
/// (optionally) its staple.
pub struct LocalIdentity {
    name: String,
    secret: StaticSecret,
    staple: Option<Vec<u8>>,
}

impl fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("name", &self.name)
            .field("public_key", &hex::encode(self.public_key()))
            .field("staple_len", &self.staple.as_ref().map(Vec::len))
            .finish()
    }
}

impl LocalIdentity {
    pub fn new(name: impl Into<String>, secret: StaticSecret) -> Self {
        LocalIdentity {
            name: name.into(),
            secret,
            staple: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The X25519 public key peers will see (and must find registered).
    pub fn public_key(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.secret).to_bytes()
    }

    /// Sets the proof stapled to this device's handshakes (refresh it
    /// before it goes stale).
    pub fn set_staple(&mut self, staple: Option<Vec<u8>>) {
        self.staple = staple;
    }

    pub fn staple(&self) -> Option<&[u8]> {
        self.staple.as_deref()
    }

    fn hello(&self, newest_header: Option<Vec<u8>>) -> Result<Vec<u8>, SessionError> {
        let hello = Hello {
            version: Hello::VERSION,
            name: self.name.clone(),
            staple: self.staple.clone(),
            newest_header,
        };
        let bytes = hello.to_bytes();
        if bytes.len() > MAX_HELLO_LEN {
            return Err(SessionError::MessageTooLarge {
                len: bytes.len(),
                max: MAX_HELLO_LEN,
            });
        }
        Ok(bytes)
    }
}

/// Counters of one session, for diagnostics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub messages_sent: u64,
    pub messages_received: u64,
    pub rekeys_sent: u64,
    pub rekeys_received: u64,
}

/// Both directions share one Noise transport state (it holds both cipher
/// states); the lock is held only while encrypting or decrypting one frame.
type SharedTransport = Arc<Mutex<snow::TransportState>>;

fn lock(
    transport: &SharedTransport,
) -> Result<std::sync::MutexGuard<'_, snow::TransportState>, SessionError> {
    // A panic while encrypting leaves cipher state of unknown consistency.
    transport.lock().map_err(|_| SessionError::Broken)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HalfState {
    Open,
    Closed,
    Failed,
}

/// The sending half of a session.
pub struct SessionSender {
    stream: TcpStream,
    transport: SharedTransport,
    rekey_interval: u64,
    max_message_len: usize,
    frames_since_rekey: u64,
    plaintext: Vec<u8>,
    ciphertext: Vec<u8>,
    state: HalfState,
    messages_sent: u64,
    rekeys_sent: u64,
}

impl SessionSender {
    fn new(stream: TcpStream, transport: SharedTransport, config: &SessionConfig) -> Self {
        SessionSender {
            stream,
            transport,
            rekey_interval: config.rekey_interval,
            max_message_len: config.max_message_len,
            frames_since_rekey: 0,
            plaintext: Vec::with_capacity(MAX_FRAME_PLAINTEXT),
            ciphertext: vec![0u8; MAX_FRAME_LEN],
            state: HalfState::Open,
            messages_sent: 0,
            rekeys_sent: 0,
        }
    }

    /// Sends one message (split into frames as needed).
    pub fn send(&mut self, message: &[u8]) -> Result<(), SessionError> {
        self.check_open()?;
        if message.len() > self.max_message_len {
            return Err(SessionError::MessageTooLarge {
                len: message.len(),
                max: self.max_message_len,
            });
        }
        // An empty message is one empty Data frame.
        let empty: &[u8] = &[];
        let chunks: Vec<&[u8]> = if message.is_empty() {
            vec![empty]
        } else {
            message.chunks(MAX_CHUNK_LEN).collect()
        };
        let frames = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let kind = if i + 1 == frames {
                FrameKind::Data
            } else {
                FrameKind::DataContinued
            };
            self.guard(|s| s.send_data_frame(kind, chunk))?;
        }
        self.messages_sent += 1;
        Ok(())
    }

    /// Rekeys the outgoing direction now (the peer follows at this frame).
    pub fn rekey(&mut self) -> Result<(), SessionError> {
        self.check_open()?;
        self.guard(Self::rekey_now)
    }

    /// Ends the session cleanly: the peer's `recv` returns `Ok(None)`.
    pub fn close(mut self) -> Result<(), SessionError> {
        self.check_open()?;
        self.guard(|s| s.send_frame(FrameKind::Close, &[]))?;
        self.state = HalfState::Closed;
        // The peer may already be gone; the close frame is what matters.
        let _ = self.stream.shutdown(Shutdown::Write);
        Ok(())
    }

    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
    }

    pub fn rekeys_sent(&self) -> u64 {
        self.rekeys_sent
    }

    fn check_open(&self) -> Result<(), SessionError> {
        match self.state {
            HalfState::Open => Ok(()),
            HalfState::Closed => Err(SessionError::Closed),
            HalfState::Failed => Err(SessionError::Broken),
        }
    }

    /// Runs `op`; any failure leaves this half unusable, since the peer's
    /// view of our nonces and keys is no longer known.
    fn guard<T>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, SessionError>,
    ) -> Result<T, SessionError> {
        let result = op(self);
        if result.is_err() {
            self.state = HalfState::Failed;
        }
        result
    }

    fn send_data_frame(&mut self, kind: FrameKind, chunk: &[u8]) -> Result<(), SessionError> {
        if self.rekey_interval > 0 && self.frames_since_rekey >= self.rekey_interval {
            self.rekey_now()?;
        }
        self.send_frame(kind, chunk)?;
        self.frames_since_rekey += 1;
        Ok(())
    }

    fn rekey_now(&mut self) -> Result<(), SessionError> {
        self.send_frame(FrameKind::Rekey, &[])?;
        lock(&self.transport)?.rekey_outgoing();
        self.frames_since_rekey = 0;
        self.rekeys_sent += 1;
        Ok(())
    }

    fn send_frame(&mut self, kind: FrameKind, body: &[u8]) -> Result<(), SessionError> {
        assert!(
            body.len() <= MAX_CHUNK_LEN,
            "frame body exceeds one Noise message"
        );
        self.plaintext.clear();
        self.plaintext.push(kind as u8);
        self.plaintext.extend_from_slice(body);
        let len = lock(&self.transport)?.write_message(&self.plaintext, &mut self.ciphertext)?;
        write_frame(&self.stream, written(&self.ciphertext, len)?)?;
        Ok(())
    }
}

/// The receiving half of a session.
pub struct SessionReceiver {
    stream: TcpStream,
    transport: SharedTransport,
    idle_timeout: Option<Duration>,
    frame_timeout: Duration,
    max_message_len: usize,
    frame: Vec<u8>,
    plaintext: Vec<u8>,
    state: HalfState,
    messages_received: u64,
    rekeys_received: u64,
}

impl SessionReceiver {
    fn new(stream: TcpStream, transport: SharedTransport, config: &SessionConfig) -> Self {
        SessionReceiver {
            stream,
            transport,
            idle_timeout: config.idle_timeout,
            frame_timeout: config.frame_timeout,
            max_message_len: config.max_message_len,
            frame: Vec::with_capacity(MAX_FRAME_LEN),
            plaintext: vec![0u8; MAX_FRAME_LEN],
            state: HalfState::Open,
            messages_received: 0,
            rekeys_received: 0,
        }
    }

    /// The next message, or `None` once the peer closed the session cleanly.
    /// Any error (timeout included) leaves the session unusable.
    pub fn recv(&mut self) -> Result<Option<Vec<u8>>, SessionError> {
        match self.state {
            HalfState::Open => {}
            HalfState::Closed => return Ok(None),
            HalfState::Failed => return Err(SessionError::Broken),
        }
        let result = self.recv_message();
        self.state = match &result {
            Ok(Some(_)) => HalfState::Open,
            Ok(None) => HalfState::Closed,
            Err(_) => HalfState::Failed,
        };
        result
    }

    pub fn messages_received(&self) -> u64 {
        self.messages_received
    }

    pub fn rekeys_received(&self) -> u64 {
        self.rekeys_received
    }

    fn recv_message(&mut self) -> Result<Option<Vec<u8>>, SessionError> {
        let mut message = Vec::new();
        // Each pass consumes one frame from the peer; the loop ends at a
        // message's last frame, at close, or at the first error.
        loop {
            let deadline = self.idle_timeout.map(|t| Instant::now() + t);
            if !read_frame(&self.stream, &mut self.frame, deadline, self.frame_timeout)? {
                return Err(SessionError::UnexpectedEof);
            }
            let (kind, body) = decrypt_frame(&self.transport, &self.frame, &mut self.plaintext)?;
            match kind {
                FrameKind::Data | FrameKind::DataContinued => {
                    let len = message.len() + body.len();
                    if len > self.max_message_len {
                        return Err(SessionError::MessageTooLarge {
                            len,
                            max: self.max_message_len,
                        });
                    }
                    message.extend_from_slice(body);
                    if kind == FrameKind::Data {
                        self.messages_received += 1;
                        return Ok(Some(message));
                    }
                }
                FrameKind::Rekey if body.is_empty() => {
                    lock(&self.transport)?.rekey_incoming();
                    self.rekeys_received += 1;
                }
                FrameKind::Close if body.is_empty() && message.is_empty() => return Ok(None),
                other => {
                    return Err(SessionError::Protocol(format!(
                        "unexpected {other:?} frame after the handshake"
                    )))
                }
            }
        }
    }
}

/// The first `len` bytes of `buf`, which Noise reported writing into it
/// (never more than the buffer: a longer length is a Noise library fault).
fn written(buf: &[u8], len: usize) -> Result<&[u8], SessionError> {
    buf.get(..len).ok_or_else(|| {
        SessionError::Noise(format!(
            "reported {len} bytes in a {}-byte buffer",
            buf.len()
        ))
    })
}

/// Decrypts one transport frame and splits off its kind byte.
fn decrypt_frame<'a>(
    transport: &SharedTransport,
    frame: &[u8],
    plaintext: &'a mut [u8],
) -> Result<(FrameKind, &'a [u8]), SessionError> {
    let len = lock(transport)?.read_message(frame, plaintext)?;
    let (&kind_byte, body) = written(plaintext, len)?
        .split_first()
        .ok_or_else(|| SessionError::Protocol("frame without a kind byte".into()))?;
    let kind = FrameKind::from_byte(kind_byte)
        .ok_or_else(|| SessionError::Protocol(format!("unknown frame kind {kind_byte}")))?;
    Ok((kind, body))
}

/// An established, mutually verified session.
pub struct SecureSession {
    sender: SessionSender,
    receiver: SessionReceiver,
    peer: VerifiedPeer,
    handshake_hash: [u8; 32],
}

impl fmt::Debug for SecureSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureSession")
            .field("peer", &self.peer)
            .field("handshake_hash", &hex::encode(self.handshake_hash))
            .finish()
    }
}

impl SecureSession {
    /// Connects to `addr` and runs the handshake as initiator, expecting the
    /// peer to be `expected_peer`.
    pub fn connect(
        addr: impl ToSocketAddrs,
        expected_peer: &str,
        local: &LocalIdentity,
        verifier: &mut dyn PeerVerifier,
        config: &SessionConfig,
    ) -> Result<Self, SessionError> {
        let deadline = Instant::now() + config.handshake_timeout;
        let addrs = addr.to_socket_addrs().map_err(SessionError::Io)?;
        let mut last_error = None;
        for a in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::Timeout("connecting"));
            }
            match TcpStream::connect_timeout(&a, left) {
                Ok(stream) => {
                    return handshake(
                        Role::Initiator(expected_peer),
                        stream,
                        local,
                        verifier,
                        config,
                        deadline,
                    )
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(SessionError::Io(last_error.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "address resolved to nothing")
        })))
    }

    /// Runs the handshake as initiator on an established connection.
    pub fn initiate(
        stream: TcpStream,
        expected_peer: &str,
        local: &LocalIdentity,
        verifier: &mut dyn PeerVerifier,
        config: &SessionConfig,
    ) -> Result<Self, SessionError> {
        let deadline = Instant::now() + config.handshake_timeout;
        handshake(
            Role::Initiator(expected_peer),
            stream,
            local,
            verifier,
            config,
            deadline,
        )
    }

    /// Runs the handshake as responder on an accepted connection.
    pub fn respond(
        stream: TcpStream,
        local: &LocalIdentity,
        verifier: &mut dyn PeerVerifier,
        config: &SessionConfig,
    ) -> Result<Self, SessionError> {
        let deadline = Instant::now() + config.handshake_timeout;
        handshake(Role::Responder, stream, local, verifier, config, deadline)
    }

    pub fn peer(&self) -> &VerifiedPeer {
        &self.peer
    }

    /// The Noise handshake hash: unique to this session, for channel binding.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    pub fn send(&mut self, message: &[u8]) -> Result<(), SessionError> {
        self.sender.send(message)
    }

    pub fn recv(&mut self) -> Result<Option<Vec<u8>>, SessionError> {
        self.receiver.recv()
    }

    pub fn rekey(&mut self) -> Result<(), SessionError> {
        self.sender.rekey()
    }

    pub fn close(self) -> Result<(), SessionError> {
        self.sender.close()
    }

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            messages_sent: self.sender.messages_sent(),
            messages_received: self.receiver.messages_received(),
            rekeys_sent: self.sender.rekeys_sent(),
            rekeys_received: self.receiver.rekeys_received(),
        }
    }

    /// Splits into halves usable from two threads (full duplex).
    pub fn split(self) -> (SessionSender, SessionReceiver) {
        (self.sender, self.receiver)
    }
}

#[derive(Clone, Copy)]
enum Role<'a> {
    Initiator(&'a str),
    Responder,
}

/// Handshake deadlines and the socket, for the three handshake messages.
struct HandshakeIo<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
    frame_timeout: Duration,
    frame: Vec<u8>,
}

impl HandshakeIo<'_> {
    fn read(&mut self) -> Result<&[u8], SessionError> {
        if !read_frame(
            self.stream,
            &mut self.frame,
            Some(self.deadline),
            self.frame_timeout,
        )
        .map_err(|e| match e {
            FrameError::Timeout => SessionError::Timeout("handshake"),
            other => other.into(),
        })? {
            return Err(SessionError::UnexpectedEof);
        }
        Ok(&self.frame)
    }

    fn write(&self, message: &[u8]) -> Result<(), SessionError> {
        write_frame(self.stream, message).map_err(|e| match e {
            FrameError::Timeout => SessionError::Timeout("handshake"),
            other => other.into(),
        })
    }
}

fn handshake(
    role: Role<'_>,
    stream: TcpStream,
    local: &LocalIdentity,
    verifier: &mut dyn PeerVerifier,
    config: &SessionConfig,
    deadline: Instant,
) -> Result<SecureSession, SessionError> {
    stream.set_nodelay(true).map_err(SessionError::Io)?;
    stream
        .set_write_timeout(Some(config.write_timeout))
        .map_err(SessionError::Io)?;
    let prologue = config.prologue();
    let secret = Zeroizing::new(local.secret.to_bytes());
    let builder = snow::Builder::new(
        NOISE_PARAMS
            .parse()
            .map_err(|e: snow::Error| SessionError::Noise(e.to_string()))?,
    )
    .local_private_key(&secret[..])?
    .prologue(&prologue)?;
    let mut noise = match role {
        Role::Initiator(_) => builder.build_initiator()?,
        Role::Responder => builder.build_responder()?,
    };
    let mut io = HandshakeIo {
        stream: &stream,
        deadline,
        frame_timeout: config.frame_timeout,
        frame: Vec::with_capacity(MAX_FRAME_LEN),
    };
    let mut message = vec![0u8; MAX_FRAME_LEN];
    let mut payload = vec![0u8; MAX_FRAME_LEN];

    let peer = match role {
        Role::Initiator(expected) => {
            // -> e
            let len = noise.write_message(&[], &mut message)?;
            io.write(written(&message, len)?)?;
            // <- e, ee, s, es, Hello(responder)
            let len = noise.read_message(io.read()?, &mut payload)?;
            let peer = check_peer(&noise, written(&payload, len)?, Some(expected), verifier)
                .map_err(SessionError::Refused)?;
            // -> s, se, Hello(initiator): only now that the responder is verified.
            let hello = local.hello(verifier.newest_header())?;
            let len = noise.write_message(&hello, &mut message)?;
            io.write(written(&message, len)?)?;
            peer
        }
        Role::Responder => {
            // -> e
            let len = noise.read_message(io.read()?, &mut payload)?;
            if len != 0 {
                return Err(SessionError::Protocol(
                    "the first handshake message must carry no payload".into(),
                ));
            }
            // <- e, ee, s, es, Hello(responder)
            let hello = local.hello(verifier.newest_header())?;
            let len = noise.write_message(&hello, &mut message)?;
            io.write(written(&message, len)?)?;
            // -> s, se, Hello(initiator)
            let len = noise.read_message(io.read()?, &mut payload)?;
            let verdict = check_peer(&noise, written(&payload, len)?, None, verifier);
            let handshake_hash = handshake_hash(&noise)?;
            let transport = Arc::new(Mutex::new(noise.into_transport_mode()?));
            let mut sender = SessionSender::new(clone(&stream)?, transport.clone(), config);
            return match verdict {
                Ok(peer) => {
                    sender.send_frame(FrameKind::Accept, &[])?;
                    let receiver = SessionReceiver::new(stream, transport, config);
                    Ok(SecureSession {
                        sender,
                        receiver,
                        peer,
                        handshake_hash,
                    })
                }
                Err(reason) => {
                    // Tell the initiator why (authenticated); the refusal
                    // stands whether or not the notice gets through.
                    let text = reason.to_string();
                    let text = truncate_utf8(&text, MAX_REFUSAL_TEXT_LEN);
                    let _ = sender.send_frame(FrameKind::Refuse, text.as_bytes());
                    let _ = stream.shutdown(Shutdown::Both);
                    Err(SessionError::Refused(reason))
                }
            };
        }
    };

    // Initiator: wait for the responder's verdict before any application data.
    let handshake_hash = handshake_hash(&noise)?;
    let transport = Arc::new(Mutex::new(noise.into_transport_mode()?));
    let mut plaintext = vec![0u8; MAX_FRAME_LEN];
    let (kind, body) = decrypt_frame(&transport, io.read()?, &mut plaintext)?;
    match kind {
        FrameKind::Accept if body.is_empty() => {}
        FrameKind::Refuse => {
            return Err(SessionError::RefusedByPeer(sanitize_remote_text(body)));
        }
        other => {
            return Err(SessionError::Protocol(format!(
                "expected the responder's verdict, got a {other:?} frame"
            )))
        }
    }
    let sender = SessionSender::new(clone(&stream)?, transport.clone(), config);
    let receiver = SessionReceiver::new(stream, transport, config);
    Ok(SecureSession {
        sender,
        receiver,
        peer,
        handshake_hash,
    })
}

/// Decodes a peer's Hello and asks the verifier; then checks the verifier's
/// answer against what the handshake itself proved.
fn check_peer(
    noise: &snow::HandshakeState,
    payload: &[u8],
    expected: Option<&str>,
    verifier: &mut dyn PeerVerifier,
) -> Result<VerifiedPeer, RefusalReason> {
    let hello = Hello::from_bytes(payload)
        .map_err(|e| RefusalReason::InvalidProof(format!("malformed handshake payload: {e}")))?;
    if hello.name.len() > MAX_PEER_NAME_LEN || hello.name.chars().any(char::is_control) {
        return Err(RefusalReason::InvalidProof(
            "the claimed name is too long or contains control characters".into(),
        ));
    }
    if let Some(expected) = expected {
        if hello.name != expected {
            return Err(RefusalReason::UnexpectedPeer {
                expected: expected.to_string(),
                claimed: hello.name,
            });
        }
    }
    let remote_static: [u8; 32] = noise
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| RefusalReason::InvalidProof("the peer sent no static key".into()))?;
    let peer = verifier.verify_peer(
        &hello.name,
        &remote_static,
        hello.staple.as_deref(),
        hello.newest_header.as_deref(),
    )?;
    // Defence in depth: whatever the verifier did, the key the peer proved
    // it holds must be the registered one, and for the name it claimed.
    if peer.name != hello.name || peer.static_key != remote_static {
        return Err(RefusalReason::KeyMismatch(hello.name));
    }
    Ok(peer)
}

fn handshake_hash(noise: &snow::HandshakeState) -> Result<[u8; 32], SessionError> {
    noise
        .get_handshake_hash()
        .try_into()
        .map_err(|_| SessionError::Noise("unexpected handshake hash length".into()))
}

fn clone(stream: &TcpStream) -> Result<TcpStream, SessionError> {
    stream.try_clone().map_err(SessionError::Io)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Text from a peer, made safe to print: bounded, control characters replaced.
fn sanitize_remote_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    truncate_utf8(&text, MAX_REFUSAL_TEXT_LEN)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
