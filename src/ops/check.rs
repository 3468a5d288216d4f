//! `pgcapi check -c CONFIG`: is everything in place to run, checked without recording a conversion?
//!
//! Prints a checklist (✓ / ✗ with the reason) and fails when any item fails:
//!
//! - **Config**: the file parses and is valid.
//! - **Database**: the source database answers; `wal_level = logical`; the role may replicate; every
//!   table and column the rules read exists; each table's replica identity lets its UPDATEs be
//!   published (with a warning, `!`, when mapped columns can hold TOASTed values under replica identity
//!   DEFAULT or USING INDEX: see [`crate::ops::setup::toast_advice`]); the publication covers exactly the rules' tables; the slot exists (pgoutput, this
//!   database, not lost); the control schema is installed. The checks are the ones `pgcapi setup`
//!   runs (see [`crate::ops::setup`]); `check` changes nothing.
//! - **Destinations**: each is built as `pgcapi run` builds it and answers its own
//!   [`healthcheck`](crate::destinations::Destination::healthcheck) (credentials, account and what
//!   the rules sending to it need, proven without recording a conversion: see each platform's module).
//!
//! Secrets never appear: every line is scrubbed of the config's secret values, and a refused token is
//! reported as "rejected", not echoed.

use crate::config::{Config, DispatchConfig, Secret};
use crate::destinations::{self, Probe};
use crate::ops::setup::{self, Privileges};
use crate::outbox::quote_ident;
use crate::pg::catalog;
use crate::rules::Rules;
use std::fmt::Write as _;
use std::path::Path;
use tokio_postgres::Client;

/// Longest wait for one platform request, in milliseconds.
const REQUEST_TIMEOUT_MS: u64 = 15_000;

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Whether the check passed.
    pub ok: bool,
    /// A passed check with a trade-off the operator should know about (printed with `!`).
    pub warning: bool,
    /// What was checked, and why it failed.
    pub text: String,
}

/// The checklist, by section.
#[derive(Debug, Default)]
pub struct Checklist {
    /// Sections in order: title and items.
    pub sections: Vec<(String, Vec<Item>)>,
    /// Values scrubbed from every line.
    secrets: Vec<String>,
}

impl Checklist {
    fn section(&mut self, title: &str) {
        self.sections.push((title.to_string(), Vec::new()));
    }

    fn push(&mut self, ok: bool, text: String) {
        self.push_item(ok, false, text);
    }

    fn push_item(&mut self, ok: bool, warning: bool, text: String) {
        if self.sections.is_empty() {
            self.section("Checks");
        }
        let text = self.scrub(&text);
        if let Some((_, items)) = self.sections.last_mut() {
            items.push(Item { ok, warning, text });
        }
    }

    /// A warning: passes, but printed with `!`.
    fn warn(&mut self, text: impl Into<String>) {
        self.push_item(true, true, text.into());
    }

    fn pass(&mut self, text: impl Into<String>) {
        self.push(true, text.into());
    }

    fn fail(&mut self, text: impl Into<String>) {
        self.push(false, text.into());
    }

    /// Replaces every secret value in `text` with `***`.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }

    /// Every item, in order.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.sections.iter().flat_map(|(_, items)| items)
    }

    /// How many items failed.
    pub fn failures(&self) -> usize {
        self.items().filter(|i| !i.ok).count()
    }

    /// The checklist as printed.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (title, items) in &self.sections {
            let _ = writeln!(out, "{title}");
            for item in items {
                let mark = match (item.ok, item.warning) {
                    (true, false) => '✓',
                    (true, true) => '!',
                    (false, _) => '✗',
                };
                let _ = writeln!(out, "  {mark} {}", item.text);
            }
        }
        match self.failures() {
            0 => out.push_str("All checks passed.\n"),
            1 => out.push_str("1 check failed.\n"),
            n => {
                let _ = writeln!(out, "{n} checks failed.");
            }
        }
        out
    }

    /// Remembers the secrets of `config` (and the database passwords) for scrubbing.
    fn learn_secrets(&mut self, config: &Config) {
        let mut secrets: Vec<&Secret> = vec![&config.source.url];
        secrets.extend(config.source.control_url.as_ref());
        for dest in config.destinations.values() {
            secrets.extend(dest.secrets());
        }
        for secret in secrets {
            let value = secret.expose();
            if let Ok(info) = value.parse::<crate::pg::ConnInfo>() {
                self.secrets.extend(info.password);
            }
            self.secrets.push(value.to_string());
        }
        // Short values would scrub ordinary words; the longest go first so none is left half-scrubbed.
        self.secrets.retain(|s| s.len() >= 4);
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.secrets.dedup();
    }
}

/// `pgcapi check`: prints the checklist of the config at `path`; `Err` when any check failed.
pub async fn run(path: &Path) -> Result<(), String> {
    let list = check_file(path).await;
    print!("{}", list.render());
    match list.failures() {
        0 => Ok(()),
        1 => Err("1 check failed".into()),
        n => Err(format!("{n} checks failed")),
    }
}

/// Checks the config file at `path`, then everything it names.
pub async fn check_file(path: &Path) -> Checklist {
    let mut list = Checklist::default();
    list.section("Config");
    match Config::load(path) {
        Ok(config) => {
            list.learn_secrets(&config);
            list.pass(format!(
                "{} is valid ({} destination(s), {} rule(s))",
                path.display(),
                config.destinations.len(),
                config.rules.len()
            ));
            check_config(&config, &mut list).await;
        }
        Err(e) => list.fail(e.to_string()),
    }
    list
}

/// Checks the database and destinations of a loaded `config` into `list`.
pub async fn check_config(config: &Config, list: &mut Checklist) {
    list.learn_secrets(config);
    list.section("Database");
    check_database(config, list).await;
    list.section("Destinations");
    if config.destinations.is_empty() {
        list.fail("no destination is configured");
    }
    // Each destination is built as dispatch builds it, with a shorter request timeout.
    let dispatch = DispatchConfig {
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        ..config.dispatch.clone()
    };
    for (name, dest) in &config.destinations {
        let label = format!("{name} ({})", dest.platform().as_str());
        match destinations::build(name, dest, &dispatch) {
            Ok(destination) => {
                let probe = Probe::new(config, name);
                for health in destination.healthcheck(&probe).await {
                    list.push(health.ok, format!("{label}: {}", health.text));
                }
            }
            Err(e) => list.fail(format!("{label}: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Database
// ---------------------------------------------------------------------------------------------

async fn check_database(config: &Config, list: &mut Checklist) {
    let source = match setup::connect(config.source.url.expose(), "source database").await {
        Ok(client) => client,
        Err(e) => {
            list.fail(format!("cannot connect to the {e}"));
            return;
        }
    };
    list.pass("connected to the source database");
    check_server(&source, list).await;
    let rules = Rules::new(config);
    let tables = rules.tables();
    let missing = check_columns(&source, &rules, list).await;
    let publication = &config.source.publication;
    let privileges = match setup::privileges(&source, &tables, publication).await {
        Ok(p) => Some(p),
        Err(e) => {
            list.fail(crate::pg::error_chain(&e));
            None
        }
    };
    check_replica_identities(&source, &rules, &missing, privileges.as_ref(), list).await;
    let publication_exists =
        check_publication(&source, publication, &tables, privileges.as_ref(), list).await;
    check_slot(&source, config, publication_exists, list).await;
    check_control_schema(config, &source, list).await;
}

/// `wal_level` and the role's REPLICATION attribute.
async fn check_server(source: &Client, list: &mut Checklist) {
    match catalog::wal_level(source).await {
        Ok(level) if level == "logical" => list.pass("wal_level = logical"),
        Ok(level) => list.fail(format!(
            "wal_level is {level}; logical replication needs ALTER SYSTEM SET wal_level = logical; \
             and a restart"
        )),
        Err(e) => list.fail(e.to_string()),
    }
    match catalog::replication_role(source).await {
        Ok((true, user)) => list.pass(format!("role {user} may open replication connections")),
        Ok((false, user)) => list.fail(format!(
            "role {user} lacks the REPLICATION attribute: ALTER ROLE {} WITH REPLICATION;",
            quote_ident(&user)
        )),
        Err(e) => list.fail(e.to_string()),
    }
}

/// Every table and column the rules read; returns the problem paths of the missing tables.
async fn check_columns(source: &Client, rules: &Rules, list: &mut Checklist) -> Vec<String> {
    let tables = rules.tables();
    let mut missing = Vec::new();
    match setup::check_columns(source, rules).await {
        Ok(problems) if problems.is_empty() => list.pass(format!(
            "tables {} have every column the rules read",
            tables.join(", ")
        )),
        Ok(problems) => {
            for p in problems {
                if p.path.starts_with("rules (table ") {
                    missing.push(p.path.clone());
                }
                list.fail(p.to_string());
            }
        }
        Err(e) => list.fail(e.to_string()),
    }
    missing
}

/// Each existing table's replica identity, with the advice on large values.
async fn check_replica_identities(
    source: &Client,
    rules: &Rules,
    missing: &[String],
    privileges: Option<&Privileges>,
    list: &mut Checklist,
) {
    for table in &rules.tables() {
        if missing.contains(&format!("rules (table {table})")) {
            continue;
        }
        let owner = privileges
            .and_then(|p| p.not_owned.iter().find(|(t, _)| t == table))
            .map(|(_, o)| o.clone());
        match catalog::replica_identity(source, table).await {
            Ok((identity, true)) => {
                list.pass(format!(
                    "{table}: replica identity {identity} lets its UPDATEs be published"
                ));
                let columns = setup::rule_columns(rules, table);
                match setup::toast_advice(source, table, &columns).await {
                    Ok(Some(advice)) => list.warn(advice),
                    Ok(None) => {}
                    Err(e) => list.fail(e.to_string()),
                }
            }
            Ok((identity, false)) => list.fail(match owner {
                Some(owner) => format!(
                    "{table}: replica identity {identity} cannot publish UPDATEs: its owner (role \
                     {owner}) or a superuser adds a primary key or runs ALTER TABLE {} REPLICA \
                     IDENTITY FULL;",
                    setup::qualified(table)
                ),
                None => format!(
                    "{table}: replica identity {identity} cannot publish UPDATEs: add a primary key \
                     or run pgcapi setup --set-replica-identity-full"
                ),
            }),
            Err(e) => list.fail(e.to_string()),
        }
    }
}

/// The publication covers exactly the rules' `tables`; returns whether it exists.
async fn check_publication(
    source: &Client,
    publication: &str,
    tables: &[String],
    privileges: Option<&Privileges>,
    list: &mut Checklist,
) -> bool {
    // Who can fix the publication: pgcapi setup when its role may, else the DBA with the SQL.
    let fix = |statement: String| match privileges {
        Some(p) if !p.may_manage_publication() => format!(
            "{}; so {} runs: {statement}",
            setup::publication_refusal(p),
            p.who()
        ),
        _ => "run pgcapi setup".to_string(),
    };
    let mut publication_exists = false;
    match catalog::publication_tables(source, publication).await {
        Ok(Some(covered)) if covered == tables => {
            publication_exists = true;
            list.pass(format!(
                "publication {publication} covers {}",
                tables.join(", ")
            ))
        }
        Ok(Some(covered)) => {
            publication_exists = true;
            list.fail(format!(
                "publication {publication} covers [{}] but the rules read [{}]: {}",
                covered.join(", "),
                tables.join(", "),
                fix(setup::alter_publication_sql(publication, tables))
            ))
        }
        Ok(None) => list.fail(format!(
            "publication {publication} does not exist: {}",
            fix(setup::create_publication_sql(publication, tables))
        )),
        Err(e) => list.fail(e.to_string()),
    }
    publication_exists
}

/// The slot exists, is pgoutput on this database and is not lost.
async fn check_slot(
    source: &Client,
    config: &Config,
    publication_exists: bool,
    list: &mut Checklist,
) {
    let slot = &config.source.slot;
    let publication = &config.source.publication;
    match catalog::slot(source, slot).await {
        Ok(Some(s)) if s.plugin != "pgoutput" || s.database != s.current_database => {
            list.fail(format!(
                "slot {slot} uses plugin {} on database {}; pgcapi needs a pgoutput slot on {}",
                s.plugin, s.database, s.current_database
            ))
        }
        Ok(Some(s)) if s.wal_status.as_deref() == Some("lost") => list.fail(format!(
            "slot {slot} is lost (its WAL was removed): drop it, rerun pgcapi setup, and backfill"
        )),
        Ok(Some(_)) => list.pass(format!("replication slot {slot} exists (pgoutput)")),
        Ok(None) if !publication_exists => list.fail(format!(
            "replication slot {slot} does not exist: run pgcapi setup once publication \
             {publication} exists (it creates the slot then)"
        )),
        Ok(None) => list.fail(format!(
            "replication slot {slot} does not exist: run pgcapi setup"
        )),
        Err(e) => list.fail(e.to_string()),
    }
}

/// The control schema is installed in the control database (the source unless it is separate).
async fn check_control_schema(config: &Config, source: &Client, list: &mut Checklist) {
    let separate;
    let control = if config.source.control_url.is_some() {
        match setup::connect(config.source.control_url().expose(), "control database").await {
            Ok(client) => {
                list.pass("connected to the control database");
                separate = client;
                &separate
            }
            Err(e) => {
                list.fail(format!("cannot connect to the {e}"));
                return;
            }
        }
    } else {
        source
    };
    let schema = &config.source.schema;
    let found = control
        .query_one(
            "select to_regclass($1) is not null and to_regclass($2) is not null",
            &[
                &format!("{}.deliveries", quote_ident(schema)),
                &format!("{}.checkpoints", quote_ident(schema)),
            ],
        )
        .await;
    match found.map(|r| r.get::<_, bool>(0)) {
        Ok(true) => list.pass(format!(
            "control schema {schema} is installed ({schema}.deliveries, {schema}.checkpoints)"
        )),
        Ok(false) => list.fail(format!(
            "control schema {schema} is not installed: run pgcapi setup"
        )),
        Err(e) => list.fail(format!(
            "reading the control schema: {}",
            crate::pg::client::describe(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_from_every_line() {
        let mut list = Checklist {
            secrets: vec!["s3cr3t-token".into()],
            ..Checklist::default()
        };
        list.fail("HTTP 401 for token s3cr3t-token");
        assert_eq!(list.items().next().unwrap().text, "HTTP 401 for token ***");
        assert!(list.render().contains("✗ HTTP 401 for token ***"));
        assert!(list.render().ends_with("1 check failed.\n"));
    }
}
