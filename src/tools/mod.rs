//! The tools around the proxy, built with the default cargo feature `tools`
//! (`--no-default-features` builds the proxy alone):
//!
//! - [`demo`]: `sluice demo`, a spike shaped live on 127.0.0.1, with a
//!   report and an SVG chart (docs/demo.md).
//! - [`simulate`]: `sluice simulate`, a request trace replayed through the
//!   shaper in virtual time, with a report and an SVG chart
//!   (docs/simulate.md).
//! - `chart`: the chart style both draw with.

mod chart;
pub mod demo;
pub mod simulate;
