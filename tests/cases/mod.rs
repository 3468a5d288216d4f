//! Integration test cases, one file per capability.

mod capture;
mod cluster;
mod crash;
mod dispatch;
mod large;
mod source;
