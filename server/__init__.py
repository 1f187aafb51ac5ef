"""prefix-server: many P-tuning v2 classifiers served from one frozen backbone, batched together."""

__version__ = "0.1.0"
