//! bpmon's collector: reads job topology and network metrics from the Flink REST API
//! ([`flink_rest`], into the [`model`]), merges them with the agents' sample counts, computes
//! levels and names the bottleneck.

pub mod api;
pub mod auth;
pub mod cause;
pub mod client;
pub mod clock;
pub mod diagnosis;
pub mod flink_rest;
pub mod listen;
pub mod locate;
pub mod mapping;
pub mod merge;
pub mod model;
pub mod render;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod web;
