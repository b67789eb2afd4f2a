#!/usr/bin/env python3
"""RSS and health-pass time against the pod count, from scale-bench's JSON (docs/scale.md).

    e2e/scale chart [results.json] [out.png]    # installs python3-matplotlib if missing
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(results_path, out_path):
    with open(results_path) as f:
        results = json.load(f)
    sizes = sorted(results["sizes"], key=lambda s: s["pods"])
    pods = [s["pods"] for s in sizes]
    fig, (rss, passes) = plt.subplots(1, 2, figsize=(10, 4))
    rss.plot(pods, [s["steady_rss_mib"] for s in sizes], "o-", label="steady RSS")
    rss.plot(pods, [s["peak_rss_mib"] for s in sizes], "s--", label="peak RSS (initial list)")
    rss.axhline(64, color="grey", linestyle=":", label="target 64 MiB")
    rss.set_xlabel("pods (on %d VM-backed nodes)" % results["vms"])
    rss.set_ylabel("MiB")
    rss.set_title("Operator memory")
    rss.set_ylim(bottom=0)
    rss.legend()
    passes.plot(pods, [s["pass_p50_ms"] for s in sizes], "o-", label="p50")
    passes.plot(pods, [s["pass_p99_ms"] for s in sizes], "s--", label="p99")
    passes.axhline(200, color="grey", linestyle=":", label="target p99 200 ms")
    passes.set_xlabel("pods")
    passes.set_ylabel("ms")
    passes.set_title("Storage-health pass duration")
    passes.set_ylim(bottom=0)
    passes.legend()
    fig.suptitle("Plumbline at scale: %d VMs, 1 vSphere provider, 2 cores (scale-bench)" % results["vms"])
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    print("wrote", out_path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/scale-results.json",
         sys.argv[2] if len(sys.argv) > 2 else "docs/scale.png")
