//! The crate diagram in `docs/ARCHITECTURE.md` is the crates' real dependencies: this fails when
//! a crate gains (or loses) a dependency on another of ours that the diagram does not show.

#![allow(clippy::disallowed_methods)] // Reason: runs `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The diagram: the fenced block after `<!-- crate diagram -->`, one crate a line with the
/// crates it depends on (`-` for none).
fn diagram(text: &str) -> Graph {
    let after = text.split("<!-- crate diagram -->").nth(1).expect("ARCHITECTURE.md has a crate diagram");
    let block = after.split("```").nth(1).expect("the diagram is a fenced block");
    let mut graph = Graph::new();
    for line in block.lines().skip(1).filter(|line| !line.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let name = words.next().expect("a crate name").to_owned();
        let deps = words.filter(|word| *word != "-").map(str::to_owned).collect();
        assert!(graph.insert(name.clone(), deps).is_none(), "{name} is in the diagram twice");
    }
    graph
}

/// What the workspace's manifests say: each member with the members it depends on (normal and
/// build dependencies; tests' own are their business).
fn manifests(root: &Path) -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root)
        .output()
        .expect("running cargo metadata");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut graph = Graph::new();
    for package in packages {
        let deps = package["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|dep| dep["kind"].is_null() || dep["kind"] == "build")
            .filter_map(|dep| dep["name"].as_str())
            .filter(|name| members.contains(name))
            .map(str::to_owned)
            .collect();
        graph.insert(package["name"].as_str().expect("a name").to_owned(), deps);
    }
    graph
}

#[test]
fn the_crate_diagram_matches_the_manifests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("reading ARCHITECTURE.md");
    let (drawn, real) = (diagram(&text), manifests(root));
    let mut wrong = Vec::new();
    for name in drawn.keys().chain(real.keys()).collect::<BTreeSet<_>>() {
        let (shown, has) = (drawn.get(name), real.get(name));
        if shown != has {
            wrong.push(format!("{name}: the diagram shows {shown:?}, the manifests say {has:?}"));
        }
    }
    assert!(wrong.is_empty(), "docs/ARCHITECTURE.md's crate diagram is out of date:\n{}", wrong.join("\n"));
}

#[test]
fn libraries_do_not_depend_on_the_binaries_crates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let real = manifests(root);
    // The link and the LLM clients stand below the hub and the sidecar; `llm` needs no link.
    for (library, forbidden) in [
        ("agentcom-llm", "agentcom-link"),
        ("agentcom-llm", "agentcom-sidecar"),
        ("agentcom-link", "agentcom-hub"),
        ("agentcom-hub", "agentcom-sidecar"),
        ("agentcom-process", "agentcom-link"),
    ] {
        assert!(!real[library].contains(forbidden), "{library} depends on {forbidden}");
    }
}
