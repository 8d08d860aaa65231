"""``torchvision://``, ``open-mmlab://``, ``detectron2://`` and ``timm://`` names."""
import os
import urllib.request

DETECTRON2_URL = 'https://dl.fbaipublicfiles.com/detectron2/'
TIMM_DEFAULT_TAGS = {'resnet50d': 'ra2_in1k', 'resnet50': 'a1_in1k', 'resnet101d': 'ra2_in1k',
                     'resnet18': 'a1_in1k', 'resnet34': 'a1_in1k', 'resnet101': 'a1h_in1k'}


def cache_dir():
    import torch.hub
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def _torchvision_url(name):
    import torchvision.models as tvm
    try:
        weights = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        raise ValueError(f'torchvision://{name}: torchvision has no model named {name!r}') \
            from None
    return weights.IMAGENET1K_V1.url


def _openmmlab_url(name):
    from mmengine.runner.checkpoint import get_deprecated_model_names, get_external_models
    urls = get_external_models()
    name = get_deprecated_model_names().get(name, name)
    if name not in urls:
        raise ValueError(f'open-mmlab://{name} is not a known OpenMMLab model name; known '
                         f'ones include {", ".join(sorted(urls)[:8])} …')
    return urls[name]


def _timm_url(name):
    arch, _, tag = name.partition('.')
    tag = tag or TIMM_DEFAULT_TAGS.get(arch)
    if not tag:
        raise ValueError(f'timm://{name}: give the pretrained tag too, e.g. '
                         f'timm://{arch}.a1_in1k')
    return (f'https://huggingface.co/timm/{arch}.{tag}/resolve/main/model.safetensors',
            f'timm_{arch}.{tag}.safetensors')


def checkpoint_url(name):
    """(url, cache file name) of a scheme name, or None for a plain path."""
    for scheme, to_url in (('torchvision://', _torchvision_url), ('open-mmlab://', _openmmlab_url),
                           ('openmmlab://', _openmmlab_url)):
        if name.startswith(scheme):
            url = to_url(name[len(scheme):])
            return url, os.path.basename(url)
    if name.startswith('detectron2://'):
        path = name[len('detectron2://'):]
        return DETECTRON2_URL + path, 'detectron2_' + path.replace('/', '_')
    if name.startswith('timm://'):
        return _timm_url(name[len('timm://'):])
    if name.startswith(('http://', 'https://')):
        return name, os.path.basename(name.split('?')[0])
    return None


def resolve_checkpoint(name, download=True, timeout=20):
    """Local path of a checkpoint path, URL or scheme name, downloading into the cache."""
    name = os.fspath(name)
    found = checkpoint_url(name)
    if found is None:
        if not os.path.isfile(name):
            raise FileNotFoundError(f'checkpoint file not found: {name}')
        return name
    url, filename = found
    path = os.path.join(cache_dir(), filename)
    if os.path.isfile(path):
        return path
    if download:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + '.part'
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, 'wb') as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
            os.replace(tmp, path)
            return path
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            reason = f'{type(e).__name__}: {e}'
    else:
        reason = 'downloads are disabled'
    raise FileNotFoundError(
        f'{name} is not in the cache and could not be downloaded ({reason}). Download\n  {url}\n'
        f'on a machine with internet access and put it at\n  {path}')
