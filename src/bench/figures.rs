//! Headline figures with their targets, and a report shape shared by the
//! scenarios that measure a few named numbers per repeat.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{Report, build_profile, median};

/// A target of issue 7: the figure must be at most, or at least, `value`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Target {
    /// `<=` or `>=`.
    pub op: &'static str,
    /// The bound, in the figure's unit.
    pub value: f64,
}

impl Target {
    /// The figure must not exceed `value`.
    pub const fn at_most(value: f64) -> Target {
        Target { op: "<=", value }
    }

    /// The figure must reach `value`.
    pub const fn at_least(value: f64) -> Target {
        Target { op: ">=", value }
    }

    /// Whether `figure` meets the target.
    pub fn met_by(&self, figure: f64) -> bool {
        if self.op == "<=" { figure <= self.value } else { figure >= self.value }
    }
}

/// One headline figure: a median over repeats, with its target if it has one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// The scenario, e.g. `ingest`.
    pub scenario: &'static str,
    /// What is measured, e.g. `results/s`.
    pub name: &'static str,
    /// The median over the repeats (`None` where the OS could not say).
    pub median: Option<f64>,
    /// What issue 7 asks for.
    pub target: Option<Target>,
    /// Whether the median meets the target (`None` without a target or a figure).
    pub met: Option<bool>,
}

impl Figure {
    /// A figure; `met` follows from the median and the target.
    pub fn new(scenario: &'static str, name: &'static str, median: Option<f64>, target: Option<Target>) -> Figure {
        let met = median.zip(target).map(|(m, t)| t.met_by(m));
        Figure { scenario, name, median, target, met }
    }

    /// The target as text, e.g. `>= 100000`.
    pub fn target_text(&self) -> String {
        self.target.map_or_else(String::new, |t| format!("{} {}", t.op, number(t.value)))
    }

    /// `yes`, `NO` or empty.
    pub fn met_text(&self) -> &'static str {
        match self.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        }
    }
}

/// A number for a table: no decimals from 100 on, three significant digits below.
pub fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

/// Lines of a figures table: scenario, figure, median, target, met.
pub fn figures_table(figures: &[Figure]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<10}{:<34}{:>12}{:>14}{:>6}", "scenario", "figure", "median", "target", "met");
    for f in figures {
        let median = f.median.map_or_else(|| "n/a".to_owned(), number);
        let _ =
            writeln!(out, "{:<10}{:<34}{:>12}{:>14}{:>6}", f.scenario, f.name, median, f.target_text(), f.met_text());
    }
    out
}

/// What a scenario measures in each repeat: a named number, maybe with a target.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Its name, with its unit, e.g. `elapsed ms`.
    pub name: &'static str,
    /// What issue 7 asks for.
    pub target: Option<Target>,
}

/// The report of a scenario that measures the same metrics in every repeat.
#[derive(Debug, Clone, Serialize)]
pub struct Sampled {
    /// The scenario.
    pub scenario: &'static str,
    /// `debug` or `release`.
    pub build: &'static str,
    /// What was run, in a sentence.
    pub setup: String,
    /// Each repeat: metric name to value.
    pub per_repeat: Vec<BTreeMap<&'static str, f64>>,
    /// Medians with their targets.
    pub figures: Vec<Figure>,
}

impl Sampled {
    /// The report of `repeats`, each a value per metric of `metrics`, in that order.
    pub fn new(scenario: &'static str, setup: String, metrics: &[Metric], repeats: &[Vec<f64>]) -> Sampled {
        let per_repeat =
            repeats.iter().map(|values| metrics.iter().map(|m| m.name).zip(values.iter().copied()).collect());
        let figures = metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let values: Vec<f64> = repeats.iter().filter_map(|r| r.get(i).copied()).collect();
                Figure::new(scenario, m.name, median(&values), m.target)
            })
            .collect();
        Sampled { scenario, build: build_profile(), setup, per_repeat: per_repeat.collect(), figures }
    }
}

impl Report for Sampled {
    fn table(&self) -> String {
        let mut out = format!("{}: {}, {} build\n\n", self.scenario, self.setup, self.build);
        out.push_str(&figures_table(&self.figures));
        let _ = writeln!(out, "\nrepeat  {}", self.figures.iter().map(|f| f.name).collect::<Vec<_>>().join(" | "));
        for (n, repeat) in self.per_repeat.iter().enumerate() {
            let values: Vec<String> =
                self.figures.iter().map(|f| repeat.get(f.name).map_or_else(String::new, |v| number(*v))).collect();
            let _ = writeln!(out, "{:<8}{}", n + 1, values.join(" | "));
        }
        out
    }

    fn figures(&self) -> Vec<Figure> {
        self.figures.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_met_or_not() {
        assert!(Target::at_most(1.0).met_by(1.0));
        assert!(!Target::at_most(1.0).met_by(1.1));
        assert!(Target::at_least(5.0).met_by(6.0));
        let figure = Figure::new("s", "x", Some(2.0), Some(Target::at_least(3.0)));
        assert_eq!((figure.met, figure.met_text(), figure.target_text().as_str()), (Some(false), "NO", ">= 3.000"));
        assert_eq!(Figure::new("s", "x", None, Some(Target::at_least(3.0))).met, None);
    }

    #[test]
    fn sampled_reports_take_medians_per_metric() {
        let metrics =
            [Metric { name: "a ms", target: Some(Target::at_most(10.0)) }, Metric { name: "b", target: None }];
        let report =
            Sampled::new("demo", "a demo".into(), &metrics, &[vec![12.0, 1.0], vec![8.0, 3.0], vec![9.0, 2.0]]);
        assert_eq!(report.figures[0].median, Some(9.0));
        assert_eq!(report.figures[0].met, Some(true));
        assert_eq!(report.figures[1].median, Some(2.0));
        assert!(report.table().contains("a ms"));
    }
}
