"""Training P-tuning v2 prefixes on the server's own model code (`prefix-server train`).

Owns data loading (sentence rows, and word-level rows for token heads: words.py), the prefix
encoder, the training loop, the export into an artifact, the metrics and the upload client. Never imports the API or batching layers.
"""

from server.training.data import DataError, Dataset, load_dataset
from server.training.prefix_encoder import PrefixEncoder
from server.training.trainer import TrainConfig, TrainResult, evaluate, export_artifact, train
from server.training.upload import UploadError, upload_artifact

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
