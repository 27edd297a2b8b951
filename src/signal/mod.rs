//! Derivation: plain synchronous code that turns observations into the signals of the catalogue, one file
//! per question.

pub mod latency;
