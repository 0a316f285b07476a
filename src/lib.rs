pub mod config;
pub mod shaper;
