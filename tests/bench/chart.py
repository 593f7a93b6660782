"""Draws target/bench/bench.png from target/bench/results.json (written by `make bench`):
the distribution of the controller's added delay per N, and resident memory against N."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results_path, out_path = sys.argv[1], sys.argv[2]
with open(results_path) as f:
    results = json.load(f)
rows = sorted(results["rows"], key=lambda r: r["n"])

fig, (lat, mem) = plt.subplots(1, 2, figsize=(12, 4.8))
for r in rows:
    delays = sorted(r["delays_ms"])
    if not delays:
        continue
    share = [(i + 1) / len(delays) for i in range(len(delays))]
    lat.step(delays, share, where="post", label=f"N = {r['n']:,}")
lat.axvline(50, color="grey", linestyle="--", linewidth=1, label="target p99 at N = 1,000")
lat.set_xscale("log")
lat.set_xlabel("added delay over a bare watch (ms, log)")
lat.set_ylabel("share of rollouts")
lat.set_title("Rollout complete -> event at ilert")
lat.grid(True, which="both", alpha=0.3)
lat.legend()

ns = [r["n"] for r in rows]
mem.plot(ns, [r["rss_idle_mib"] for r in rows], marker="o", label="steady state (idle)")
mem.plot(ns, [r["rss_peak_mib"] for r in rows], marker="o", label="peak (during the burst)")
mem.axhline(64, color="grey", linestyle="--", linewidth=1, label="target at N = 10,000")
mem.set_xscale("log")
mem.set_xlabel("Deployments watched (N, log)")
mem.set_ylabel("resident memory (MiB)")
mem.set_title("Controller memory")
mem.grid(True, which="both", alpha=0.3)
mem.legend()

fig.suptitle(results.get("machine", ""), fontsize=9)
fig.tight_layout()
fig.savefig(out_path, dpi=110)
print(f"wrote {out_path}")
