"""Kept for `imagenet_prep.stats`, which reads stats.h5 with the same checks: the HDF5 store format and its
file checks live in imagenet_prep/store/hdf5.py."""

from imagenet_prep.store.hdf5 import check_regular, contiguous, dataset, dtype_name, lmdb_to_hdf5, open_hdf5

__all__ = ["check_regular", "contiguous", "dataset", "dtype_name", "lmdb_to_hdf5", "open_hdf5"]
