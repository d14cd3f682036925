//! The price of one billed response, in integer micro-dollars.
//!
//! Catalog prices are dollars per million tokens, which is exactly
//! micro-dollars per token. They are converted once to integer
//! pico-dollars per token, so every sum is exact and a response is
//! rounded once, to the micro-dollar, at the end: totals are sums of
//! stored integers and never drift the way accumulated floats do.

use crate::catalog::Prices;
use crate::manifest::Lane;
use crate::outcome::Usage;

/// Pico-dollars in one micro-dollar.
const PICO_PER_MICRO: i128 = 1_000_000;
/// Parts per million, the unit of the batch discount factor.
const PPM: i128 = 1_000_000;

/// An amount of US dollars as integer micro-dollars.
pub type Micros = i64;

/// Prices of one model as integer pico-dollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPrices {
    input: i128,
    output: i128,
    cache_write_5m: i128,
    cache_write_1h: i128,
    cache_read: i128,
}

impl TokenPrices {
    /// Converts catalog prices (dollars per million tokens, up to six decimals).
    pub fn from_catalog(prices: &Prices) -> TokenPrices {
        let pico = |per_million: f64| (per_million * 1e6).round() as i128;
        TokenPrices {
            input: pico(prices.input),
            output: pico(prices.output),
            cache_write_5m: pico(prices.cache_write_5m),
            cache_write_1h: pico(prices.cache_write_1h),
            cache_read: pico(prices.cache_read),
        }
    }

    /// List price of `usage` in pico-dollars, before any lane discount.
    fn list_pico(&self, usage: &Usage) -> i128 {
        let tokens = |n: u64| i128::from(n);
        tokens(usage.input_tokens) * self.input
            + tokens(usage.output_tokens) * self.output
            + tokens(usage.cache_write_5m_tokens) * self.cache_write_5m
            + tokens(usage.cache_write_1h_tokens) * self.cache_write_1h
            + tokens(usage.cache_read_tokens) * self.cache_read
    }
}

/// What a lane charges relative to the list price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneFactor {
    batch_ppm: i128,
}

impl LaneFactor {
    /// `batch_discount` is the catalog's fraction of the list price charged
    /// in the batch lane (0.5 = half price).
    pub fn new(batch_discount: f64) -> LaneFactor {
        LaneFactor { batch_ppm: (batch_discount * 1e6).round() as i128 }
    }

    fn ppm(self, lane: Lane) -> i128 {
        match lane {
            Lane::Sync => PPM,
            Lane::Batch => self.batch_ppm,
        }
    }
}

/// The cost of one billed response and what it would have cost on the
/// synchronous API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// What the provider charges for it.
    pub actual: Micros,
    /// The same usage at synchronous list prices.
    pub sync_equivalent: Micros,
}

impl Cost {
    /// Sync-equivalent minus actual; negative when the response was waste.
    pub fn savings(&self) -> Micros {
        self.sync_equivalent - self.actual
    }
}

/// The cost of `usage` received through `lane`.
pub fn cost_of(usage: &Usage, lane: Lane, prices: &TokenPrices, factor: LaneFactor) -> Cost {
    let list = prices.list_pico(usage);
    Cost { actual: to_micros(list * factor.ppm(lane) / PPM), sync_equivalent: to_micros(list) }
}

/// Rounds pico-dollars to micro-dollars, half away from zero.
fn to_micros(pico: i128) -> Micros {
    let rounded = (pico + PICO_PER_MICRO / 2).div_euclid(PICO_PER_MICRO);
    Micros::try_from(rounded).unwrap_or(Micros::MAX)
}

/// Micro-dollars as dollars, for reports (never summed again).
pub fn usd(micros: Micros) -> f64 {
    micros as f64 / 1e6
}

/// Dollars as micro-dollars (budgets, hints), rounded.
pub fn micros(usd: f64) -> Micros {
    (usd * 1e6).round() as Micros
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sonnet list prices: $3 in, $15 out, $3.75 5-minute write, $6 1-hour write, $0.30 read.
    fn sonnet() -> TokenPrices {
        TokenPrices::from_catalog(&Prices {
            input: 3.0,
            output: 15.0,
            cache_write_5m: 3.75,
            cache_write_1h: 6.0,
            cache_read: 0.3,
        })
    }

    fn half() -> LaneFactor {
        LaneFactor::new(0.5)
    }

    fn usage(input: u64, output: u64, write_5m: u64, write_1h: u64, read: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_write_5m_tokens: write_5m,
            cache_write_1h_tokens: write_1h,
            cache_read_tokens: read,
        }
    }

    #[test]
    fn each_price_component_matches_a_hand_computed_figure() {
        // 1,000 input tokens at $3/M = $0.003 = 3,000 µ$.
        assert_eq!(cost_of(&usage(1000, 0, 0, 0, 0), Lane::Sync, &sonnet(), half()).actual, 3_000);
        // 1,000 output tokens at $15/M = 15,000 µ$.
        assert_eq!(cost_of(&usage(0, 1000, 0, 0, 0), Lane::Sync, &sonnet(), half()).actual, 15_000);
        // 1,000 tokens written with a 5-minute TTL at $3.75/M = 3,750 µ$.
        assert_eq!(cost_of(&usage(0, 0, 1000, 0, 0), Lane::Sync, &sonnet(), half()).actual, 3_750);
        // 1,000 tokens written with a 1-hour TTL at $6/M = 6,000 µ$.
        assert_eq!(cost_of(&usage(0, 0, 0, 1000, 0), Lane::Sync, &sonnet(), half()).actual, 6_000);
        // 1,000 tokens read from the cache at $0.30/M = 300 µ$.
        assert_eq!(cost_of(&usage(0, 0, 0, 0, 1000), Lane::Sync, &sonnet(), half()).actual, 300);
    }

    #[test]
    fn the_batch_lane_halves_every_component_and_keeps_the_sync_equivalent() {
        // 2,000 in + 500 out + 10,000 1h-write + 40,000 read:
        // 6,000 + 7,500 + 60,000 + 12,000 = 85,500 µ$ at list price.
        let usage = usage(2000, 500, 0, 10_000, 40_000);
        let batch = cost_of(&usage, Lane::Batch, &sonnet(), half());
        assert_eq!(batch, Cost { actual: 42_750, sync_equivalent: 85_500 });
        assert_eq!(batch.savings(), 42_750);
        let sync = cost_of(&usage, Lane::Sync, &sonnet(), half());
        assert_eq!(sync, Cost { actual: 85_500, sync_equivalent: 85_500 });
        assert_eq!(sync.savings(), 0);
    }

    #[test]
    fn fractions_of_a_micro_dollar_are_rounded_once_per_response() {
        // Haiku reads at $0.10/M: 7 tokens = 0.7 µ$ → 1 µ$; in the batch lane 0.35 µ$ → 0 µ$.
        let haiku = TokenPrices::from_catalog(&Prices {
            input: 1.0,
            output: 5.0,
            cache_write_5m: 1.25,
            cache_write_1h: 2.0,
            cache_read: 0.1,
        });
        let cost = cost_of(&usage(0, 0, 0, 0, 7), Lane::Batch, &haiku, half());
        assert_eq!(cost, Cost { actual: 0, sync_equivalent: 1 });
        // 3 input + 1 output = 3 + 5 = 8 µ$ exactly; batch 4 µ$.
        assert_eq!(cost_of(&usage(3, 1, 0, 0, 0), Lane::Batch, &haiku, half()).actual, 4);
    }

    #[test]
    fn a_catalog_discount_other_than_half_is_honoured() {
        let usage = usage(1_000_000, 0, 0, 0, 0);
        let cost = cost_of(&usage, Lane::Batch, &sonnet(), LaneFactor::new(0.6));
        assert_eq!(cost, Cost { actual: 1_800_000, sync_equivalent: 3_000_000 });
    }

    #[test]
    fn dollars_and_micro_dollars_convert_both_ways() {
        assert_eq!(micros(12.34), 12_340_000);
        assert_eq!(usd(1_500_000), 1.5);
    }
}
