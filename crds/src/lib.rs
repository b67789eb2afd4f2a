//! plumbline-crds
