//! setup (to be written).
