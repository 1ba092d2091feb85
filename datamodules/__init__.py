"""Datasets: native on-disk readers, the packed feature store, LightningDataModules, synthesis."""
