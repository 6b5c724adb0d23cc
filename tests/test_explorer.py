"""The explorer: what each network responds to (fnet.networks.describe) on planted data, analyze.py's
explorer.html and descriptions.json, a study's explorer; each page opened from disk in headless Chromium (no
console error, nothing loaded from the network, every card there, a screenshot that is not blank), its numbers
checked against the network files, summary.json and the CSVs, and the W&B cards and artifact."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import Browser, find_chromium
from hydra import compose, initialize_config_dir

from fnet.decompose import FastICA
from fnet.networks import NetworkSet, describe, group_networks

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model=tiny_gpt2", "data.n_template=2", "data.n_individual=2", "ica.n_components=3", "record.max_length=64"]


def needs_chromium():
    """Chromium, or a skip; ``.ci/run`` installs it and sets FNET_REQUIRE_BROWSER=1, so CI fails instead."""
    if find_chromium() is None:
        if os.environ.get("FNET_REQUIRE_BROWSER"):
            pytest.fail("FNET_REQUIRE_BROWSER is set but no chromium is installed (apt-get install -y chromium)")
        pytest.skip("no chromium on this machine (apt-get install -y chromium)")


class Page(HTMLParser):
    """The cards (their attributes, effect rows and HTML) and the data tables (header and cell texts) of a page."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.html, self.cards, self.tables = html, [], {}
        self._card = self._table = self._row = self._cell = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "article" and "card" in (a.get("class") or ""):
            self._card = dict(a, effects=[], start=self.getpos())
            self.cards.append(self._card)
        elif tag == "table" and "data-table" in a and self._card is None:
            self._table = self.tables.setdefault(a["data-table"], {"head": [], "rows": []})
        elif tag == "tr":
            self._row = {"attrs": a, "cells": [], "head": False}
        elif tag in ("td", "th"):
            self._cell = []
            if self._row is not None:
                self._row["head"] |= tag == "th"

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if "effect" in (self._row["attrs"].get("class") or "") and self._card is not None:
                self._card["effects"].append(self._row)
            elif self._table is not None:
                (self._table["head"].extend if self._row["head"] else self._table["rows"].append)(self._row["cells"])
            self._row = None
        elif tag == "table" and self._card is None:
            self._table = None
        elif tag == "article":
            self._card = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def card_html(self, card_id: str) -> str:
        start = self.html.index(f'id="card-{card_id}"')
        return self.html[start : self.html.index("</article>", start)]


def shown(value) -> str:
    """A number as the page shows it (fnet.report.explorer's ``num`` filter, 3 decimals)."""
    from fnet.report.explorer import _num

    return _num(value)


def check_in_browser(page: Path, n_cards: int, tmp_path: Path) -> None:
    """Open ``page`` from disk: no console error, no request beyond the file itself, ``n_cards`` cards laid out
    (each with a size on screen), the filter hides cards, and a screenshot of the first screen is not blank."""
    from PIL import Image

    with Browser() as browser:
        browser.open(page)
        assert browser.errors() == []
        assert browser.requests() == [page.resolve().as_uri()]  # no network: only the page itself
        sizes = browser.evaluate(
            "Array.from(document.querySelectorAll('article.card'), "
            "c => [c.id, c.getBoundingClientRect().width, c.getBoundingClientRect().height])"
        )
        assert len(sizes) == n_cards and all(w > 200 and h > 100 for _, w, h in sizes), sizes
        assert browser.evaluate("document.getElementById('shown').textContent") == f"{n_cards} of {n_cards} networks"
        shot = browser.screenshot(tmp_path / "page.png")
        card = browser.screenshot(tmp_path / "card.png", "article.card")
        browser.evaluate(
            "(() => { const f = document.getElementById('filter'); f.value = 'no such token anywhere';"
            " f.dispatchEvent(new Event('input')); })()"
        )
        assert browser.evaluate("document.querySelectorAll('article.card:not(.hidden)').length") == 0
        assert browser.errors() == []
    for png in (shot, card):
        pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 200
        assert pixels.std() > 10 and len(np.unique(pixels)) > 20, f"{png} looks blank"


# ----------------------------------------------------------------------------------------------------------------
# describe: a planted component, fitted, oriented like its map, fires on the tokens it was planted on
# ----------------------------------------------------------------------------------------------------------------
def test_a_fitted_planted_component_fires_on_its_tokens_in_the_orientation_of_its_map():
    """Two planted networks whose neurons rise on "cat" and on "mat": the first loads positively and its source
    rises, the second loads negatively and its source falls. Whatever signs ICA gives the fitted components, the
    oriented time courses put "cat" and "mat" on top; turning a network's orientation around does not."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    tokens = [[words[i] for i in rng.integers(0, len(words), size=300)] for _ in range(3)]
    maps = np.zeros((2, 40))
    maps[0, :5], maps[1, 20:25] = 3.0, -3.0
    arrays = []
    for text in tokens:
        sources = 0.2 * rng.laplace(size=(len(text), 2))  # [tokens, 2]
        sources[:, 0] += [2.0 if t == "cat" else 0.0 for t in text]
        sources[:, 1] -= [2.0 if t == "mat" else 0.0 for t in text]  # falls on "mat": its neurons rise
        arrays.append(sources @ maps + 0.05 * rng.normal(size=(len(text), 40)))  # [tokens, 2 layers * 20]
    for seed in (0, 1, 2):
        fit = group_networks(
            FastICA(n_components=2, random_state=seed),
            arrays,
            2,
            20,
            {"alpha": 2.0, "rule": "z", "percentile": 98.0, "sign": "flip"},
            name="planted",
            keep_sources=True,
        )
        assert [s.shape for s in fit.sources] == [(300, 2)] * 3
        nets = fit.networks
        cat = next(k for k in range(2) if nets.masks[k, 0, :5].all())
        described = describe(nets, fit.sources, tokens, text_ids=["a", "b", "c"], n_examples=10)
        assert {e["token"] for e in described[cat]["examples"]} == {"cat"}
        assert {e["token"] for e in described[1 - cat]["examples"]} == {"mat"}
        assert described[cat]["counts_per_layer"] == [5, 0] and described[1 - cat]["counts_per_layer"] == [0, 5]
        flipped = NetworkSet(nets.masks, nets.maps, signs=-nets.signs)
        assert "cat" not in {e["token"] for e in describe(flipped, fit.sources, tokens)[cat]["examples"]}


# ----------------------------------------------------------------------------------------------------------------
# analyze.py: explorer.html next to report.md, in a browser, its numbers against the network files and summary.json
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    from fnet.pipelines.analyze import run

    out = tmp_path_factory.mktemp("analysis") / "run"
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FNET_CACHE", str(cache))
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(
                "analyze", overrides=SMALL + [f"paths.output_dir={out}", f"paths.root_dir={REPO}", "logger=csv"]
            )
        run(cfg)
    return out


def test_analysis_writes_explorer_next_to_the_report_with_a_card_per_group_network(analysis):
    assert (analysis / "report.md").exists() and (analysis / "explorer.html").exists()
    described = json.loads((analysis / "networks" / "descriptions.json").read_text())
    assert list(described["sets"]) == ["all", "news", "encyclopedia", "math", "code"]
    page = Page((analysis / "explorer.html").read_text())
    assert [c["id"] for c in page.cards] == [f"card-{s}-{k}" for s in described["sets"] for k in range(3)]
    news = described["sets"]["news"]
    assert len(news["texts"]) == 2 and len(news["individual"]) == 2  # 2 template texts; 2 individual fits
    for d in news["networks"]:
        assert d["examples"] and d["examples"][0]["value"] >= d["examples"][-1]["value"]
        example = d["examples"][0]
        assert example["context"][example["focus"]][0] == example["token"] and example["text"] in news["texts"]
    html = (analysis / "explorer.html").read_text()
    assert "://" not in html and "<script src" not in html and "<link" not in html  # self-contained


def test_analysis_explorer_numbers_match_the_network_files_and_summary(analysis):
    page = Page((analysis / "explorer.html").read_text())
    summary = json.loads((analysis / "summary.json").read_text())
    described = json.loads((analysis / "networks" / "descriptions.json").read_text())
    for name in described["sets"]:
        nets = NetworkSet.load(analysis / "networks" / f"{name}_group.safetensors")
        for k in range(len(nets)):
            card = next(c for c in page.cards if c["id"] == f"card-{name}-{k}")
            assert int(card["data-size"]) == int(nets.sizes()[k])
            if name != "all":
                assert int(card["data-size"]) == summary["datasets"][name]["sizes"][k]
                stability = summary["datasets"][name]["stability"]
                if stability is not None:
                    assert float(card["data-stability"]) == pytest.approx(stability[k], abs=1e-4)
            bars = {
                int(l): int(c) for l, c in re.findall(r"<title>layer (\d+): (\d+) of", page.card_html(f"{name}-{k}"))
            }
            counts = nets.counts_per_layer()[k].tolist()
            assert bars == {l: c for l, c in enumerate(counts) if c}
    table = page.tables["decompositions"]
    rows = {r[0]: dict(zip(table["head"], r)) for r in table["rows"]}
    for name, sizes in ((n, d["sizes"]) for n, d in summary["datasets"].items()):
        assert rows[name]["mean size"] == shown(np.mean(sizes))


def test_analysis_explorer_opens_from_disk_in_chromium(analysis, tmp_path):
    needs_chromium()
    n = len(Page((analysis / "explorer.html").read_text()).cards)
    check_in_browser(analysis / "explorer.html", n, tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# A study's explorer (v1 report) on planted jobs: tables and cards against the CSVs, in a browser
# ----------------------------------------------------------------------------------------------------------------
N_ROWS = 200


def _evaluate(root, name, meta, score, n_masked=10):
    folder = root / "evaluate" / name
    folder.mkdir(parents=True)
    result = {
        "task": meta["task"],
        "metric": "accuracy",
        "score": score,
        "ci": [score - 0.05, score + 0.05],
        "n": N_ROWS,
        "mask": {"n_masked": n_masked, "n_neurons": 16},
        "chance": {"majority": 0.5},
    }
    (folder / "result.json").write_text(json.dumps(result))
    right = round(score * N_ROWS)
    with open(folder / "predictions.jsonl", "w") as handle:
        for i in range(N_ROWS):
            handle.write(json.dumps({"index": i, "pred": i % 2 if i < right else 1 - i % 2, "target": i % 2}) + "\n")
    return {
        "name": name,
        "stage": "evaluate",
        "status": "ran",
        "folder": str(folder),
        "meta": dict(meta, scope="sst2", path="finetune"),
        "seconds": 1.0,
    }


@pytest.fixture
def study(tmp_path):
    """A finished v1 study of K=2 networks on sst2: its analyze job (networks and descriptions), controls job,
    and evaluate jobs (unmasked, all networks and each network lesioned, count-matched controls over 2 seeds)."""
    from fnet.pipelines.study_controls import massive_info
    from fnet.study.render import write_report

    maps = torch.linspace(-0.5, 0.5, 16).repeat(2, 1)  # [K, 2 layers * 8 units]
    maps[0, [3, 11]], maps[1, [5, 6]] = 9.0, 9.0
    nets = NetworkSet.from_maps(maps, 2, 8, alpha=2.0, provenance={"model": "tiny"})
    analyze = tmp_path / "jobs" / "analyze"
    nets.save(analyze / "networks" / "all_group.safetensors")
    tokens = [["the", " cat", " sat", " on", " the", " mat"]]
    sources = [np.array([[0.0, 0.1], [3.0, 0.0], [0.1, 0.2], [0.0, 0.0], [0.0, 0.1], [0.2, 3.0]])]
    described = describe(nets, sources, tokens, text_ids=["t0"], massive=[3])
    (analyze / "networks" / "descriptions.json").write_text(
        json.dumps({"sets": {"all": {"networks": described, "massive_units": [3]}}})
    )
    controls = tmp_path / "jobs" / "controls"
    controls.mkdir(parents=True)
    scale = np.ones((2, 8))
    scale[:, 3] = 50.0
    (controls / "controls.json").write_text(json.dumps(massive_info(nets.masks.numpy(), scale, n_units=1, top_k=1)))
    meta = {"scope": "sst2", "K": 2, "variant": "raw"}
    records = [
        {
            "name": "analyze/sst2/K2/raw",
            "stage": "analyze",
            "status": "ran",
            "folder": str(analyze),
            "meta": meta,
            "output": "networks/all_group.safetensors",
            "seconds": 1.0,
        },
        {
            "name": "controls/sst2/K2/raw",
            "stage": "controls",
            "status": "ran",
            "folder": str(controls),
            "meta": meta,
            "output": "scale.safetensors",
            "seconds": 1.0,
        },
    ]
    ev = tmp_path / "jobs"
    records.append(_evaluate(ev, "u", {"task": "sst2", "condition": "unmasked"}, 0.90, 0))
    sst = {"task": "sst2", "variant": "raw", "K": 2}
    for target, lesion, controls_ in (
        ("all", 0.60, (0.85, 0.87)),
        ("net0", 0.70, (0.88, 0.89)),
        ("net1", 0.88, (0.87, 0.89)),
    ):
        records.append(_evaluate(ev, f"l-{target}", dict(sst, condition="lesion", target=target), lesion))
        for seed, score in enumerate(controls_):
            records.append(
                _evaluate(ev, f"c-{target}-{seed}", dict(sst, condition="count", target=target, seed=seed), score)
            )
    preset = {"name": "synthetic", "model": "tiny_gpt2", "path": "finetune", "tasks": ["sst2"], "n_networks": 2}
    paths = write_report(tmp_path / "jobs", preset=preset, records=records, out=tmp_path / "report", n_boot=200)
    return paths


def test_study_explorer_tables_and_cards_match_its_csvs(study):
    out = study["report"].parent
    assert study["explorer"] == out / "explorer.html"
    page = Page(study["explorer"].read_text())
    assert [c["id"] for c in page.cards] == ["card-analyze-sst2-K2-raw-0", "card-analyze-sst2-K2-raw-1"]
    with open(out / "effects.csv") as handle:
        effects = list(csv.DictReader(handle))
    with open(out / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    table = page.tables["summary"]
    assert [[r[table["head"].index(c)] for c in ("score", "ci_low", "ci_high")] for r in table["rows"]] == [
        [shown(float(s[c])) for c in ("score", "ci_low", "ci_high")] for s in summary
    ]
    # counts as counts: n_rows and K as in the CSV, not as 200.000
    assert [[r[table["head"].index(c)] for c in ("K", "n_rows", "n_jobs")] for r in table["rows"]] == [
        [s[c] for c in ("K", "n_rows", "n_jobs")] for s in summary
    ]
    table = page.tables["effects"]
    assert [
        [r[table["head"].index(c)] for c in ("target", "a", "b", "diff", "ci_low", "ci_high")] for r in table["rows"]
    ] == [
        [e["target"], e["a"], e["b"], shown(float(e["diff"])), shown(float(e["ci_low"])), shown(float(e["ci_high"]))]
        for e in effects
    ]
    for k, card in enumerate(page.cards):
        mine = [e for e in effects if e["target"] == f"net{k}"]
        assert len(card["effects"]) == len(mine) > 0
        for row, e in zip(card["effects"], mine):
            assert (row["attrs"]["data-a"], row["attrs"]["data-b"]) == (e["a"], e["b"])
            assert row["cells"][1] == shown(float(e["diff"]))
            assert row["cells"][2] == f"[{shown(float(e['ci_low']))}, {shown(float(e['ci_high']))}]"
    assert "unit 3 · layers 0, 1" in page.card_html("analyze-sst2-K2-raw-0")  # network 0 holds the massive unit
    assert re.search(r'<span class="t s5 f" title="[\d.]+"> cat</span>', page.card_html("analyze-sst2-K2-raw-0"))
    assert "data:image/png;base64," in page.html  # the report's figures, embedded


def test_study_explorer_opens_from_disk_in_chromium(study, tmp_path):
    needs_chromium()
    check_in_browser(study["explorer"], 2, tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# W&B: the cards as a table with images, the page as an artifact
# ----------------------------------------------------------------------------------------------------------------
def test_wandb_offline_logs_the_cards_as_a_table_and_the_page_as_an_artifact(tmp_path):
    out = tmp_path / "wb"
    only_news = [f"~data.datasets.{d}" for d in ("encyclopedia", "math", "code")]
    cmd = [
        sys.executable,
        "analyze.py",
        *SMALL,
        *only_news,
        "individual=false",
        "logger=wandb_offline",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={out}",
    ]
    env = dict(
        os.environ,
        WANDB_MODE="offline",
        WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
        FNET_CACHE=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(glob.glob(str(out / "wandb" / "offline-run-*"))[0])
    # wandb (0.31 here) logs a table with media as a run artifact: its JSON and images are staged for `wandb sync`
    # (the run's files/media/table JSON is a stub naming the column types only)
    staged = {p: p.read_bytes() for p in (tmp_path / "wandb-data" / "artifacts" / "staging").iterdir()}
    tables = []
    for data in staged.values():
        try:
            table = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(table, dict) and table.get("_type") == "table" and table["columns"][:2] == ["set", "network"]:
            tables.append(table)
    assert tables, "no staged wandb.Table of the cards"
    table = tables[0]
    assert table["columns"][-1] == "map" and len(table["data"]) == 6  # all and news, K = 3
    digests = {hashlib.sha256(data).hexdigest() for data in staged.values()}
    images = [row[-1] for row in table["data"]]
    assert all(i["_type"] == "image-file" and i["format"] == "png" and i["sha256"] in digests for i in images)
    # the artifact: recorded in the run's log under its name, its file staged (a copy of the page) for `wandb sync`
    log = next(run_dir.glob("run-*.wandb"))
    assert f"explorer-{log.stem.removeprefix('run-')}".encode() in log.read_bytes()
    assert b"explorer.html" in log.read_bytes()
    assert (out / "explorer.html").read_bytes() in staged.values()
