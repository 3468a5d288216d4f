//! Integration test cases, one file per capability.

mod architecture;
mod backfill;
mod bench;
mod capture;
mod cluster;
mod crash;
mod delivery;
mod demo;
mod dispatch;
mod end_to_end;
mod faults;
mod google_data_manager;
mod ha;
mod honest_status;
mod large;
mod linkedin_reddit;
mod microsoft_ads;
mod observe;
mod operate;
mod outbox;
mod outbrain_taboola;
mod recover;
mod snapchat_pinterest;
mod source;
mod toast;
