"""Data: image folders and zips listed safely (files) and decoded into uint8 arrays (decode,
with its cache), data sets cut from them (datasets), and batches augmented on the training
device (batches); every refusal is a DataError (errors). files, decode and cache import
nothing else of graftune."""

from graftune.data.batches import TrainBatches, eval_batches
from graftune.data.datasets import ImageSet, channel_stats, load_dataset
from graftune.data.errors import DataError

__all__ = ["DataError", "ImageSet", "TrainBatches", "channel_stats", "eval_batches", "load_dataset"]
