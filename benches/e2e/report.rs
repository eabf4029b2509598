//! The verdicts: every figure with its floor, PASS or MISS, printed as one table and written as
//! JSON (SPEC §10: the benchmark judges itself).

use std::fmt::Write as _;

/// What a figure is held to.
#[derive(Clone, Copy, Debug)]
pub enum Floor {
    /// Reported, not judged.
    None,
    /// The figure must be at most this.
    AtMost(f64),
    /// The figure must be at least this.
    AtLeast(f64),
}

/// One measured figure.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub scenario: String,
    pub measure: String,
    pub value: f64,
    pub unit: String,
    /// The floor as written in SPEC §10 (empty when not judged).
    pub floor: String,
    /// The floor's number, for tools comparing runs.
    pub limit: Option<f64>,
    /// "PASS", "MISS" or "" (not judged).
    pub verdict: String,
}

/// The rows of a run, in the order they were measured.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// Records a figure; `floor_text` says the floor as a reader knows it (`≤ 0.5`).
    pub fn add(
        &mut self,
        scenario: &str,
        measure: &str,
        value: f64,
        unit: &str,
        floor: Floor,
        floor_text: &str,
    ) {
        let (limit, verdict) = match floor {
            Floor::None => (None, ""),
            Floor::AtMost(l) => (Some(l), if value <= l { "PASS" } else { "MISS" }),
            Floor::AtLeast(l) => (Some(l), if value >= l { "PASS" } else { "MISS" }),
        };
        let row = Row {
            scenario: scenario.into(),
            measure: measure.into(),
            value,
            unit: unit.into(),
            floor: floor_text.into(),
            limit,
            verdict: verdict.into(),
        };
        // Printed as it is measured too: a full run takes a quarter of an hour.
        eprintln!("  {}", line(&row));
        self.rows.push(row);
    }

    /// A figure that is only reported.
    pub fn info(&mut self, scenario: &str, measure: &str, value: f64, unit: &str) {
        self.add(scenario, measure, value, unit, Floor::None, "");
    }

    /// A figure held to at most `limit`.
    pub fn at_most(&mut self, scenario: &str, measure: &str, value: f64, unit: &str, limit: f64) {
        let text = format!("≤ {}", number(limit));
        self.add(scenario, measure, value, unit, Floor::AtMost(limit), &text);
    }

    pub fn misses(&self) -> usize {
        self.rows.iter().filter(|r| r.verdict == "MISS").count()
    }

    /// The whole table, Markdown, as README shows it.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| scenario | measure | value | unit | floor | verdict |\n|---|---|---:|---|---|---|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} |",
                r.scenario,
                r.measure,
                number(r.value),
                r.unit,
                r.floor,
                if r.verdict == "MISS" {
                    "**MISS**"
                } else {
                    &r.verdict
                }
            );
        }
        out
    }
}

fn line(r: &Row) -> String {
    format!(
        "{:<15} {:<52} {:>12} {:<8} {:<22} {}",
        r.scenario,
        r.measure,
        number(r.value),
        r.unit,
        r.floor,
        r.verdict
    )
}

/// A figure with as many decimals as its size needs.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || (a >= 100.0 && v.fract() == 0.0) {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
