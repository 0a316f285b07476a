//! `--svg`: per route, requests/s offered, released, rejected and dropped
//! over virtual time (top), and the queue depth (bottom). An async route's
//! panel shows accepted (`202`), delivered, refused and expired instead,
//! and its backlog (requests held) below. Drawn with
//! plotters' SVG backend; the viewer renders the text.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::tools::chart::{
    ACCEPTED, CAPTION_SIZE, FONT, GRID, OFFERED, QUEUE, REFUSED, RELEASED, WIDTH,
};

use super::report::{Report, RouteReport};

const PANEL: u32 = 420;

const DROPPED: RGBColor = RGBColor(140, 86, 75);
const LIMITED: RGBColor = RGBColor(188, 189, 34);

/// The chart of `report` as an SVG document: one panel per route that saw traffic.
pub fn render(report: &Report) -> Result<String, String> {
    let routes: Vec<&RouteReport> = report
        .routes
        .iter()
        .filter(|r| r.queue_capacity.is_some() && r.offered > 0)
        .collect();
    let mut svg = String::new();
    draw(report, &routes, &mut svg).map_err(|err| err.to_string())?;
    Ok(svg)
}

/// Points drawn per line at most: the report's buckets are merged in runs
/// of `factor` (counts summed, depth the maximum), so a long run stays legible.
const MAX_POINTS: usize = 300;

/// Counts per bucket as requests/s over runs of `factor` buckets, each point
/// at its run's middle.
fn per_second(counts: &[u32], bucket: f64, factor: usize) -> Vec<(f64, f64)> {
    let width = bucket * factor as f64;
    counts
        .chunks(factor)
        .enumerate()
        .map(|(i, run)| {
            let sum: u32 = run.iter().sum();
            (
                (i as f64 + 0.5) * width,
                f64::from(sum) / (run.len() as f64 * bucket),
            )
        })
        .collect()
}

/// The deepest queue over runs of `factor` buckets.
fn deepest(depths: &[u32], bucket: f64, factor: usize) -> Vec<(f64, f64)> {
    let width = bucket * factor as f64;
    depths
        .chunks(factor)
        .enumerate()
        .map(|(i, run)| {
            let max = run.iter().copied().max().unwrap_or(0);
            ((i as f64 + 0.5) * width, f64::from(max))
        })
        .collect()
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(report: &Report, routes: &[&RouteReport], svg: &mut String) -> DrawResult {
    let height = PANEL * routes.len().max(1) as u32 + 40;
    let root = SVGBackend::with_string(svg, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "sluice simulate: {} ({} requests), backend {}",
            report.trace.source, report.trace.requests, report.backend.service_time
        ),
        (FONT, 20),
    )?;
    let seconds = report.virtual_seconds.max(0.001);
    let panels = root.split_evenly((routes.len().max(1), 1));
    for (area, route) in panels.iter().zip(routes) {
        let factor = route.series.offered.len().div_ceil(MAX_POINTS).max(1);
        let (upper, lower) = area.split_vertically(PANEL * 62 / 100);
        draw_rates(&upper, route, seconds, factor)?;
        draw_depth(&lower, route, seconds, factor)?;
    }
    root.present()?;
    Ok(())
}

/// A route's upper panel: requests/s offered, released, rejected, dropped
/// and limited (a line only if it is ever above zero), with a legend.
fn draw_rates(area: &Area<'_>, route: &RouteReport, seconds: f64, factor: usize) -> DrawResult {
    let s = &route.series;
    let bucket = s.bucket_seconds;
    let lines: Vec<(&str, &Vec<u32>, RGBColor)> = if route.deferred.is_some() {
        vec![
            ("offered", &s.offered, OFFERED),
            ("accepted (202)", &s.accepted, ACCEPTED),
            ("delivered", &s.released, RELEASED),
            ("refused (503, capacity)", &s.rejected, REFUSED),
            ("expired", &s.dropped, DROPPED),
            ("429 (per-key limit)", &s.rate_limited, LIMITED),
        ]
    } else {
        vec![
            ("offered", &s.offered, OFFERED),
            ("released", &s.released, RELEASED),
            ("rejected (queue full)", &s.rejected, REFUSED),
            ("dropped (timeout)", &s.dropped, DROPPED),
            ("429 (per-key limit)", &s.rate_limited, LIMITED),
        ]
    };
    let lines: Vec<_> = lines
        .into_iter()
        .map(|(label, counts, color)| (label, per_second(counts, bucket, factor), color))
        .collect();
    let top_rate = lines
        .iter()
        .flat_map(|(_, points, _)| points.iter().map(|&(_, y)| y))
        .fold(0.0, f64::max);
    let caption = match &route.deferred {
        Some(a) => format!(
            "route {} (async): offered {}, accepted {}, delivered {}, refused {}, 429 {}, expired {}",
            route.route,
            route.offered,
            a.accepted,
            a.delivered,
            a.refused,
            route.outcomes.rejected_rate_limited,
            a.expired
        ),
        None => format!(
            "route {}: offered {}, released {}, rejected {}, 429 {}, dropped {}",
            route.route,
            route.offered,
            route.released,
            route.outcomes.rejected_queue_full,
            route.outcomes.rejected_rate_limited,
            route.outcomes.dropped_timeout
        ),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, CAPTION_SIZE))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..seconds, 0f64..(top_rate * 1.1).max(1.0))?;
    chart
        .configure_mesh()
        .light_line_style(GRID)
        .bold_line_style(GRID)
        .y_desc("requests/s")
        .draw()?;
    for (label, points, color) in lines {
        if points.iter().all(|&(_, y)| y == 0.0) {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// A route's lower panel: the deepest queue per point.
fn draw_depth(area: &Area<'_>, route: &RouteReport, seconds: f64, factor: usize) -> DrawResult {
    let s = &route.series;
    let depth_top = s.queue_depth.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..seconds, 0f64..depth_top * 1.1)?;
    chart
        .configure_mesh()
        .light_line_style(GRID)
        .bold_line_style(GRID)
        .x_desc("virtual seconds")
        .y_desc(if route.deferred.is_some() {
            "backlog (held)"
        } else {
            "queue depth"
        })
        .draw()?;
    chart.draw_series(LineSeries::new(
        deepest(&s.queue_depth, s.bucket_seconds, factor),
        QUEUE.stroke_width(2),
    ))?;
    Ok(())
}
