"""The bundled demo: a synthetic shapes data set and helpers for tools/."""
from .shapes import CLASSES, draw_image, generate_split, make_shapes_dataset

__all__ = ['CLASSES', 'draw_image', 'generate_split', 'make_shapes_dataset']
