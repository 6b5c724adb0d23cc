"""Lightning pieces of fnet: LightningModules for evaluation/fine-tuning and callbacks (:mod:`fnet.lit.callbacks`).

Convention: an fnet LightningModule exposes its causal LM (the ``nn.Module`` with a registry architecture) as
``self.model`` (or ``self.lm_model`` when ``self.model`` is something else); callbacks such as
:class:`fnet.lit.callbacks.MaskCallback` hook that module.
"""
