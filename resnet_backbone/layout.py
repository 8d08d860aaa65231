"""Memory layouts: handing channels_last feature maps back as NCHW.

On CPU, PyTorch's generic strided copy is slow for this permutation; one
blocked 2-D transpose per image is 1.5-3x faster (R-50 C2 at 800x1216: 56 vs
83 ms on the 2-core machine). The gradient goes back the same way, so the
backward of a channels_last network receives channels_last gradients.
"""
import torch


def is_channels_last(x):
    """True for a 4-D map stored channels_last (and not also plain contiguous)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()


def _transposed_copy(x, memory_format):
    """``x`` (channels_last or NCHW, CPU) copied into ``memory_format``."""
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device, memory_format=memory_format)
    for i in range(n):
        # per image, an NCHW map is a (c, h*w) matrix and a channels_last one its transpose
        if memory_format == torch.channels_last:
            out[i].permute(1, 2, 0).view(h * w, c).copy_(x[i].view(c, h * w).t())
        else:
            out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())
    return out


class _ChannelsLastToNCHW(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _transposed_copy(x, torch.contiguous_format)

    @staticmethod
    def backward(ctx, grad):
        if grad.is_contiguous():
            return _transposed_copy(grad, torch.channels_last)
        return grad  # already channels_last, or expanded: no copy needed


def to_nchw(x):
    """``x.contiguous()``, fast for a channels_last map on CPU."""
    if x.device.type != 'cpu' or not is_channels_last(x):
        return x.contiguous()
    return _ChannelsLastToNCHW.apply(x)
