"""enserve: serve ensembles of deep neural networks."""

__version__ = "0.1.0"
