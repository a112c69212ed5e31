//! Keeping an agent's conversation inside its model's context window.
//!
//! The window comes from the server where it says ([`window_of`]); the conversation's size is
//! estimated from its characters ([`estimate`], on the high side: code and JSON run about three
//! characters a token), scaled by what the server counted for the last turn (a chat template
//! that renders the tools' schemas adds a lot); [`fit`] trims the oldest tool results, then drops
//! the oldest exchanges, until the conversation and a reply fit, and sizes the turn's
//! `max_tokens` to what is left. Pure apart from [`window_of`].

use agentcom_llm::chat::{self, Provider};
use agentcom_llm::tools::{Conversation, Entry};

use crate::reports::InFlight;

/// The fewest output tokens a turn is asked for while trimming can still make room.
pub const REPLY_FLOOR: u32 = 256;
/// What a trimmed tool result says in place of its content.
const TRIMMED: &str = "[trimmed to fit the context window: an earlier tool result of";
/// A tool result no longer than this is left as it is.
const SHORT: usize = 160;
/// What the goal says once earlier exchanges were dropped.
const DROPPED: &str = "\n\n[Earlier tool calls and their results were dropped to fit the context window.]";

/// The context window of `model` at `target`, when the server says it: Anthropic's models take
/// 200,000 tokens; Ollama says through `/api/show`; an OpenAI-compatible server through
/// llama.cpp's `/props` or vLLM's `max_model_len`. Asked only while nothing of this sidecar is in
/// flight there, since llama.cpp's server interrupts a generation for any request.
pub async fn window_of(
    client: &reqwest::Client,
    target: &chat::Target,
    model: &str,
    url: &str,
    in_flight: &InFlight,
) -> Option<u64> {
    match target.provider {
        Provider::Anthropic => Some(200_000),
        Provider::Ollama => agentcom_llm::ollama_context_window(client, &target.base_url, model).await,
        Provider::OpenAi if in_flight.count(url) == 0 => {
            let _asking = in_flight.enter(url);
            agentcom_llm::context_window(client, &target.base_url, target.api_key.as_deref(), model).await
        }
        Provider::OpenAi => None,
    }
}

/// Tokens the conversation takes as the server renders it, estimated high: a token per three
/// characters of every text, call and tool definition, and a few per message for its framing.
pub fn estimate(conversation: &Conversation) -> u64 {
    let chars = |text: &str| text.chars().count() as u64;
    let mut total = chars(&conversation.system);
    for tool in &conversation.tools {
        total += chars(&tool.name) + chars(&tool.description) + chars(&tool.parameters.to_string()) + 24;
    }
    let mut messages = 1;
    for entry in &conversation.entries {
        match entry {
            Entry::User(text) => {
                total += chars(text);
                messages += 1;
            }
            Entry::Assistant { text, calls } => {
                total += chars(text);
                for call in calls {
                    total += chars(&call.name) + chars(&call.arguments.to_string()) + 16;
                }
                messages += 1;
            }
            Entry::Answers(answers) => {
                for answer in answers {
                    total += chars(&answer.content) + chars(&answer.name) + 16;
                    messages += 1;
                }
            }
        }
    }
    total.div_ceil(3) + 6 * messages + 8
}

/// How far the server's count of a turn's input was above [`estimate`] (or below it, to a
/// point): the factor later estimates are scaled by. 1 until a turn has been counted.
pub fn scale(counted: u64, estimated: u64) -> f64 {
    if counted == 0 || estimated == 0 {
        return 1.0;
    }
    (counted as f64 / estimated as f64).clamp(0.8, 8.0)
}

/// Makes the conversation and its reply fit `window` tokens (a tenth kept as a margin for the
/// estimate, which is multiplied by `scale`): trims the oldest tool results first, the latest
/// last, then drops the oldest exchanges, and asks for at most what is left (between
/// [`REPLY_FLOOR`] where trimming allows and `max_reply`). Returns how many tool results it
/// trimmed, cut or dropped.
pub fn fit(conversation: &mut Conversation, window: u64, max_reply: u32, scale: f64) -> usize {
    let usable = window - window / 10;
    let mut trimmed = 0;
    loop {
        let estimated = (estimate(conversation) as f64 * scale).ceil() as u64;
        let room = usable.saturating_sub(estimated);
        if room >= u64::from(REPLY_FLOOR) || !trim_one(conversation) {
            conversation.max_tokens = u32::try_from(room).unwrap_or(u32::MAX).clamp(1, max_reply);
            return trimmed;
        }
        trimmed += 1;
    }
}

/// Trims one tool result: the oldest untrimmed one before the latest turn's answers, else halves
/// the longest of the latest answers, else drops the oldest exchange (a call and its answers)
/// before the latest, saying so after the goal. False when nothing is left to trim.
fn trim_one(conversation: &mut Conversation) -> bool {
    trim_result(conversation) || drop_exchange(conversation)
}

fn drop_exchange(conversation: &mut Conversation) -> bool {
    let entries = &mut conversation.entries;
    let answered = |at: usize, entries: &[Entry]| {
        matches!(entries.get(at), Some(Entry::Assistant { .. }))
            && matches!(entries.get(at + 1), Some(Entry::Answers(_)))
    };
    let exchanges = (0..entries.len()).filter(|&at| answered(at, entries)).count();
    let Some(oldest) = (0..entries.len()).find(|&at| answered(at, entries)) else { return false };
    if exchanges < 2 {
        return false; // The latest exchange is what the next reply answers.
    }
    entries.drain(oldest..oldest + 2);
    if let Some(Entry::User(goal)) = entries.first_mut()
        && !goal.ends_with(DROPPED)
    {
        goal.push_str(DROPPED);
    }
    true
}

fn trim_result(conversation: &mut Conversation) -> bool {
    let turns: Vec<usize> = conversation
        .entries
        .iter()
        .enumerate()
        .filter_map(|(at, entry)| matches!(entry, Entry::Answers(_)).then_some(at))
        .collect();
    let Some((&latest, earlier)) = turns.split_last() else { return false };
    for &at in earlier {
        let Entry::Answers(answers) = &mut conversation.entries[at] else { continue };
        if let Some(answer) = answers.iter_mut().find(|a| a.content.len() > SHORT && !a.content.starts_with(TRIMMED)) {
            answer.content = format!("{TRIMMED} {} bytes]", answer.content.len());
            return true;
        }
    }
    let Entry::Answers(answers) = &mut conversation.entries[latest] else { return false };
    let Some(longest) = answers.iter_mut().filter(|a| a.content.len() > SHORT).max_by_key(|a| a.content.len()) else {
        return false;
    };
    let mut keep = longest.content.len() / 2;
    while !longest.content.is_char_boundary(keep) {
        keep -= 1;
    }
    longest.content.truncate(keep);
    longest.content.push_str("\n[cut to fit the context window]");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcom_llm::tools::{Answer, Call, Tool};
    use serde_json::json;

    fn conversation(results: &[usize]) -> Conversation {
        let mut entries = vec![Entry::User("make the test pass".into())];
        for (n, &bytes) in results.iter().enumerate() {
            let id = format!("c{n}");
            let call = Call { id: id.clone(), name: "read_file".into(), arguments: json!({"path": "src/lib.rs"}) };
            entries.push(Entry::Assistant { text: String::new(), calls: vec![call] });
            let answer = Answer { call_id: id, name: "read_file".into(), content: "x".repeat(bytes), is_error: false };
            entries.push(Entry::Answers(vec![answer]));
        }
        let tool =
            Tool { name: "read_file".into(), description: "read a file".into(), parameters: json!({"type": "object"}) };
        Conversation { model: "m".into(), system: "be brief".into(), entries, tools: vec![tool], max_tokens: 4096 }
    }

    fn answer(conversation: &Conversation, turn: usize) -> &str {
        match &conversation.entries[2 + 2 * turn] {
            Entry::Answers(answers) => &answers[0].content,
            other => panic!("not answers: {other:?}"),
        }
    }

    #[test]
    fn a_conversation_that_fits_is_left_alone_and_asks_for_what_is_left() {
        let mut small = conversation(&[300, 300]);
        assert_eq!(fit(&mut small, 100_000, 4096, 1.0), 0);
        assert_eq!(small.max_tokens, 4096, "room enough: the turn's own cap");
        let mut tight = conversation(&[300]);
        assert_eq!(fit(&mut tight, 2048, 4096, 1.0), 0);
        let left = 2048 - 2048 / 10 - estimate(&tight);
        assert_eq!(u64::from(tight.max_tokens), left, "never more than the window leaves");
        assert!(estimate(&tight) + u64::from(tight.max_tokens) <= 2048);
    }

    #[test]
    fn the_oldest_tool_results_go_first_and_the_latest_is_cut_last() {
        let mut long = conversation(&[3000, 3000, 5000]);
        let before = estimate(&long);
        assert!(before > 2048, "{before}");
        let trimmed = fit(&mut long, 2048, 4096, 1.0);
        assert!(trimmed >= 2, "{trimmed}");
        assert!(answer(&long, 0).starts_with(TRIMMED) && answer(&long, 1).starts_with(TRIMMED));
        assert!(estimate(&long) + u64::from(long.max_tokens) <= 2048, "the conversation and its reply fit");
        assert!(long.max_tokens >= REPLY_FLOOR);
        // The latest result is kept in part, its start first.
        assert!(answer(&long, 2).starts_with("xxx") && answer(&long, 2).ends_with("[cut to fit the context window]"));
        // Nothing left to trim: the reply gets what little room there is.
        let mut hopeless = conversation(&[]);
        hopeless.system = "s".repeat(10_000);
        assert_eq!(fit(&mut hopeless, 2048, 4096, 1.0), 0);
        assert_eq!(hopeless.max_tokens, 1);
    }

    #[test]
    fn many_small_exchanges_are_dropped_oldest_first_once_nothing_is_left_to_trim() {
        let mut chatty = conversation(&[100; 40]);
        let before = chatty.entries.len();
        let dropped = fit(&mut chatty, 2048, 4096, 1.0);
        assert!(dropped > 0 && chatty.entries.len() == before - 2 * dropped, "{dropped}");
        assert!(estimate(&chatty) + u64::from(chatty.max_tokens) <= 2048);
        // The goal stays first and says what happened; calls and their answers stay paired.
        match &chatty.entries[0] {
            Entry::User(goal) => assert!(goal.starts_with("make the test pass") && goal.ends_with(DROPPED), "{goal}"),
            other => panic!("{other:?}"),
        }
        for pair in chatty.entries[1..].chunks(2) {
            assert!(matches!(pair, [Entry::Assistant { .. }, Entry::Answers(_)]), "{pair:?}");
        }
        // A server that counts twice the estimate: the same window holds half as much.
        let raw = estimate(&conversation(&[100; 40]));
        let mut counted = conversation(&[100; 40]);
        let at_scale = fit(&mut counted, 2048, 4096, scale(2 * raw, raw));
        assert!(at_scale > dropped, "{at_scale} > {dropped}");
        assert_eq!((scale(0, 10), scale(5, 10), scale(30, 10)), (1.0, 0.8, 3.0));
    }

    #[test]
    fn estimates_grow_with_every_part_of_the_conversation() {
        let base = estimate(&conversation(&[]));
        assert!(estimate(&conversation(&[30])) > base);
        let mut with_tools = conversation(&[]);
        with_tools.tools.push(with_tools.tools[0].clone());
        assert!(estimate(&with_tools) > base);
        // Multibyte text counts by characters.
        let mut text = conversation(&[]);
        text.entries.push(Entry::User("é".repeat(300)));
        assert_eq!(estimate(&text), base + 100 + 6);
    }
}
