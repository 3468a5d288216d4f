//! Integration tests against real throwaway PostgreSQL clusters (one binary, modules under `cases/`).

mod cases;
mod support;
