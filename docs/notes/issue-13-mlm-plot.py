"""Plot masked accuracy and MLM ppl vs length from PREFIX{alibi,rope,sinusoidal,nope}.json:
python docs/notes/issue-13-mlm-plot.py runs/mlm- docs/notes/issue-13-mlm.png"""
import json, sys, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
src, out = sys.argv[1], sys.argv[2]
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for m in ["alibi", "rope", "sinusoidal", "nope"]:
    r = json.load(open(f"{src}{m}.json"))["results"]
    L = [x["length"] for x in r]
    axes[0].plot(L, [x["mlm_accuracy"] for x in r], marker="o", label=m)
    axes[1].plot(L, [x["mlm_ppl"] for x in r], marker="o", label=m)
axes[0].axhline(0.278, color="grey", ls="--", lw=1, label="chance (space)")
for ax, name in zip(axes, ["masked-token accuracy", "MLM perplexity"]):
    ax.set_xscale("log", base=2); ax.axvline(64, color="k", lw=0.5)
    ax.set_xlabel("evaluation length (trained at 64)"); ax.set_title(name); ax.grid(alpha=0.3)
axes[1].set_yscale("log"); axes[0].legend(loc="center left", fontsize=8)
fig.suptitle("MLM encoders, builtin corpus, bytes, 400 steps, seed 0 (9,732 masked tokens per length)")
fig.tight_layout(); fig.savefig(out, dpi=110)
