//! What the connected role may do: own the watched tables and the publication, create on the database;
//! and, when it may not, who may and why, in words.

use super::{sql, SetupError};
use crate::config::split_table;
use tokio_postgres::Client;

/// What the connected role may do to the watched tables and the publication.
#[derive(Debug, Clone)]
pub struct Privileges {
    /// The role.
    pub user: String,
    /// The database connected to.
    pub database: String,
    /// `CREATE` on the database (needed to create a publication or a schema).
    pub create_on_database: bool,
    /// Watched tables the role does not own (as member or superuser), each with its owner.
    pub not_owned: Vec<(String, String)>,
    /// The publication's owner, when it exists and the role is not (a member of) it.
    pub publication_owner: Option<String>,
}

impl Privileges {
    /// Whether the role may create or change the publication for the watched tables.
    pub fn may_manage_publication(&self) -> bool {
        self.create_on_database && self.not_owned.is_empty() && self.publication_owner.is_none()
    }

    /// Who may run a statement on the publication or the tables.
    pub fn who(&self) -> String {
        let mut owners: Vec<&str> = self.not_owned.iter().map(|(_, o)| o.as_str()).collect();
        owners.extend(self.publication_owner.as_deref());
        owners.sort_unstable();
        owners.dedup();
        match owners.as_slice() {
            [one] => format!("role {one} (the owner of the tables) or a superuser"),
            [] => "a superuser, or a role with CREATE on the database owning the tables".into(),
            _ => format!(
                "a superuser (the tables have different owners: {})",
                owners.join(", ")
            ),
        }
    }
}

/// Reads what the connected role may do on `tables` (existing ones) and `publication`.
pub async fn privileges(
    client: &Client,
    tables: &[String],
    publication: &str,
) -> Result<Privileges, SetupError> {
    let row = client
        .query_one(
            "select current_user::text, \
               has_database_privilege(current_database(), 'CREATE'), \
               (select pg_get_userbyid(pubowner)::text from pg_publication \
                 where pubname = $1 and not pg_has_role(current_user, pubowner, 'USAGE')), \
               current_database()::text",
            &[&publication],
        )
        .await
        .map_err(sql("reading the role's privileges"))?;
    let mut not_owned = Vec::new();
    for table in tables {
        let (schema, name) = split_table(table);
        let owner = client
            .query_opt(
                "select pg_get_userbyid(c.relowner)::text from pg_class c \
                 join pg_namespace n on n.oid = c.relnamespace \
                 where n.nspname = $1 and c.relname = $2 \
                   and not pg_has_role(current_user, c.relowner, 'USAGE')",
                &[&schema, &name],
            )
            .await
            .map_err(sql(format!("reading the owner of {table}")))?;
        if let Some(owner) = owner {
            not_owned.push((table.clone(), owner.get(0)));
        }
    }
    Ok(Privileges {
        user: row.get(0),
        create_on_database: row.get(1),
        not_owned,
        publication_owner: row.get(2),
        database: row.get(3),
    })
}

/// Whether a statement was refused for lack of privilege (SQLSTATE 42501).
pub(super) fn insufficient_privilege(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
}

/// Why the role may not create or change the publication, in words.
pub fn publication_refusal(privileges: &Privileges) -> String {
    let mut why = Vec::new();
    if !privileges.not_owned.is_empty() {
        why.push(format!(
            "PostgreSQL requires the owner of every table of a publication, and role {} does not \
             own {}",
            privileges.user,
            privileges
                .not_owned
                .iter()
                .map(|(t, o)| format!("{t} (owner {o})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(owner) = &privileges.publication_owner {
        why.push(format!("the publication belongs to role {owner}"));
    }
    if !privileges.create_on_database {
        why.push(format!(
            "role {} lacks CREATE on the database",
            privileges.user
        ));
    }
    why.join("; ")
}
