//! plumbline-policies
