//! The decoder never panics: arbitrary bytes and damaged real lines (cut at
//! random points, bytes flipped, lone surrogate escapes and NULs injected).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::json;
use watcher::transcript::decode::{Decoder, DecoderConfig};
use watcher::transcript::fixtures as fx;
use watcher::transcript::{Source, TitleSource};

fn corpus() -> Vec<String> {
    let mut lines = vec![
        fx::user_prompt("u1", "hello <command-name>/x</command-name> 😀"),
        fx::user_prompt(
            "u2",
            "<command-name>/clear</command-name><command-args>a</command-args>",
        ),
        fx::assistant_text("a1", "m1", "text", fx::usage(1, 2, 3, 4)),
        fx::thinking("a2", "m1", "hmm", fx::usage(1, 5, 3, 4)),
        fx::tool_use(
            "a3",
            "m1",
            "t1",
            "Bash",
            json!({"command": "ls"}),
            fx::usage(1, 9, 3, 4),
        ),
        fx::tool_result("u3", "t1", "Exit code 1\n\u{1b}[31mE\u{1b}[0m", Some(true)),
        fx::title(TitleSource::CustomTitle, "t"),
        fx::compact_boundary("s1", "auto", 100),
        fx::compact_summary("u4", "This session is being continued"),
        fx::api_error_row("a4", "API Error: 529"),
        fx::queue_operation("enqueue", "queued"),
        fx::queued_command("q1", "queued"),
        fx::turn_duration("s2", 1000),
        fx::with_fields(
            &fx::user_prompt("u5", "side"),
            json!({"isSidechain": true, "agentId": "ag", "session_id": "x"}),
        ),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/session.jsonl");
    if let Ok(text) = std::fs::read_to_string(dir) {
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

fn run(d: &mut Decoder, bytes: &[u8]) {
    let _ = d.decode_line(bytes, &Source::Main);
    let _ = d.decode_line(
        bytes,
        &Source::Subagent {
            agent_id: None,
            description: None,
            workflow: None,
        },
    );
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Surrogate(usize),
    Nuls(usize, usize),
    Fuse(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Surrogate),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Nuls(i, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::Fuse(i, j)),
    ]
}

fn apply(mut line: Vec<u8>, other: &[u8], m: &Mutation) -> Vec<u8> {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match *m {
        Mutation::Truncate(i) => {
            let n = at(i, line.len());
            line.truncate(n);
        }
        Mutation::Flip(i, b) => {
            if !line.is_empty() {
                let n = i % line.len();
                line[n] = b;
            }
        }
        Mutation::Surrogate(i) => {
            let n = at(i, line.len());
            let esc: &[u8] = if i % 2 == 1 { b"\\uDE00x" } else { b"\\ud83d" };
            line.splice(n..n, esc.iter().copied());
        }
        Mutation::Nuls(i, count) => {
            let n = at(i, line.len());
            line.splice(n..n, std::iter::repeat_n(0u8, count));
        }
        Mutation::Fuse(i, j) => {
            let n = at(i, line.len());
            line.truncate(n);
            let k = at(j, other.len());
            line.extend_from_slice(&other[k..]);
        }
    }
    line
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut d = Decoder::new(DecoderConfig { dedupe_capacity: 16 });
        run(&mut d, &bytes);
    }

    #[test]
    fn mutated_real_lines_never_panic(
        pick in any::<usize>(),
        other in any::<usize>(),
        muts in proptest::collection::vec(mutation(), 1..4),
    ) {
        let corpus = corpus();
        let line = corpus[pick % corpus.len()].clone().into_bytes();
        let other = corpus[other % corpus.len()].as_bytes();
        let mut bytes = line;
        for m in &muts {
            bytes = apply(bytes, other, m);
        }
        let mut d = Decoder::new(DecoderConfig { dedupe_capacity: 16 });
        run(&mut d, &bytes);
        // A decoder that saw garbage still decodes a good line afterwards.
        let good = fx::user_prompt("after-fuzz", "still alive");
        let decoded = d.decode_line(good.as_bytes(), &Source::Main).unwrap();
        prop_assert!(!decoded.events.is_empty());
    }
}
