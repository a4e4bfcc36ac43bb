//! What bpmon's HTTP clients share — the agent's client of the collector, the collector's CLI
//! client and its Flink REST client: how a client is set up ([`setup`]: the token file, the bearer
//! token as a sensitive header, a private CA's certificates) and how a failed request is told to an operator
//! ([`failure`]: the chain of causes, the root cause, whether TLS is what failed).

pub mod failure;
pub mod setup;

pub use failure::{causes, error_chain, root_cause, tls_failure};
pub use setup::{
    bearer_headers, ca_certificates, read_client_token, read_token_file, CaError, TokenNotAHeader,
};
