"""Planted synthetic benchmark, written in each dataset's real on-disk format."""

from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec

__all__ = ["PlantedBenchmark", "PlantedSpec"]
