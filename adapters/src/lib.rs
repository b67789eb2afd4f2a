//! plumbline-adapters
