"""fusiongym: just-in-time operator fusion and scheduling as a Gymnasium environment."""

__version__ = "0.1.0"
