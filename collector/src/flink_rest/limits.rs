//! The bounds this client keeps to: Flink's own ceilings (parallelism, request line), and its
//! own (response size, requests in flight, how much of an error body a message quotes).

/// Flink's largest parallelism (`maxParallelism` ≤ 2^15).
pub const MAX_PARALLELISM: u32 = 1 << 15;

/// Largest Flink response body read: a 1,000-vertex job's details are a few MB.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// Requests in flight at once per client (Flink's REST server has a small thread pool).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

/// Longest request target (path + query) this client sends. Flink's Netty HTTP codec rejects
/// request lines over 4096 bytes (`GET <target> HTTP/1.1`), measured on 1.20.3 and 2.3.0:
/// a 4079-byte target works, 4096 gets `404 Unable to load requested file /bad-request`.
/// The margin leaves room for proxies that add a prefix.
pub const MAX_REQUEST_TARGET_LEN: usize = 3800;

/// How much of an error body goes into a message.
pub(super) const BODY_SNIPPET_CHARS: usize = 200;
