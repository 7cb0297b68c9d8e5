//! chart.png: a legend strip, then one row per layout. On the left, each
//! throughput, latency and CPU figure as a ratio to `direct` (bars from 1,
//! log scale: a bar going down is less than direct has); on the right, the
//! memory held with the idle connections, in MiB.
use std::path::Path;

use anyhow::{anyhow, Context as _};
use plotters::{
    coord::{
        ranged1d::{Ranged, ValueFormatter},
        types::RangedCoordf64,
        Shift,
    },
    prelude::*,
};

use crate::{
    contenders,
    report::{
        arrow, number, LayoutResult, Metric, IDLE_CONNS, IDLE_KERNEL, IDLE_RSS, KERNEL_SHARE,
        METRICS, VERDICT_BULK_NS, VERDICT_ECHO_NS,
    },
};

/// DejaVu Sans, from Debian's fonts-dejavu-core (`cargo xtask bench`
/// installs it): plotters draws text with ab_glyph from a registered font.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const WIDTH: u32 = 1600;
const HEADER: u32 = 70;
const ROW_HEIGHT: u32 = 520;

/// One colour per contender, in the order they run, the same everywhere.
const PALETTE: [RGBColor; 8] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(23, 190, 207),
    RGBColor(44, 160, 44),
    RGBColor(188, 189, 34),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

fn register_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| {
        format!("cannot read {FONT} (Debian: fonts-dejavu-core) for the chart's text")
    })?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// Bars of one panel: group labels, and per series its colour and a value
/// per group (none: nothing drawn).
struct Bars {
    title: String,
    y_label: &'static str,
    groups: Vec<String>,
    series: Vec<(RGBColor, Vec<Option<f64>>)>,
    /// Where bars start (1 on the ratio panel), with a line drawn there.
    base: f64,
}

/// Draws the chart of `layouts` into `path`; `heading` goes on top.
pub fn draw(path: &Path, heading: &str, layouts: &[LayoutResult]) -> anyhow::Result<()> {
    register_font()?;
    let rows = layouts.len().max(1);
    let height = HEADER + ROW_HEIGHT * u32::try_from(rows).unwrap_or(1);
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (header, body) = root.split_vertically(HEADER);
    legend(&header, heading, layouts.first())?;
    for (area, layout) in body.split_evenly((rows, 1)).iter().zip(layouts) {
        let (left, right) = area.split_horizontally(WIDTH * 66 / 100);
        let ratios = relative(layout);
        let values = ratios.series.iter().flat_map(|s| s.1.iter().flatten());
        let (lo, hi) = values.fold((1.0f64, 1.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let range = (lo / 1.5).max(1e-3)..hi * 1.5;
        let ticks = [
            0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
        ]
        .into_iter()
        .filter(|t| range.contains(t))
        .collect();
        let y = range.log_scale().with_key_points(ticks);
        panel(&left, &ratios, y, &|v| format!("{v}×"))?;
        let memory = memory(layout);
        let top = memory
            .series
            .iter()
            .flat_map(|s| s.1.iter().flatten())
            .fold(1.0f64, |a, &v| a.max(v));
        let y = RangedCoordf64::from(0.0..top * 1.12);
        panel(&right, &memory, y, &|v| format!("{v:.0}"))?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The heading and one coloured square per contender.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    heading: &str,
    layout: Option<&LayoutResult>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    area.draw(&Text::new(heading, (16, 10), ("sans-serif", 20)))
        .map_err(plot_error)?;
    let Some(layout) = layout else {
        return Ok(());
    };
    let mut x = 16;
    for c in &layout.contenders {
        area.draw(&Rectangle::new(
            [(x, 42), (x + 16, 58)],
            colour(c.name).filled(),
        ))
        .map_err(plot_error)?;
        area.draw(&Text::new(c.name, (x + 22, 41), ("sans-serif", 17)))
            .map_err(plot_error)?;
        x += 40 + 10 * i32::try_from(c.name.len()).unwrap_or(10);
    }
    Ok(())
}

/// By the contender's place among all of them, so a subset keeps colours.
fn colour(name: &str) -> RGBColor {
    let i = contenders::ALL
        .iter()
        .position(|c| c.name() == name)
        .unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

fn relative(layout: &LayoutResult) -> Bars {
    let metrics: Vec<&Metric> = METRICS
        .iter()
        .filter(|m| {
            !m.key.starts_with("idle")
                && ![KERNEL_SHARE, VERDICT_BULK_NS, VERDICT_ECHO_NS].contains(&m.key)
        })
        .collect();
    let direct = layout.contender("direct");
    let series = layout
        .contenders
        .iter()
        .filter(|c| c.name != "direct")
        .map(|c| {
            let values = metrics
                .iter()
                .map(|m| {
                    let base = direct?.median(m.key)?;
                    let v = c.median(m.key)?;
                    (base > 0.0 && v > 0.0).then(|| v / base)
                })
                .collect();
            (colour(c.name), values)
        })
        .collect();
    Bars {
        title: format!(
            "{}: median relative to direct (↑ higher is better, ↓ lower is better)",
            layout.name
        ),
        y_label: "× direct (log scale)",
        groups: metrics
            .iter()
            .map(|m| format!("{} {}", m.short, arrow(m)))
            .collect(),
        series,
        base: 1.0,
    }
}

fn memory(layout: &LayoutResult) -> Bars {
    let keys = [IDLE_RSS, IDLE_KERNEL];
    let held = layout
        .contenders
        .iter()
        .filter_map(|c| c.median(IDLE_CONNS))
        .fold(0.0f64, f64::max);
    let series = layout
        .contenders
        .iter()
        .map(|c| {
            let values = keys.iter().map(|k| c.median(k)).collect();
            (colour(c.name), values)
        })
        .collect();
    Bars {
        title: format!(
            "{}: memory with up to {} idle connections",
            layout.name,
            number(held, true)
        ),
        y_label: "MiB",
        groups: vec!["proxy RSS".to_owned(), "kernel (slab)".to_owned()],
        series,
        base: 0.0,
    }
}

/// Grouped bars: each group takes one slot per series plus one of space.
fn panel<DB, Y>(
    area: &DrawingArea<DB, Shift>,
    bars: &Bars,
    y: Y,
    y_format: &dyn Fn(&f64) -> String,
) -> anyhow::Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let per_group = bars.series.len() + 1;
    let slots = bars.groups.len() * per_group;
    let slots_i = i32::try_from(slots).unwrap_or(i32::MAX);
    let mut chart = ChartBuilder::on(area)
        .caption(&bars.title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(34)
        .y_label_area_size(70)
        .build_cartesian_2d(0..slots_i, y)
        .map_err(plot_error)?;
    let groups = bars.groups.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_labels(slots + 1)
        .x_label_formatter(&move |x| {
            let x = usize::try_from(*x).unwrap_or(usize::MAX);
            // Under the middle of its group's bars.
            if x % per_group == (per_group - 1) / 2 {
                groups.get(x / per_group).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(y_format)
        .y_desc(bars.y_label)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(plot_error)?;
    for (j, (colour, values)) in bars.series.iter().enumerate() {
        let rects = values.iter().enumerate().filter_map(|(g, v)| {
            let v = (*v)?;
            let x = i32::try_from(g * per_group + j).ok()?;
            let mut r = Rectangle::new([(x, bars.base), (x + 1, v)], colour.filled());
            r.set_margin(0, 0, 2, 2);
            Some(r)
        });
        chart.draw_series(rects).map_err(plot_error)?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0, bars.base), (slots_i, bars.base)],
            BLACK.stroke_width(1),
        )))
        .map_err(plot_error)?;
    Ok(())
}
