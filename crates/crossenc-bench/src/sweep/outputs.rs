//! What a sweep writes: `results.csv`, `results.json`, `summary.md` with the best
//! configuration for the p99 target, and two SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::{best_within, SweepPlan, SweepResult};
use crate::BenchError;

pub(super) fn write_outputs(plan: &SweepPlan, results: &[SweepResult]) -> Result<(), BenchError> {
    let dir = &plan.output;
    let io = |path: &Path, e: &dyn std::fmt::Display| BenchError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| io(&path, &e))
    };
    let json =
        serde_json::to_string_pretty(results).map_err(|e| io(&dir.join("results.json"), &e))?;
    write("results.json", json)?;
    write("results.csv", csv(results))?;
    write("summary.md", summary(plan, results))?;
    let plot = dir.join("throughput_vs_p99.svg");
    throughput_vs_p99(&plot, results).map_err(|e| io(&plot, &e))?;
    let plot = dir.join("latency_vs_concurrency.svg");
    latency_vs_concurrency(&plot, results).map_err(|e| io(&plot, &e))?;
    Ok(())
}

const CSV_HEADER: &str = "model_workers,model_threads,max_batch_tokens,max_batch_delay_ms,concurrency,requests,answered,errors,requests_per_s,pairs_per_s,tokens_per_s,p50_s,p90_s,p99_s,max_s,padding_ratio,mean_batch_size";

fn csv(results: &[SweepResult]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for r in results {
        let (s, c, l) = (&r.server, &r.client, &r.client.latency);
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{:.3},{:.2},{:.1},{:.4},{:.4},{:.4},{:.4},{:.4},{:.2}",
            s.model_workers,
            s.model_threads,
            s.max_batch_tokens,
            s.max_batch_delay.as_secs_f64() * 1e3,
            r.concurrency,
            c.requests,
            c.answered,
            c.requests - c.answered,
            c.requests_per_second,
            c.pairs_per_second,
            c.tokens_per_second,
            l.p50,
            l.p90,
            l.p99,
            l.max,
            r.metrics.padding_ratio,
            r.metrics.mean_batch_size,
        );
    }
    out
}

fn summary(plan: &SweepPlan, results: &[SweepResult]) -> String {
    let mut out = String::from("# crossenc sweep\n\n");
    let _ = writeln!(
        out,
        "{} server configurations x {} concurrencies, {} requests per run, workload `{}`.\n",
        plan.points.len(),
        plan.concurrency.len(),
        plan.run.requests,
        plan.run.workload.display()
    );
    out.push_str("| configuration | clients | pairs/s | p50 s | p90 s | p99 s | errors | padding |\n|---|---|---|---|---|---|---|---|\n");
    let best = best_within(results, plan.p99_target);
    for r in results {
        let marker = if best.is_some_and(|b| std::ptr::eq(b, r)) {
            " **best**"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| {}{marker} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {:.1}% |",
            r.server.label(),
            r.concurrency,
            r.client.pairs_per_second,
            r.client.latency.p50,
            r.client.latency.p90,
            r.client.latency.p99,
            r.client.requests - r.client.answered,
            r.metrics.padding_ratio * 100.0
        );
    }
    let target = humantime::format_duration(plan.p99_target);
    match best {
        Some(b) => {
            let _ = writeln!(
                out,
                "\nBest for p99 <= {target}: {} at {} clients: {:.1} pairs/s, p99 {:.2} s.",
                b.server.label(),
                b.concurrency,
                b.client.pairs_per_second,
                b.client.latency.p99
            );
        }
        None => {
            let _ = writeln!(
                out,
                "\nNo configuration met p99 <= {target} without errors."
            );
        }
    }
    out
}

/// Configurations in the order they first appear, with their results.
fn by_configuration(results: &[SweepResult]) -> Vec<(String, Vec<&SweepResult>)> {
    let mut groups: Vec<(String, Vec<&SweepResult>)> = Vec::new();
    for r in results {
        let label = r.server.label();
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, group)) => group.push(r),
            None => groups.push((label, vec![r])),
        }
    }
    groups
}

/// One line of a chart: its points, its configuration's colour, and a legend entry for
/// the first line of each configuration.
struct Line {
    label: Option<String>,
    points: Vec<(f64, f64)>,
    color: usize,
    width: u32,
    dots: bool,
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Draws `lines` on axes from 0 to a little past their largest values, into an SVG.
fn line_chart(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    lines: &[Line],
) -> PlotResult {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = |of: fn(&(f64, f64)) -> f64| {
        let largest = lines
            .iter()
            .flat_map(|l| l.points.iter().map(of))
            .fold(0.0, f64::max);
        largest.max(1e-3) * 1.1
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max(|p| p.0), 0.0..max(|p| p.1))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    for line in lines {
        let color = Palette99::pick(line.color).to_rgba();
        let drawn = chart.draw_series(LineSeries::new(
            line.points.clone(),
            color.stroke_width(line.width),
        ))?;
        if let Some(label) = &line.label {
            drawn
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        if line.dots {
            chart.draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, 4, color.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn throughput_vs_p99(path: &Path, results: &[SweepResult]) -> PlotResult {
    let lines: Vec<Line> = by_configuration(results)
        .into_iter()
        .enumerate()
        .map(|(color, (label, group))| Line {
            label: Some(label),
            points: group
                .iter()
                .map(|r| (r.client.latency.p99, r.client.pairs_per_second))
                .collect(),
            color,
            width: 2,
            dots: true,
        })
        .collect();
    let title = "Throughput vs p99 latency (one line per configuration, points by clients)";
    line_chart(path, title, ("p99 latency (s)", "pairs/s"), &lines)
}

fn latency_vs_concurrency(path: &Path, results: &[SweepResult]) -> PlotResult {
    let mut lines = Vec::new();
    for (color, (label, group)) in by_configuration(results).into_iter().enumerate() {
        let at = |latency: fn(&SweepResult) -> f64| {
            group
                .iter()
                .map(|r| (r.concurrency as f64, latency(r)))
                .collect()
        };
        lines.push(Line {
            label: Some(label),
            points: at(|r| r.client.latency.p99),
            color,
            width: 2,
            dots: false,
        });
        lines.push(Line {
            label: None,
            points: at(|r| r.client.latency.p50),
            color,
            width: 1,
            dots: false,
        });
    }
    let title = "Latency percentiles vs clients (solid p99, thin p50)";
    line_chart(path, title, ("concurrent clients", "latency (s)"), &lines)
}
