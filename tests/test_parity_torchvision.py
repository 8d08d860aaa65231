"""torchvision's ResNets load into ours (fc dropped) and give the same C2-C5."""
import pytest
import torch
import torchvision

from helpers import randomize
from resnet_backbone import ResNetBackbone


def torchvision_features(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for name in ('layer1', 'layer2', 'layer3', 'layer4'):
        x = getattr(model, name)(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize('arch,depth', [('resnet18', 18), ('resnet34', 34), ('resnet50', 50),
                                        ('resnet101', 101)])
def test_torchvision_parity(arch, depth):
    tv = randomize(getattr(torchvision.models, arch)(weights=None)).eval()
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')}
    ours = ResNetBackbone(depth=depth, frozen_stages=-1).eval()
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        ref = torchvision_features(tv, x)
        out = ours(x)
    assert len(out) == 4
    for a, b in zip(out, ref):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5
