//! Load shedding and per-client rate limits for the HTTP API.
//!
//! * A global in-flight bound: a request that finds every slot taken is
//!   answered 503 `overloaded` at once (never queued), so a flood cannot
//!   build an unbounded backlog of blocking ledger reads that starve the
//!   consensus driver.
//! * A deadline per admitted request (body included): a client trickling
//!   its body cannot hold a slot for longer (408 `timeout`).
//! * Per-client token buckets, one for look-ups (`GET`) and one for
//!   submissions (`POST /v1/transactions`): beyond its rate a client gets
//!   429 `rate_limited` with `Retry-After`. Clients are keyed by IP address
//!   (IPv6 by /64, what one host usually gets); the map of buckets is
//!   bounded and evicts idle clients first.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::ApiError;
use crate::config::ApiLimits;
use crate::metrics::{Metrics, Rejection};

/// A token bucket: holds up to `burst` tokens, refilled at `rate` per second.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Per-client token buckets for one kind of request.
pub struct ClientRateLimiter {
    rate: f64,
    burst: f64,
    max_clients: usize,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

/// How long a client must wait before its next request can succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl ClientRateLimiter {
    pub fn new(per_second: u32, burst: u32, max_clients: usize) -> Self {
        ClientRateLimiter {
            rate: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            max_clients: max_clients.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `client`'s bucket at time `now`.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), RetryAfter> {
        let client = client_key(client);
        // A poisoned lock only means another request panicked between two
        // plain field updates; the buckets stay usable.
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if !clients.contains_key(&client) && clients.len() >= self.max_clients {
            self.evict(&mut clients, now);
        }
        let bucket = clients.entry(client).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(RetryAfter(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.rate,
            )))
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }

    /// Makes room for one client: drops every full bucket (forgetting a
    /// client that has refilled loses nothing), else the least recently
    /// seen one.
    fn evict(&self, clients: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        clients.retain(|_, bucket| self.refilled(bucket, now) < self.burst);
        if clients.len() >= self.max_clients {
            let oldest = clients
                .iter()
                .min_by_key(|(_, bucket)| bucket.updated)
                .map(|(client, _)| *client);
            if let Some(oldest) = oldest {
                clients.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// IPv4 addresses as they are; IPv6 by their /64 prefix (IPv4-mapped ones
/// as IPv4), since one host can use a whole /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// The API's limits, shared by every request.
pub struct Limiter {
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
    lookups: ClientRateLimiter,
    submissions: ClientRateLimiter,
    exempt_loopback: bool,
    metrics: Metrics,
}

impl Limiter {
    pub fn new(limits: &ApiLimits, metrics: Metrics) -> Self {
        Limiter {
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            request_timeout: Duration::from_millis(limits.request_timeout_ms),
            lookups: ClientRateLimiter::new(
                limits.lookups_per_second,
                limits.lookup_burst,
                limits.max_tracked_clients,
            ),
            submissions: ClientRateLimiter::new(
                limits.submissions_per_second,
                limits.submission_burst,
                limits.max_tracked_clients,
            ),
            exempt_loopback: limits.exempt_loopback,
            metrics,
        }
    }

    /// The per-client check: `POST` is a submission, anything else a look-up.
    fn rate_check(&self, method: &Method, client: IpAddr) -> Result<(), ApiError> {
        if self.exempt_loopback && client.is_loopback() {
            return Ok(());
        }
        let (limiter, rejection, what) = if method == Method::POST {
            (
                &self.submissions,
                Rejection::SubmissionRateLimited,
                "submissions",
            )
        } else {
            (&self.lookups, Rejection::LookupRateLimited, "look-ups")
        };
        limiter
            .check(client, Instant::now())
            .map_err(|RetryAfter(wait)| {
                self.metrics.count_rejection(rejection);
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many {what} from this address; retry later"),
                )
                .with_retry_after(wait)
            })
    }
}

/// Paths that never touch the ledger: always served, so operators can see
/// a node under a flood.
fn is_exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/metrics")
}

/// The middleware: per-client rate, then a global in-flight slot held until
/// the response is ready or the request's deadline passes.
pub async fn limit(State(limiter): State<Arc<Limiter>>, request: Request, next: Next) -> Response {
    if is_exempt(request.uri().path()) {
        return next.run(request).await;
    }
    // Without connection info (a router served without it) every request
    // shares one bucket: the safe default.
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
    if let Err(e) = limiter.rate_check(request.method(), client) {
        return e.into_response();
    }
    let Ok(_slot) = limiter.in_flight.clone().try_acquire_owned() else {
        limiter.metrics.count_rejection(Rejection::Overloaded);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the node is serving as many requests as it allows; retry later",
        )
        .with_retry_after(Duration::from_secs(1))
        .into_response();
    };
    match tokio::time::timeout(limiter.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            limiter.metrics.count_rejection(Rejection::TimedOut);
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request took too long (a body sent too slowly?)",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let limiter = ClientRateLimiter::new(10, 3, 100);
        let t0 = Instant::now();
        let client = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(limiter.check(client, t0), Ok(()));
        }
        let RetryAfter(wait) = limiter.check(client, t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        // Another client is not affected.
        assert_eq!(limiter.check(ip("192.0.2.2"), t0), Ok(()));
        // One token back after 1/rate, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(limiter.check(client, t1), Ok(()));
        assert!(limiter.check(client, t1).is_err());
        // Idle refills up to the burst only.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.check(client, t2), Ok(()));
        }
        assert!(limiter.check(client, t2).is_err());
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let limiter = ClientRateLimiter::new(1, 1, 100);
        let t0 = Instant::now();
        assert_eq!(limiter.check(ip("2001:db8:1:2::1"), t0), Ok(()));
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9"), t0).is_err());
        assert_eq!(limiter.check(ip("2001:db8:1:3::1"), t0), Ok(()));
        // IPv4-mapped addresses count as their IPv4 address.
        assert_eq!(limiter.check(ip("192.0.2.7"), t0), Ok(()));
        assert!(limiter.check(ip("::ffff:192.0.2.7"), t0).is_err());
    }

    #[test]
    fn the_client_map_stays_bounded_and_evicts_idle_clients_first() {
        let limiter = ClientRateLimiter::new(1, 2, 3);
        let t0 = Instant::now();
        // A busy client (bucket not full) and two one-off ones.
        let busy = ip("10.0.0.1");
        limiter.check(busy, t0).unwrap();
        limiter.check(busy, t0).unwrap();
        limiter.check(ip("10.0.0.2"), t0).unwrap();
        limiter
            .check(ip("10.0.0.3"), t0 + Duration::from_millis(1))
            .unwrap();
        assert_eq!(limiter.tracked(), 3);
        // A spray of new addresses never grows the map past its bound ...
        for i in 0..1000u32 {
            let t = t0 + Duration::from_millis(2);
            limiter
                .check(IpAddr::from((0x0b00_0000 + i).to_be_bytes()), t)
                .unwrap();
            assert!(limiter.tracked() <= 3);
        }
        // ... and once the others refilled, the busy client's empty bucket
        // is still remembered while the refilled ones are dropped.
        let limiter = ClientRateLimiter::new(1, 2, 2);
        limiter.check(busy, t0).unwrap();
        limiter.check(busy, t0).unwrap();
        limiter.check(ip("10.0.0.2"), t0).unwrap();
        let later = t0 + Duration::from_millis(1500);
        limiter.check(ip("10.0.0.4"), later).unwrap();
        assert!(
            limiter.check(busy, later).is_ok() && limiter.check(busy, later).is_err(),
            "the busy client kept its partly refilled bucket (1.5 tokens)"
        );
    }

    /// Sends a request whose body never arrives, holding the only slot, and
    /// returns the status the node answers.
    async fn stalled_request(addr: SocketAddr) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        let mut answer = vec![0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn a_slow_body_cannot_hold_the_in_flight_slot() {
        use axum::routing::post;
        let limits = ApiLimits {
            max_in_flight: 1,
            request_timeout_ms: 2000,
            exempt_loopback: true,
            ..ApiLimits::default()
        };
        let limiter = Arc::new(Limiter::new(&limits, Metrics::new()));
        let router = axum::Router::new()
            .route("/echo", post(|body: String| async move { body }))
            .layer(axum::middleware::from_fn_with_state(limiter.clone(), limit));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });

        // The stalled request holds the slot: a concurrent one is shed ...
        let stalled = tokio::spawn(stalled_request(addr));
        for _ in 0..1000 {
            if limiter.in_flight.available_permits() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            limiter.in_flight.available_permits(),
            0,
            "the slot is taken"
        );
        assert_eq!(ureq_status(addr).await, 503);
        // ... until its deadline frees the slot.
        assert_eq!(stalled.await.unwrap(), "HTTP/1.1 408");
        assert_eq!(ureq_status(addr).await, 200);
        assert_eq!(limiter.metrics.rejections(Rejection::TimedOut), 1);
        assert!(limiter.metrics.rejections(Rejection::Overloaded) >= 1);
    }

    async fn ureq_status(addr: SocketAddr) -> u16 {
        tokio::task::spawn_blocking(move || {
            match ureq::post(&format!("http://{addr}/echo")).send_string("hi") {
                Ok(response) => response.status(),
                Err(ureq::Error::Status(status, _)) => status,
                Err(e) => panic!("transport error: {e}"),
            }
        })
        .await
        .unwrap()
    }

    #[test]
    fn loopback_is_exempt_only_when_configured() {
        let limits = ApiLimits {
            lookups_per_second: 1,
            lookup_burst: 1,
            ..ApiLimits::default()
        };
        let exempt = Limiter::new(&limits, Metrics::new());
        let strict = Limiter::new(
            &ApiLimits {
                exempt_loopback: false,
                ..limits
            },
            Metrics::new(),
        );
        let local = ip("127.0.0.1");
        for _ in 0..5 {
            assert!(exempt.rate_check(&Method::GET, local).is_ok());
        }
        assert!(strict.rate_check(&Method::GET, local).is_ok());
        let refused = strict.rate_check(&Method::GET, local).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.is_some());
        assert_eq!(strict.metrics.rejections(Rejection::LookupRateLimited), 1);
        // Submissions have their own bucket.
        assert!(strict.rate_check(&Method::POST, local).is_ok());
    }
}
