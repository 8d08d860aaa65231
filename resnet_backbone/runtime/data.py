"""Data that answers bad input with a clear error or a counted, logged skip.

* ``SafeLoadImageFromFile`` (a transform; drop-in for ``LoadImageFromFile``):
  an image that is missing, empty, truncated (JPEG without its end marker,
  PNG without ``IEND``) or undecodable is skipped: the transform logs a
  warning naming the file and the reason, counts it, and returns ``None``,
  on which mmengine's dataset draws another sample (training). With
  ``on_error='raise'`` (for val/test pipelines, where skipping would change
  the metric) it raises :class:`CorruptImageError` instead.
* ``CheckedCocoDataset`` (drop-in for ``CocoDataset``): a missing annotation
  file or image folder, an empty (0-byte) or invalid annotation file, a file
  without images, and a set with no image left after filtering each raise a
  ``FileNotFoundError``/``ValueError`` that names the path and the fix,
  instead of a pycocotools traceback or a silently empty dataset.

Counting: :func:`~.skipped.skipped_images` gives this process's count and
files. When ``SkippedImagesHook`` is in the config, every process (dataloader
workers included) also appends ``path<TAB>reason`` to
``<work_dir>/skipped_images.tsv`` and the hook logs the total.

This module imports mmdet's datasets, so ``import resnet_backbone.runtime``
does not load it: configs that use these types add it to their imports,
``custom_imports = dict(imports=['resnet_backbone', 'resnet_backbone.runtime.data'])``.
"""
import logging
import os.path as osp

import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS, TRANSFORMS
from mmengine import fileio
from mmengine.logging import print_log

from .atomic import is_local_path
from .skipped import record_skipped_image


class CorruptImageError(ValueError):
    """An image file that cannot be read as an image."""


def image_bytes_problem(data):
    """None if ``data`` looks like a whole image file, else what is wrong."""
    if not data:
        return 'file is empty (0 bytes)'
    if data[:3] == b'\xff\xd8\xff':
        if not data.rstrip(b'\x00').endswith(b'\xff\xd9'):
            return f'JPEG is truncated ({len(data)} bytes, no end-of-image marker)'
    elif data[:8] == b'\x89PNG\r\n\x1a\n':
        if b'IEND' not in data[-16:]:
            return f'PNG is truncated ({len(data)} bytes, no IEND chunk)'
    return None


@TRANSFORMS.register_module()
class SafeLoadImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` that skips (or rejects) unreadable images with a clear reason.

    Args:
        on_error (str): ``'skip'`` (default): warn, count, return ``None`` so
            the dataset draws another sample. ``'raise'``: raise
            :class:`CorruptImageError` naming the file.
        Other arguments: those of ``LoadImageFromFile``.
    """

    def __init__(self, *args, on_error='skip', **kwargs):
        super().__init__(*args, **kwargs)
        if on_error not in ('skip', 'raise'):
            raise ValueError(f"on_error={on_error!r} is not supported; allowed: 'skip', 'raise'")
        self.on_error = on_error

    def _read_bytes(self, filename):
        if self.file_client_args is not None:
            client = fileio.FileClient.infer_client(self.file_client_args, filename)
            return client.get(filename)
        return fileio.get(filename, backend_args=self.backend_args)

    def _load(self, filename):
        try:
            data = self._read_bytes(filename)
        except FileNotFoundError:
            raise CorruptImageError(f'{filename}: file not found') from None
        except OSError as e:
            raise CorruptImageError(f'{filename}: cannot be read ({e})') from None
        problem = image_bytes_problem(data)
        if problem:
            raise CorruptImageError(f'{filename}: {problem}')
        try:
            img = mmcv.imfrombytes(data, flag=self.color_type, backend=self.imdecode_backend)
        except Exception as e:  # decoders raise many types on garbage
            raise CorruptImageError(f'{filename}: cannot be decoded ({type(e).__name__}: {e})') \
                from None
        if img is None or img.size == 0:
            raise CorruptImageError(f'{filename}: cannot be decoded as an image '
                                    f'({len(data)} bytes)')
        return img

    def transform(self, results):
        filename = results['img_path']
        try:
            img = self._load(filename)
        except CorruptImageError as e:
            if self.on_error == 'raise':
                raise
            reason = str(e)[len(filename) + 2:] if str(e).startswith(filename) else str(e)
            count = record_skipped_image(filename, reason)
            print_log(f'skipped corrupt image {filename}: {reason} (images skipped so far in '
                      f'this process: {count})', logger='current', level=logging.WARNING)
            return None
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def __repr__(self):
        return super().__repr__()[:-1] + f", on_error='{self.on_error}')"


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """``CocoDataset`` that refuses missing, empty or unusable data with a clear error."""

    def _where(self):
        return f'(data_root={self.data_root!r}; set data_root/ann_file/data_prefix in the config)'

    def load_data_list(self):
        ann = self.ann_file
        if is_local_path(ann):
            if not osp.isfile(ann):
                raise FileNotFoundError(f'annotation file not found: {ann} {self._where()}')
            if osp.getsize(ann) == 0:
                raise ValueError(f'annotation file {ann} is empty (0 bytes); regenerate or '
                                 're-download it')
        img_dir = (self.data_prefix or {}).get('img')
        if img_dir and is_local_path(img_dir) and not osp.isdir(img_dir):
            raise FileNotFoundError(f'image folder not found: {img_dir} {self._where()}')
        try:
            data_list = super().load_data_list()
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f'annotation file {ann} is not valid COCO JSON: {e}') from None
        except (KeyError, TypeError, AttributeError, AssertionError) as e:
            raise ValueError(f'annotation file {ann} is not in COCO format ({type(e).__name__}: '
                             f'{e}); it needs "images", "annotations" and "categories" lists') \
                from None
        if not data_list:
            raise ValueError(f'annotation file {ann} lists no images; nothing to '
                             f'{"evaluate" if self.test_mode else "train"} on')
        return data_list

    def filter_data(self):
        kept = super().filter_data()
        if not kept:
            classes = list(self.metainfo.get('classes', ()))
            file_classes = [c['name'] for c in self.coco.dataset.get('categories', [])] \
                if getattr(self, 'coco', None) is not None else []
            raise ValueError(
                f'no image of {self.ann_file} is left after filter_cfg={self.filter_cfg} '
                f'({len(self.data_list)} images before filtering): none has a usable '
                f'annotation. Config classes: {classes}; classes in the file: {file_classes}')
        return kept
