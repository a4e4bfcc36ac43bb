//! The Flink REST client (in progress).
