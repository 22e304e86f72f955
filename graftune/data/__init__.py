"""Data: image folders and zips listed safely (files, headers) and either decoded into uint8
arrays (decode, with its cache; datasets) or streamed batch by batch (stream, loader, crops,
stream_batches); batches augmented on the training device (batches) and one interface over
both ways (sources); every refusal is a DataError (errors). files, decode and cache import
nothing else of graftune."""

from graftune.data.batches import TrainBatches, eval_batches
from graftune.data.datasets import ImageSet, channel_stats
from graftune.data.errors import DataError
from graftune.data.sources import eval_source, skipped_count, train_source
from graftune.data.stream import StreamSet, describe, load_dataset

__all__ = [
    "DataError",
    "ImageSet",
    "StreamSet",
    "TrainBatches",
    "channel_stats",
    "describe",
    "eval_batches",
    "eval_source",
    "load_dataset",
    "skipped_count",
    "train_source",
]
