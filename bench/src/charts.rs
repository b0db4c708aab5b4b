//! The report's PNG charts, drawn with plotters' bitmap backend. Text uses a TrueType
//! font read at run time (DejaVu Sans, `make setup` installs it): no system font
//! library is linked.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::stats::Estimate;

/// Where the font is looked for.
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the font as `sans-serif` (once per process).
pub fn init_font() -> Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| {
            anyhow!("no DejaVuSans.ttf in {FONTS:?} (make setup installs fonts-dejavu-core)")
        })?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("drawing a chart: {err:?}")
}

/// A vertical bar per item with its 95 % interval.
pub fn bars(path: &Path, title: &str, y_desc: &str, items: &[(String, Estimate)]) -> Result<()> {
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let n = items.len();
    let ymax = items
        .iter()
        .map(|(_, v)| v.hi())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        * 1.15
        + 1e-9;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n).into_segmented(), 0.0..ymax)
        .map_err(e)?;
    let names: Vec<String> = items.iter().map(|(n, _)| n.clone()).collect();
    let label = move |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .x_label_style(("sans-serif", 12))
        .y_desc(y_desc)
        .draw()
        .map_err(e)?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(BLUE.mix(0.55).filled())
                .margin(18)
                .data(items.iter().enumerate().map(|(i, (_, v))| (i, v.mean))),
        )
        .map_err(e)?;
    chart
        .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
            ErrorBar::new_vertical(
                SegmentValue::CenterOf(i),
                v.lo().max(0.0),
                v.mean,
                v.hi(),
                BLACK.filled(),
                12,
            )
        }))
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// One line per series over named x positions (log y), e.g. latency percentiles.
pub fn lines_named_x(
    path: &Path,
    title: &str,
    y_desc: &str,
    xs: &[&str],
    series: &[(String, Vec<f64>)],
) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let vals = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| *v > 0.0);
    let (lo, hi) = vals.fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if hi > 0.0 {
        (lo / 1.5, hi * 1.5)
    } else {
        (0.001, 1.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..xs.len()).into_segmented(), (lo..hi).log_scale())
        .map_err(e)?;
    let names: Vec<String> = xs.iter().map(|s| s.to_string()).collect();
    let label = move |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .x_labels(xs.len())
        .x_label_formatter(&label)
        .y_desc(y_desc)
        .draw()
        .map_err(e)?;
    for (k, (name, v)) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let pts: Vec<(SegmentValue<usize>, f64)> = v
            .iter()
            .enumerate()
            .filter(|(_, y)| **y > 0.0)
            .map(|(i, y)| (SegmentValue::CenterOf(i), *y))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// One line per series of (x, y) points, both axes logarithmic.
pub fn lines_loglog(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let pts = || series.iter().flat_map(|(_, v)| v.iter().copied());
    let (xl, xh) = pts().fold((f64::MAX, 0.0f64), |(a, b), (x, _)| (a.min(x), b.max(x)));
    let (yl, yh) = pts()
        .filter(|(_, y)| *y > 0.0)
        .fold((f64::MAX, 0.0f64), |(a, b), (_, y)| (a.min(y), b.max(y)));
    if xh <= 0.0 || yh <= 0.0 {
        return Err(anyhow!("nothing to draw in {title}"));
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (xl / 1.3..xh * 1.3).log_scale(),
            (yl / 1.5..yh * 1.5).log_scale(),
        )
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(e)?;
    for (k, (name, v)) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let v: Vec<(f64, f64)> = v.iter().copied().filter(|(_, y)| *y > 0.0).collect();
        chart
            .draw_series(LineSeries::new(v.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(v.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
