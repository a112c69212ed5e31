//! Token roles end to end: every route of the HTTP API and the admin gRPC service against every
//! role (admin, operator, submitter, viewer, join), a refusal always 403 with the JSON error; the
//! audit log of admin actions; revocation.

use std::time::Duration;

use agentcom_integration::{Api, TestMesh, assert_eventually, shell};
use agentcom_proto::v1 as pb;
use reqwest::Method;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

const ROLES: [&str; 4] = ["viewer", "submitter", "operator", "admin"];

/// The least role each route needs: `(method, path, body, least)`.
fn routes(task: &str) -> Vec<(Method, String, Option<Value>, &'static str)> {
    let get = |path: &str| (Method::GET, path.to_owned(), None, "viewer");
    vec![
        get("/api/v1/tasks"),
        get(&format!("/api/v1/tasks/{task}")),
        get(&format!("/api/v1/tasks/{task}/decision")),
        get(&format!("/api/v1/tasks/{task}/why")),
        get("/api/v1/agents"),
        get("/api/v1/hosts"),
        get("/api/v1/endpoints"),
        get("/api/v1/queue"),
        get("/api/v1/models/stats"),
        get("/api/v1/dlq"),
        get("/metrics"),
        (Method::POST, "/api/v1/tasks".into(), Some(json!({ "shell": { "argv": ["true"] } })), "submitter"),
        (Method::DELETE, format!("/api/v1/tasks/{}", ulid::Ulid::new()), None, "submitter"),
        (Method::POST, "/api/v1/hosts/no-such-host/drain".into(), None, "operator"),
        (Method::POST, "/api/v1/hosts/no-such-host/uncordon".into(), None, "operator"),
        (Method::POST, format!("/api/v1/dlq/{}/retry", ulid::Ulid::new()), None, "operator"),
        (Method::DELETE, "/api/v1/dlq?older_than_ms=86400000".into(), None, "operator"),
        (Method::POST, "/api/v1/endpoints".into(), Some(json!({ "url": "not a url" })), "operator"),
        (Method::DELETE, "/api/v1/endpoints/ep-000000000000".into(), None, "operator"),
        (Method::POST, "/api/v1/backups".into(), None, "operator"),
        get("/api/v1/tokens"),
        (Method::POST, "/api/v1/tokens".into(), Some(json!({ "role": "nobody" })), "admin"),
        (Method::DELETE, "/api/v1/tokens/tok-000000000000".into(), None, "admin"),
        (Method::GET, "/api/v1/audit".into(), None, "admin"),
        get("/api/v1/join-tokens"),
        (Method::POST, "/api/v1/join-tokens".into(), Some(json!({ "uses": 0 })), "admin"),
        (Method::DELETE, "/api/v1/join-tokens/000000000000".into(), None, "admin"),
        get("/api/v1/sidecars"),
        (Method::POST, "/api/v1/sidecars/no-such-sidecar/revoke".into(), None, "admin"),
    ]
    .into_iter()
    .map(|(m, p, b, least)| {
        let admin_read = p == "/api/v1/tokens" || p == "/api/v1/join-tokens";
        if admin_read && m == Method::GET { (m, p, b, "admin") } else { (m, p, b, least) }
    })
    .collect()
}

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap()
}

async fn make_token(admin: &Api, role: &str) -> String {
    let (status, made) = admin
        .request(Method::POST, "/api/v1/tokens", Some(json!({ "role": role, "name": format!("{role} test") })))
        .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["token"]["role"], role);
    made["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_route_refuses_the_roles_below_it_with_403() {
    let mesh = TestMesh::new().start().await;
    let task = mesh.api.submit(shell("true")).await;
    let task = task["id"].as_str().unwrap().to_owned();
    let mut tokens = Vec::new();
    for role in ROLES {
        let token = if role == "admin" { mesh.admin_token.clone() } else { make_token(&mesh.api, role).await };
        tokens.push((role, token));
    }
    tokens.push(("join", mesh.join_token.clone()));
    let mut checked = 0;
    for (method, path, body, least) in routes(&task) {
        for (role, token) in &tokens {
            let (status, answer) = mesh.api_with_token(token).request(method.clone(), &path, body.clone()).await;
            let allowed = *role != "join" && rank(role) >= rank(least);
            if allowed {
                assert!(![401, 403].contains(&status), "{role} {method} {path}: {status} {answer}");
            } else {
                assert_eq!(status, 403, "{role} {method} {path}: {answer}");
                assert_eq!(answer["error"]["code"], "permission_denied", "{role} {method} {path}: {answer}");
                let message = answer["error"]["message"].as_str().unwrap();
                assert!(message.contains(role) && message.contains("needs"), "says what is needed: {message}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 29 * 5);

    // gRPC: the same roles, as PermissionDenied.
    let grpc = |token: &str| {
        let value = MetadataValue::try_from(format!("Bearer {token}")).unwrap();
        move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", value.clone());
            Ok(request)
        }
    };
    let channel = tonic::transport::Endpoint::from_shared(mesh.url.clone()).unwrap().connect().await.unwrap();
    for (role, token) in &tokens {
        let mut client = pb::admin_client::AdminClient::with_interceptor(channel.clone(), grpc(token));
        let listed = client.list_tasks(pb::ListTasksRequest { limit: 1, ..Default::default() }).await;
        let spec = pb::TaskSpec {
            work: Some(pb::Work {
                kind: Some(pb::work::Kind::Shell(pb::ShellWork { argv: vec!["true".into()], ..Default::default() })),
            }),
            ..Default::default()
        };
        let submitted = client.submit_task(pb::SubmitTaskRequest { spec: Some(spec) }).await;
        let drained = client
            .drain_sidecar(pb::DrainSidecarRequest { sidecar_id: "no-such-host".into(), ..Default::default() })
            .await;
        let refused = |r: &Result<_, tonic::Status>| {
            r.as_ref().err().map(|s: &tonic::Status| s.code()) == Some(tonic::Code::PermissionDenied)
        };
        let join = *role == "join";
        assert_eq!(refused(&listed.map(|_| ())), join, "{role} ListTasks");
        assert_eq!(refused(&submitted.map(|_| ())), join || rank(role) < rank("submitter"), "{role} SubmitTask");
        assert_eq!(refused(&drained.map(|_| ())), join || rank(role) < rank("operator"), "{role} DrainSidecar");
    }
}

#[tokio::test]
async fn admin_actions_are_audited_and_a_revoked_token_is_refused_at_once() {
    let mesh = TestMesh::new().start().await;
    let operator = make_token(&mesh.api, "operator").await;
    let viewer = make_token(&mesh.api, "viewer").await;
    let (_, listed) = mesh.api.request(Method::GET, "/api/v1/tokens", None).await;
    let listed = listed["tokens"].as_array().unwrap().clone();
    assert!(listed.iter().all(|t| t.get("secret").is_none()), "no secrets: {listed:?}");
    let operator_id = listed.iter().find(|t| t["role"] == "operator").unwrap()["id"].as_str().unwrap().to_owned();
    let viewer_id = listed.iter().find(|t| t["role"] == "viewer").unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(listed.iter().filter(|t| t["created_unix_ms"].is_null()).count(), 2, "the bootstrap tokens: {listed:?}");

    let sidecar = mesh.sidecars[0].id.clone();
    let (status, _) =
        mesh.api_with_token(&operator).request(Method::POST, &format!("/api/v1/hosts/{sidecar}/drain"), None).await;
    assert_eq!(status, 200);
    // A viewer reads what Prometheus reads.
    let metrics = agentcom_integration::http_client()
        .get(format!("{}/metrics", mesh.url))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);

    let (status, revoked) = mesh.api.request(Method::DELETE, &format!("/api/v1/tokens/{viewer_id}"), None).await;
    assert_eq!(status, 200, "{revoked}");
    let (status, _) = mesh.api_with_token(&viewer).request(Method::GET, "/api/v1/tasks", None).await;
    assert_eq!(status, 401, "a revoked token is unknown from its next request on");

    let (status, audit) = mesh.api.request(Method::GET, "/api/v1/audit", None).await;
    assert_eq!(status, 200);
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<(&str, &str)> =
        entries.iter().map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap())).collect();
    assert_eq!(
        actions,
        vec![
            ("token.revoke", viewer_id.as_str()),
            ("drain", sidecar.as_str()),
            ("token.create", viewer_id.as_str()),
            ("token.create", operator_id.as_str())
        ],
        "newest first: {audit}"
    );
    assert_eq!(entries[1]["actor"], operator_id.as_str(), "the drain was the operator's");
    assert_eq!(entries[1]["role"], "operator");

    // The last admin token cannot be revoked.
    let admin_id = listed.iter().find(|t| t["role"] == "admin").unwrap()["id"].as_str().unwrap().to_owned();
    let (status, refused) = mesh.api.request(Method::DELETE, &format!("/api/v1/tokens/{admin_id}"), None).await;
    assert_eq!(status, 409, "{refused}");
    assert_eventually!(
        mesh.api.agents().await.iter().all(|a| a["cordoned"] == true),
        Duration::from_secs(5),
        "drained"
    );
}
