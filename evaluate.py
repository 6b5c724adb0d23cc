"""Evaluate a (masked) language model on one task: ``python evaluate.py task=sst2 mask=lesion mask.networks=3``.

An alias of ``fnet evaluate`` (``fnet-evaluate``), :mod:`fnet.cli.evaluate`; the logic is
:func:`fnet.pipelines.evaluate.run` (see ``conf/evaluate.yaml`` for the options).
"""

from fnet.cli.evaluate import main

if __name__ == "__main__":
    main()
