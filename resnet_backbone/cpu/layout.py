"""Memory layouts for the CPU routes: channels_last maps handed back as NCHW, padded copies."""
import torch

from ..functional import is_channels_last

CHUNK = 512  # positions per block copy


def _transposed_copy(x, memory_format):
    """``x`` (channels_last or NCHW, CPU) copied into ``memory_format``, in blocks of
    positions on all threads (torch's generic strided copy is slow for this)."""
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device, memory_format=memory_format)
    hw = h * w
    to_cl = memory_format == torch.channels_last
    # writing NCHW rows from 1024+ channels, the strided reads of a block span too many
    # pages, and one 2-D transpose is faster
    blocks = hw >= 4 * CHUNK and (to_cl or c <= 512)
    for i in range(n):
        # per image, an NCHW map is a (c, hw) matrix and a channels_last one its transpose
        nchw = (x if to_cl else out)[i].view(c, hw)
        nhwc = (out if to_cl else x)[i].permute(1, 2, 0).reshape(hw, c)  # a view of either
        dst, src = (nhwc, nchw) if to_cl else (nchw, nhwc)
        if not blocks:
            dst.copy_(src.t())
        elif to_cl:
            for a in range(0, hw, CHUNK):
                dst[a:a + CHUNK].copy_(src[:, a:a + CHUNK].t())
        else:
            for a in range(0, hw, CHUNK):
                dst[:, a:a + CHUNK].copy_(src[a:a + CHUNK].t())
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
    """``x.contiguous()`` for a channels_last CPU map, by blocks; None for any other map."""
    if x.device.type != 'cpu' or not is_channels_last(x) or torch.compiler.is_compiling():
        return None
    return _ChannelsLastToNCHW.apply(x)


def fill_with_zero_border(dst, src, top, left):
    """``dst[:, top:, left:]`` starts with ``src``; every other element of ``dst`` is 0.

    Writing only the border spares a pass over the whole buffer before the copy.
    """
    rows, cols = src.shape[1], src.shape[2]
    dst[:, :top].zero_()
    dst[:, top + rows:].zero_()
    dst[:, top:top + rows, :left].zero_()
    dst[:, top:top + rows, left + cols:].zero_()
    dst[:, top:top + rows, left:left + cols] = src
