//! Output of the admin commands: aligned tables, JSON and YAML.

use std::fmt::Write as _;

use serde::Serialize;

use super::views::{AuditEvent, CacheEntry, CachedBackend, Flush, Reload, Status, Workload};
use super::Format;
use crate::status::format_duration;

/// Text of an empty table cell.
const NONE: &str = "-";
/// Spaces between two table columns.
const GAP: &str = "  ";

/// Serializes `value` as one pretty JSON or YAML document, ending in a newline.
pub fn document<T: Serialize>(value: &T, format: Format) -> String {
    // The views contain only strings, numbers, booleans, options and lists, which always
    // serialize.
    let mut text = match format {
        Format::Yaml => yaml_serde::to_string(value).expect("bug: a view failed to serialize"),
        Format::Json | Format::Table => {
            serde_json::to_string_pretty(value).expect("bug: a view failed to serialize")
        }
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// A table whose columns are as wide as their widest cell.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self
            .header
            .iter()
            .map(|name| name.chars().count())
            .collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|name| name.to_string()).collect();
        let mut text = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            text.push_str(&aligned_line(row, &widths));
            text.push('\n');
        }
        text
    }
}

/// Joins `cells`, each padded to its width, without trailing spaces.
fn aligned_line(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if index > 0 {
            line.push_str(GAP);
        }
        let _ = write!(line, "{cell:<width$}");
    }
    line.trim_end().to_string()
}

fn cell(text: &str) -> String {
    if text.is_empty() {
        NONE.to_string()
    } else {
        text.to_string()
    }
}

fn optional(value: Option<impl ToString>) -> String {
    value.map_or_else(|| NONE.to_string(), |value| value.to_string())
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

/// Formats `name: value` lines with the values aligned.
fn fields(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(name, _)| name.len() + 1)
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (name, value) in rows {
        let label = format!("{name}:");
        let _ = writeln!(text, "{label:<width$}{GAP}{value}");
    }
    text
}

pub fn status(status: &Status, format: Format) -> String {
    if format != Format::Table {
        return document(status, format);
    }
    let counters = &status.counters;
    let mut rows = vec![
        ("version", status.version.clone()),
        ("mode", status.mode.clone()),
        ("uptime", format_duration(status.uptime_seconds)),
        ("serving", yes_no(status.serving)),
    ];
    if let Some(reason) = &status.not_serving_reason {
        rows.push(("not serving because", reason.clone()));
    }
    if let Some(error) = &status.config_reload_error {
        rows.push(("config reload error", error.clone()));
    }
    if status.mode == "node" {
        rows.extend([
            ("node", optional(status.node.as_ref())),
            ("kube watch synced", yes_no(status.kube_watch_synced)),
            ("kube watch connected", yes_no(status.kube_watch_connected)),
            ("pods watched", status.pods_watched.to_string()),
        ]);
    }
    rows.extend([
        ("requests", counters.requests.to_string()),
        ("denials", counters.denials.to_string()),
        ("errors", counters.errors.to_string()),
        ("audit watchers", counters.audit_watchers.to_string()),
        (
            "audit events lost",
            counters.audit_events_dropped.to_string(),
        ),
    ]);
    if let Some(file) = &status.secrets_file {
        rows.extend([
            ("secrets file", file.path.clone()),
            ("keys loaded", file.keys_loaded.to_string()),
            (
                "last reload error",
                optional(file.last_reload_error.as_ref()),
            ),
        ]);
    }
    if let Some(http) = &status.http {
        rows.extend(cached_backend_rows("http", http));
    }
    if let Some(kube) = &status.kubernetes {
        rows.extend(cached_backend_rows("kubernetes", kube));
    }
    let mut text = fields(&rows);
    text.push('\n');
    if status.vault.is_empty() {
        text.push_str("no Vault sessions\n");
        return text;
    }
    let mut table = Table::new(&[
        "VAULT IDENTITY",
        "LOGGED IN",
        "TOKEN TTL",
        "RENEWABLE",
        "ENTRIES",
        "HITS",
        "MISSES",
        "STALE",
        "LEASES",
        "LAST ERROR",
    ]);
    for session in &status.vault {
        table.push(vec![
            cell(&session.identity),
            yes_no(session.logged_in),
            session
                .token_ttl_seconds
                .map_or_else(|| NONE.to_string(), format_duration),
            yes_no(session.token_renewable),
            session.cache_entries.to_string(),
            session.cache_hits.to_string(),
            session.cache_misses.to_string(),
            session.stale_served.to_string(),
            session.live_leases.to_string(),
            optional(session.last_error.as_ref()),
        ]);
    }
    text.push_str(&table.render());
    text
}

/// Returns the status rows of the HTTP secrets API (`name` "http") or Kubernetes Secrets
/// ("kubernetes").
fn cached_backend_rows(name: &str, backend: &CachedBackend) -> Vec<(&'static str, String)> {
    let labels = if name == "http" {
        ["http", "http credentials", "http cache", "http last error"]
    } else {
        [
            "kubernetes",
            "k8s credentials",
            "k8s cache",
            "k8s last error",
        ]
    };
    let mut address = optional(backend.address.as_ref());
    if let Some(secret) = &backend.default_secret {
        let _ = write!(address, ", default Secret {secret}");
    }
    vec![
        (labels[0], address),
        (labels[1], backend.credentials.clone()),
        (
            labels[2],
            format!(
                "{} entries, {} hits, {} misses, {} stale",
                backend.cache_entries,
                backend.cache_hits,
                backend.cache_misses,
                backend.stale_served
            ),
        ),
        (labels[3], optional(backend.last_error.as_ref())),
    ]
}

pub fn workloads(workloads: &[Workload], format: Format) -> String {
    if format != Format::Table {
        return document(&workloads, format);
    }
    let mut table = Table::new(&[
        "NAMESPACE",
        "POD",
        "CONTAINER",
        "SERVICE ACCOUNT",
        "VAULT ROLE",
        "LAST REQUEST",
        "REQUESTS",
        "DENIALS",
        "PRESENT",
    ]);
    for workload in workloads {
        table.push(vec![
            cell(&workload.namespace),
            cell(&workload.pod),
            cell(&workload.container),
            optional(workload.service_account.as_ref()),
            optional(workload.vault_role.as_ref()),
            workload.last_request.clone(),
            workload.requests.to_string(),
            workload.denials.to_string(),
            yes_no(workload.pod_present),
        ]);
    }
    table.render()
}

pub fn cache(entries: &[CacheEntry], format: Format) -> String {
    if format != Format::Table {
        return document(&entries, format);
    }
    let mut table = Table::new(&[
        "IDENTITY",
        "PATH",
        "VERSION",
        "AGE",
        "TTL LEFT",
        "LEASE END",
        "HITS",
        "STALE",
        "NOT FOUND",
    ]);
    for entry in entries {
        table.push(vec![
            cell(&entry.identity),
            cell(&entry.path),
            optional(entry.version),
            format_duration(entry.age_seconds),
            format_duration(entry.ttl_left_seconds),
            optional(entry.lease_end.as_ref()),
            entry.hits.to_string(),
            yes_no(entry.stale),
            yes_no(entry.not_found),
        ]);
    }
    table.render()
}

pub fn flush(flush: &Flush, format: Format) -> String {
    if format != Format::Table {
        return document(flush, format);
    }
    if flush.flushed.is_empty() {
        return "no cached read matched; nothing was flushed\n".to_string();
    }
    let mut table = Table::new(&["IDENTITY", "PATH", "VERSION"]);
    for entry in &flush.flushed {
        table.push(vec![
            cell(&entry.identity),
            cell(&entry.path),
            optional(entry.version),
        ]);
    }
    let mut text = table.render();
    let _ = writeln!(
        text,
        "\nflushed {} cached read{}; the next request for each reads its backend",
        flush.entries_flushed,
        if flush.entries_flushed == 1 { "" } else { "s" }
    );
    text
}

pub fn reload(reload: &Reload, format: Format) -> String {
    if format != Format::Table {
        return document(reload, format);
    }
    let list = |items: &[String]| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let mut text = fields(&[
        ("applied", list(&reload.applied)),
        ("restart required", list(&reload.restart_required)),
    ]);
    for warning in &reload.warnings {
        let _ = writeln!(text, "warning: {warning}");
    }
    text
}

/// Columns of the audit table.
const AUDIT_HEADER: [&str; 10] = [
    "TIME",
    "PID",
    "POD",
    "CONTAINER",
    "VARIABLE",
    "REFERENCE",
    "DECISION",
    "CACHE",
    "LATENCY",
    "REASON",
];

/// Column widths of a followed audit table, whose rows are printed before later rows are
/// known. A longer cell shifts the rest of its row to the right.
const AUDIT_FOLLOW_WIDTHS: [usize; 10] = [24, 7, 24, 12, 20, 44, 11, 5, 9, 0];

fn audit_cells(event: &AuditEvent) -> Vec<String> {
    vec![
        event.time.clone(),
        event.pid.to_string(),
        optional(event.pod.as_ref()),
        optional(event.container.as_ref()),
        cell(&event.variable),
        optional(event.reference.as_ref()),
        cell(&event.decision),
        optional(event.cache.as_ref()),
        format_latency(event.latency_us),
        optional(event.reason.as_ref()),
    ]
}

/// Formats microseconds as `850us` or `12.5ms`.
fn format_latency(micros: u64) -> String {
    if micros < 1000 {
        format!("{micros}us")
    } else {
        format!("{:.1}ms", micros as f64 / 1000.0)
    }
}

/// Renders collected audit events together: an aligned table, a JSON array or a YAML list.
pub fn audit_events(events: &[AuditEvent], format: Format) -> String {
    if format != Format::Table {
        return document(&events, format);
    }
    let mut table = Table::new(&AUDIT_HEADER);
    for event in events {
        table.push(audit_cells(event));
    }
    table.render()
}

/// Returns what a followed audit stream prints before its first event.
pub fn audit_follow_header(format: Format) -> String {
    match format {
        Format::Table => {
            let header: Vec<String> = AUDIT_HEADER.iter().map(|name| name.to_string()).collect();
            format!("{}\n", aligned_line(&header, &AUDIT_FOLLOW_WIDTHS))
        }
        Format::Json | Format::Yaml => String::new(),
    }
}

/// Renders one event of a followed stream: a table row, one JSON line, or one YAML document.
pub fn audit_follow_event(event: &AuditEvent, format: Format) -> String {
    match format {
        Format::Table => format!(
            "{}\n",
            aligned_line(&audit_cells(event), &AUDIT_FOLLOW_WIDTHS)
        ),
        Format::Json => {
            let line = serde_json::to_string(event).expect("bug: a view failed to serialize");
            format!("{line}\n")
        }
        Format::Yaml => format!("---\n{}", document(event, Format::Yaml)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align() {
        let mut table = Table::new(&["IDENTITY", "PATH", "HITS"]);
        table.push(vec![
            "token auth at http://127.0.0.1:8200".into(),
            "secret/data/a".into(),
            "3".into(),
        ]);
        table.push(vec!["x".into(), "kv/b".into(), "12".into()]);
        let expected = "\
IDENTITY                             PATH           HITS
token auth at http://127.0.0.1:8200  secret/data/a  3
x                                    kv/b           12
";
        assert_eq!(table.render(), expected);
    }

    #[test]
    fn latency_units() {
        assert_eq!(format_latency(850), "850us");
        assert_eq!(format_latency(12_500), "12.5ms");
    }
}
