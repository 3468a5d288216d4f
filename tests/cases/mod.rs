//! Integration test cases, one file per capability.

mod capture;
mod cluster;
mod crash;
mod large;
mod source;
