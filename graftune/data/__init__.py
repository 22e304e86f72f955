"""Data: image files read into uint8 arrays (files, with its cache), data sets cut from them
(datasets), and batches augmented on the training device (batches). files and cache import
nothing else of graftune."""

from graftune.data.batches import TrainBatches, eval_batches
from graftune.data.datasets import ImageSet, channel_stats, load_dataset
from graftune.data.files import DataError

__all__ = ["DataError", "ImageSet", "TrainBatches", "channel_stats", "eval_batches", "load_dataset"]
