//! What LLM work costs: a price table per model, in dollars per million tokens, read from a
//! TOML file (`agentcom-hub serve --prices FILE`), with defaults for the current Claude models.
//! Prices change: the file, not the code, is where they live.
//!
//! ```toml
//! # Factors applied to a model's input price for prompt-cache writes and reads.
//! cache_write_factor = 1.25
//! cache_read_factor = 0.1
//!
//! [models."claude-sonnet-4-5"]
//! input = 3.0      # dollars per million input tokens
//! output = 15.0    # dollars per million output tokens
//!
//! [models."llama3.1:70b"]
//! input = 0.2      # what your own GPUs cost you, if you want it counted
//! output = 0.2
//! ```
//!
//! **Architecture Invariant:** pure; the core prices each result when it arrives.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::domain::{TokenPrice, Usage};

/// Dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// This model's own factors, if they differ from the table's.
    #[serde(default)]
    pub cache_write_factor: Option<f64>,
    #[serde(default)]
    pub cache_read_factor: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    #[serde(default = "default_cache_write")]
    pub cache_write_factor: f64,
    #[serde(default = "default_cache_read")]
    pub cache_read_factor: f64,
    #[serde(default)]
    pub models: BTreeMap<String, Price>,
}

fn default_cache_write() -> f64 {
    1.25
}

fn default_cache_read() -> f64 {
    0.1
}

/// The Claude models' list prices when this was written (dollars per million tokens).
const CLAUDE: &[(&str, f64, f64)] =
    &[("claude-opus-4-1", 15.0, 75.0), ("claude-sonnet-4-5", 3.0, 15.0), ("claude-haiku-4-5", 1.0, 5.0)];

impl Default for Prices {
    fn default() -> Prices {
        let models = CLAUDE
            .iter()
            .map(|&(name, input, output)| {
                (name.to_owned(), Price { input, output, cache_write_factor: None, cache_read_factor: None })
            })
            .collect();
        Prices { cache_write_factor: default_cache_write(), cache_read_factor: default_cache_read(), models }
    }
}

impl Prices {
    /// The defaults with `text` (TOML) on top: a model it names replaces the default's price.
    pub fn parse(text: &str) -> Result<Prices, String> {
        let given: Prices = toml::from_str(text).map_err(|err| err.to_string())?;
        let check = |what: &str, value: f64| {
            if value.is_finite() && value >= 0.0 { Ok(()) } else { Err(format!("{what} must be a price of 0 or more")) }
        };
        check("cache_write_factor", given.cache_write_factor)?;
        check("cache_read_factor", given.cache_read_factor)?;
        for (name, price) in &given.models {
            check(&format!("models.{name}.input"), price.input)?;
            check(&format!("models.{name}.output"), price.output)?;
            for factor in [price.cache_write_factor, price.cache_read_factor].into_iter().flatten() {
                check(&format!("models.{name} cache factors"), factor)?;
            }
        }
        let mut models = Prices::default().models;
        models.extend(given.models);
        Ok(Prices { models, ..given })
    }

    pub fn load(path: &Path) -> Result<Prices, String> {
        let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
        Prices::parse(&text).map_err(|err| format!("{}: {err}", path.display()))
    }

    /// What `model`'s tokens cost, if the table has it.
    pub fn token_price(&self, model: &str) -> Option<TokenPrice> {
        self.models.get(model).map(|p| TokenPrice { input: p.input, output: p.output })
    }

    /// What `usage` cost in millionths of a dollar: from the table when it has the model; 0 for
    /// a local model it does not list (Ollama: your own hardware); unknown (`None`) otherwise.
    pub fn cost_micros(&self, usage: &Usage) -> Option<u64> {
        let Some(price) = self.models.get(&usage.model) else {
            return (usage.provider == "ollama").then_some(0);
        };
        let write = price.cache_write_factor.unwrap_or(self.cache_write_factor);
        let read = price.cache_read_factor.unwrap_or(self.cache_read_factor);
        // Dollars per million tokens times tokens is millionths of a dollar.
        let micros = usage.input_tokens as f64 * price.input
            + usage.cache_write_tokens as f64 * price.input * write
            + usage.cached_input_tokens as f64 * price.input * read
            + usage.output_tokens as f64 * price.output;
        Some(micros.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(provider: &str, model: &str, input: u64, write: u64, read: u64, output: u64) -> Usage {
        Usage {
            provider: provider.into(),
            model: model.into(),
            input_tokens: input,
            cache_write_tokens: write,
            cached_input_tokens: read,
            output_tokens: output,
            ..Usage::default()
        }
    }

    #[test]
    fn claude_is_priced_by_default_with_cache_factors() {
        let prices = Prices::default();
        // 1,000 in at $3/M, 2,000 written at 1.25x, 10,000 read at 0.1x, 500 out at $15/M.
        let cost = prices.cost_micros(&usage("anthropic", "claude-sonnet-4-5", 1_000, 2_000, 10_000, 500));
        assert_eq!(cost, Some(3_000 + 7_500 + 3_000 + 7_500));
        assert_eq!(prices.cost_micros(&usage("ollama", "llama3.2:3b", 1_000, 0, 0, 1_000)), Some(0), "local is free");
        assert_eq!(prices.cost_micros(&usage("anthropic", "claude-future-9", 1, 0, 0, 1)), None, "unknown");
    }

    #[test]
    fn a_table_file_adds_and_replaces_models_and_is_checked() {
        let prices = Prices::parse(
            r#"
            cache_read_factor = 0.5
            [models."claude-sonnet-4-5"]
            input = 4.0
            output = 20.0
            [models."llama3.1:70b"]
            input = 0.2
            output = 0.4
            cache_write_factor = 1.0
            "#,
        )
        .unwrap();
        assert_eq!(
            prices.cost_micros(&usage("anthropic", "claude-sonnet-4-5", 1_000, 0, 1_000, 0)),
            Some(4_000 + 2_000)
        );
        assert_eq!(prices.cost_micros(&usage("ollama", "llama3.1:70b", 10_000, 0, 0, 10_000)), Some(2_000 + 4_000));
        assert!(prices.models.contains_key("claude-haiku-4-5"), "defaults stay");
        let refused = |text: &str| Prices::parse(text).unwrap_err();
        assert!(refused("[models.x]\ninput = -1.0\noutput = 1.0").contains("models.x.input"), "negative");
        assert!(refused("[models.x]\ninput = 1.0").contains("output"), "a missing price");
        assert!(refused("colour = 1").contains("colour"), "an unknown key");
    }
}
