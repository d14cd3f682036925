//! Money: the price of every billed response, what batching saved,
//! budgets, the five KPIs and the `cost` and `estimate` reports.
//!
//! Costs are computed from the stored usage and the catalog's prices, so a
//! price change is applied to history by clearing the costs and pricing
//! again (`orchestrator cost --reprice`).

pub mod budget;
pub mod estimate;
pub mod price;
pub mod report;

use chrono::{DateTime, Datelike, TimeZone, Utc};

pub use price::{Cost, LaneFactor, Micros, TokenPrices, cost_of, micros, usd};

use crate::catalog::Catalog;
use crate::manifest::Lane;
use crate::outcome::Usage;
use crate::store::{AnswerPrice, AnswerPricer, ResultCost, Store, StoreError, UnpricedResult};

/// Results priced per transaction.
const PRICING_CHUNK: usize = 5_000;

/// Prices usage with a catalog.
#[derive(Debug, Clone)]
pub struct Pricer {
    catalog: std::sync::Arc<Catalog>,
}

impl Pricer {
    /// Prices from `catalog`.
    pub fn new(catalog: Catalog) -> Pricer {
        Pricer { catalog: std::sync::Arc::new(catalog) }
    }

    /// The prices and lane factor of `model` (an id or alias, any provider).
    pub fn model(&self, model: &str) -> Option<(TokenPrices, LaneFactor)> {
        self.priced(model).map(|(prices, factor, _)| (prices, factor))
    }

    /// The prices, lane factor and provider of `model` (an id or alias, or
    /// a dated snapshot of one).
    fn priced(&self, model: &str) -> Option<(TokenPrices, LaneFactor, &str)> {
        let find = |model: &str| {
            self.catalog.providers.iter().find_map(|(name, provider)| {
                let (_, entry) = self.catalog.model(name, model)?;
                Some((
                    TokenPrices::from_catalog(&entry.prices),
                    LaneFactor::new(provider.batch_discount),
                    name.as_str(),
                ))
            })
        };
        find(model).or_else(|| find(&undated(model)))
    }

    /// The cost of `usage` of `model` in `lane`; `None` for a model the catalog does not price.
    pub fn cost(&self, model: &str, lane: Lane, usage: &Usage) -> Option<Cost> {
        let (prices, factor, _) = self.priced(model)?;
        Some(cost_of(usage, lane, &prices, factor))
    }

    /// The provider of `model` in the catalog.
    pub fn provider_of(&self, model: &str) -> Option<&str> {
        self.priced(model).map(|(_, _, provider)| provider)
    }

    /// The price of a successful batch answer of `model` with `usage`, as
    /// it is stored; `None` for a model the catalog does not price.
    pub fn batch_answer(&self, model: &str, usage: &Usage) -> Option<AnswerPrice> {
        let (prices, factor, provider) = self.priced(model)?;
        let cost = cost_of(usage, Lane::Batch, &prices, factor);
        Some(AnswerPrice {
            model: model.to_owned(),
            provider: Some(provider.to_owned()),
            cost_micros: cost.actual,
            sync_cost_micros: cost.sync_equivalent,
        })
    }

    /// [`Pricer::batch_answer`] as the batch lane takes it.
    pub fn answer_pricer(&self) -> AnswerPricer {
        let pricer = self.clone();
        std::sync::Arc::new(move |model, usage| pricer.batch_answer(model, usage))
    }

    /// The stored cost of one result. Unbilled outcomes cost nothing; a
    /// duplicate success costs what it cost but saved nothing (the sync
    /// baseline would have paid for the request once).
    fn price(&self, result: &UnpricedResult) -> ResultCost {
        let lane = if result.lane == "sync" { Lane::Sync } else { Lane::Batch };
        let cost = match (result.succeeded, result.model.as_deref()) {
            (true, Some(model)) => self.cost(model, lane, &result.usage).unwrap_or_else(|| {
                tracing::warn!(model, result = result.id, "no price for this model in the catalog; counted as $0");
                Cost::default()
            }),
            _ => Cost::default(),
        };
        let sync_equivalent = if result.duplicate { 0 } else { cost.sync_equivalent };
        ResultCost {
            id: result.id,
            model: result.model.clone(),
            provider: result.model.as_deref().and_then(|model| self.provider_of(model)).map(str::to_owned),
            cost_micros: cost.actual,
            sync_cost_micros: sync_equivalent,
        }
    }
}

/// A model name without its snapshot date: `claude-haiku-4-5-20251001` →
/// `claude-haiku-4-5`, `gpt-4o-mini-2024-07-18` → `gpt-4o-mini`. Answers
/// name the snapshot that served them; the catalog may list only the family.
fn undated(model: &str) -> String {
    let digits = |text: &str, n: usize| text.len() == n && text.bytes().all(|b| b.is_ascii_digit());
    if let Some((family, date)) = model.rsplit_once('-')
        && digits(date, 8)
    {
        return family.to_owned();
    }
    let parts: Vec<&str> = model.rsplitn(4, '-').collect();
    match parts.as_slice() {
        [day, month, year, family] if digits(day, 2) && digits(month, 2) && digits(year, 4) => (*family).to_owned(),
        _ => model.to_owned(),
    }
}

/// Prices every result without a cost; returns how many it priced.
pub fn price_pending(store: &mut Store, pricer: &Pricer) -> Result<usize, StoreError> {
    let mut priced = 0;
    loop {
        let pending = store.unpriced_results(PRICING_CHUNK)?;
        if pending.is_empty() {
            return Ok(priced);
        }
        let costs: Vec<ResultCost> = pending.iter().map(|result| pricer.price(result)).collect();
        store.set_result_costs(&costs)?;
        priced += costs.len();
    }
}

/// Midnight UTC on the first day of `now`'s month: budgets are per calendar month.
pub fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_snapshots_are_priced_as_their_family() {
        let pricer = Pricer::new(Catalog::builtin());
        let usage = Usage { input_tokens: 1_000_000, ..Usage::default() };
        let dated = pricer.cost("claude-sonnet-4-6-20260101", Lane::Sync, &usage).unwrap();
        assert_eq!(dated, pricer.cost("claude-sonnet-4-6", Lane::Sync, &usage).unwrap());
        assert_eq!(dated.actual, 3_000_000);
        // OpenAI answers name snapshots as `-YYYY-MM-DD`; cached input is read at its own price.
        let openai = Usage { input_tokens: 1_000_000, cache_read_tokens: 1_000_000, ..Usage::default() };
        let mini = pricer.cost("gpt-4o-mini-2024-07-18", Lane::Batch, &openai).unwrap();
        assert_eq!((mini.actual, mini.sync_equivalent), (112_500, 225_000), "($0.15 + $0.075) per M, halved");
        assert!(pricer.cost("gpt-9", Lane::Sync, &usage).is_none());
    }

    #[test]
    fn a_duplicate_costs_money_and_saves_none() {
        let pricer = Pricer::new(Catalog::builtin());
        let result = UnpricedResult {
            id: 1,
            lane: "batch".into(),
            succeeded: true,
            duplicate: true,
            model: Some("claude-sonnet-4-6".into()),
            usage: Usage { output_tokens: 1000, ..Usage::default() },
        };
        let priced = pricer.price(&result);
        assert_eq!((priced.cost_micros, priced.sync_cost_micros), (7_500, 0));
        let errored = UnpricedResult { succeeded: false, duplicate: false, ..result };
        let priced = pricer.price(&errored);
        assert_eq!((priced.cost_micros, priced.sync_cost_micros), (0, 0));
    }

    #[test]
    fn months_start_at_midnight_utc_on_the_first() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 15, 4, 5).unwrap();
        assert_eq!(month_start(now), Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap());
    }
}
