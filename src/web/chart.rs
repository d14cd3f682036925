//! The cost-attribution chart: spend and savings per job as horizontal bars,
//! rendered on the server as SVG (no script, no external resources), with a
//! text alternative that states every figure.

use std::fmt::Write;

use super::model::JobSpend;

const WIDTH: f64 = 720.0;
const LABEL_WIDTH: f64 = 170.0;
const VALUE_WIDTH: f64 = 90.0;
const BAR_HEIGHT: f64 = 12.0;
const ROW_HEIGHT: f64 = 34.0;
const TOP: f64 = 24.0;

/// Escapes text for SVG/HTML content and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A dollar figure with cents, or fractions of a cent below a dollar.
pub fn dollars(value: f64) -> String {
    if value.abs() >= 1.0 || value == 0.0 { format!("${value:.2}") } else { format!("${value:.4}") }
}

/// The text alternative: every job's figures in one sentence each.
fn description(rows: &[JobSpend]) -> String {
    if rows.is_empty() {
        return "No spend recorded this month.".to_owned();
    }
    rows.iter()
        .map(|r| format!("{}: spent {}, saved {}.", r.job, dollars(r.cost_usd), dollars(r.savings_usd)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The chart as an inline `<svg>` element.
pub fn spend_chart(rows: &[JobSpend]) -> String {
    let height = TOP + ROW_HEIGHT * rows.len().max(1) as f64 + 8.0;
    let max = rows.iter().map(|r| r.cost_usd.max(r.savings_usd)).fold(0.0, f64::max);
    let scale = if max > 0.0 { (WIDTH - LABEL_WIDTH - VALUE_WIDTH) / max } else { 0.0 };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" role="img" aria-labelledby="chart-title chart-desc" viewBox="0 0 {WIDTH} {height}" width="100%" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">Spend and savings per job, this month</title><desc id="chart-desc">{}</desc>"#,
        escape(&description(rows))
    );
    let _ = write!(
        svg,
        r#"<g class="legend"><rect x="{LABEL_WIDTH}" y="4" width="10" height="10" class="spend"/><text x="{}" y="13">spent</text><rect x="{}" y="4" width="10" height="10" class="saved"/><text x="{}" y="13">saved vs. sync</text></g>"#,
        LABEL_WIDTH + 14.0,
        LABEL_WIDTH + 64.0,
        LABEL_WIDTH + 78.0
    );
    if rows.is_empty() {
        let _ = write!(svg, r#"<text x="{LABEL_WIDTH}" y="{}">no spend recorded this month</text>"#, TOP + 16.0);
    }
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + ROW_HEIGHT * i as f64;
        bar_row(&mut svg, row, y, scale);
    }
    svg.push_str("</svg>");
    svg
}

fn bar_row(svg: &mut String, row: &JobSpend, y: f64, scale: f64) {
    let spend = (row.cost_usd * scale).max(0.0);
    let saved = (row.savings_usd * scale).max(0.0);
    let _ = write!(
        svg,
        r#"<g class="row"><text x="{}" y="{}" text-anchor="end" class="job">{}</text><rect x="{LABEL_WIDTH}" y="{y}" width="{spend:.1}" height="{BAR_HEIGHT}" class="spend"/><text x="{:.1}" y="{}" class="value">{}</text><rect x="{LABEL_WIDTH}" y="{}" width="{saved:.1}" height="{BAR_HEIGHT}" class="saved"/><text x="{:.1}" y="{}" class="value">{}</text></g>"#,
        LABEL_WIDTH - 8.0,
        y + BAR_HEIGHT + 2.0,
        escape(&row.job),
        LABEL_WIDTH + spend + 4.0,
        y + BAR_HEIGHT - 2.0,
        dollars(row.cost_usd),
        y + BAR_HEIGHT + 2.0,
        LABEL_WIDTH + saved + 4.0,
        y + 2.0 * BAR_HEIGHT,
        dollars(row.savings_usd),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(job: &str, cost: f64, saved: f64) -> JobSpend {
        JobSpend { job: job.into(), cost_usd: cost, savings_usd: saved }
    }

    #[test]
    fn bars_are_proportional_and_labelled() {
        let svg = spend_chart(&[spend("nightly", 4.0, 4.0), spend("<feed>", 1.0, 0.0)]);
        let full = WIDTH - LABEL_WIDTH - VALUE_WIDTH;
        assert!(svg.contains(&format!(r#"width="{full:.1}""#)), "{svg}");
        assert!(svg.contains(&format!(r#"width="{:.1}""#, full / 4.0)), "{svg}");
        assert!(svg.contains("&lt;feed&gt;: spent $1.00, saved $0.00."), "the text alternative names every figure");
        assert!(!svg.contains("<feed>"), "job names are escaped");
    }

    #[test]
    fn an_empty_month_says_so() {
        let svg = spend_chart(&[]);
        assert!(svg.contains("No spend recorded this month."));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn small_amounts_keep_their_cents() {
        assert_eq!(dollars(0.0123), "$0.0123");
        assert_eq!(dollars(12.345), "$12.35");
        assert_eq!(dollars(0.0), "$0.00");
    }
}
