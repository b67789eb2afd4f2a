//! Pod IPs from each node's podCIDR, as a CNI plugin with host-local IPAM would hand out.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use super::{Error, Result};

/// The node's own address is `.1` of its /24; pods get `.2` to `.254`.
const FIRST_POD_HOST: u8 = 2;
const LAST_POD_HOST: u8 = 254;

/// A node's /24 pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCidr {
    network: [u8; 3],
}

impl PodCidr {
    pub fn parse(node: &str, cidr: &str) -> Result<Self> {
        let bad = || Error::PodCidr {
            node: node.to_string(),
            cidr: cidr.to_string(),
        };
        let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let [a, b, c, d] = addr.octets();
        if len != "24" || d != 0 {
            return Err(bad());
        }
        Ok(Self { network: [a, b, c] })
    }

    /// The `index`-th /24 from 10.244.0.0/16, the conventional cluster pod range, going on
    /// into 10.245.0.0/16 and up for the scale bed's 1,000 nodes; `None` past 10.255.255.0/24.
    pub fn nth(index: u16) -> Option<Self> {
        let [high, low] = index.to_be_bytes();
        Some(Self {
            network: [10, 244u8.checked_add(high)?, low],
        })
    }

    pub fn host(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.network;
        Ipv4Addr::new(a, b, c, host)
    }

    /// The node's InternalIP.
    pub fn node_ip(&self) -> Ipv4Addr {
        self.host(1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..3] == self.network
    }
}

impl std::fmt::Display for PodCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/24", self.host(0))
    }
}

/// IPs handed out on one node, keyed by pod UID so a pod keeps its IP for its lifetime.
#[derive(Debug)]
pub struct PodIpPool {
    node: String,
    cidr: PodCidr,
    by_pod: BTreeMap<String, u8>,
    used: BTreeSet<u8>,
}

impl PodIpPool {
    pub fn new(node: &str, cidr: PodCidr) -> Self {
        Self {
            node: node.to_string(),
            cidr,
            by_pod: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    pub fn cidr(&self) -> PodCidr {
        self.cidr
    }

    /// The pod's IP: the one it already reports (after a restart of kubelet-sim), the one
    /// it was given before, or the lowest free one.
    pub fn ip_for(&mut self, pod_uid: &str, reported: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
        if let Some(host) = self.by_pod.get(pod_uid) {
            return Ok(self.cidr.host(*host));
        }
        let host = match reported
            .filter(|ip| self.cidr.contains(*ip))
            .map(|ip| ip.octets()[3])
        {
            Some(host) if !self.used.contains(&host) => host,
            _ => (FIRST_POD_HOST..=LAST_POD_HOST)
                .find(|h| !self.used.contains(h))
                .ok_or_else(|| Error::PodIpsExhausted {
                    node: self.node.clone(),
                    cidr: self.cidr.to_string(),
                })?,
        };
        self.used.insert(host);
        self.by_pod.insert(pod_uid.to_string(), host);
        Ok(self.cidr.host(host))
    }

    pub fn release(&mut self, pod_uid: &str) {
        if let Some(host) = self.by_pod.remove(pod_uid) {
            self.used.remove(&host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_ipv4_slash_24() {
        let cidr = PodCidr::parse("n", "10.244.3.0/24").unwrap();
        assert_eq!(cidr.to_string(), "10.244.3.0/24");
        assert_eq!(cidr.node_ip(), Ipv4Addr::new(10, 244, 3, 1));
        assert!(PodCidr::parse("n", "10.244.3.0/16").is_err());
        assert!(PodCidr::parse("n", "10.244.3.7/24").is_err());
        assert!(PodCidr::parse("n", "fd00::/64").is_err());
    }

    #[test]
    fn keeps_ips_per_pod_reuses_reported_and_released_ones() {
        let mut pool = PodIpPool::new("n", PodCidr::nth(1).unwrap());
        let a = pool.ip_for("a", None).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(pool.ip_for("a", None).unwrap(), a);
        let b = pool
            .ip_for("b", Some(Ipv4Addr::new(10, 244, 1, 9)))
            .unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 9));
        // A reported IP outside the node's range or already taken is not trusted.
        let c = pool.ip_for("c", Some(a)).unwrap();
        assert_eq!(c, Ipv4Addr::new(10, 244, 1, 3));
        pool.release("a");
        assert_eq!(pool.ip_for("d", None).unwrap(), a);
    }

    #[test]
    fn reports_exhaustion() {
        let mut pool = PodIpPool::new("n", PodCidr::nth(0).unwrap());
        for i in 0..253 {
            pool.ip_for(&i.to_string(), None).unwrap();
        }
        assert!(matches!(
            pool.ip_for("x", None),
            Err(Error::PodIpsExhausted { .. })
        ));
    }
}
