//! The demo's chart, drawn with plotters as SVG.
//!
//! Top panel: requests/s offered to sluice and released to the backend (each
//! the count per 100 ms, scaled to /s and averaged over 300 ms centred on the
//! point), the route's configured rate as a dashed line, the phases shaded.
//! On one linear scale the spike towers over a flat released line: that gap
//! is the peak shaving. Bottom panel: the route's queue depth (left axis) and
//! the requests answered 503 each second (bars, right axis).
//!
//! With `--async` the top panel adds the requests answered `202` per second
//! (accepted at once) beside those delivered to the backend, and the bottom
//! panel shows the backlog (requests held) instead of the queue.

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::tools::chart::{
    ACCEPTED, CAPTION_SIZE, FONT, GRID, OFFERED, QUEUE, REFUSED, RELEASED, WIDTH,
};

use super::load::Phase;
use super::{Report, TICK};

const HEIGHT: u32 = 720;
const TOP_HEIGHT: u32 = 440;
/// Ticks averaged for the rate lines (300 ms).
const SMOOTHING: usize = 3;

const RATE: RGBColor = RGBColor(40, 40, 40);

/// The chart of `report` as an SVG document.
pub fn render(report: &Report) -> Result<String, String> {
    let mut svg = String::new();
    draw(report, &mut svg).map_err(|err| err.to_string())?;
    Ok(svg)
}

/// Requests/s per tick from counts per tick: a centred moving average over
/// SMOOTHING ticks, each point at the middle of its tick.
fn smoothed(counts: &[u64], ticks: usize) -> Vec<(f64, f64)> {
    let tick = TICK.as_secs_f64();
    let half = SMOOTHING / 2;
    (0..ticks.min(counts.len()))
        .map(|i| {
            let from = i.saturating_sub(half);
            let to = (i + half + 1).min(counts.len());
            let sum: u64 = counts[from..to].iter().sum();
            let per_second = sum as f64 / ((to - from) as f64 * tick);
            ((i as f64 + 0.5) * tick, per_second)
        })
        .collect()
}

/// Tick labels: whole seconds without a fraction.
fn seconds_label(v: &f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn count_label(v: &f64) -> String {
    format!("{v:.0}")
}

type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(report: &Report, svg: &mut String) -> DrawResult {
    let seconds = shown_seconds(report);
    let ticks = (seconds / TICK.as_secs_f64()).round() as usize;
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = match report.deferred {
        Some(_) => format!(
            "sluice demo --async: a {}x burst accepted at once (202), delivered at {:.0} req/s",
            report.burst_multiple, report.rate
        ),
        None => format!(
            "sluice demo: a {}x burst, released to the backend at {:.0} req/s",
            report.burst_multiple, report.rate
        ),
    };
    let root = root.titled(&title, (FONT, 22))?;
    let (top, bottom) = root.split_vertically(TOP_HEIGHT);
    draw_rates(&top, report, seconds, ticks)?;
    draw_queue(&bottom, report, seconds, ticks)?;
    root.present()?;
    Ok(())
}

/// The whole schedule, and past it until the queue has drained and the last
/// answer is in.
fn shown_seconds(report: &Report) -> f64 {
    let tick = TICK.as_secs_f64();
    let last_active = (0..report.ticks.offered.len())
        .rev()
        .find(|&i| {
            let t = &report.ticks;
            t.offered[i] + t.released[i] + t.accepted[i] + t.shed[i] + t.depth[i] > 0
        })
        .map_or(0.0, |i| (i + 2) as f64 * tick);
    report.duration.as_secs_f64().max(last_active.ceil())
}

/// A phase's shade: the spike, above the route's rate, or calm.
fn shade(report: &Report, rate: f64) -> RGBAColor {
    if rate > report.rate * 4.0 {
        OFFERED.mix(0.10)
    } else if rate > report.rate {
        QUEUE.mix(0.10)
    } else {
        WHITE.mix(0.0)
    }
}

/// Shades a phase of the schedule up to `top`.
fn shade_phase(chart: &mut Chart<'_, '_>, report: &Report, phase: &Phase, top: f64) -> DrawResult {
    let (start, end) = (phase.start.as_secs_f64(), phase.end.as_secs_f64());
    chart.draw_series([Rectangle::new(
        [(start, 0.0), (end, top)],
        shade(report, phase.rate).filled(),
    )])?;
    Ok(())
}

/// The legend box both panels use.
fn draw_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> DrawResult {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(RATE.mix(0.5))
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

/// Top panel, requests/s: offered vs released, the route's rate dashed, the
/// phases shaded and named.
fn draw_rates(area: &Area<'_>, report: &Report, seconds: f64, ticks: usize) -> DrawResult {
    let asynchronous = report.deferred.is_some();
    let offered = smoothed(&report.ticks.offered, ticks);
    let released = smoothed(&report.ticks.released, ticks);
    let accepted = smoothed(&report.ticks.accepted, ticks);
    let rate_max = offered
        .iter()
        .chain(&released)
        .chain(&accepted)
        .map(|&(_, r)| r)
        .fold(report.rate, f64::max);
    let rate_top = rate_max * 1.12;
    let caption = format!(
        "offered peak {} req/s, {} peak {} req/s (busiest 1 s)",
        report.offered_peak,
        if asynchronous {
            "delivered"
        } else {
            "released"
        },
        report.released_peak
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, CAPTION_SIZE))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .right_y_label_area_size(64)
        .build_cartesian_2d(0f64..seconds, 0f64..rate_top)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .x_desc("seconds")
        .y_desc("requests/s")
        .x_label_formatter(&seconds_label)
        .y_label_formatter(&count_label)
        .draw()?;
    for phase in &report.phases {
        shade_phase(&mut chart, report, phase, rate_top)?;
        chart.draw_series([Text::new(
            phase.name.clone(),
            (
                phase.start.as_secs_f64() + 0.05 * seconds / 20.0,
                rate_top * 0.97,
            ),
            (FONT, 13).into_font().color(&RATE),
        )])?;
    }
    draw_rate_lines(&mut chart, report, [offered, accepted, released], seconds)?;
    draw_legend(&mut chart)
}

/// The top panel's lines: offered, accepted (`--async` only), released or
/// delivered, and the route's rate dashed.
fn draw_rate_lines<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    report: &Report,
    [offered, accepted, released]: [Vec<(f64, f64)>; 3],
    seconds: f64,
) -> DrawResult {
    let asynchronous = report.deferred.is_some();
    chart
        .draw_series(LineSeries::new(offered, OFFERED.stroke_width(2)))?
        .label("offered to sluice")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], OFFERED.stroke_width(2)));
    if asynchronous {
        chart
            .draw_series(LineSeries::new(accepted, ACCEPTED.stroke_width(2)))?
            .label("accepted (202)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], ACCEPTED.stroke_width(2)));
    }
    chart
        .draw_series(LineSeries::new(released, RELEASED.stroke_width(2)))?
        .label(if asynchronous {
            "delivered to the backend"
        } else {
            "released to the backend"
        })
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RELEASED.stroke_width(2)));
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, report.rate), (seconds, report.rate)],
            6,
            5,
            RATE.stroke_width(1),
        ))?
        .label(format!("route rate {:.0}/s", report.rate))
        .legend(|(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new([(0, 0), (6, 0)], RATE.stroke_width(1))
                + PathElement::new([(11, 0), (20, 0)], RATE.stroke_width(1))
        });
    Ok(())
}

/// The bottom panel's caption and left axis: the queue, or the backlog.
fn queue_caption(report: &Report) -> (String, &'static str) {
    match &report.deferred {
        Some(a) => (
            format!(
                "backlog: at most {} held (capacity {}), {}; {} answered 503",
                report.queue_peak,
                a.capacity,
                a.drained_after
                    .map_or("not drained".to_string(), |d| format!(
                        "empty {:.1} s after the load",
                        d.as_secs_f64()
                    )),
                report.shed
            ),
            "backlog (requests held)",
        ),
        None => (
            format!(
                "queue: at most {} waiting (timeout {} ms); {} answered 503",
                report.queue_peak,
                report.queue_timeout.as_millis(),
                report.shed
            ),
            "queued requests",
        ),
    }
}

/// Bottom panel: the queue's depth per tick (left axis) and the requests
/// answered 503 each whole second (bars, right axis).
fn draw_queue(area: &Area<'_>, report: &Report, seconds: f64, ticks: usize) -> DrawResult {
    let tick = TICK.as_secs_f64();
    let depth: Vec<(f64, f64)> = report
        .ticks
        .depth
        .iter()
        .take(ticks)
        .enumerate()
        .map(|(i, &d)| ((i as f64 + 0.5) * tick, d as f64))
        .collect();
    let depth_top = depth.iter().map(|&(_, d)| d).fold(10.0, f64::max) * 1.15;
    let per_second = (1.0 / tick).round() as usize;
    let drops: Vec<(f64, u64)> = report.ticks.shed[..ticks.min(report.ticks.shed.len())]
        .chunks(per_second)
        .enumerate()
        .map(|(s, chunk)| (s as f64, chunk.iter().sum()))
        .collect();
    let drops_top = drops.iter().map(|&(_, d)| d as f64).fold(10.0, f64::max) * 1.15;
    let (caption, what) = queue_caption(report);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, CAPTION_SIZE))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .right_y_label_area_size(64)
        .build_cartesian_2d(0f64..seconds, 0f64..depth_top)?
        .set_secondary_coord(0f64..seconds, 0f64..drops_top);
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .x_desc("seconds")
        .y_desc(what)
        .x_label_formatter(&seconds_label)
        .y_label_formatter(&count_label)
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("answered 503 per second")
        .y_label_formatter(&count_label)
        .draw()?;
    for phase in &report.phases {
        shade_phase(&mut chart, report, phase, depth_top)?;
    }
    chart
        .draw_secondary_series(drops.iter().map(|&(s, d)| {
            Rectangle::new(
                [(s + 0.1, 0.0), ((s + 0.9).min(seconds), d as f64)],
                REFUSED.mix(0.6).filled(),
            )
        }))?
        .label("answered 503, per second (right axis)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], REFUSED.mix(0.6).filled()));
    chart
        .draw_series(
            AreaSeries::new(depth, 0.0, QUEUE.mix(0.15)).border_style(QUEUE.stroke_width(2)),
        )?
        .label(if report.deferred.is_some() {
            "backlog (left axis)"
        } else {
            "queue depth (left axis)"
        })
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], QUEUE.stroke_width(2)));
    draw_legend(&mut chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_averages_over_300_ms_and_scales_to_per_second() {
        let counts = [0, 0, 9, 0, 0];
        let points = smoothed(&counts, 5);
        // Tick 1 sees ticks 0..=2: 9 requests in 0.3 s.
        assert!((points[1].1 - 30.0).abs() < 1e-9);
        // Tick 0 sees ticks 0..=1: 0 requests; tick 4 sees 3..=4.
        assert_eq!(points[0].1, 0.0);
        assert_eq!(points[4].1, 0.0);
        // Tick 3 sees ticks 2..=4: 9 in 0.3 s.
        assert!((points[3].1 - 30.0).abs() < 1e-9);
        assert!((points[1].0 - 0.15).abs() < 1e-9);
    }
}
