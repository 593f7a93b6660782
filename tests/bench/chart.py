"""Draws target/bench/bench.png from target/bench/results.json (written by `make bench`):
the distribution of the controller's added delay per N, resident memory against N, and CPU per
1,000 rollouts against N, each beside kubewatch's where the peer ran."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results_path, out_path = sys.argv[1], sys.argv[2]
with open(results_path) as f:
    results = json.load(f)
rows = sorted(results["rows"], key=lambda r: r["n"])

fig, (lat, mem, cpu) = plt.subplots(1, 3, figsize=(17, 4.8))
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
mem.plot(ns, [r["rss_peak_mib"] for r in rows], marker="o", label="peak of the burst")
mem.plot(ns, [r.get("rss_start_peak_mib", float("nan")) for r in rows], marker="^", label="peak of start-up")
peers = [r for r in rows if r.get("peer")]
if peers:
    pn = [r["n"] for r in peers]
    mem.plot(pn, [r["peer"]["rss_idle_mib"] for r in peers], marker="s", linestyle=":", label="kubewatch idle")
    mem.plot(pn, [r["peer"]["rss_peak_mib"] for r in peers], marker="s", linestyle=":", label="kubewatch peak of the burst")
    mem.plot(pn, [r["peer"].get("rss_start_peak_mib", float("nan")) for r in peers], marker="v", linestyle=":", label="kubewatch peak of start-up")
mem.axhline(48, color="grey", linestyle="--", linewidth=1, label="target peak at N = 10,000")
mem.axhline(32, color="grey", linestyle="-.", linewidth=1, label="target idle at N = 10,000")
mem.set_xscale("log")
mem.set_xlabel("Deployments watched (N, log)")
mem.set_ylabel("resident memory (MiB)")
mem.set_title("Resident memory")
mem.grid(True, which="both", alpha=0.3)
mem.legend()

cpu.plot(ns, [r.get("cpu_per_1000", float("nan")) for r in rows], marker="o", label="this controller")
if peers:
    cpu.plot(pn, [r["peer"]["cpu_per_1000"] for r in peers], marker="s", linestyle=":", label="kubewatch")
    cpu.plot(pn, [r["peer"]["cpu_per_1000"] / 2 for r in peers], color="grey", linestyle="--", linewidth=1, label="target: half of kubewatch")
cpu.set_xscale("log")
cpu.set_xlabel("Deployments rolled out at once (N, log)")
cpu.set_ylabel("CPU seconds per 1,000 rollouts")
cpu.set_title("CPU of the burst")
cpu.grid(True, which="both", alpha=0.3)
cpu.legend()

fig.suptitle(results.get("machine", ""), fontsize=9)
fig.tight_layout()
fig.savefig(out_path, dpi=110)
print(f"wrote {out_path}")
