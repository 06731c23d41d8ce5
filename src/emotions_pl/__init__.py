"""emotions_pl: fine-tune, version, ship and monitor a transformer emotion classifier."""

__version__ = "0.1.0"
