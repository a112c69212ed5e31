//! The rules, one ecosystem at a time. Precedence, as buildpacks have it: a Procfile names the
//! services; else a Makefile's run target; else each language's entry point. A Makefile's
//! install target sets the repository up; else each language's package manager does.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::scan::Repo;
use super::{Dependency, EnvVar, Health, Plan, Service, Source, Stack, Step};

const SOURCES: &[&str] = &[".py", ".js", ".mjs", ".cjs", ".ts", ".go", ".rs", ".rb"];
const ENV_EXAMPLES: &[&str] = &[".env.example", ".env.sample", ".env.template", "example.env", ".env.dist"];
const COMPOSE: &[&str] = &["docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml"];
const MAKE_INSTALL: &[&str] = &["install", "setup", "deps", "bootstrap"];
const MAKE_RUN: &[&str] = &["run", "start", "serve", "dev", "up"];
const PYTHON_ENTRIES: &[&str] = &["app.py", "main.py", "server.py", "run.py", "wsgi.py"];

/// A variable a program reads its port from: `os.environ["PORT"]`, `process.env.APP_PORT`,
/// `os.Getenv("HTTP_PORT")`, `env::var("PORT")`, `$PORT` in a command.
static PORT_VAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?:environ(?:\.get)?\s*[\[(]\s*|getenv\(\s*|Getenv\(\s*|env::var\(\s*|process\.env\.|process\.env\[\s*|ENV\[\s*|\$\{?)["']?([A-Z0-9_]*PORT[A-Z0-9_]*)"#,
    )
    .expect("a valid pattern")
});
/// A health route named in the code, most specific first by the order of `HEALTH_PATHS`.
static HEALTH_ROUTE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"["'`](/(?:healthz|health|readyz|ready|livez|status|ping)(?:/[a-z]+)?)["'`?]"#)
        .expect("a valid pattern")
});
static MAKE_TARGET: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:([^=]|$)").expect("a valid pattern"));
static PROCFILE_LINE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([A-Za-z0-9_-]+)\s*:\s*(.+)$").expect("a valid pattern"));

pub(super) fn apply(repo: &Repo, plan: &mut Plan) {
    env_examples(repo, plan);
    compose(repo, plan);
    let make = makefile(repo, plan);
    let python = python(repo, plan);
    let node = node(repo, plan);
    let rust = rust(repo, plan);
    let go = go(repo, plan);
    if let Some((target, evidence)) = make.as_ref().and_then(|m| m.install.clone()) {
        plan.install.push(Step { run: format!("make {target}"), source: Source::Rules, evidence });
    } else {
        for lang in [&python, &node, &rust, &go].into_iter().flatten() {
            plan.install.extend(lang.install.iter().map(|(run, evidence)| Step {
                run: run.clone(),
                source: Source::Rules,
                evidence: evidence.clone(),
            }));
        }
    }
    if !procfile(repo, plan) {
        if let Some((target, evidence)) = make.as_ref().and_then(|m| m.run.clone()) {
            plan.services.push(web(format!("make {target}"), evidence));
        } else if let Some((run, evidence)) =
            [&python, &node, &rust, &go].into_iter().flatten().find_map(|lang| lang.service.clone())
        {
            plan.services.push(web(run, evidence));
        }
    }
    for index in 0..plan.services.len() {
        ports_and_health(repo, plan, index);
    }
}

fn web(run: String, evidence: String) -> Service {
    Service {
        name: "web".to_owned(),
        run,
        ports: vec!["web".to_owned()],
        port_env: None,
        health: None,
        source: Source::Rules,
        evidence,
    }
}

/// What a language's rules found: how to install it, and its entry point as a service.
struct Lang {
    install: Vec<(String, String)>,
    service: Option<(String, String)>,
}

fn python(repo: &Repo, plan: &mut Plan) -> Option<Lang> {
    let pyproject = repo.text("pyproject.toml").and_then(|t| t.parse::<toml::Table>().ok());
    let poetry = repo.has("poetry.lock") || pyproject.as_ref().is_some_and(|p| has_path(p, &["tool", "poetry"]));
    let project = pyproject.as_ref().is_some_and(|p| p.contains_key("project"));
    let (manager, evidence, install, python) = if repo.has("uv.lock") {
        ("uv", "uv.lock", Some("uv sync".to_owned()), "uv run python")
    } else if poetry {
        let evidence = if repo.has("poetry.lock") { "poetry.lock" } else { "pyproject.toml [tool.poetry]" };
        ("poetry", evidence, Some("poetry install".to_owned()), "poetry run python")
    } else if repo.has("requirements.txt") {
        let run = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt";
        ("pip", "requirements.txt", Some(run.to_owned()), ".venv/bin/python")
    } else if project {
        let run = "python3 -m venv .venv && .venv/bin/pip install -e .";
        ("pip", "pyproject.toml [project]", Some(run.to_owned()), ".venv/bin/python")
    } else if repo.sources(&[".py"]).next().is_some() {
        // Python with nothing to install: the standard library only.
        ("pip", "*.py, no requirements", None, "python3")
    } else {
        return None;
    };
    plan.stacks.push(Stack { name: "python", manager: Some(manager), evidence: evidence.to_owned() });
    let install = install.map(|run| (run, evidence.to_owned())).into_iter().collect();
    let service = if repo.has("manage.py") {
        Some((format!("{python} manage.py runserver 0.0.0.0:$PORT"), "manage.py (Django)".to_owned()))
    } else {
        PYTHON_ENTRIES.iter().find_map(|file| {
            let text = repo.text(file)?;
            let module = file.trim_end_matches(".py");
            if text.contains("__name__ == \"__main__\"") || text.contains("__name__ == '__main__'") {
                Some((format!("{python} {file}"), format!("{file}: __main__")))
            } else if text.contains("FastAPI(") {
                let run = format!("{python} -m uvicorn {module}:app --host 0.0.0.0 --port $PORT");
                Some((run, format!("{file}: FastAPI")))
            } else if text.contains("Flask(") {
                let run = format!("{python} -m flask --app {module} run --host 0.0.0.0 --port $PORT");
                Some((run, format!("{file}: Flask")))
            } else {
                None
            }
        })
    };
    Some(Lang { install, service })
}

fn node(repo: &Repo, plan: &mut Plan) -> Option<Lang> {
    let package: Value = serde_json::from_str(&repo.text("package.json")?).ok()?;
    let (manager, evidence, install) = if repo.has("pnpm-lock.yaml") {
        ("pnpm", "pnpm-lock.yaml", "pnpm install --frozen-lockfile")
    } else if repo.has("yarn.lock") {
        ("yarn", "yarn.lock", "yarn install --frozen-lockfile")
    } else if repo.has("package-lock.json") {
        ("npm", "package-lock.json", "npm ci")
    } else {
        ("npm", "package.json", "npm install")
    };
    plan.stacks.push(Stack { name: "node", manager: Some(manager), evidence: evidence.to_owned() });
    let scripts = &package["scripts"];
    let service = if scripts["start"].is_string() {
        Some((format!("{manager} start"), "package.json scripts.start".to_owned()))
    } else if scripts["dev"].is_string() {
        Some((format!("{manager} run dev"), "package.json scripts.dev".to_owned()))
    } else {
        package["main"].as_str().filter(|m| repo.has(m)).map(|m| (format!("node {m}"), "package.json main".to_owned()))
    };
    Some(Lang { install: vec![(install.to_owned(), evidence.to_owned())], service })
}

fn rust(repo: &Repo, plan: &mut Plan) -> Option<Lang> {
    let manifest = repo.text("Cargo.toml")?.parse::<toml::Table>().ok()?;
    plan.stacks.push(Stack { name: "rust", manager: Some("cargo"), evidence: "Cargo.toml".to_owned() });
    let deps = manifest.get("dependencies").and_then(toml::Value::as_table);
    let server = ["axum", "actix-web", "rocket", "warp", "hyper", "poem", "tide", "salvo"]
        .into_iter()
        .find(|name| deps.is_some_and(|d| d.contains_key(*name)));
    let binary = repo.has("src/main.rs") || manifest.contains_key("bin");
    let service = match (binary, server) {
        (true, Some(server)) => Some(("cargo run --release".to_owned(), format!("Cargo.toml: {server}"))),
        (true, None) => {
            plan.notes.push(
                "Cargo.toml: a binary with no web framework among its dependencies: not taken as a service".into(),
            );
            None
        }
        _ => None,
    };
    Some(Lang { install: vec![("cargo build --release".to_owned(), "Cargo.toml".to_owned())], service })
}

fn go(repo: &Repo, plan: &mut Plan) -> Option<Lang> {
    if !repo.has("go.mod") {
        return None;
    }
    plan.stacks.push(Stack { name: "go", manager: Some("go"), evidence: "go.mod".to_owned() });
    let main = repo.sources(&[".go"]).filter(|f| !f.contains('/')).find(|f| {
        repo.text(f)
            .is_some_and(|t| t.contains("package main") && (t.contains("ListenAndServe") || t.contains("net.Listen")))
    });
    let service = main.map(|file| ("go run .".to_owned(), format!("{file}: package main, listens")));
    Some(Lang { install: vec![("go build ./...".to_owned(), "go.mod".to_owned())], service })
}

/// A Makefile's install and run targets, each with its evidence.
struct Make {
    install: Option<(String, String)>,
    run: Option<(String, String)>,
}

fn makefile(repo: &Repo, plan: &mut Plan) -> Option<Make> {
    let file = repo.first_of(&["Makefile", "makefile", "GNUmakefile"])?;
    let text = repo.text(file)?;
    let targets: Vec<(String, usize)> = text
        .lines()
        .enumerate()
        .filter_map(|(n, line)| Some((MAKE_TARGET.captures(line)?[1].to_owned(), n + 1)))
        .collect();
    let pick = |names: &[&str]| {
        names.iter().find_map(|name| {
            let (_, line) = targets.iter().find(|(t, _)| t == name)?;
            Some(((*name).to_owned(), format!("{file}:{line}: {name}")))
        })
    };
    let make = Make { install: pick(MAKE_INSTALL), run: pick(MAKE_RUN) };
    if make.install.is_some() || make.run.is_some() {
        plan.stacks.push(Stack { name: "make", manager: Some("make"), evidence: file.to_owned() });
    }
    Some(make)
}

/// A Procfile's processes as services; false when there is none.
fn procfile(repo: &Repo, plan: &mut Plan) -> bool {
    let Some(text) = repo.text("Procfile") else { return false };
    let mut found = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let Some(process) = PROCFILE_LINE.captures(line).filter(|_| !line.starts_with('#')) else { continue };
        let (name, run) = (process[1].to_owned(), process[2].trim().to_owned());
        // Heroku's convention: `web` gets the port; another process does when its command asks.
        let ports = if name == "web" || run.contains("$PORT") { vec![name.clone()] } else { Vec::new() };
        let evidence = format!("Procfile:{}", n + 1);
        plan.services.push(Service { name, run, ports, port_env: None, health: None, source: Source::Rules, evidence });
        found = true;
    }
    if found {
        plan.stacks.push(Stack { name: "procfile", manager: None, evidence: "Procfile".to_owned() });
    }
    found
}

/// The file a service's command runs, when it names one of the repository's (`python app.py`).
fn entry_file<'a>(repo: &Repo, run: &'a str) -> Option<&'a str> {
    run.split_whitespace().find(|word| SOURCES.iter().any(|e| word.ends_with(e)) && repo.has(word))
}

/// The variable a service's port is read from, and how to tell it is ready.
fn ports_and_health(repo: &Repo, plan: &mut Plan, index: usize) {
    let service = &plan.services[index];
    let Some(port) = service.ports.first().cloned() else { return };
    let entry = entry_file(repo, &service.run).map(str::to_owned);
    let in_command = PORT_VAR.captures(&service.run).map(|c| c[1].to_owned());
    let in_code = || -> Option<String> {
        if let Some(file) = &entry {
            let text = repo.text(file)?;
            return text.lines().find_map(|line| Some(PORT_VAR.captures(line)?[1].to_owned()));
        }
        repo.find(SOURCES, &PORT_VAR).map(|(_, _, groups)| groups[0].clone())
    };
    let var = in_command.or_else(in_code);
    let name = service.name.clone();
    let route = match &entry {
        Some(file) => repo.text(file).and_then(|text| {
            text.lines()
                .enumerate()
                .find_map(|(n, line)| Some((file.clone(), n + 1, HEALTH_ROUTE.captures(line)?[1].to_owned())))
        }),
        None => repo.find(SOURCES, &HEALTH_ROUTE).map(|(file, line, groups)| (file, line, groups[0].clone())),
    };
    let service = &mut plan.services[index];
    match var.as_deref() {
        Some("PORT") => {}
        Some(other) => service.port_env = Some(other.to_owned()),
        None => plan
            .notes
            .push(format!("service {name}: no port variable found in its code; it may listen on a fixed port")),
    }
    let service = &mut plan.services[index];
    service.health = Some(match route {
        Some((file, line, path)) => Health::Http { port, path, evidence: format!("{file}:{line}") },
        None => Health::Tcp { port },
    });
}

fn env_examples(repo: &Repo, plan: &mut Plan) {
    let Some(file) = repo.first_of(ENV_EXAMPLES) else { return };
    let Some(text) = repo.text(file) else { return };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else { continue };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
        let evidence = format!("{file}:{}", n + 1);
        let upper = name.to_ascii_uppercase();
        let secret = ["KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL"].iter().any(|s| upper.contains(s));
        if let Some(kind) = dependency_of_url(&value) {
            add_dependency(plan, kind, None, format!("{evidence}: {name}"));
        }
        let example = (!secret && !value.is_empty()).then_some(value);
        plan.env.push(EnvVar { name: name.to_owned(), example, secret, evidence });
    }
}

fn compose(repo: &Repo, plan: &mut Plan) {
    let Some(file) = repo.first_of(COMPOSE) else { return };
    let Some(doc) = repo.text(file).and_then(|t| serde_saphyr::from_str::<Value>(&t).ok()) else {
        plan.notes.push(format!("{file}: not a compose file the rules can read"));
        return;
    };
    for (name, service) in doc["services"].as_object().into_iter().flatten() {
        match service["image"].as_str() {
            Some(image) => match dependency_of_image(image) {
                Some(kind) => add_dependency(plan, kind, Some(image.to_owned()), format!("{file}: services.{name}")),
                None => plan.notes.push(format!("{file}: services.{name} runs {image}: not a known dependency")),
            },
            None => plan.notes.push(format!("{file}: services.{name} is built from the repository")),
        }
    }
}

fn add_dependency(plan: &mut Plan, kind: &'static str, image: Option<String>, evidence: String) {
    if !plan.dependencies.iter().any(|d| d.kind == kind) {
        plan.dependencies.push(Dependency { kind, image, evidence });
    }
}

fn dependency_of_image(image: &str) -> Option<&'static str> {
    let name = image.rsplit('/').next().unwrap_or(image).split(':').next().unwrap_or(image);
    [
        ("postgres", "postgres"),
        ("postgis", "postgres"),
        ("mysql", "mysql"),
        ("mariadb", "mysql"),
        ("redis", "redis"),
        ("valkey", "redis"),
        ("mongo", "mongodb"),
        ("rabbitmq", "rabbitmq"),
        ("memcached", "memcached"),
    ]
    .into_iter()
    .find(|(prefix, _)| name.starts_with(prefix))
    .map(|(_, kind)| kind)
}

fn dependency_of_url(value: &str) -> Option<&'static str> {
    let scheme = value.split_once("://")?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "postgres" | "postgresql" => Some("postgres"),
        "mysql" | "mariadb" => Some("mysql"),
        "redis" | "rediss" => Some("redis"),
        "mongodb" | "mongodb+srv" => Some("mongodb"),
        "amqp" | "amqps" => Some("rabbitmq"),
        _ => None,
    }
}

fn has_path(table: &toml::Table, path: &[&str]) -> bool {
    let mut value = table.get(path[0]);
    for key in &path[1..] {
        value = value.and_then(|v| v.get(key));
    }
    value.is_some()
}
