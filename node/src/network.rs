//! The libp2p layer: one swarm task behind a [`NetworkHandle`].
//!
//! * Transport: TCP + Noise (XX, authenticated by the node's Ed25519 identity)
//!   + Yamux.
//! * Permissioned: the swarm keeps connections only with peers in an
//!   allow-list. A node's libp2p identity is derived from the SAME 32-byte
//!   seed as its validator [`SigningKey`], so a validator's public key maps
//!   directly to its [`PeerId`] ([`peer_id_of`]). Everyone else is refused
//!   right after the Noise handshake, before any protocol stream opens.
//! * Gossipsub for transactions and consensus messages, with a content-hash
//!   message id (identical payloads dedupe; new content is never dropped as a
//!   "duplicate") and signed, strictly validated envelopes.
//! * Request-response with a bounded length-prefixed codec for block sync.
//! * Identify and ping keep connections observable and alive.
//!
//! Nothing here decodes application payloads: the shell moves size-checked
//! bytes, and the node decodes them.

use std::collections::HashMap;
use std::io;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use keyreg_consensus::{PublicKey, SigningKey};
use libp2p::allow_block_list::{self, AllowedPeers};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, MessageId, TopicHash};
use libp2p::identity::{self, ed25519};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{connection_limits, identify, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use libp2p::{StreamProtocol, SwarmBuilder};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Largest gossipsub RPC frame accepted or sent (libp2p's default is
/// 64 KiB). A compact proposal carries a block's transaction hashes, at most
/// `MAX_BLOCK_TXS` × 32 bytes (1 MiB) besides its header; 2 MiB leaves room
/// for the proposal envelope and the gossipsub framing and signature.
pub const MAX_GOSSIP_FRAME: usize = 2 << 20;
/// Largest application payload [`NetworkHandle::publish`] accepts or a
/// gossip event carries: the frame limit minus room for gossipsub's own
/// envelope (topic, sequence number, source, signature, key).
pub const MAX_GOSSIP_PAYLOAD: usize = MAX_GOSSIP_FRAME - 4096;
/// Largest sync request: a query, at most a block's worth of transaction
/// hashes.
pub const MAX_REQUEST_BYTES: usize = 2 << 20;
const _: () = assert!(keyreg_registry::block::MAX_BLOCK_TXS * 32 + 1024 <= MAX_REQUEST_BYTES);
// A compact proposal (header and every transaction hash) fits a gossip
// payload, and one block with its certificate fits a sync response.
const _: () = assert!(keyreg_registry::block::MAX_BLOCK_TXS * 32 + 4096 <= MAX_GOSSIP_PAYLOAD);
const _: () = assert!(keyreg_registry::block::MAX_BLOCK_BYTES + (64 << 10) <= MAX_RESPONSE_BYTES);
/// Largest sync response (a batch of committed blocks).
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

const COMMAND_QUEUE: usize = 256;
const EVENT_QUEUE: usize = 1024;
/// Outbound requests awaiting a response; more are refused with `Busy`.
const MAX_PENDING_REQUESTS: usize = 256;
/// Inbound requests the application has not answered yet, and their bytes
/// together (a request may be 1 MiB): more are dropped (the requester sees
/// a failure and retries elsewhere).
const MAX_PENDING_RESPONSES: usize = 256;
const MAX_PENDING_REQUEST_BYTES: usize = 32 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a requester waits for the network task's answer at most:
/// request-response reports every request's end within REQUEST_TIMEOUT, but
/// a report it never makes must not stall the requester (the sync loop)
/// forever, so the requester keeps its own deadline a little later.
const REQUEST_DEADLINE: Duration = Duration::from_secs(25);
const REDIAL_INTERVAL: Duration = Duration::from_secs(3);
/// How often each connection is pinged, and how long an answer may take
/// before the connection is closed as dead.
const PING_INTERVAL: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(4);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum NetworkError {
    #[error("the key is not a valid Ed25519 libp2p identity")]
    BadKey,
    #[error("transport setup failed: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("gossip payload of {0} bytes exceeds the {MAX_GOSSIP_PAYLOAD}-byte limit")]
    PayloadTooLarge(usize),
    #[error("sync request of {0} bytes exceeds the {MAX_REQUEST_BYTES}-byte limit")]
    RequestTooLarge(usize),
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("dial failed: {0}")]
    Dial(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("too many sync requests in flight")]
    Busy,
    #[error("the network task has stopped")]
    Stopped,
}

/// What a gossip message is about; each kind has its own topic per chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Transactions,
    Consensus,
}

impl Topic {
    const ALL: [Topic; 2] = [Topic::Transactions, Topic::Consensus];

    fn ident(self, chain_id: &str) -> IdentTopic {
        match self {
            Topic::Transactions => IdentTopic::new(format!("keyreg/{chain_id}/tx")),
            Topic::Consensus => IdentTopic::new(format!("keyreg/{chain_id}/consensus")),
        }
    }
}

/// The libp2p keypair for a node key: same seed, same public key.
pub fn keypair_of(key: &SigningKey) -> Result<identity::Keypair, NetworkError> {
    let mut seed = *key.seed();
    let secret = ed25519::SecretKey::try_from_bytes(&mut seed).map_err(|_| NetworkError::BadKey)?;
    Ok(identity::Keypair::from(ed25519::Keypair::from(secret)))
}

/// The PeerId of the node whose key is `key`.
pub fn peer_id_of(key: &PublicKey) -> Result<PeerId, NetworkError> {
    let public = ed25519::PublicKey::try_from_bytes(&key.0).map_err(|_| NetworkError::BadKey)?;
    Ok(identity::PublicKey::from(public).to_peer_id())
}

/// Converts keys to PeerIds, skipping (and logging) invalid points: a set
/// member with a malformed key could never complete a handshake anyway.
fn peer_ids_of(keys: &[PublicKey]) -> Vec<PeerId> {
    keys.iter()
        .filter_map(|k| match peer_id_of(k) {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!(key = %k, "ignoring an allow-list key that is not a valid Ed25519 point");
                None
            }
        })
        .collect()
}

/// How to start the swarm.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub chain_id: String,
    pub listen: Vec<Multiaddr>,
    /// Peers to keep connected to, each ending in `/p2p/<peer id>`; redialed
    /// whenever the connection drops.
    pub persistent_peers: Vec<Multiaddr>,
    /// Keys allowed to connect (validators plus configured observers). The
    /// node's own key may be included; it is ignored.
    pub allowed_keys: Vec<PublicKey>,
    /// How long identical content is deduplicated. A deliberate resend of
    /// the same bytes (consensus rebroadcasts lost messages) goes out only
    /// after this window, so it must be shorter than the resend interval.
    pub duplicate_window: Duration,
}

/// Events from the network to the node. Payloads are size-checked, not decoded.
#[derive(Debug)]
pub enum NetworkEvent {
    /// A consensus message, already relayed: votes and proposals must not
    /// wait on this node to reach the others, and the engine checks them.
    Consensus {
        /// The peer that forwarded it (gossip is anonymous: see
        /// [`build_behaviour`]).
        from: PeerId,
        data: Vec<u8>,
    },
    /// A transaction batch, relayed to the other peers only once the node
    /// reports a verdict on it ([`NetworkHandle::relay`]).
    Transactions {
        data: Vec<u8>,
        relay: PendingRelay,
    },
    InboundRequest {
        peer: PeerId,
        id: InboundRequestId,
        data: Vec<u8>,
    },
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
}

/// A received transaction batch waiting for the node's verdict, which
/// decides whether gossipsub relays it. One never reported is dropped from
/// gossipsub's cache unrelayed after its history window.
#[derive(Debug)]
pub struct PendingRelay(Box<(MessageId, PeerId)>);

impl PendingRelay {
    /// The peer that sent the batch.
    pub fn from(&self) -> PeerId {
        self.0 .1
    }
}

/// What the node found in a received transaction batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayVerdict {
    /// Checked, and it brought new transactions: relay it to the peers that
    /// have neither sent it nor said they do not want it.
    Relay,
    /// Nothing to relay, and not the sender's fault: every transaction was
    /// already known, or this node could not check or keep them.
    Ignore,
    /// Provably invalid (undecodable, non-canonical, a bad signature): a
    /// correct node never sends it.
    Reject,
}

impl RelayVerdict {
    fn acceptance(self) -> gossipsub::MessageAcceptance {
        match self {
            RelayVerdict::Relay => gossipsub::MessageAcceptance::Accept,
            RelayVerdict::Ignore => gossipsub::MessageAcceptance::Ignore,
            RelayVerdict::Reject => gossipsub::MessageAcceptance::Reject,
        }
    }
}

/// A point-in-time view of the swarm.
#[derive(Clone, Debug, Default)]
pub struct NetworkStatus {
    pub connected: Vec<PeerId>,
    /// For each topic, connected peers subscribed to it.
    pub topic_peers: HashMap<&'static str, usize>,
}

impl Topic {
    fn name(self) -> &'static str {
        match self {
            Topic::Transactions => "tx",
            Topic::Consensus => "consensus",
        }
    }
}

enum Command {
    Publish {
        topic: Topic,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    Request {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetworkError>>,
    },
    Respond {
        id: InboundRequestId,
        data: Vec<u8>,
    },
    SetAllowed {
        keys: Vec<PublicKey>,
    },
    Relay {
        pending: PendingRelay,
        verdict: RelayVerdict,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    /// Internal: dial a persistent peer at freshly resolved addresses.
    DialPeer {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    Status {
        reply: oneshot::Sender<NetworkStatus>,
    },
    Shutdown,
}

/// A cheap, cloneable handle to the swarm task.
#[derive(Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    listen_addrs: Arc<Vec<Multiaddr>>,
    connected_peers: Arc<AtomicUsize>,
}

impl NetworkHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The addresses actually bound (port 0 resolved), without `/p2p/`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Peers with at least one established connection.
    pub fn connected_peers(&self) -> usize {
        self.connected_peers.load(Ordering::Relaxed)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| NetworkError::Stopped)?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// Gossips `data` on `topic`. Fails when no connected peer subscribes to
    /// the topic or the identical payload was already published recently.
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<(), NetworkError> {
        if data.len() > MAX_GOSSIP_PAYLOAD {
            return Err(NetworkError::PayloadTooLarge(data.len()));
        }
        self.call(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// Sends a sync request to `peer` and waits for its response (bounded by
    /// the request timeout).
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetworkError> {
        if data.len() > MAX_REQUEST_BYTES {
            return Err(NetworkError::RequestTooLarge(data.len()));
        }
        match tokio::time::timeout(
            REQUEST_DEADLINE,
            self.call(|reply| Command::Request { peer, data, reply }),
        )
        .await
        {
            Ok(answer) => answer?,
            Err(_) => {
                // request-response should have reported a timeout by now:
                // worth an operator's (and a failed CI run's) attention.
                tracing::warn!(%peer, "sync request: no outcome reported within {REQUEST_DEADLINE:?}");
                Err(NetworkError::Request(format!(
                    "no outcome reported within {REQUEST_DEADLINE:?}"
                )))
            }
        }
    }

    /// Answers an inbound request. Responses above [`MAX_RESPONSE_BYTES`]
    /// are refused by the codec (the requester sees a failure).
    pub async fn respond(&self, id: InboundRequestId, data: Vec<u8>) -> Result<(), NetworkError> {
        self.commands
            .send(Command::Respond { id, data })
            .await
            .map_err(|_| NetworkError::Stopped)
    }

    /// Replaces the allow-list (e.g. at an epoch change). Connections to
    /// peers no longer allowed are closed.
    pub async fn set_allowed(&self, keys: Vec<PublicKey>) -> Result<(), NetworkError> {
        self.commands
            .send(Command::SetAllowed { keys })
            .await
            .map_err(|_| NetworkError::Stopped)
    }

    /// Reports the verdict on a received transaction batch. Callable from
    /// any thread, never blocks: when the command queue is full the verdict
    /// is lost, and the batch is then not relayed (the node that published
    /// it sends it to every peer it is connected to anyway).
    pub fn relay(&self, pending: PendingRelay, verdict: RelayVerdict) {
        if self
            .commands
            .try_send(Command::Relay { pending, verdict })
            .is_err()
        {
            tracing::debug!("relay verdict dropped: network busy or stopped");
        }
    }

    /// Dials `addr` once (it must end in `/p2p/<peer id>` of an allowed peer).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetworkError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    pub async fn status(&self) -> Result<NetworkStatus, NetworkError> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// Stops the swarm task; pending requests fail with `Stopped`.
    pub async fn shutdown(&self) {
        // An error means the task is already gone, which is the goal.
        let _ = self.commands.send(Command::Shutdown).await;
    }
}

/// A running network: its handle, its event stream and its task.
pub struct Network {
    pub handle: NetworkHandle,
    pub events: mpsc::Receiver<NetworkEvent>,
    pub task: JoinHandle<()>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    // First, so a refused peer is turned away before any other behaviour
    // sets up a handler for it.
    allowed: allow_block_list::Behaviour<AllowedPeers>,
    limits: connection_limits::Behaviour,
    gossip: gossipsub::Behaviour,
    sync: request_response::Behaviour<FrameCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// Request-response codec: one `u32` little-endian length, then that many
/// bytes; the length is checked against the limit before any allocation.
#[derive(Clone, Default)]
struct FrameCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    data: &[u8],
    max: usize,
) -> io::Result<()> {
    if data.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds the {max}-byte limit", data.len()),
        ));
    }
    // Fits: max is far below u32::MAX.
    io.write_all(&(data.len() as u32).to_le_bytes()).await?;
    io.write_all(data).await?;
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io, MAX_REQUEST_BYTES).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io, MAX_RESPONSE_BYTES).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &req, MAX_REQUEST_BYTES).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &res, MAX_RESPONSE_BYTES).await
    }
}

/// Message id = BLAKE3(topic, data): the same payload published twice (by
/// anyone) is one message; different payloads never collide.
fn content_message_id(message: &gossipsub::Message) -> MessageId {
    let mut h = blake3::Hasher::new();
    h.update(&(message.topic.as_str().len() as u64).to_le_bytes());
    h.update(message.topic.as_str().as_bytes());
    h.update(&message.data);
    MessageId::from(h.finalize().as_bytes().to_vec())
}

fn build_behaviour(
    keypair: &identity::Keypair,
    config: &NetworkConfig,
    allowed: &[PeerId],
) -> Result<Behaviour, NetworkError> {
    let chain_id = &config.chain_id;
    let gossip_config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(MAX_GOSSIP_FRAME)
        .duplicate_cache_time(config.duplicate_window)
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(content_message_id)
        // Nothing is relayed before the node has looked at it: transaction
        // batches after their signatures verify, consensus messages at once
        // (`SwarmTask::on_gossip`). Meanwhile the receivers' IDONTWANTs
        // (sent on receipt) reach each other, so a batch crosses each link
        // about once instead of once from its origin plus once from every
        // other receiver.
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(700))
        .build()
        .map_err(|e| NetworkError::Transport(format!("gossipsub config: {e}")))?;
    // Anonymous gossip: no author, sequence number or libp2p signature per
    // message. Every payload carries its own signatures (transactions, votes,
    // proposals), which receivers verify anyway, and only allowed peers can
    // connect (Noise-authenticated); a per-message signature would cost one
    // signing and a verification per copy received for nothing. Content
    // message ids deduplicate.
    let gossip = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_config)
        .map_err(|e| NetworkError::Transport(format!("gossipsub: {e}")))?;

    let sync_protocol = StreamProtocol::try_from_owned(format!("/keyreg/{chain_id}/sync/1"))
        .map_err(|e| NetworkError::Transport(format!("sync protocol name: {e}")))?;
    let sync = request_response::Behaviour::with_codec(
        FrameCodec,
        [(sync_protocol, request_response::ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
    );

    let mut allow = allow_block_list::Behaviour::<AllowedPeers>::default();
    for peer in allowed {
        allow.allow_peer(*peer);
    }
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(64))
            .with_max_established_per_peer(Some(2)),
    );
    Ok(Behaviour {
        allowed: allow,
        limits,
        gossip,
        sync,
        identify: identify::Behaviour::new(identify::Config::new(
            format!("/keyreg/{chain_id}/1"),
            keypair.public(),
        )),
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(PING_INTERVAL)
                .with_timeout(PING_TIMEOUT),
        ),
    })
}

/// Builds the swarm, binds the listen addresses and starts the swarm task.
pub async fn start(key: &SigningKey, config: NetworkConfig) -> Result<Network, NetworkError> {
    let keypair = keypair_of(key)?;
    let local_peer_id = keypair.public().to_peer_id();
    let allowed = peer_ids_of(&config.allowed_keys);
    let behaviour = build_behaviour(&keypair, &config, &allowed)?;
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetworkError::Transport(e.to_string()))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| NetworkError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();

    let topics: HashMap<TopicHash, Topic> = Topic::ALL
        .iter()
        .map(|t| (t.ident(&config.chain_id).hash(), *t))
        .collect();
    for topic in Topic::ALL {
        swarm
            .behaviour_mut()
            .gossip
            .subscribe(&topic.ident(&config.chain_id))
            .map_err(|e| NetworkError::Transport(format!("subscribe: {e}")))?;
    }
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetworkError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    let listen_addrs = wait_for_listen_addrs(&mut swarm, config.listen.len()).await?;

    let persistent: Vec<(PeerId, Multiaddr)> = config
        .persistent_peers
        .iter()
        .filter_map(|addr| match peer_of_addr(addr) {
            Some(p) if p != local_peer_id => Some((p, addr.clone())),
            Some(_) => None,
            None => {
                tracing::warn!(%addr, "persistent peer address lacks /p2p/<peer id>; ignored");
                None
            }
        })
        .collect();

    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let connected_peers = Arc::new(AtomicUsize::new(0));
    let handle = NetworkHandle {
        commands: commands_tx,
        local_peer_id,
        listen_addrs: Arc::new(listen_addrs),
        connected_peers: connected_peers.clone(),
    };
    let runner = SwarmTask {
        swarm,
        chain_id: config.chain_id,
        topics,
        events: events_tx,
        commands,
        persistent,
        own_commands: handle.commands.downgrade(),
        connected_peers,
        pending_requests: HashMap::new(),
        pending_responses: PendingResponses::new(),
    };
    let task = tokio::spawn(runner.run());
    Ok(Network {
        handle,
        events,
        task,
    })
}

fn dial_peer(swarm: &mut Swarm<Behaviour>, peer: PeerId, addrs: Vec<Multiaddr>) {
    let opts = DialOpts::peer_id(peer)
        .addresses(addrs)
        .condition(PeerCondition::DisconnectedAndNotDialing)
        .build();
    if let Err(e) = swarm.dial(opts) {
        tracing::trace!(%peer, error = %e, "dial skipped");
    }
}

fn has_dns(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)))
}

/// Replaces a leading `/dns*/<host>/tcp/<port>` by the IP addresses the
/// host resolves to (empty when resolution fails).
async fn resolve_dns(addr: &Multiaddr) -> Vec<Multiaddr> {
    let mut parts = addr.iter();
    let (Some(host), Some(Protocol::Tcp(port))) = (parts.next(), parts.next()) else {
        return Vec::new();
    };
    let (host, want_v4, want_v6) = match host {
        Protocol::Dns(h) => (h, true, true),
        Protocol::Dns4(h) => (h, true, false),
        Protocol::Dns6(h) => (h, false, true),
        _ => return Vec::new(),
    };
    let rest: Vec<Protocol> = parts.collect();
    let resolved = match tokio::net::lookup_host((host.as_ref(), port)).await {
        Ok(it) => it,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "cannot resolve peer address");
            return Vec::new();
        }
    };
    resolved
        .filter(|sa| (sa.is_ipv4() && want_v4) || (sa.is_ipv6() && want_v6))
        .map(|sa| {
            let mut out = Multiaddr::empty()
                .with(sa.ip().into())
                .with(Protocol::Tcp(port));
            for p in &rest {
                out.push(p.clone());
            }
            out
        })
        .collect()
}

fn peer_of_addr(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

async fn wait_for_listen_addrs(
    swarm: &mut Swarm<Behaviour>,
    count: usize,
) -> Result<Vec<Multiaddr>, NetworkError> {
    let mut addrs = Vec::with_capacity(count);
    let deadline = tokio::time::sleep(LISTEN_TIMEOUT);
    tokio::pin!(deadline);
    while addrs.len() < count {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => addrs.push(address),
                SwarmEvent::ListenerError { error, .. } | SwarmEvent::ListenerClosed { reason: Err(error), .. } => {
                    return Err(NetworkError::Transport(format!("listener failed: {error}")));
                }
                _ => {}
            },
            _ = &mut deadline => {
                return Err(NetworkError::Transport("timed out binding listen addresses".into()));
            }
        }
    }
    Ok(addrs)
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    chain_id: String,
    topics: HashMap<TopicHash, Topic>,
    events: mpsc::Sender<NetworkEvent>,
    commands: mpsc::Receiver<Command>,
    persistent: Vec<(PeerId, Multiaddr)>,
    /// Lets resolver tasks queue dials without keeping the task alive.
    own_commands: mpsc::WeakSender<Command>,
    connected_peers: Arc<AtomicUsize>,
    pending_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetworkError>>>,
    pending_responses: PendingResponses<InboundRequestId, ResponseChannel<Vec<u8>>>,
}

/// The response channels of inbound requests the application has not
/// answered, bounded by count and by the requests' bytes.
struct PendingResponses<K, C> {
    channels: HashMap<K, (C, usize)>,
    request_bytes: usize,
}

impl<K: std::hash::Hash + Eq, C> PendingResponses<K, C> {
    fn new() -> Self {
        PendingResponses {
            channels: HashMap::new(),
            request_bytes: 0,
        }
    }

    /// Holds `channel` until [`take`](Self::take); false (and nothing held)
    /// when the bounds are reached.
    fn hold(&mut self, id: K, channel: C, request_len: usize) -> bool {
        if self.channels.len() >= MAX_PENDING_RESPONSES
            || self.request_bytes + request_len > MAX_PENDING_REQUEST_BYTES
        {
            return false;
        }
        self.request_bytes += request_len;
        if let Some((_, replaced)) = self.channels.insert(id, (channel, request_len)) {
            self.request_bytes -= replaced;
        }
        true
    }

    fn take(&mut self, id: &K) -> Option<C> {
        let (channel, request_len) = self.channels.remove(id)?;
        self.request_bytes -= request_len;
        Some(channel)
    }
}

impl SwarmTask {
    async fn run(mut self) {
        let mut redial = tokio::time::interval(REDIAL_INTERVAL);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => {
                        if self.handle_command(command).is_break() {
                            break;
                        }
                    }
                    None => break,
                },
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                _ = redial.tick() => self.redial(),
            }
        }
        tracing::debug!("network task stopped");
    }

    /// Dials every persistent peer that is neither connected nor being
    /// dialed. DNS names (`/dns4/node1/tcp/26656/p2p/...`, e.g. docker
    /// hostnames) are resolved afresh each time, off the swarm task.
    fn redial(&mut self) {
        for (peer, addr) in &self.persistent {
            if self.swarm.is_connected(peer) {
                continue;
            }
            if !has_dns(addr) {
                dial_peer(&mut self.swarm, *peer, vec![addr.clone()]);
                continue;
            }
            let Some(commands) = self.own_commands.upgrade() else {
                return;
            };
            let (peer, addr) = (*peer, addr.clone());
            tokio::spawn(async move {
                let addrs = resolve_dns(&addr).await;
                if !addrs.is_empty() {
                    // The task may be shutting down; then there is nothing to dial.
                    let _ = commands.send(Command::DialPeer { peer, addrs }).await;
                }
            });
        }
    }

    fn emit(&mut self, event: NetworkEvent) {
        if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
            // Lossy by design: the consumer is behind; consensus recovers
            // lost messages through rebroadcasts and block sync.
            let kind = match event {
                NetworkEvent::Consensus { .. } => "consensus gossip",
                NetworkEvent::Transactions { relay, .. } => {
                    self.report(relay, RelayVerdict::Ignore);
                    "transaction gossip"
                }
                NetworkEvent::InboundRequest { .. } => "sync request",
                NetworkEvent::PeerConnected(_) | NetworkEvent::PeerDisconnected(_) => "peer",
            };
            tracing::warn!(kind, "network event queue full; event dropped");
        }
    }

    fn report(&mut self, pending: PendingRelay, verdict: RelayVerdict) {
        // False when the batch already left gossipsub's cache; nothing to do.
        let (id, from) = &*pending.0;
        self.swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(id, from, verdict.acceptance());
    }

    fn handle_command(&mut self, command: Command) -> ControlFlow<()> {
        match command {
            Command::Publish { topic, data, reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .publish(topic.ident(&self.chain_id), data)
                    .map(|_| ())
                    .map_err(|e| NetworkError::Publish(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Request { peer, data, reply } => {
                if self.pending_requests.len() >= MAX_PENDING_REQUESTS {
                    // Requesters past their deadline have gone; their
                    // entries must not hold the bound.
                    self.pending_requests.retain(|_, reply| !reply.is_closed());
                }
                if self.pending_requests.len() >= MAX_PENDING_REQUESTS {
                    let _ = reply.send(Err(NetworkError::Busy));
                } else {
                    let id = self.swarm.behaviour_mut().sync.send_request(&peer, data);
                    self.pending_requests.insert(id, reply);
                }
            }
            Command::Respond { id, data } => match self.pending_responses.take(&id) {
                Some(channel) => {
                    if self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, data)
                        .is_err()
                    {
                        tracing::debug!(%id, "requester went away before the response");
                    }
                }
                None => tracing::debug!(%id, "response to an unknown or expired request"),
            },
            Command::SetAllowed { keys } => self.set_allowed(&keys),
            Command::Relay { pending, verdict } => self.report(pending, verdict),
            Command::Dial { addr, reply } => {
                let result = self
                    .swarm
                    .dial(addr)
                    .map_err(|e| NetworkError::Dial(e.to_string()));
                let _ = reply.send(result);
            }
            Command::DialPeer { peer, addrs } => dial_peer(&mut self.swarm, peer, addrs),
            Command::Status { reply } => {
                let gossip = &self.swarm.behaviour().gossip;
                let mut topic_peers = HashMap::new();
                for (hash, topic) in &self.topics {
                    let count = gossip
                        .all_peers()
                        .filter(|(_, topics)| topics.contains(&hash))
                        .count();
                    topic_peers.insert(topic.name(), count);
                }
                let _ = reply.send(NetworkStatus {
                    connected: self.swarm.connected_peers().copied().collect(),
                    topic_peers,
                });
            }
            Command::Shutdown => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }

    fn set_allowed(&mut self, keys: &[PublicKey]) {
        let new: std::collections::HashSet<PeerId> = peer_ids_of(keys).into_iter().collect();
        let allow = &mut self.swarm.behaviour_mut().allowed;
        let old: Vec<PeerId> = allow.allowed_peers().iter().copied().collect();
        for peer in old {
            if !new.contains(&peer) {
                // Also closes its connections.
                allow.disallow_peer(peer);
            }
        }
        for peer in new {
            allow.allow_peer(peer);
        }
        tracing::info!(
            allowed = self.swarm.behaviour().allowed.allowed_peers().len(),
            "allow-list updated"
        );
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            // Only the first connection to a peer and the last one closing
            // change who is connected.
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 => {
                self.connected_peers
                    .store(self.swarm.connected_peers().count(), Ordering::Relaxed);
                tracing::info!(peer = %peer_id, "peer connected");
                self.emit(NetworkEvent::PeerConnected(peer_id));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                self.connected_peers
                    .store(self.swarm.connected_peers().count(), Ordering::Relaxed);
                tracing::info!(peer = %peer_id, cause = ?cause, "peer disconnected");
                self.emit(NetworkEvent::PeerDisconnected(peer_id));
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection refused or failed");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(event)) => self.on_gossip(event),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.on_sync(event),
            // A connection whose peer stopped answering (a partition, a peer
            // that moved address) would otherwise look alive until TCP gives
            // up, minutes later, and block the redial of a persistent peer.
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            })) => {
                tracing::info!(%peer, %error, "ping failed; closing the connection to redial");
                self.swarm.close_connection(connection);
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source: from,
            message_id: id,
            message,
        } = event
        else {
            return;
        };
        let pending = PendingRelay(Box::new((id, from)));
        let Some(&topic) = self.topics.get(&message.topic) else {
            self.report(pending, RelayVerdict::Ignore);
            return;
        };
        if message.data.len() > MAX_GOSSIP_PAYLOAD {
            tracing::debug!(%from, len = message.data.len(), "oversize gossip dropped");
            self.report(pending, RelayVerdict::Reject);
            return;
        }
        match topic {
            Topic::Consensus => {
                self.report(pending, RelayVerdict::Relay);
                self.emit(NetworkEvent::Consensus {
                    from,
                    data: message.data,
                });
            }
            Topic::Transactions => self.emit(NetworkEvent::Transactions {
                data: message.data,
                relay: pending,
            }),
        }
    }

    fn on_sync(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => {
                if !self
                    .pending_responses
                    .hold(request_id, channel, request.len())
                {
                    tracing::warn!(%peer, "too many unanswered sync requests; dropping one");
                    return;
                }
                self.emit(NetworkEvent::InboundRequest {
                    peer,
                    id: request_id,
                    data: request,
                });
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetworkError::Request(error.to_string())));
                }
            }
            Event::InboundFailure {
                request_id, error, ..
            } => {
                tracing::debug!(%error, "inbound sync request failed");
                self.pending_responses.take(&request_id);
            }
            Event::ResponseSent { request_id, .. } => {
                self.pending_responses.take(&request_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requester's own deadline ends a request whose outcome the network
    /// task never reports (the sync loop must not wait forever).
    #[tokio::test(start_paused = true)]
    async fn a_request_whose_outcome_is_never_reported_ends_at_the_deadline() {
        let (commands, mut held) = mpsc::channel(1);
        let handle = NetworkHandle {
            commands,
            local_peer_id: identity::Keypair::generate_ed25519().public().to_peer_id(),
            listen_addrs: Arc::new(Vec::new()),
            connected_peers: Arc::new(AtomicUsize::new(0)),
        };
        // Takes the request and keeps its reply sender, never answering.
        let holder = tokio::spawn(async move {
            let _kept = held.recv().await;
            std::future::pending::<()>().await;
        });
        let peer = identity::Keypair::generate_ed25519().public().to_peer_id();
        let started = tokio::time::Instant::now();
        let answer = handle.request(peer, vec![1, 2, 3]).await;
        assert!(
            matches!(answer, Err(NetworkError::Request(_))),
            "{answer:?}"
        );
        assert!(started.elapsed() >= REQUEST_DEADLINE);
        holder.abort();
    }

    #[test]
    fn unanswered_requests_are_bounded_by_count_and_by_bytes() {
        let mut pending = PendingResponses::new();
        // 1 MiB requests: the byte bound comes first.
        let big = 1 << 20;
        let fit = MAX_PENDING_REQUEST_BYTES / big;
        for id in 0..fit {
            assert!(pending.hold(id, id, big), "request {id}");
        }
        assert!(!pending.hold(fit, fit, big), "over the byte bound");
        assert!(pending.hold(fit, fit, 0), "an empty one still fits");
        // Answering one frees its bytes, once.
        assert_eq!(pending.take(&0), Some(0));
        assert_eq!(pending.take(&0), None);
        assert!(pending.hold(fit + 1, fit + 1, big));
        assert_eq!(pending.request_bytes, MAX_PENDING_REQUEST_BYTES);
        // Small requests: the count bound.
        let mut small = PendingResponses::new();
        for id in 0..MAX_PENDING_RESPONSES {
            assert!(small.hold(id, (), 10));
        }
        assert!(!small.hold(MAX_PENDING_RESPONSES, (), 10));
        assert_eq!(small.request_bytes, 10 * MAX_PENDING_RESPONSES);
    }
}
