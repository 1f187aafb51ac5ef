"""Training P-tuning v2 prefixes on the server's own model code (`prefix-server train`), beside the
serving package: the server never imports it; its command does, with the [train] extra.

Owns data loading (sentence rows, and word-level rows for token heads: words.py), the prefix
encoder, the training loop, the export into an artifact, the metrics and the upload client. Never imports the API or batching layers.
"""

from training.data import DataError, Dataset, load_dataset
from training.prefix_encoder import PrefixEncoder
from training.trainer import TrainConfig, TrainResult, evaluate, export_artifact, train
from training.upload import UploadError, upload_artifact

__all__ = [
    "DataError",
    "Dataset",
    "PrefixEncoder",
    "TrainConfig",
    "TrainResult",
    "UploadError",
    "evaluate",
    "export_artifact",
    "load_dataset",
    "train",
    "upload_artifact",
]
