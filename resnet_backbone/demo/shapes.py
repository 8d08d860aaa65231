"""A deterministic COCO-format instance-segmentation set of coloured shapes.

Every image holds a few circles, triangles and squares of random size, colour
and rotation on a noisy gradient background. Shapes may overlap: a shape drawn
later hides part of the earlier ones, and the ground truth of a hidden shape
is its *visible* part, written as polygons (the exact difference of convex
polygons, split into convex pieces). Boxes and areas are those of the visible
mask, as in COCO.

The output depends only on the arguments: each image is drawn from its own
random stream, seeded with ``(seed, split, index)``.

Layout written under ``root``::

    annotations/instances_train.json   annotations/instances_val.json
    train/000000.png ...               val/000000.png ...
    manifest.json                      (the arguments; lets callers skip a rebuild)
"""
import json
import math
import os

import numpy as np

CLASSES = ('circle', 'triangle', 'square')
GENERATOR_VERSION = 3
_SPLIT_IDS = {'train': 0, 'val': 1, 'test': 2}
_CIRCLE_VERTICES = 32


# --------------------------------------------------------------- geometry
def shape_polygon(kind, cx, cy, radius, angle):
    """Counter-clockwise (in image coordinates, y down) vertices, shape (N, 2)."""
    n = {'circle': _CIRCLE_VERTICES, 'triangle': 3, 'square': 4}[kind]
    t = angle + 2 * math.pi * np.arange(n) / n
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def polygon_area(poly):
    """Signed shoelace area (positive for our vertex order)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def clip_halfplane(poly, a, b, c):
    """Part of a convex polygon where ``a*x + b*y + c >= 0`` (Sutherland-Hodgman)."""
    if len(poly) == 0:
        return poly
    out = []
    s = a * poly[:, 0] + b * poly[:, 1] + c
    for i in range(len(poly)):
        j = (i + 1) % len(poly)
        if s[i] >= 0:
            out.append(poly[i])
        if (s[i] >= 0) != (s[j] >= 0):
            t = s[i] / (s[i] - s[j])
            out.append(poly[i] + t * (poly[j] - poly[i]))
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def _edge_halfplanes(poly):
    """(a, b, c) per edge of a polygon with positive area: ``>= 0`` is inside."""
    planes = []
    for i in range(len(poly)):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % len(poly)]
        a, b = -(y1 - y0), x1 - x0
        planes.append((a, b, -(a * x0 + b * y0)))
    return planes


def convex_difference(piece, cutter, min_area=0.5):
    """Convex pieces covering ``piece`` minus ``cutter`` (both convex)."""
    pieces, rest = [], piece
    for a, b, c in _edge_halfplanes(cutter):
        outside = clip_halfplane(rest, -a, -b, -c)
        if len(outside) >= 3 and polygon_area(outside) > min_area:
            pieces.append(outside)
        rest = clip_halfplane(rest, a, b, c)
        if len(rest) < 3 or polygon_area(rest) <= min_area:
            break
    return pieces


# ------------------------------------------------------------- rasterising
def rasterize(polys, height, width):
    """Union of polygons as a (H, W) uint8 mask, rasterised like COCO/MMDetection."""
    from pycocotools import mask as mask_utils
    flat = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in polys if len(p) >= 3]
    if not flat:
        return np.zeros((height, width), np.uint8)
    rle = mask_utils.merge(mask_utils.frPyObjects(flat, height, width))
    return mask_utils.decode(rle)


def _background(rng, size):
    c0, c1 = rng.uniform(20, 150, size=(2, 3))
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(theta) * xx + np.sin(theta) * yy)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    return c0 + (c1 - c0) * t[..., None]


def _object_colour(rng, background_mean):
    for _ in range(50):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - background_mean) > 110:
            return colour
    return 255 - background_mean


# ------------------------------------------------------------------ images
def draw_image(rng, size=128, min_objects=2, max_objects=6, min_radius=10.0,
               max_radius=30.0, max_hidden=0.45, noise=6.0, classes=CLASSES):
    """One image (H, W, 3 RGB uint8) and its instances.

    Each instance: ``label`` (index into ``classes``), ``polygons`` (visible
    part, list of (N, 2) arrays) and ``mask`` (visible raster).
    """
    image = _background(rng, size)
    bg_mean = image.reshape(-1, 3).mean(0)
    wanted = int(rng.integers(min_objects, max_objects + 1))
    objects = []  # dicts: label, full polygon, full raster, visible pieces, visible raster
    attempts = 0
    while len(objects) < wanted and attempts < 60 * wanted:
        attempts += 1
        label = int(rng.integers(len(classes)))
        radius = float(rng.uniform(min_radius, max_radius))
        cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
        poly = shape_polygon(classes[label], cx, cy, radius, float(rng.uniform(0, 2 * math.pi)))
        full = rasterize([poly], size, size)
        if full.sum() < 40:
            continue
        # a new shape may hide at most max_hidden of any earlier one
        if any(((o['visible'] & full).sum() + (o['full'].sum() - o['visible'].sum()))
               > max_hidden * o['full'].sum() for o in objects):
            continue
        objects.append(dict(label=label, poly=poly, full=full, pieces=[poly],
                            visible=full.copy(), colour=_object_colour(rng, bg_mean)))
        for o in objects[:-1]:
            if (o['visible'] & full).any():
                o['pieces'] = [p for piece in o['pieces'] for p in convex_difference(piece, poly)]
                o['visible'] = o['visible'] & (1 - full)
    for o in objects:
        image[o['full'].astype(bool)] = o['colour']
    image = image + rng.normal(0, noise, size=image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    instances = []
    for o in objects:
        mask = rasterize(o['pieces'], size, size)
        if mask.sum() < 20:
            continue
        instances.append(dict(label=o['label'], polygons=o['pieces'], mask=mask))
    return image, instances


def _coco_annotation(inst, ann_id, image_id, size):
    """COCO annotation; area and box from the written (rounded) polygons' mask."""
    from pycocotools import mask as mask_utils
    segmentation = [[round(float(v), 2) for v in p.ravel()] for p in inst['polygons']]
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, size, size))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return dict(id=ann_id, image_id=image_id, category_id=inst['label'] + 1,
                segmentation=segmentation, area=float(mask_utils.area(rle)),
                bbox=[x, y, w, h], iscrowd=0)


def generate_split(root, split, num_images, seed=0, size=128, progress=None, **draw_kwargs):
    """Write ``root/<split>/*.png`` and ``root/annotations/instances_<split>.json``."""
    import cv2
    img_dir = os.path.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    classes = draw_kwargs.get('classes', CLASSES)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_IDS.get(split, 9), index])
        image, instances = draw_image(rng, size=size, **draw_kwargs)
        file_name = f'{index:06d}.png'
        cv2.imwrite(os.path.join(img_dir, file_name), image[..., ::-1])
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
        for inst in instances:
            annotations.append(_coco_annotation(inst, len(annotations) + 1, image_id, size))
        if progress is not None:
            progress(split, index + 1, num_images)
    coco = dict(info=dict(description=f'resnet_backbone synthetic shapes ({split})',
                          version=str(GENERATOR_VERSION)),
                images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n, supercategory='shape')
                            for i, n in enumerate(classes)])
    ann_path = os.path.join(root, 'annotations', f'instances_{split}.json')
    with open(ann_path, 'w') as f:
        json.dump(coco, f)
    return ann_path


def make_shapes_dataset(root='data/shapes', num_train=800, num_val=100, size=128, seed=0,
                        force=False, progress=None, **draw_kwargs):
    """Generate train and val splits under ``root`` unless an identical set is there.

    Returns ``(manifest dict, regenerated: bool)``.
    """
    manifest = dict(generator_version=GENERATOR_VERSION, num_train=num_train, num_val=num_val,
                    size=size, seed=seed, classes=list(draw_kwargs.get('classes', CLASSES)),
                    draw=dict((k, v) for k, v in sorted(draw_kwargs.items()) if k != 'classes'))
    path = os.path.join(root, 'manifest.json')
    if not force and os.path.isfile(path):
        try:
            with open(path) as f:
                same = json.load(f) == manifest
        except (OSError, ValueError):
            same = False
        if same and all(os.path.isfile(os.path.join(root, 'annotations', f'instances_{s}.json'))
                        for s in ('train', 'val')):
            return manifest, False
    for split, n in (('train', num_train), ('val', num_val)):
        generate_split(root, split, n, seed=seed, size=size, progress=progress, **draw_kwargs)
    with open(path, 'w') as f:
        json.dump(manifest, f, indent=1)
    return manifest, True
