//! The control schema's migrations: the SQL files under `sql/`, applied in order by `pgcapi setup`.

/// The control schema's SQL files, in the order they are applied.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "001_control_schema.sql",
        include_str!("../../sql/001_control_schema.sql"),
    ),
    ("003_retired.sql", include_str!("../../sql/003_retired.sql")),
    (
        "004_queued_at.sql",
        include_str!("../../sql/004_queued_at.sql"),
    ),
    (
        "005_dispatch_hot.sql",
        include_str!("../../sql/005_dispatch_hot.sql"),
    ),
    (
        "006_cheaper_writes.sql",
        include_str!("../../sql/006_cheaper_writes.sql"),
    ),
    (
        "007_capture_state.sql",
        include_str!("../../sql/007_capture_state.sql"),
    ),
    (
        "008_source_key.sql",
        include_str!("../../sql/008_source_key.sql"),
    ),
    (
        "009_platform_processing.sql",
        include_str!("../../sql/009_platform_processing.sql"),
    ),
    // Last, so that a numbered file may drop a view to change a column it reads.
    ("views.sql", include_str!("../../sql/views.sql")),
];
