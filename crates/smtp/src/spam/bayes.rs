//! The statistical classifier: naive Bayes over hashed tokens with
//! Robinson's token probabilities and Fisher's chi-square combining (the
//! SpamBayes method). Counts are "messages holding the token", so
//! training is pure addition: the store keeps them as atomic counters.
//!
//! Several models can be combined (the global one and an account's own):
//! counts add up, an account's weighted by `account_weight`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Deserialize;
use tern_store::spam::{Class, LoadedModel, unpack};

/// A hasher for keys that already are hashes.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TokenMap = HashMap<u64, (u32, u32), BuildHasherDefault<IdentityHasher>>;

/// Token counts in memory.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Messages trained as spam.
    pub spam: u32,
    /// Messages trained as ham.
    pub ham: u32,
    /// The store generation it was loaded at.
    pub generation: i64,
    tokens: TokenMap,
}

impl Model {
    /// An empty model.
    pub fn new() -> Model {
        Model::default()
    }

    /// A model read from the store.
    pub fn from_loaded(loaded: LoadedModel) -> Model {
        let mut tokens =
            TokenMap::with_capacity_and_hasher(loaded.tokens.len(), Default::default());
        for (t, v) in loaded.tokens {
            let (s, h) = unpack(v);
            if s > 0 || h > 0 {
                tokens.insert(t, (s, h));
            }
        }
        Model {
            spam: loaded.meta.spam.clamp(0, u32::MAX as i64) as u32,
            ham: loaded.meta.ham.clamp(0, u32::MAX as i64) as u32,
            generation: loaded.meta.generation,
            tokens,
        }
    }

    /// Adds one message's distinct tokens as `class` (in memory).
    pub fn train(&mut self, tokens: &[u64], class: Class) {
        match class {
            Class::Spam => self.spam += 1,
            Class::Ham => self.ham += 1,
        }
        for &t in tokens {
            let e = self.tokens.entry(t).or_insert((0, 0));
            match class {
                Class::Spam => e.0 += 1,
                Class::Ham => e.1 += 1,
            }
        }
    }

    /// (spam, ham) messages holding `token`.
    pub fn get(&self, token: u64) -> (u32, u32) {
        self.tokens.get(&token).copied().unwrap_or((0, 0))
    }

    /// Distinct tokens known.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Classifier parameters (from `resources/spam/rules.toml`, `[bayes]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BayesParams {
    /// Spam messages the combined models need before they are used.
    pub min_spam: u32,
    /// Ham messages the combined models need.
    pub min_ham: u32,
    /// Robinson's s: the weight of the prior for rare tokens.
    pub strength: f64,
    /// Robinson's x: the prior probability of an unknown token.
    pub unknown: f64,
    /// Tokens whose probability is within this of 0.5 are ignored.
    pub min_deviation: f64,
    /// At most this many tokens, the most extreme, decide.
    pub max_tokens: usize,
    /// An account's own counts count this many times the global ones.
    pub account_weight: f64,
}

impl Default for BayesParams {
    fn default() -> Self {
        BayesParams {
            min_spam: 20,
            min_ham: 20,
            strength: 0.45,
            unknown: 0.5,
            min_deviation: 0.1,
            max_tokens: 150,
            account_weight: 2.0,
        }
    }
}

/// The spam probability (0 = ham, 1 = spam) of a message with `tokens`
/// under the weighted sum of `models`, or `None` when they hold too little
/// training.
pub fn classify<'t>(
    params: &BayesParams,
    models: &[(&Model, f64)],
    tokens: impl FnOnce() -> &'t [u64],
) -> Option<f64> {
    let n_spam: f64 = models.iter().map(|(m, w)| m.spam as f64 * w).sum();
    let n_ham: f64 = models.iter().map(|(m, w)| m.ham as f64 * w).sum();
    if n_spam < params.min_spam as f64 || n_ham < params.min_ham as f64 {
        return None;
    }
    let tokens = tokens();
    let (s, x) = (params.strength, params.unknown);
    let mut probs: Vec<f64> = Vec::with_capacity(256);
    for &t in tokens {
        let (mut sc, mut hc) = (0.0, 0.0);
        for (m, w) in models {
            let (a, b) = m.get(t);
            sc += a as f64 * w;
            hc += b as f64 * w;
        }
        let n = sc + hc;
        if n == 0.0 {
            continue;
        }
        let spam_ratio = sc / n_spam;
        let ham_ratio = hc / n_ham;
        let p = spam_ratio / (spam_ratio + ham_ratio);
        let f = (s * x + n * p) / (s + n);
        if (f - 0.5).abs() >= params.min_deviation {
            probs.push(f);
        }
    }
    if probs.is_empty() {
        return Some(0.5);
    }
    if probs.len() > params.max_tokens {
        let k = params.max_tokens;
        probs.select_nth_unstable_by(k, |a, b| (b - 0.5).abs().total_cmp(&(a - 0.5).abs()));
        probs.truncate(k);
    }
    Some(chi_combine(&probs))
}

/// Fisher's method: how unlikely the token probabilities are under "ham"
/// and under "spam", combined to one indicator in [0, 1].
fn chi_combine(probs: &[f64]) -> f64 {
    let n = probs.len();
    let (mut ln_p, mut ln_q) = (0.0, 0.0);
    for &p in probs {
        let p = p.clamp(1e-6, 1.0 - 1e-6);
        ln_p += p.ln();
        ln_q += (1.0 - p).ln();
    }
    let hammy = 1.0 - chi2_q(-2.0 * ln_p, 2 * n);
    let spammy = 1.0 - chi2_q(-2.0 * ln_q, 2 * n);
    ((spammy - hammy + 1.0) / 2.0).clamp(0.0, 1.0)
}

/// P(χ² ≥ x2) with `v` (even) degrees of freedom.
fn chi2_q(x2: f64, v: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..v / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> BayesParams {
        BayesParams {
            min_spam: 1,
            min_ham: 1,
            ..BayesParams::default()
        }
    }

    #[test]
    fn chi2_q_matches_known_values() {
        // P(chi2(2) >= 2) = e^-1; P(chi2(4) >= 4) = 3e^-2.
        assert!((chi2_q(2.0, 2) - (-1.0f64).exp()).abs() < 1e-12);
        assert!((chi2_q(4.0, 4) - 3.0 * (-2.0f64).exp()).abs() < 1e-12);
        assert_eq!(chi2_q(0.0, 10), 1.0);
    }

    #[test]
    fn learns_and_separates() {
        let mut m = Model::new();
        let spam = [1, 2, 3, 4, 5, 100];
        let ham = [10, 11, 12, 13, 14, 100];
        for _ in 0..10 {
            m.train(&spam, Class::Spam);
            m.train(&ham, Class::Ham);
        }
        let p = params();
        let s = classify(&p, &[(&m, 1.0)], || &[1, 2, 3, 100]).unwrap();
        let h = classify(&p, &[(&m, 1.0)], || &[10, 11, 12, 100]).unwrap();
        let unknown = classify(&p, &[(&m, 1.0)], || &[500, 501]).unwrap();
        assert!(s > 0.95, "{s}");
        assert!(h < 0.05, "{h}");
        assert_eq!(unknown, 0.5);
    }

    #[test]
    fn too_little_training_gives_no_answer_without_the_tokens() {
        let mut m = Model::new();
        m.train(&[1], Class::Spam);
        let tokens = || -> &[u64] { panic!("tokens asked for with too little training") };
        assert_eq!(
            classify(&BayesParams::default(), &[(&m, 1.0)], tokens),
            None
        );
        assert_eq!(classify(&BayesParams::default(), &[], tokens), None);
    }

    #[test]
    fn an_account_model_shifts_the_global_one() {
        let mut global = Model::new();
        for i in 0..20 {
            global.train(&[1000 + i], Class::Spam);
            global.train(&[2000 + i], Class::Ham);
        }
        let message = [7, 8, 9];
        let p = params();
        let before = classify(&p, &[(&global, 1.0)], || &message).unwrap();
        let mut account = Model::new();
        account.train(&message, Class::Spam);
        let after = classify(&p, &[(&global, 1.0), (&account, 2.0)], || &message).unwrap();
        assert_eq!(before, 0.5);
        assert!(after > 0.9, "{after}");
    }
}
