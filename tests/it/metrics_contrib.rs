//! `contrib/grafana-dashboard.json` and `contrib/prometheus-alerts.yml` use only series
//! that `/metrics` exposes: every `leasehold_…` name in their expressions (histograms by
//! their `_bucket`, `_sum` and `_count` samples) must be a sample of a live server's page,
//! the cluster's families of a live cluster node's. The dashboard is parsed as JSON and its
//! panels checked for what an import needs; the alert rules are read line by line (no YAML
//! crate: each rule's `alert`, `expr`, `labels.severity` and `annotations.summary`).

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::etcd::EtcdCluster;
use crate::support::http::{once, Client};
use crate::support::nodes::Nodes;
use crate::support::{config, Server};

fn contrib(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every `leasehold_…` name in `expr`.
fn names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("leasehold_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Parentheses, brackets and braces of `expr` close in order (quoted text aside): the
/// typo a hand edit most often leaves.
fn balanced(expr: &str) -> bool {
    let mut open = Vec::new();
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(want) {
                    return false;
                }
            }
            _ => {}
        }
    }
    open.is_empty() && !quoted
}

/// The dashboard's query expressions, after checking what Grafana needs to import it.
fn dashboard_exprs() -> Vec<String> {
    let text = contrib("grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string(), "title and uid");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30), "schemaVersion");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        for key in ["h", "w", "x", "y"] {
            assert!(grid[key].is_u64(), "panel {id}: gridPos.{key}");
        }
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24, "panel {id} is wider than the grid");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {id} has no targets"));
        assert!(!targets.is_empty(), "panel {id} has no targets");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel {id}: a target without expr"));
            exprs.push(expr.to_string());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().expect("templating") {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push(query.to_string());
        }
    }
    exprs
}

/// One alerting rule as read from the file.
#[derive(Debug, Default)]
struct Rule {
    alert: String,
    expr: String,
    severity: Option<String>,
    summary: Option<String>,
}

/// The rules of `text`, read line by line: `- alert:` starts a rule; `expr:` takes its
/// value on the same line or, after `|` or `>`, the lines indented below it.
fn alert_rules(text: &str) -> Vec<Rule> {
    assert!(!text.contains('\t'), "YAML indentation has no tabs");
    assert!(text.lines().any(|l| l.trim_end() == "groups:"), "a `groups:` key");
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        i += 1;
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(Rule { alert: name.trim().to_string(), ..Rule::default() });
            continue;
        }
        let Some(rule) = rules.last_mut() else { continue };
        let unquote = |v: &str| v.trim().trim_matches('"').to_string();
        if let Some(value) = trimmed.strip_prefix("expr:") {
            let value = value.trim();
            if value.starts_with('|') || value.starts_with('>') {
                let mut block = Vec::new();
                while i < lines.len()
                    && (lines[i].trim().is_empty() || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    block.push(lines[i].trim());
                    i += 1;
                }
                rule.expr = block.join(" ").trim().to_string();
            } else {
                rule.expr = value.to_string();
            }
        } else if let Some(value) = trimmed.strip_prefix("severity:") {
            rule.severity = Some(unquote(value));
        } else if let Some(value) = trimmed.strip_prefix("summary:") {
            rule.summary = Some(unquote(value));
        }
    }
    rules
}

fn checked_alert_exprs() -> Vec<String> {
    let rules = alert_rules(&contrib("prometheus-alerts.yml"));
    assert!(rules.len() >= 8, "{rules:?}");
    let mut seen = BTreeSet::new();
    for rule in &rules {
        assert!(seen.insert(rule.alert.clone()), "alert {} twice", rule.alert);
        assert!(!rule.expr.is_empty(), "{}: no expr", rule.alert);
        let severity = rule.severity.as_deref().unwrap_or_else(|| panic!("{}: no labels.severity", rule.alert));
        assert!(["critical", "warning", "info"].contains(&severity), "{}: severity {severity:?}", rule.alert);
        assert!(rule.summary.as_ref().is_some_and(|s| !s.is_empty()), "{}: no annotations.summary", rule.alert);
    }
    // The alerts the operators asked for are there.
    for alert in ["LeaseholdLeasesExpiring", "LeaseholdKeeperDown", "LeaseholdCrashLoop", "LeaseholdQueueWaitHigh"] {
        assert!(seen.contains(alert), "no {alert}");
    }
    rules.into_iter().map(|r| r.expr).collect()
}

/// The sample names of a `/metrics` page.
fn sample_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `leasehold_…` name the contrib files use, each with where.
fn used_names() -> Vec<(String, String)> {
    let mut used = Vec::new();
    for (file, exprs) in
        [("grafana-dashboard.json", dashboard_exprs()), ("prometheus-alerts.yml", checked_alert_exprs())]
    {
        for expr in exprs {
            assert!(balanced(&expr), "{file}: unbalanced brackets in {expr}");
            used.extend(names_in(&expr).into_iter().map(|n| (n, file.to_string())));
        }
    }
    used
}

fn missing(used: &[(String, String)], page: &str, cluster: bool) -> Vec<String> {
    let present = sample_names(page);
    used.iter()
        .filter(|(name, _)| name.starts_with("leasehold_cluster_") == cluster)
        .filter(|(name, _)| !present.contains(name))
        .map(|(name, file)| format!("{name} (in {file})"))
        .collect()
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_series_a_live_server_exposes() {
    let used = used_names();
    let distinct: BTreeSet<&str> = used.iter().map(|(n, _)| n.as_str()).collect();
    assert!(distinct.len() >= 30, "the files use {} series: {distinct:?}", distinct.len());
    for key in ["leasehold_lease_expiries_total", "leasehold_queue_wait_seconds_bucket", "leasehold_keeper_up"] {
        assert!(distinct.contains(key), "{key} is not used");
    }
    let s = Server::start(&config("workers = 1", ""));
    // Traffic, so that every labelled family has samples: a request of each kind counted.
    let mut c = Client::connect(s.addr).unwrap();
    let held = c.post("/v1/locks/tour/acquire", "{}").unwrap().json();
    c.post("/v1/locks/tour/release", &format!(r#"{{"ticket":{}}}"#, held["ticket"])).unwrap();
    once(s.addr, "GET", "/metrics", &[], "");
    let page = String::from_utf8(once(s.addr, "GET", "/metrics", &[], "").body).unwrap();
    let absent = missing(&used, &page, false);
    assert!(absent.is_empty(), "used but not on /metrics:\n{}\npage:\n{page}", absent.join("\n"));
}

#[test]
fn the_cluster_series_they_use_are_on_a_cluster_nodes_page() {
    let used = used_names();
    assert!(used.iter().any(|(n, _)| n == "leasehold_cluster_lag_batches"), "cluster lag is watched");
    let etcd = EtcdCluster::start();
    let cluster = Nodes::start(&etcd, 1, 1);
    let page = String::from_utf8(once(cluster.nodes[0].addr, "GET", "/metrics", &[], "").body).unwrap();
    let absent = missing(&used, &page, true);
    assert!(absent.is_empty(), "used but not on a cluster node's /metrics:\n{}\npage:\n{page}", absent.join("\n"));
}

#[test]
fn the_line_reader_takes_inline_and_block_expressions() {
    let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: leasehold_x > 1\n        labels:\n          severity: warning\n        annotations:\n          summary: \"s\"\n      - alert: B\n        expr: |\n          sum(rate(leasehold_y_total[5m]))\n            > 0\n        labels:\n          severity: critical\n";
    let rules = alert_rules(text);
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].expr, "leasehold_x > 1");
    assert_eq!(rules[0].summary.as_deref(), Some("s"));
    assert_eq!(rules[1].expr, "sum(rate(leasehold_y_total[5m])) > 0");
    assert_eq!(rules[1].severity.as_deref(), Some("critical"));
    assert_eq!(rules[1].summary, None);
    assert_eq!(names_in("a(leasehold_a_b{x=\"1\"}) / leasehold_c"), ["leasehold_a_b", "leasehold_c"]);
    assert!(balanced("sum by (le) (rate(x{a=\"(\"}[5m]))"));
    assert!(!balanced("sum(rate(x[5m])"));
}
