//! The monitoring kept beside Herald (`deploy/`): the Grafana dashboard and
//! the Prometheus alert rules name only metrics Herald exports, and each
//! rule fires on the condition it names.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use api::live::LiveConfig;
use api::startup::Parts;
use common::{patient, Options, TestApp};
use serde_json::Value;

/// `deploy/` at the root of the repository.
fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every `herald_…` name in `text`.
fn herald_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("herald_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.insert(name);
    }
    names
}

/// The queries of every panel of the dashboard.
fn dashboard_queries() -> Vec<String> {
    let path = deploy().join("grafana/dashboards/herald.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect()
}

/// The names of the series on a Prometheus text page.
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alert_rules_name_is_one_herald_exports() {
    let app = TestApp::spawn_with(Options {
        parts: Some(Parts::ALL),
        live: Some(LiveConfig::default()),
        ..Options::default()
    })
    .await;
    // A command the relay publishes and the read models apply, while a socket
    // is open.
    let (socket, _) = tokio_tungstenite::connect_async(app.ws_url(patient()))
        .await
        .unwrap();
    app.booking(patient()).await;
    app.wait_for_projections().await;

    let page = app.metrics_page().await;
    drop(socket);
    let exported = exported(&page);
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    let named = herald_names(&(queries.join("\n") + &rules));
    assert!(named.len() >= 10, "{named:?}");
    let missing: Vec<&String> = named.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{page}");
}

#[test]
fn each_alert_rule_fires_on_its_condition_and_stays_quiet_without_it() {
    let prometheus = deploy().join("prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["test", "rules", "alerts.test.yml"],
    ] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(&prometheus)
            .output()
            .expect("promtool, from Prometheus (Debian's package `prometheus`), is needed");
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
