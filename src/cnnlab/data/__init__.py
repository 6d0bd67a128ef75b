"""Datasets: the registry (importable without PyTorch), validated readers, splits, the loader.

cnnlab.data.registry   DatasetSpec, get_dataset, list_datasets
cnnlab.data.sources    the data root, download, load_dataset
cnnlab.data.idx        the validated IDX reader
cnnlab.data.splits     Split, DataSplits, make_splits
cnnlab.data.loader     DeviceLoader
cnnlab.data.preprocess Normalization, to_model_input: where uint8 images become model input
"""

from cnnlab.data.registry import DATASETS, DatasetSpec, get_dataset, list_datasets

__all__ = ["DATASETS", "DatasetSpec", "get_dataset", "list_datasets"]
