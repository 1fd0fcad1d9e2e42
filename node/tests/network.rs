//! Three allowed swarms on loopback exchange gossip and a sync
//! request-response; a fourth swarm whose key is not allowed gets neither a
//! connection nor a message. On a line of three, transaction batches are
//! relayed only as the middle node's verdict says.

use std::time::Duration;

use keyreg_consensus::SigningKey;
use keyreg_node::network::{
    self, Network, NetworkConfig, NetworkEvent, NetworkHandle, PendingRelay, RelayVerdict, Topic,
    MAX_GOSSIP_PAYLOAD,
};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::time::{timeout_at, Instant};

const CHAIN: &str = "net-test";
const DEADLINE: Duration = Duration::from_secs(30);

fn key(n: u8) -> SigningKey {
    SigningKey::from_seed([n; 32])
}

async fn start(n: u8, allowed: &[SigningKey], persistent: Vec<Multiaddr>) -> Network {
    network::start(
        &key(n),
        NetworkConfig {
            chain_id: CHAIN.into(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            persistent_peers: persistent,
            allowed_keys: allowed.iter().map(SigningKey::public).collect(),
            duplicate_window: Duration::from_secs(60),
        },
    )
    .await
    .unwrap()
}

fn dial_addr(handle: &NetworkHandle) -> Multiaddr {
    handle.listen_addrs()[0]
        .clone()
        .with(Protocol::P2p(handle.local_peer_id()))
}

/// Polls until `check` holds, failing the test at the deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A received gossip message: its topic, the peer that sent it, its bytes
/// and, for a transaction batch, the pending relay verdict.
type Gossip = (Topic, PeerId, Vec<u8>, Option<PendingRelay>);

/// Next gossip event on `net`, skipping connection events.
async fn next_gossip(net: &mut Network) -> Gossip {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match timeout_at(deadline, net.events.recv()).await {
            Ok(Some(NetworkEvent::Consensus { from, data })) => {
                return (Topic::Consensus, from, data, None)
            }
            Ok(Some(NetworkEvent::Transactions { data, relay })) => {
                return (Topic::Transactions, relay.from(), data, Some(relay))
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("network stopped"),
            Err(_) => panic!("no gossip before the deadline"),
        }
    }
}

/// Waits until each handle's swarm has `peers` peers subscribed to both topics.
async fn wait_for_mesh(handles: &[(&str, &NetworkHandle, usize)]) {
    for &(name, handle, peers) in handles {
        eventually(
            &format!("{name} sees {peers} peers subscribed"),
            move || async move {
                let s = handle.status().await.unwrap();
                s.topic_peers.get("consensus") == Some(&peers)
                    && s.topic_peers.get("tx") == Some(&peers)
                    && s.connected.len() == peers
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_peers_gossip_and_sync_outsider_is_refused() {
    let validators: Vec<SigningKey> = (1..=3).map(key).collect();
    let mut a = start(1, &validators, vec![]).await;
    let a_addr = dial_addr(&a.handle);
    // b and c keep a persistent connection to a; c also dials b.
    let mut b = start(2, &validators, vec![a_addr.clone()]).await;
    let mut c = start(3, &validators, vec![a_addr.clone(), dial_addr(&b.handle)]).await;
    assert_eq!(
        a.handle.local_peer_id(),
        network::peer_id_of(&key(1).public()).unwrap(),
        "the libp2p identity is the validator key"
    );

    // The outsider allows everyone, but nobody allows it.
    let mut everyone = validators.clone();
    everyone.push(key(4));
    let mut outsider = start(4, &everyone, vec![a_addr.clone()]).await;
    outsider.handle.dial(dial_addr(&b.handle)).await.unwrap();

    wait_for_mesh(&[
        ("a", &a.handle, 2),
        ("b", &b.handle, 2),
        ("c", &c.handle, 2),
    ])
    .await;

    // Gossip from a reaches b and c, forwarded by a (or relayed by the
    // other receiver: gossip is anonymous, only the forwarder is known).
    a.handle
        .publish(Topic::Consensus, b"vote-1".to_vec())
        .await
        .unwrap();
    let peers = [&a, &b, &c].map(|n| n.handle.local_peer_id());
    for net in [&mut b, &mut c] {
        let (topic, from, data, _) = next_gossip(net).await;
        assert_eq!((topic, data.as_slice()), (Topic::Consensus, &b"vote-1"[..]));
        assert!(peers.contains(&from) && from != net.handle.local_peer_id());
    }
    // Re-publishing identical content is deduplicated; new content is not.
    assert!(a
        .handle
        .publish(Topic::Consensus, b"vote-1".to_vec())
        .await
        .is_err());
    c.handle
        .publish(Topic::Transactions, b"tx-1".to_vec())
        .await
        .unwrap();
    let (topic, from, data, _) = next_gossip(&mut a).await;
    assert_eq!(
        (topic, data.as_slice()),
        (Topic::Transactions, &b"tx-1"[..])
    );
    assert!(from == peers[1] || from == peers[2]);
    // Oversize payloads never leave the node.
    assert!(a
        .handle
        .publish(Topic::Consensus, vec![0; MAX_GOSSIP_PAYLOAD + 1])
        .await
        .is_err());

    // Request-response: b asks c; c answers from its event loop.
    let c_handle = c.handle.clone();
    let c_peer = c_handle.local_peer_id();
    let responder = tokio::spawn(async move {
        loop {
            match c.events.recv().await {
                Some(NetworkEvent::InboundRequest { id, data, .. }) => {
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&data);
                    c_handle.respond(id, reply).await.unwrap();
                    return c;
                }
                Some(_) => continue,
                None => panic!("network stopped"),
            }
        }
    });
    let response = b
        .handle
        .request(c_peer, b"blocks 1..5".to_vec())
        .await
        .unwrap();
    assert_eq!(response, b"echo:blocks 1..5");
    let c = responder.await.unwrap();

    // The outsider never got any of the messages above. (It may see a
    // connection for an instant: the remote completes the Noise handshake
    // to learn who is knocking, then drops it.)
    while let Ok(event) = outsider.events.try_recv() {
        assert!(
            matches!(
                event,
                NetworkEvent::PeerConnected(_) | NetworkEvent::PeerDisconnected(_)
            ),
            "outsider received {event:?}"
        );
    }
    assert!(outsider
        .handle
        .request(a.handle.local_peer_id(), b"x".to_vec())
        .await
        .is_err());
    for net in [&a, &b, &c] {
        let status = net.handle.status().await.unwrap();
        assert!(!status.connected.contains(&outsider.handle.local_peer_id()));
    }

    // Removing c from a's allow-list closes their connection.
    a.handle
        .set_allowed(validators[..2].iter().map(SigningKey::public).collect())
        .await
        .unwrap();
    let (a_handle, c_peer) = (&a.handle, c.handle.local_peer_id());
    eventually("a drops c", move || async move {
        !a_handle.status().await.unwrap().connected.contains(&c_peer)
    })
    .await;

    for net in [a, b, c, outsider] {
        net.handle.shutdown().await;
        net.task.await.unwrap();
    }
}

/// a - b - c in a line (a and c never connect): consensus messages cross b
/// at once, transaction batches only when b reports `Relay`; `Ignore`d and
/// `Reject`ed ones stop at b, and so does one b never reports on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_batch_crosses_a_node_only_when_it_says_relay() {
    let validators: Vec<SigningKey> = (1..=3).map(key).collect();
    let mut a = start(1, &validators, vec![]).await;
    let mut b = start(2, &validators, vec![dial_addr(&a.handle)]).await;
    let mut c = start(3, &validators, vec![dial_addr(&b.handle)]).await;
    wait_for_mesh(&[
        ("a", &a.handle, 1),
        ("b", &b.handle, 2),
        ("c", &c.handle, 1),
    ])
    .await;

    a.handle
        .publish(Topic::Consensus, b"vote-1".to_vec())
        .await
        .unwrap();
    let (topic, _, data, relay) = next_gossip(&mut b).await;
    assert_eq!((topic, data.as_slice()), (Topic::Consensus, &b"vote-1"[..]));
    assert!(
        relay.is_none(),
        "consensus messages are relayed without a verdict"
    );
    let (_, from, data, _) = next_gossip(&mut c).await;
    assert_eq!(
        (from, data.as_slice()),
        (b.handle.local_peer_id(), &b"vote-1"[..])
    );

    for (batch, verdict) in [
        (&b"rejected"[..], Some(RelayVerdict::Reject)),
        (b"ignored", Some(RelayVerdict::Ignore)),
        (b"never judged", None),
        (b"relayed", Some(RelayVerdict::Relay)),
    ] {
        a.handle
            .publish(Topic::Transactions, batch.to_vec())
            .await
            .unwrap();
        let (topic, from, data, relay) = next_gossip(&mut b).await;
        assert_eq!(
            (topic, from),
            (Topic::Transactions, a.handle.local_peer_id())
        );
        assert_eq!(data, batch);
        let relay = relay.expect("a transaction batch waits for a verdict");
        if let Some(verdict) = verdict {
            b.handle.relay(relay, verdict);
        }
    }
    // Gossip keeps order per link, so the relayed batch coming first means
    // none of the others was sent to c.
    let (topic, from, data, relay) = next_gossip(&mut c).await;
    assert_eq!(
        (topic, from),
        (Topic::Transactions, b.handle.local_peer_id())
    );
    assert_eq!(data, b"relayed", "only the batch b said to relay reaches c");
    // c relays nothing back: b sent it, and a is not c's peer.
    c.handle.relay(relay.expect("pending"), RelayVerdict::Relay);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for net in [&mut a, &mut b, &mut c] {
        while let Ok(event) = net.events.try_recv() {
            assert!(
                !matches!(
                    event,
                    NetworkEvent::Transactions { .. } | NetworkEvent::Consensus { .. }
                ),
                "unexpected gossip {event:?}"
            );
        }
    }

    for net in [a, b, c] {
        net.handle.shutdown().await;
        net.task.await.unwrap();
    }
}
