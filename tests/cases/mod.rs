//! Integration test cases, one file per capability.

mod bench;
mod capture;
mod cluster;
mod crash;
mod demo;
mod dispatch;
mod end_to_end;
mod large;
mod source;
