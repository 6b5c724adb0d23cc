"""Record a model's MLP signals, decompose them and extract functional networks (or run another analysis).

    python analyze.py                         # default: SmolLM2-135M, built-in corpus, K=10, offline
    python analyze.py -m ica.n_components=10,64,128
    python analyze.py analysis=pos            # key neurons for part-of-speech

An alias of ``fnet analyze`` (``fnet-analyze``), :mod:`fnet.cli.analyze`; the configs are ``conf/`` (``fnet/conf``
links to it).
"""

from fnet.cli.analyze import main

if __name__ == "__main__":
    main()
