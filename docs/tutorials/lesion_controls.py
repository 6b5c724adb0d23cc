# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesion networks against count- and magnitude-matched controls
#
# A lesion that hurts a task means little on its own: zeroing any few hundred neurons might. This tutorial
# lesions SmolLM2's functional networks and compares the damage with two random controls that zero as many
# neurons: **count-matched** (the same number in every layer, uniformly) and **magnitude-matched** (the same
# counts, each drawn from the same per-layer quantile bin of the neurons' activation scale). Scores are zero-shot
# SST-2 accuracy on a seeded subsample of the validation set, each with its 95 % Wilson interval; a control is
# the mean over seeds with a t interval. `fnet study` does this at scale, with paired bootstrap CIs.

# %%
import numpy as np
from scipy import stats

import fnet
from fnet.intervene import build_mask
from fnet.intervene.controls import neuron_scale

lm = fnet.load_model()
texts = []
for genre in ("news", "encyclopedia"):
    texts += [t.text for t in fnet.recording.load_texts(f"builtin:{genre}")][:3]
store = fnet.record(lm, texts, max_length=192)  # the recording of the first tutorial: cached, not redone
nets = fnet.find_networks(store, n_components=8, seed=0)
print("networks:", nets.masks.sum(axis=(1, 2)).tolist(), "neurons;", int(nets.masks.any(0).sum()), "in their union")

# %% [markdown]
# ## The unmasked model and the lesion
#
# `fnet.lesion` zeroes the networks' neurons inside the `with` block only (each layer's row on its own layer).

# %%
LIMIT = 40  # rows; the same seeded rows in every call
SEEDS = range(3)


def show(label, result):
    low, high = result["ci"]
    print(f"{label:<34} {result['score']:.3f}  [{low:.3f}, {high:.3f}]")


base = fnet.evaluate(lm, "sst2", limit=LIMIT)
show("unmasked", base)
print("chance:", base["chance"])
with fnet.lesion(lm, nets, "all") as spec:
    lesioned = fnet.evaluate(lm, "sst2", limit=LIMIT)
show(f"all networks lesioned ({spec.n_masked} neurons)", lesioned)

# %% [markdown]
# ## The controls
#
# `fnet.random_control` draws the count-matched control of a lesion. The magnitude-matched control needs each
# neuron's activation scale, measured on the recording the networks were found on; `fnet.intervene.build_mask`
# builds any mask mode of the registry by name, as `fnet evaluate mask=magnitude` does.

# %%
scale = neuron_scale(store.arrays(), lm.n_layers)  # [layers, units]: each neuron's RMS activation
count = [fnet.evaluate(lm, "sst2", mask=fnet.random_control(nets, "all", seed=s), limit=LIMIT) for s in SEEDS]
magnitude = [
    fnet.evaluate(
        lm, "sst2", mask=build_mask("magnitude", netset=nets, networks="all", seed=s, scale=scale), limit=LIMIT
    )
    for s in SEEDS
]
for s, (c, m) in enumerate(zip(count, magnitude)):
    show(f"count-matched, seed {s}", c)
    show(f"magnitude-matched, seed {s}", m)

# %% [markdown]
# ## Does the lesion hurt more than the controls?
#
# The drop below each control: the control's mean over seeds minus the lesioned score, with a t interval over the
# seeds (a paired bootstrap over rows and seeds, as `fnet study` reports, is tighter).


# %%
def beyond(controls, label):
    values = np.array([c["score"] for c in controls]) - lesioned["score"]
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    print(f"lesion beyond {label:<18} {values.mean():+.3f}  [{values.mean() - half:+.3f}, {values.mean() + half:+.3f}]")


beyond(count, "count-matched")
beyond(magnitude, "magnitude-matched")

# %% [markdown]
# On 40 rows the intervals are wide; `fnet evaluate task.limit=null` scores the whole validation set, and the
# committed [study reports](../reports/index.md) give the paired effects of every network on fine-tuned models.
