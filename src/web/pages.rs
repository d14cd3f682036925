//! Server-rendered HTML: minijinja templates compiled into the binary (no
//! files to deploy, nothing fetched from the network), escaped by default,
//! with helpers that format times in UTC or a job's zone, dollars and KPIs.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::{Environment, Value};
use serde::Serialize;

use super::chart::{dollars, escape};

/// The stylesheet served at `/style.css`.
pub const STYLESHEET: &str = include_str!("templates/style.css");

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("batches.html", include_str!("templates/batches.html")),
    ("run.html", include_str!("templates/run.html")),
    ("jobs.html", include_str!("templates/jobs.html")),
];

/// Whose clock the times are shown on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeMode {
    /// Everything in UTC.
    #[default]
    Utc,
    /// Each row in its job's time zone.
    Job,
}

impl TimeMode {
    fn as_str(self) -> &'static str {
        match self {
            TimeMode::Utc => "utc",
            TimeMode::Job => "job",
        }
    }
}

/// The compiled templates.
#[derive(Debug)]
pub struct Pages {
    env: Environment<'static>,
}

impl Default for Pages {
    fn default() -> Self {
        Pages::new()
    }
}

impl Pages {
    /// Compiles the templates; they are part of the binary, so a broken one is a bug caught by the tests.
    pub fn new() -> Pages {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source).unwrap_or_else(|e| panic!("template {name}: {e}"));
        }
        env.add_function("when", when);
        env.add_function("usd", |value: f64| dollars(value));
        env.add_function("figure", figure);
        Pages { env }
    }

    /// Renders page `name` (`batches`, `run`, `jobs`) with `page` as its data
    /// and, on the overview, the chart's SVG (already escaped).
    pub fn render(
        &self,
        name: &str,
        page: &impl Serialize,
        chart: Option<String>,
        view: View,
    ) -> Result<String, minijinja::Error> {
        let template = self.env.get_template(&format!("{name}.html"))?;
        template.render(minijinja::context! {
            page_name => name,
            page => Value::from(minijinja::value::Serde(page)),
            chart => chart.map(Value::from_safe_string),
            now => view.now.to_rfc3339(),
            tz => view.tz.as_str(),
            q => view.query(),
            paused => view.paused,
            refresh => view.refresh_secs.filter(|_| !view.paused),
            leader => view.leader,
        })
    }
}

/// How a page is shown.
#[derive(Debug, Clone)]
pub struct View {
    /// When the page is taken.
    pub now: DateTime<Utc>,
    /// Whose clock times are shown on.
    pub tz: TimeMode,
    /// Reload the page after this many seconds (while runs are open).
    pub refresh_secs: Option<u32>,
    /// The viewer turned reloading off (`?refresh=off`).
    pub paused: bool,
    /// Who leads the state database, for the footer.
    pub leader: Option<String>,
}

impl View {
    /// The query string that keeps the viewer's choices on every link.
    fn query(&self) -> String {
        let mut parts = Vec::new();
        if self.tz == TimeMode::Job {
            parts.push("tz=job");
        }
        if self.paused {
            parts.push("refresh=off");
        }
        if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
    }
}

/// `when(instant, zone)`: a `<time>` element showing the instant in `zone`
/// (UTC when the zone is unknown), or a dash when there is no instant.
fn when(at: Value, zone: Option<String>) -> Value {
    let Some(at) = at.as_str().and_then(|text| DateTime::parse_from_rfc3339(text).ok()) else {
        return Value::from("—");
    };
    let zone: Tz = zone.as_deref().and_then(|z| z.parse().ok()).unwrap_or(Tz::UTC);
    let local = at.with_timezone(&zone);
    Value::from_safe_string(format!(
        r#"<time datetime="{}">{}</time>"#,
        at.with_timezone(&Utc).to_rfc3339(),
        escape(&local.format("%Y-%m-%d %H:%M %Z").to_string())
    ))
}

/// `figure(value, kind)`: a KPI or table figure as text (`share` as a
/// percentage, `secs` as a duration, `usd`, `tokens`, `count`).
fn figure(value: Option<f64>, kind: String) -> String {
    let Some(value) = value else { return "—".to_owned() };
    match kind.as_str() {
        "share" => format!("{:.1}%", value * 100.0),
        "secs" => duration(value),
        "usd" => dollars(value),
        "tokens" => format!("{value:.0}"),
        _ => format!("{value}"),
    }
}

/// Seconds as `45 s`, `12 min`, `3.5 h`.
fn duration(secs: f64) -> String {
    if secs < 90.0 {
        format!("{secs:.0} s")
    } else if secs < 5400.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_in_the_asked_zone() {
        let at = Value::from("2026-11-22T13:05:00+00:00");
        assert_eq!(
            when(at.clone(), Some("Europe/Berlin".into())).to_string(),
            r#"<time datetime="2026-11-22T13:05:00+00:00">2026-11-22 14:05 CET</time>"#
        );
        assert!(when(at, None).to_string().contains("13:05 UTC"));
        assert_eq!(when(Value::from(()), None).to_string(), "—");
    }

    #[test]
    fn text_from_jobs_and_providers_is_escaped() {
        let hostile = "<script>alert(1)</script>";
        let page = serde_json::json!({
            "run": { "id": 1, "run_key": hostile, "job": hostile, "tags": [hostile], "state": "failed",
                     "reason": hostile, "timezone": "UTC", "scheduled_for": "2026-11-22T00:00:00Z",
                     "deadline_at": "2026-11-22T01:00:00Z", "cost_usd": 0.0, "sync_equivalent_usd": 0.0,
                     "savings_usd": 0.0, "requests_done": 0, "requests_total": 1 },
            "requests": { "permanent_failed": 1 },
            "batches": [],
            "decisions": [{ "at": "2026-11-22T00:00:00Z", "kind": "run_failed", "detail": { "reason": hostile } }],
            "errors": [{ "source": "result", "what": hostile, "error_type": hostile, "message": hostile, "count": 1 }],
        });
        let view = View { now: Utc::now(), tz: TimeMode::Utc, refresh_secs: None, paused: false, leader: None };
        let html = Pages::new().render("run", &page, None, view).unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)"), "{html}");
    }

    #[test]
    fn links_keep_the_viewers_choices() {
        let view = View { now: Utc::now(), tz: TimeMode::Job, refresh_secs: Some(10), paused: true, leader: None };
        let html = Pages::new().render("jobs", &serde_json::json!([]), None, view).unwrap();
        assert!(html.contains(r#"href="/batches?tz=job&amp;refresh=off""#), "{html}");
        assert!(!html.contains("http-equiv=\"refresh\""), "paused pages do not reload");
        assert!(html.contains(r#"<a href="/jobs?tz=job&amp;refresh=off" aria-current="page">"#), "{html}");
    }

    #[test]
    fn figures_read_like_the_kpi_they_are() {
        assert_eq!(figure(Some(0.8123), "share".into()), "81.2%");
        assert_eq!(figure(Some(30.0), "secs".into()), "30 s");
        assert_eq!(figure(Some(720.0), "secs".into()), "12 min");
        assert_eq!(figure(Some(4.0 * 3600.0), "secs".into()), "4.0 h");
        assert_eq!(figure(Some(3.0), "count".into()), "3");
        assert_eq!(figure(None, "share".into()), "—");
    }
}
