//! The complexity tier of a task that gives none: a pure heuristic over what the task says.
//!
//! - Shell work is `trivial`: it spends no tokens.
//! - Agent work is `complex`.
//! - LLM work starts at 0 points and adds:
//!   - the length of its text (prompt, system prompt and messages): +1 past 800 characters,
//!     +2 past 4,000;
//!   - its context files: +1 for one to four, +2 for five or more;
//!   - its success criteria and verification steps together: +1 for three or more;
//!   - +2 for each word (any case) that begins like a request for reasoning: `analys`, `analyz`,
//!     `architect`, `debug`, `design`, `diagnos`, `migrat`, `optimis`, `optimiz`, `plan`,
//!     `prove`, `refactor`, `secur`;
//!   - -1 for each word that begins like a request for a short transformation: `classif`,
//!     `extract`, `format`, `rephras`, `summar`, `translat`.
//!
//!   Three points or more is `complex`, one point or less (negative included) is `trivial`,
//!   and two points is `standard`.
//!
//! An explicit tier always wins; so does an explicit model (the tier then only says what the task
//! is).
//!
//! Tier policy: shell work is trivial and runs as shell (no tokens); LLM work that names no model
//! runs on its tier's model (`--tier-model`: by default none, and the sidecar picks). When that
//! model has had no capable agent for `--tier-fallback-after`, [`fallback`] moves the task one
//! tier: up first (a stronger model), else down, never back to a tier it left, and only to a tier
//! with a model. Privacy is not the policy's business: placement never sends local-only work to
//! a cloud provider, whatever its tier.

use crate::domain::{TaskSpec, Tier, Work};

const REASONING: &[&str] = &[
    "analys",
    "analyz",
    "architect",
    "debug",
    "design",
    "diagnos",
    "migrat",
    "optimis",
    "optimiz",
    "plan",
    "prove",
    "refactor",
    "secur",
];
const SHORT: &[&str] = &["classif", "extract", "format", "rephras", "summar", "translat"];

/// The tier of `spec`: its own, or the inferred one.
pub fn tier_of(spec: &TaskSpec) -> Tier {
    spec.tier.unwrap_or_else(|| infer(spec))
}

/// The heuristic described in the module documentation.
pub fn infer(spec: &TaskSpec) -> Tier {
    let llm = match &spec.work {
        Work::Shell(_) | Work::Service(_) => return Tier::Trivial,
        Work::Agent(_) => return Tier::Complex,
        Work::Llm(llm) => llm,
    };
    let mut points: i32 = 0;
    let texts = || {
        std::iter::once(llm.prompt.as_str())
            .chain(std::iter::once(llm.system.as_str()))
            .chain(llm.messages.iter().map(|m| m.content.as_str()))
    };
    let length: usize = texts().map(|t| t.chars().count()).sum();
    points += match length {
        0..=800 => 0,
        801..=4000 => 1,
        _ => 2,
    };
    points += match spec.context.files.len() {
        0 => 0,
        1..=4 => 1,
        _ => 2,
    };
    if spec.success_criteria.len() + spec.verification.len() >= 3 {
        points += 1;
    }
    for text in texts() {
        for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            let word = word.to_lowercase();
            let stem = |list: &[&str]| list.iter().any(|k| word.starts_with(k));
            if stem(REASONING) {
                points += 2;
            } else if stem(SHORT) {
                points -= 1;
            }
        }
    }
    match points {
        i32::MIN..=1 => Tier::Trivial,
        2 => Tier::Standard,
        _ => Tier::Complex,
    }
}

/// The tier above `tier` (a stronger, dearer model), if there is one.
pub fn up(tier: Tier) -> Option<Tier> {
    match tier {
        Tier::Trivial => Some(Tier::Standard),
        Tier::Standard => Some(Tier::Complex),
        Tier::Complex => None,
    }
}

/// The tier a task that waited too long at `from` moves to, having been at `tried` before; `None`
/// when no neighbour has a model (`has_model`) or every one was tried.
pub fn fallback(from: Tier, tried: &[Tier], has_model: impl Fn(Tier) -> bool) -> Option<Tier> {
    let neighbours: &[Tier] = match from {
        Tier::Trivial => &[Tier::Standard],
        Tier::Standard => &[Tier::Complex, Tier::Trivial],
        Tier::Complex => &[Tier::Standard],
    };
    neighbours.iter().copied().find(|tier| *tier != from && !tried.contains(tier) && has_model(*tier))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AgentWork, ChatMessage, ChatRole, LlmWork, SpecDefaults, Verification};

    fn llm(prompt: &str) -> TaskSpec {
        let mut spec = TaskSpec::shell(vec!["true".into()], &SpecDefaults::default());
        spec.work = Work::Llm(LlmWork::prompt(prompt));
        spec
    }

    #[test]
    fn the_heuristic_is_exactly_this() {
        let long = "word ".repeat(200); // 1,000 characters: +1.
        let longer = "word ".repeat(1000); // 5,000: +2.
        let with = |prompt: &str, files: usize, criteria: usize| {
            let mut spec = llm(prompt);
            spec.context.files = (0..files).map(|n| format!("src/{n}.rs")).collect();
            spec.success_criteria = (0..criteria).map(|n| format!("criterion {n}")).collect();
            spec
        };
        let cases: &[(&str, TaskSpec, Tier)] = &[
            ("a short question", llm("What is 2 + 2?"), Tier::Trivial),
            ("a summary, even a long one", llm(&format!("Summarize this: {longer}")), Tier::Trivial),
            ("a long text alone", llm(&long), Tier::Trivial),
            ("a longer text", llm(&longer), Tier::Standard),
            ("one reasoning word", llm("Debug this failing test"), Tier::Standard),
            ("two reasoning words", llm("Refactor the parser and design its errors"), Tier::Complex),
            ("reasoning with files", with("Optimize the hot loop", 2, 0), Tier::Complex),
            ("files and criteria, no reasoning", with("Add a doc comment", 5, 3), Tier::Complex),
            ("a few files", with("Add a doc comment", 2, 0), Tier::Trivial),
            ("files and a long text", with(&long, 1, 0), Tier::Standard),
            ("criteria alone", with("Write a haiku", 0, 3), Tier::Trivial),
            ("words are matched by stem, any case", llm("ANALYSING the SECURITY model"), Tier::Complex),
        ];
        for (what, spec, expected) in cases {
            assert_eq!(infer(spec), *expected, "{what}");
        }
    }

    #[test]
    fn fallback_moves_one_tier_up_first_never_back_and_only_to_a_tier_with_a_model() {
        use Tier::*;
        let all = |_: Tier| true;
        let cases: &[(Tier, &[Tier], Option<Tier>)] = &[
            (Trivial, &[], Some(Standard)),
            (Standard, &[], Some(Complex)),
            (Standard, &[Complex], Some(Trivial)),
            (Complex, &[], Some(Standard)),
            (Standard, &[Complex, Trivial], None),
            (Complex, &[Standard], None),
        ];
        for (from, tried, expected) in cases {
            assert_eq!(fallback(*from, tried, all), *expected, "{from:?} after {tried:?}");
        }
        assert_eq!(fallback(Standard, &[], |t| t == Trivial), Some(Trivial), "no complex model: down");
        assert_eq!(fallback(Complex, &[], |_| false), None);
    }

    #[test]
    fn messages_and_verification_count_and_other_work_has_a_fixed_tier() {
        let mut spec = llm("");
        if let Work::Llm(work) = &mut spec.work {
            work.messages = vec![
                ChatMessage::new(ChatRole::User, "Plan the migration"),
                ChatMessage::new(ChatRole::Assistant, "Which one?"),
            ];
        }
        assert_eq!(infer(&spec), Tier::Complex, "plan + migrate");
        let mut spec = llm("Write a haiku");
        spec.success_criteria = vec!["three lines".into()];
        spec.verification = vec![Verification::GitClean, Verification::FileExists("x".into())];
        assert_eq!(infer(&spec), Tier::Trivial, "1 point");
        assert_eq!(infer(&TaskSpec::shell(vec!["make".into()], &SpecDefaults::default())), Tier::Trivial);
        let mut agent = llm("x");
        agent.work = Work::Agent(AgentWork {
            goal: "fix it".into(),
            repository: String::new(),
            branch: String::new(),
            fix_rounds: None,
        });
        assert_eq!(infer(&agent), Tier::Complex);
        let mut explicit = llm("Refactor everything");
        explicit.tier = Some(Tier::Trivial);
        assert_eq!(tier_of(&explicit), Tier::Trivial, "an explicit tier wins");
    }
}
