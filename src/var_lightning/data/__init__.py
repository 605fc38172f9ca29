"""Data layer: built-in synthetic shapes, a corruption-tolerant image folder, VAR transforms, datamodules."""

from var_lightning.data.datamodules import ImageFolderDataModule, SyntheticDataModule
from var_lightning.data.imagefolder import IMG_EXTENSIONS, SafeImageFolder, find_classes
from var_lightning.data.synthetic import SHAPE_FAMILIES, SyntheticShapes, synthetic_class_names
from var_lightning.data.transforms import build_transform, to_signed_unit, to_uint8_image

__all__ = [
    "IMG_EXTENSIONS",
    "SHAPE_FAMILIES",
    "ImageFolderDataModule",
    "SafeImageFolder",
    "SyntheticDataModule",
    "SyntheticShapes",
    "build_transform",
    "find_classes",
    "synthetic_class_names",
    "to_signed_unit",
    "to_uint8_image",
]
