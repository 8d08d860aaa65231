"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3).

Each 2x2 output tile is ``A^T [(G g G^T) * (B^T d B)] A`` of the 4x4 input
tile ``d`` around it: 16 multiplies per channel pair where direct
convolution needs 36, so the GEMMs do 2.25x less work. The transforms use
only +-1 and 1/2, so float32 results stay within a few ulps of direct
convolution (max error ~5e-7 of the output's magnitude, like oneDNN's).

Layout (channels_last throughout): the input tiles ``V`` are stored
``[positions, 16, C]`` and the transformed weights as a 16-group 1x1 conv, so
oneDNN runs the forward's 16 GEMMs (faster there than MKL's bmm). The backward
is Winograd too: the input gradient is the same convolution with the flipped,
transposed kernel, and the weight gradient is
``G^T (sum over tiles of V^T (A dY A^T)) G``, its 16 GEMMs one bmm (faster than
oneDNN's grouped weight gradient; docs/benchmarks.md).
"""
import torch
import torch.nn.functional as F

from .layout import fill_with_zero_border

# kernel transform of F(2x2, 3x3) (Lavin & Gray, 2016); B^T and A^T are spelled out below
_G = ((1., 0., 0.), (.5, .5, .5), (.5, -.5, .5), (0., 0., 1.))
TILES = 16  # elements of a transformed tile, indexed 4 * row + column


def tile_grid(h, w):
    """Rows and columns of 2x2 output tiles covering an h x w map."""
    return (h + 1) // 2, (w + 1) // 2


def _kernel_transform(weight):
    """[K, C, 3, 3] -> [16, K, C]: ``G g G^T`` of each kernel, tile element first."""
    k, c = weight.shape[:2]
    taps = weight.permute(2, 3, 0, 1).reshape(9, k * c)
    return torch.mm(_kron_g(weight), taps).view(TILES, k, c)


def _kron_g(like):
    """[16, 9]: row ``4a + b`` maps a 3x3 kernel to element (a, b) of ``G g G^T``."""
    g = torch.tensor(_G, dtype=like.dtype, device=like.device)
    return torch.kron(g, g)


def _b_t(d, out=(None,) * 4):
    """``B^T`` along one axis, given the axis' four strided views ``d``."""
    return [torch.sub(d[0], d[2], out=out[0]), torch.add(d[1], d[2], out=out[1]),
            torch.sub(d[2], d[1], out=out[2]), torch.sub(d[1], d[3], out=out[3])]


def _input_tiles(x_nhwc, th, tw):
    """``B^T d B`` of every 4x4 tile (stride 2, zero padding 1): [n*th*tw, 16, C]."""
    n, _, _, c = x_nhwc.shape
    padded = x_nhwc.new_empty(n, 2 * th + 2, 2 * tw + 2, c)
    fill_with_zero_border(padded, x_nhwc, 1, 1)
    tiles = x_nhwc.new_empty(n, th, tw, TILES, c)
    for i, row in enumerate(_b_t([padded[:, r::2][:, :th] for r in range(4)])):
        _b_t([row[:, :, s::2][:, :, :tw] for s in range(4)],
             [tiles[:, :, :, 4 * i + j] for j in range(4)])
    return tiles.view(n * th * tw, TILES, c)


def _gemm(tiles, kernel, bias):
    """``M[p, t] = tiles[p, t] @ kernel[t]^T`` (+ bias): one 16-group 1x1 oneDNN conv."""
    positions, _, c = tiles.shape
    k = kernel.shape[1]
    as_conv = tiles.view(1, positions, 1, TILES * c).permute(0, 3, 1, 2)
    weight = kernel.reshape(TILES * k, c, 1, 1)
    if bias is not None:
        # A^T M A adds tile element (1, 1) to all four outputs, so the bias goes there
        tile_bias = bias.new_zeros(TILES, k)
        tile_bias[5] = bias
        bias = tile_bias.view(-1)
    out = F.conv2d(as_conv, weight.contiguous(memory_format=torch.channels_last), bias,
                   groups=TILES)
    return out.permute(0, 2, 3, 1).view(positions, TILES, k)


def _output_from_tiles(m, n, th, tw, h, w):
    """``A^T M A`` of every tile, written into a new channels_last [n, K, h, w] map."""
    k = m.shape[-1]
    m = m.view(n, th, tw, TILES, k)
    out = _channels_last_empty(m, n, k, 2 * th, 2 * tw)
    y = out.permute(0, 2, 3, 1).view(n, th, 2, tw, 2, k)
    sums = m.new_empty(2, 4, n, th, tw, k)  # A^T along rows, for each tile column j
    for j in range(4):
        torch.add(m[..., j, :], m[..., 4 + j, :], out=sums[0, j]).add_(m[..., 8 + j, :])
        torch.sub(m[..., 4 + j, :], m[..., 8 + j, :], out=sums[1, j]).sub_(m[..., 12 + j, :])
    for a in range(2):
        s = sums[a]
        torch.add(s[0], s[1], out=y[:, :, a, :, 0]).add_(s[2])
        torch.sub(s[1], s[2], out=y[:, :, a, :, 1]).sub_(s[3])
    if 2 * th == h and 2 * tw == w:
        return out
    # a new map, not a view: autograd forbids in-place ReLU on a custom Function's view
    return _channels_last_empty(m, n, k, h, w).copy_(out[:, :, :h, :w])


def _channels_last_empty(like, *shape):
    return torch.empty(shape, dtype=like.dtype, device=like.device,
                       memory_format=torch.channels_last)


def conv3x3(x, weight, bias=None):
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` by F(2x2, 3x3); x channels_last."""
    n, _, h, w = x.shape
    th, tw = tile_grid(h, w)
    tiles = _input_tiles(x.permute(0, 2, 3, 1), th, tw)
    return _output_from_tiles(_gemm(tiles, _kernel_transform(weight), bias), n, th, tw, h, w)


def _grad_tiles(grad_nhwc, th, tw):
    """``A dY A^T`` of every 2x2 gradient tile, up to sign: [n*th*tw, 16, K].

    A's last row is (0, -1); it is taken as (0, 1) here, which flips the sign
    of tile elements with one index 3 (``_weight_signs`` undoes it).
    """
    n, h, w, k = grad_nhwc.shape
    if 2 * th != h or 2 * tw != w:
        padded = grad_nhwc.new_empty(n, 2 * th, 2 * tw, k)
        fill_with_zero_border(padded, grad_nhwc, 0, 0)
        grad_nhwc = padded
    out = grad_nhwc.new_empty(n, th, tw, TILES, k)
    g0, g1 = grad_nhwc[:, 0::2], grad_nhwc[:, 1::2]
    for i, row in enumerate((g0, g0 + g1, g0 - g1, g1)):
        c0, c1 = row[:, :, 0::2], row[:, :, 1::2]
        out[:, :, :, 4 * i].copy_(c0)
        torch.add(c0, c1, out=out[:, :, :, 4 * i + 1])
        torch.sub(c0, c1, out=out[:, :, :, 4 * i + 2])
        out[:, :, :, 4 * i + 3].copy_(c1)
    return out.view(n * th * tw, TILES, k)


def _weight_signs(dtype, device):
    s = torch.tensor((1., 1., 1., -1.), dtype=dtype, device=device)
    return torch.outer(s, s).reshape(TILES, 1)


def tile_weight_grad(grad, x):
    """Weight gradient of ``conv3x3``: [K, C, 3, 3], channels_last strides."""
    n, c, h, w = x.shape
    k = grad.shape[1]
    th, tw = tile_grid(h, w)
    # recomputed, not saved by the forward: the tiles take 4x the input's memory
    tiles = _input_tiles(x.permute(0, 2, 3, 1), th, tw)           # [P, 16, C]
    grad_tiles = _grad_tiles(grad.permute(0, 2, 3, 1), th, tw)    # [P, 16, K]
    per_tile = torch.bmm(grad_tiles.permute(1, 2, 0), tiles.transpose(0, 1))  # [16, K, C]
    back = (_kron_g(x) * _weight_signs(x.dtype, x.device)).t()  # [9, 16]
    taps = torch.matmul(back, per_tile.view(TILES, k * c)).view(9, k, c)
    return taps.permute(1, 0, 2).reshape(k, 3, 3, c).permute(0, 3, 1, 2)


class WinogradConv3x3(torch.autograd.Function):
    """``conv3x3`` with a Winograd backward (input gradient and weight gradient)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return conv3x3(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = conv3x3(grad, weight.flip(2, 3).transpose(0, 1)) if need_x else None
        grad_w = tile_weight_grad(grad, x) if need_w else None
        grad_b = grad.sum((0, 2, 3)) if need_b else None
        return grad_x, grad_w, grad_b
