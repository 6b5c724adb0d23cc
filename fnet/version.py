"""fnet's release number, at the bottom of its layers so that any module can record it (``fnet.__version__``)."""

__version__ = "0.2.0"
