//! Runnable examples for eagate: a Rust bot, the load-testing harness and a
//! C client. Each lives in `examples/` as its own target.
