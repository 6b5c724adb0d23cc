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
# # Key neurons for parts of speech
#
# Which neurons does a model rely on to predict the next word of a given part of speech? `fnet analyze
# analysis=pos` attributes SmolLM2's next-word predictions on UD English-EWT (activation × gradient) to every
# layer's MLP output neurons, keeps each universal POS tag's most often attributed neurons as a network, predicts
# the tags of held-out words from those neurons' activations (against as many random neurons), and lesions each
# tag's key neurons. The full run (`bench/results_pos.md`) uses 800 + 1000 + 600 sentences; this one a few dozen,
# so its numbers are rough. It needs the offline treebank (`ud_english_ewt` under the data folder).

# %%
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

import fnet

data = fnet.recording.data_root()  # $FNET_DATA_DIR, or ../shared/data beside the checkout
print("treebank:", data / "ud_english_ewt")

# %% [markdown]
# ## Run the analysis
#
# The same command works in a shell (`fnet analyze analysis=pos ...`); here it runs as `python -m fnet.cli.analyze`
# with small sample sizes. Every option is in the [configuration reference](../reference/config.md#analysis).

# %%
out = Path("pos_run").resolve()
small = [
    "analysis.progress=false",
    "analysis.attribution.max_sentences=30",
    "analysis.attribution.max_samples_per_tag=10",
    "analysis.selection.min_samples=3",
    "analysis.classifier.max_train_sentences=80",
    "analysis.classifier.max_test_sentences=40",
    "analysis.classifier.random_seeds=[0]",
    "analysis.classifier.all_neurons=false",
    "analysis.classifier.bootstrap=200",
    "analysis.lesion.max_sentences=10",
    "analysis.lesion.random_seeds=[0]",
    "analysis.lesion.tags=[NOUN,VERB,ADP]",
    "analysis.ica_overlap=false",
]
run = subprocess.run(
    [sys.executable, "-m", "fnet.cli.analyze", "analysis=pos", *small, f"hydra.run.dir={out}"],
    env=dict(os.environ, FNET_DATA_DIR=str(data)),
    capture_output=True,
    text=True,
)
if run.returncode != 0:
    raise RuntimeError(run.stderr[-3000:])
print(sorted(p.name for p in out.iterdir()))

# %% [markdown]
# ## Key neurons per tag
#
# Each tag's 100 neurons kept most often among the top 5 % of attributions of its words. Where are they?

# %%
tags = pd.read_csv(out / "pos_tags.csv")
print(tags[["tag", "samples", "neurons", "mean_frequency", "top_layers"]].to_string(index=False))
display(Image(str(out / "figures" / "pos_key_neurons_per_layer.png")))

# %% [markdown]
# ## Predicting tags from the key neurons
#
# A logistic regression on the key neurons' activations at each held-out word, against as many randomly chosen
# neurons (matched per layer) and the majority class, with bootstrap 95 % intervals over the test words.

# %%
classifier = pd.read_csv(out / "pos_classifier.csv")
print(
    classifier[["features", "n_neurons", "accuracy", "accuracy_lo", "accuracy_hi", "macro_f1"]]
    .round(3)
    .to_string(index=False)
)

# %% [markdown]
# ## Lesioning a tag's key neurons
#
# The report's last table: how much the log-probability of each tag's words drops when its key neurons are zeroed,
# against other tags' words and a random control.

# %%
report = (out / "pos_report.md").read_text()
print("## Lesion" + report.split("## Lesion", 1)[1].split("\n## ", 1)[0][:3000])
