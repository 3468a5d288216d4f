//! decode (to be written).
