//! Integration test cases, one file per capability.

mod capture;
mod cluster;
mod crash;
mod delivery;
mod demo;
mod dispatch;
mod end_to_end;
mod faults;
mod large;
mod source;
