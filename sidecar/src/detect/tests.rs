use std::path::Path;

use serde_json::{Value, json};

use super::detect;

fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn plan(dir: &Path) -> Value {
    serde_json::to_value(detect(dir).unwrap()).unwrap()
}

const STDLIB_APP: &str = r#"import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            self.send_response(200)
            self.end_headers()

if __name__ == "__main__":
    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

#[test]
fn a_python_app_on_the_standard_library_is_a_web_service_with_its_health_route() {
    let dir = repo(&[("app.py", STDLIB_APP), ("README.md", "hello")]);
    let plan = plan(dir.path());
    assert_eq!(plan["stacks"], json!([{"name": "python", "manager": "pip", "evidence": "*.py, no requirements"}]));
    assert_eq!(plan["install"], json!([]), "nothing to install");
    assert_eq!(
        plan["services"],
        json!([{
            "name": "web", "run": "python3 app.py", "ports": ["web"], "port_env": null,
            "health": {"kind": "http", "port": "web", "path": "/health", "evidence": "app.py:6"},
            "source": "rules", "evidence": "app.py: __main__",
        }])
    );
    assert_eq!(plan["needs_model"], false);
    assert_eq!(plan["notes"], json!([]), "its code reads PORT");
}

#[test]
fn a_procfile_names_the_services_and_requirements_install_into_a_virtual_environment() {
    let web = "import os\nport = int(os.environ.get('APP_PORT', '8000'))\nROUTES = {'/healthz': 'ok'}\n";
    let dir = repo(&[
        ("Procfile", "# processes\nweb: .venv/bin/python web.py\nworker: .venv/bin/python worker.py\n"),
        ("requirements.txt", "requests==2.32.3\n"),
        ("web.py", web),
        ("worker.py", "import time\n"),
    ]);
    let plan = plan(dir.path());
    let install = &plan["install"][0];
    assert_eq!(install["run"], "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt");
    assert_eq!(install["evidence"], "requirements.txt");
    let services = plan["services"].as_array().unwrap();
    assert_eq!(services.len(), 2, "{plan:#}");
    assert_eq!(services[0]["name"], "web");
    assert_eq!(services[0]["evidence"], "Procfile:2");
    assert_eq!(services[0]["port_env"], "APP_PORT", "its code reads APP_PORT");
    assert_eq!(services[0]["health"]["path"], "/healthz");
    assert_eq!((services[1]["name"].as_str(), &services[1]["ports"]), (Some("worker"), &json!([])));
    assert_eq!(services[1]["health"], Value::Null, "a worker has no port to probe");
    let stacks: Vec<&str> = plan["stacks"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stacks, ["python", "procfile"]);
}

#[test]
fn a_makefile_installs_and_runs_before_the_language_rules() {
    let dir = repo(&[
        (
            "Makefile",
            "VERSION := 1\n.PHONY: install run\ninstall:\n\tpip install -r requirements.txt\nrun: install\n\tpython3 server.py\n",
        ),
        ("requirements.txt", ""),
        ("server.py", "import os\nPORT = os.getenv('PORT')\n# GET /ready answers 200\npath = '/ready'\n"),
    ]);
    let plan = plan(dir.path());
    assert_eq!(plan["install"], json!([{"run": "make install", "source": "rules", "evidence": "Makefile:3: install"}]));
    assert_eq!(plan["services"][0]["run"], "make run");
    assert_eq!(plan["services"][0]["evidence"], "Makefile:5: run");
    assert_eq!(plan["services"][0]["health"]["path"], "/ready", "found in the sources: {plan:#}");
    assert_eq!(plan["services"][0]["port_env"], Value::Null);
}

#[test]
fn node_uses_its_lockfiles_manager_and_the_environment_example_names_dependencies_and_secrets() {
    let dir = repo(&[
        ("package.json", r#"{"name": "x", "scripts": {"start": "node index.js", "test": "jest"}}"#),
        ("pnpm-lock.yaml", "lockfileVersion: 9\n"),
        ("index.js", "const port = process.env.PORT || 3000;\napp.get('/health', ok);\n"),
        (
            ".env.example",
            "# the database\nDATABASE_URL=postgres://app@localhost/app\nexport API_KEY=\"change-me\"\nDEBUG=1\n",
        ),
        ("docker-compose.yml", "services:\n  cache:\n    image: redis:7-alpine\n  app:\n    build: .\n"),
    ]);
    let plan = plan(dir.path());
    assert_eq!(plan["stacks"][0], json!({"name": "node", "manager": "pnpm", "evidence": "pnpm-lock.yaml"}));
    assert_eq!(plan["install"][0]["run"], "pnpm install --frozen-lockfile");
    assert_eq!(plan["services"][0]["run"], "pnpm start");
    assert_eq!(plan["services"][0]["health"]["path"], "/health");
    let kinds: Vec<&str> =
        plan["dependencies"].as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["postgres", "redis"]);
    assert_eq!(plan["dependencies"][1]["image"], "redis:7-alpine");
    let key = plan["env"].as_array().unwrap().iter().find(|e| e["name"] == "API_KEY").unwrap();
    assert_eq!(
        (key["secret"].as_bool(), &key["example"]),
        (Some(true), &Value::Null),
        "a secret's example is left out"
    );
    assert!(plan["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("services.app is built")));
}

#[test]
fn rust_and_go_servers_are_services_and_a_rust_cli_is_not() {
    let server = repo(&[
        ("Cargo.toml", "[package]\nname = \"s\"\nversion = \"0.1.0\"\n\n[dependencies]\naxum = \"0.8\"\n"),
        ("src/main.rs", "fn main() { let port = std::env::var(\"HTTP_PORT\"); }\n"),
    ]);
    let plan_server = plan(server.path());
    assert_eq!(plan_server["install"][0]["run"], "cargo build --release");
    assert_eq!(plan_server["services"][0]["run"], "cargo run --release");
    assert_eq!(plan_server["services"][0]["port_env"], "HTTP_PORT");
    assert_eq!(plan_server["services"][0]["health"], json!({"kind": "tcp", "port": "web"}), "no route found: tcp");

    let cli =
        repo(&[("Cargo.toml", "[package]\nname = \"c\"\nversion = \"0.1.0\"\n"), ("src/main.rs", "fn main() {}\n")]);
    let plan_cli = plan(cli.path());
    assert_eq!(plan_cli["services"], json!([]));
    assert_eq!(plan_cli["needs_model"], true, "no service: a model should propose one");

    let go = repo(&[
        ("go.mod", "module example.com/x\n\ngo 1.22\n"),
        (
            "main.go",
            "package main\n\nfunc main() {\n\thttp.HandleFunc(\"/healthz\", ok)\n\thttp.ListenAndServe(\":\"+os.Getenv(\"PORT\"), nil)\n}\n",
        ),
    ]);
    let plan_go = plan(go.path());
    assert_eq!(plan_go["install"][0]["run"], "go build ./...");
    assert_eq!(plan_go["services"][0]["run"], "go run .");
    assert_eq!(plan_go["services"][0]["health"]["evidence"], "main.go:4");
}

#[test]
fn uv_and_poetry_run_python_through_their_manager_and_dependencies_are_not_walked() {
    let uv = repo(&[
        ("pyproject.toml", "[project]\nname = \"x\"\n"),
        ("uv.lock", ""),
        ("main.py", "from fastapi import FastAPI\napp = FastAPI()\n"),
        ("node_modules/left-pad/index.js", "process.env.WRONG_PORT"),
        (".venv/lib/site.py", "'/healthz'"),
    ]);
    let plan_uv = plan(uv.path());
    assert_eq!(plan_uv["install"][0]["run"], "uv sync");
    assert_eq!(plan_uv["services"][0]["run"], "uv run python -m uvicorn main:app --host 0.0.0.0 --port $PORT");
    assert_eq!(plan_uv["services"][0]["port_env"], Value::Null, "$PORT in its command");
    assert_eq!(plan_uv["services"][0]["health"]["kind"], "tcp", "nothing under .venv or node_modules is read");

    let poetry = repo(&[
        ("pyproject.toml", "[tool.poetry]\nname = \"x\"\n"),
        ("app.py", "from flask import Flask\napp = Flask(__name__)\n"),
    ]);
    let plan_poetry = plan(poetry.path());
    assert_eq!(plan_poetry["install"][0]["run"], "poetry install");
    assert_eq!(
        plan_poetry["services"][0]["run"],
        "poetry run python -m flask --app app run --host 0.0.0.0 --port $PORT"
    );
}

#[test]
fn an_empty_repository_asks_for_a_model_and_a_file_is_not_a_repository() {
    let empty = repo(&[]);
    let plan = plan(empty.path());
    assert_eq!(plan["needs_model"], true);
    assert_eq!(plan["notes"], json!(["the rules found no service to start"]));
    let file = empty.path().join("f");
    std::fs::write(&file, "").unwrap();
    assert!(detect(&file).unwrap_err().to_string().contains("is not a directory"));
}

#[test]
fn the_same_files_give_the_same_plan() {
    let dir = repo(&[("app.py", STDLIB_APP), ("Procfile", "web: python3 app.py\n"), ("requirements.txt", "")]);
    assert_eq!(detect(dir.path()).unwrap(), detect(dir.path()).unwrap());
}
