"""Reference reproduction of "Dissecting Adam" (Balles & Hennig, ICML 2018)."""

__version__ = "0.1.0"
