#!/usr/bin/env python3
"""RSS and health-pass time against the pod count, from scale-bench's JSON (docs/scale.md).

    e2e/scale chart [results.json] [out.png] [before.json]   # installs python3-matplotlib if missing

With before.json (an earlier run's figures), its steady RSS and pass p99 are drawn faint
beside the run's, labelled with its "label" field.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def sizes_of(results):
    return sorted(results["sizes"], key=lambda s: s["pods"])


def main(results_path, out_path, before_path=None):
    with open(results_path) as f:
        results = json.load(f)
    sizes = sizes_of(results)
    pods = [s["pods"] for s in sizes]
    fig, (rss, passes) = plt.subplots(1, 2, figsize=(10, 4))
    if before_path:
        with open(before_path) as f:
            before = json.load(f)
        label = before.get("label", "before")
        earlier = sizes_of(before)
        x = [s["pods"] for s in earlier]
        rss.plot(x, [s["steady_rss_mib"] for s in earlier], "o-", color="lightgrey",
                 label="steady RSS, %s" % label)
        passes.plot(x, [s["pass_p99_ms"] for s in earlier], "s--", color="lightgrey",
                    label="p99, %s" % label)
    rss.plot(pods, [s["steady_rss_mib"] for s in sizes], "o-", label="steady RSS")
    rss.plot(pods, [s["peak_rss_mib"] for s in sizes], "s--", label="peak RSS (initial list)")
    rss.axhline(64, color="grey", linestyle=":", label="target 64 MiB")
    rss.set_xlabel("pods (on %d VM-backed nodes)" % results["vms"])
    rss.set_ylabel("MiB")
    rss.set_title("Operator memory")
    rss.set_ylim(bottom=0)
    rss.set_ylim(top=1.45 * max(rss.get_ylim()[1], 64))
    rss.legend(fontsize="small")
    passes.plot(pods, [s["pass_p50_ms"] for s in sizes], "o-", label="p50")
    passes.plot(pods, [s["pass_p99_ms"] for s in sizes], "s--", label="p99")
    passes.axhline(200, color="grey", linestyle=":", label="target p99 200 ms")
    passes.set_xlabel("pods")
    passes.set_ylabel("ms")
    passes.set_title("Storage-health pass duration")
    passes.set_ylim(bottom=0)
    passes.set_ylim(top=1.35 * passes.get_ylim()[1])
    passes.legend(fontsize="small")
    fig.suptitle("Plumbline at scale: %d VMs, 1 vSphere provider, 2 cores (scale-bench)" % results["vms"])
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    print("wrote", out_path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/scale-results.json",
         sys.argv[2] if len(sys.argv) > 2 else "docs/scale.png",
         sys.argv[3] if len(sys.argv) > 3 else None)
