"""Image sets: the dataset record, official-layout loaders, synthetic data, info/download."""
from .images import ImageSet, build_dataset, build_grid_dataset, open_rgb, resolve_data_root

__all__ = ["ImageSet", "build_dataset", "build_grid_dataset", "open_rgb", "resolve_data_root"]
