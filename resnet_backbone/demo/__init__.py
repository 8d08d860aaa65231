"""The bundled demo: a synthetic COCO-format shapes data set."""
from .shapes import CLASSES, draw_image, generate_split, make_shapes_dataset

__all__ = ['CLASSES', 'draw_image', 'generate_split', 'make_shapes_dataset']
