//! End-to-end harness (in progress).
