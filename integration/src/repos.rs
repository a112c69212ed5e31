//! Fixture repositories for the repository runner's tests, written into a directory by the
//! test (no network needed to run them): real programs on Python's standard library.

use std::path::{Path, PathBuf};

/// A web app on the standard library: `GET /health` answers 200 on `$PORT`.
pub const STDLIB_WEB: &[(&str, &str)] = &[
    ("README.md", "# hello\n\nA web app on Python's standard library.\n"),
    (
        "app.py",
        r#"import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path in ("/", "/health") else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok\n" if code == 200 else b"not found\n")


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#,
    ),
];

/// Two services from a Procfile: `worker` answers on its own port, `web` (on `APP_PORT`) asks
/// it at `WORKER_URL` and serves `/healthz` once the worker answers.
pub const TWO_SERVICES: &[(&str, &str)] = &[
    ("Procfile", "web: python3 web.py\nworker: python3 worker.py --port $PORT\n"),
    ("requirements.txt", "# the standard library is enough\n"),
    (".env.example", "WORKER_URL=http://127.0.0.1:8001\nSECRET_KEY=change-me\n"),
    (
        "worker.py",
        r#"import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"42\n")


if __name__ == "__main__":
    port = int(sys.argv[sys.argv.index("--port") + 1])
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#,
    ),
    (
        "web.py",
        r#"import os
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            answer = urllib.request.urlopen(os.environ["WORKER_URL"], timeout=2).read()
            code = 200 if self.path in ("/", "/healthz") else 404
        except OSError as err:
            answer, code = str(err).encode() + b"\n", 503
        self.send_response(code)
        self.end_headers()
        self.wfile.write(answer)


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", int(os.environ.get("APP_PORT", "8000"))), Handler).serve_forever()
"#,
    ),
];

/// A repository driven by its Makefile: `make install` writes a marker, `make run` serves
/// `/ready` on `$PORT`.
pub const MAKEFILE: &[(&str, &str)] = &[
    (
        "Makefile",
        ".PHONY: install run\n\ninstall:\n\tmkdir -p build-out && echo installed > build-out/marker\n\nrun: \n\tpython3 serve.py\n",
    ),
    (
        "serve.py",
        r#"import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()


HTTPServer(("127.0.0.1", int(os.getenv("PORT", "8080"))), Handler).serve_forever()
"#,
    ),
];

/// A web app whose start command is broken: its Procfile gives it a port of its own (8099)
/// instead of the one in `$PORT`, so its health check on `$PORT` never answers. The rules cannot
/// see that (the command reads no port variable); the fix is `--port $PORT`.
pub const BROKEN: &[(&str, &str)] = &[
    ("Procfile", "web: python3 server.py --port 8099\n"),
    (
        "server.py",
        r#"import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")


port = int(sys.argv[sys.argv.index("--port") + 1])
print(f"listening on {port}", flush=True)
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#,
    ),
];

/// A repository the rules cannot read: no Procfile, Makefile or language entry point, only a
/// script its README names. A model has to propose how to run it.
pub const NO_RULES: &[(&str, &str)] = &[
    ("README.md", "# notes\n\nStart it with `sh serve.sh`: it serves the directory on $PORT.\n"),
    ("serve.sh", "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1\n"),
];

/// Writes `files` into `dir/name` and returns that directory.
pub fn write(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = dir.join(name);
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a file has a parent")).expect("making the directory");
        std::fs::write(&path, text).expect("writing the file");
    }
    root
}

/// Writes `files` into `dir/name` as a git repository with one commit on `main`; returns it.
pub fn commit(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = write(dir, name, files);
    crate::process::git(&root, &["init", "--quiet", "--initial-branch=main"]);
    crate::process::git(&root, &["add", "--all"]);
    crate::process::git(&root, &["commit", "--quiet", "-m", "the fixture"]);
    root
}
