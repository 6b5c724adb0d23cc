"""The entry points' code: the only readers of a Hydra config, one top-down function per entry point.

* :mod:`fnet.pipelines.analyze` -- ``analyze.py``: record, decompose, threshold, match, report;
* :mod:`fnet.pipelines.evaluate` -- ``evaluate.py``: (masked) model on one task -> ``result.json`` (its row in
  :mod:`fnet.pipelines.evaluate_result`);
* :mod:`fnet.pipelines.evaluate_batch` -- several evaluate jobs of one model in one process (studies);
* :mod:`fnet.pipelines.checkpoint_eval` -- ``evaluate.py ckpt_path=...``: a fine-tuned checkpoint and its held-out
split;
* :mod:`fnet.pipelines.train` -- ``train.py``: fine-tune with Lightning;
* :mod:`fnet.pipelines.pos` -- ``analyze.py analysis=pos``: part-of-speech key neurons (its data sets in
  :mod:`fnet.pipelines.pos_treebank`, its report in :mod:`fnet.pipelines.pos_report`);
* :mod:`fnet.pipelines.study_controls` -- a study job that derives control networks;
* :mod:`fnet.pipelines.config` -- the Hydra schemas and the checks every entry point runs before any work.
"""
