//! The OpenAPI document the server serves: it covers every path and method
//! of InsForge's document (../shared/reference/), every endpoint of this
//! server, and documents the error responses. (scripts/rest-fuzz fuzzes
//! the server against it.)

mod common;

use std::collections::BTreeSet;

use common::{Backend, TestServer};
use serde_json::Value;

/// `(method, path)` of every operation of an OpenAPI YAML file, read from
/// its indentation (two spaces for paths, four for methods): enough for
/// InsForge's document without a YAML parser.
fn reference_operations(yaml: &str) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in yaml.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !in_paths {
            continue;
        }
        if !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            path = Some(format!("/{p}"));
        } else if let Some(method) = line.strip_prefix("    ").and_then(|m| m.strip_suffix(':')) {
            if ["get", "post", "put", "patch", "delete"].contains(&method) {
                operations.insert((method.to_owned(), path.clone().unwrap()));
            }
        }
    }
    operations
}

fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            found.insert((method.clone(), path.clone()));
        }
    }
    found
}

#[actix_rt::test]
async fn the_document_covers_insforge_and_every_endpoint() {
    let server = TestServer::start(Backend::Sqlite).await;
    // Public, like /health.
    let (status, document) = server
        .send("GET", "/api/realtime/openapi.json", &[], None)
        .await;
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let ours = operations(&document);

    let yaml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/reference/insforge-realtime.openapi.yaml"),
    )
    .expect("InsForge's OpenAPI document");
    let insforge = reference_operations(&yaml);
    assert!(insforge.len() >= 11, "{insforge:?}");
    let missing: Vec<_> = insforge.difference(&ours).collect();
    assert!(
        missing.is_empty(),
        "missing InsForge operations: {missing:?}"
    );

    for (method, path) in [
        ("post", "/api/realtime/messages"),
        ("post", "/api/realtime/permissions"),
        ("delete", "/api/realtime/permissions/{action}/{name}"),
        ("get", "/api/realtime/actors"),
        ("get", "/api/realtime/actors/{name}"),
        ("get", "/api/realtime/sessions"),
        ("get", "/api/realtime/sessions/{id}"),
        ("delete", "/api/realtime/sessions/{id}"),
    ] {
        assert!(
            ours.contains(&(method.into(), path.into())),
            "{method} {path}"
        );
    }

    // Every operation is admin-only and says so; the error statuses are
    // documented with the error body.
    let mut statuses = BTreeSet::new();
    for (method, path) in &ours {
        let operation = &document["paths"][path][method];
        assert!(operation["security"].is_array(), "{method} {path}");
        let responses = operation["responses"].as_object().unwrap();
        for status in ["401", "403"] {
            let error = &responses[status]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(
                error, "#/components/schemas/ErrorResponse",
                "{method} {path} {status}"
            );
        }
        statuses.extend(responses.keys().cloned());
    }
    for status in ["400", "401", "403", "404", "409", "413"] {
        assert!(
            statuses.contains(status),
            "{status} is documented somewhere"
        );
    }
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
    assert_eq!(schemes["apiKey"]["name"], "X-API-Key");
}
