//! Integration test cases, one file per capability.

mod cluster;
mod dispatch;
