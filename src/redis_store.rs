//! The Redis-backed [`TokenStore`](crate::shaper::TokenStore): global route limits.
