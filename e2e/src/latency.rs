//! Injecting and clearing storage latency on libvirt guests and simulator VMs.
