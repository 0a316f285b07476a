//! The chart style shared by `sluice demo` and `sluice simulate`: the same
//! width, font and colours for the same series, so the two charts read
//! alike. Each tool draws its own panels with plotters' SVG backend.

use plotters::style::RGBColor;

/// Width of a chart, in SVG pixels.
pub const WIDTH: u32 = 1000;

/// The font family; the SVG viewer picks the face (no system fonts here).
pub const FONT: &str = "sans-serif";

/// Size of a panel's caption.
pub const CAPTION_SIZE: u32 = 15;

/// Requests offered to sluice.
pub const OFFERED: RGBColor = RGBColor(214, 39, 40);

/// Requests released to the backend.
pub const RELEASED: RGBColor = RGBColor(31, 119, 180);

/// Requests an async route accepted (`202`).
pub const ACCEPTED: RGBColor = RGBColor(44, 160, 44);

/// Requests refused at once (queue full; the demo's shed requests).
pub const REFUSED: RGBColor = RGBColor(148, 103, 189);

/// The queue's depth.
pub const QUEUE: RGBColor = RGBColor(255, 127, 14);

/// Grid lines.
pub const GRID: RGBColor = RGBColor(232, 232, 232);
