//! destinations (to be written).
