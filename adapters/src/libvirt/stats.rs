//! Reading per-disk counters out of the bulk stats typed parameters
//! (`block.N.{name,rd.reqs,rd.times,wr.reqs,wr.times,fl.reqs,fl.times}`).

use std::collections::HashMap;

use super::ffi::{DomainStats, Param};
use crate::{DiskCounters, DiskReading, OpCounters, VmId};

pub fn disk_readings(records: &[DomainStats]) -> Vec<DiskReading> {
    records.iter().flat_map(domain_readings).collect()
}

fn domain_readings(record: &DomainStats) -> Vec<DiskReading> {
    let params: HashMap<&str, &Param> =
        record.params.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let count = params
        .get("block.count")
        .and_then(|p| p.as_u64())
        .unwrap_or(0);
    let vm = VmId::new(&record.uuid);
    let generation = u64::from(record.id.unwrap_or(0));
    (0..count)
        .filter_map(|i| {
            let get = |field: &str| {
                params
                    .get(format!("block.{i}.{field}").as_str())
                    .and_then(|p| p.as_u64())
            };
            let op = |kind: &str| {
                Some(OpCounters {
                    reqs: get(&format!("{kind}.reqs"))?,
                    times_ns: get(&format!("{kind}.times"))?,
                })
            };
            let name = params
                .get(format!("block.{i}.name").as_str())?
                .as_str()?
                .to_string();
            Some(DiskReading {
                vm: vm.clone(),
                disk: name,
                generation,
                counters: DiskCounters {
                    read: op("rd")?,
                    write: op("wr")?,
                    flush: op("fl"),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(params: Vec<(&str, Param)>) -> DomainStats {
        DomainStats {
            uuid: "AB6F0C2E-0000-4000-A000-000000000001".into(),
            id: Some(7),
            params: params
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    #[test]
    fn reads_every_disk_with_complete_counters() {
        let r = record(vec![
            ("state.state", Param::Int(1)),
            ("block.count", Param::UInt(2)),
            ("block.0.name", Param::String("vda".into())),
            ("block.0.path", Param::String("/var/lib/vm1.qcow2".into())),
            ("block.0.rd.reqs", Param::ULLong(10)),
            ("block.0.rd.times", Param::ULLong(1000)),
            ("block.0.wr.reqs", Param::ULLong(20)),
            ("block.0.wr.times", Param::ULLong(4000)),
            ("block.0.fl.reqs", Param::ULLong(1)),
            ("block.0.fl.times", Param::ULLong(50)),
            // An empty CD-ROM reports a name but no counters: skipped, not zeroes.
            ("block.1.name", Param::String("hdc".into())),
        ]);
        let readings = disk_readings(&[r]);
        assert_eq!(readings.len(), 1);
        let vda = &readings[0];
        assert_eq!(vda.disk, "vda");
        assert_eq!(vda.vm.as_str(), "ab6f0c2e-0000-4000-a000-000000000001");
        assert_eq!(vda.generation, 7);
        assert_eq!(
            vda.counters.write,
            OpCounters {
                reqs: 20,
                times_ns: 4000
            }
        );
        assert_eq!(
            vda.counters.flush,
            Some(OpCounters {
                reqs: 1,
                times_ns: 50
            })
        );
    }

    #[test]
    fn a_domain_without_block_stats_yields_nothing() {
        assert!(disk_readings(&[record(vec![("state.state", Param::Int(1))])]).is_empty());
    }
}
