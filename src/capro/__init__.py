"""capro: learn image classifiers from web-crawled images and their text (CAPro, NeurIPS 2023)."""

__version__ = "0.1.0"
