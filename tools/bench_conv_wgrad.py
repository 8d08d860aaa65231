"""Weight gradient of ResNet's strided 3x3 convs: oneDNN vs the per-tap GEMMs.

``resnet_backbone.cpu.conv`` (route gemm_weight_grad) replaces oneDNN's channels_last weight
gradient for float32 CPU convs with stride > 1 and >= 128 channels. This
times both, alternating, on this machine's CPU for the strided convs of
R-50 (conv2 of layer2.0-4.0) and R-18 (conv1 of layer2.0-4.0), so the
choice can be checked on another CPU:

    python tools/bench_conv_wgrad.py [--size 800x1216] [--repeats 11]
"""
import argparse
import os.path as osp
import statistics
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from resnet_backbone.cpu.conv import MIN_CHANNELS, weight_grad  # noqa: E402

# (name, input stride relative to the image, in channels, out channels)
CONVS = [('R-50 layer2.0.conv2', 4, 128, 128), ('R-50 layer3.0.conv2', 8, 256, 256),
         ('R-50 layer4.0.conv2', 16, 512, 512), ('R-18 layer2.0.conv1', 4, 64, 128),
         ('R-18 layer3.0.conv1', 8, 128, 256), ('R-18 layer4.0.conv1', 16, 256, 512)]


def time_pair(x, grad, weight, repeats):
    def onednn():
        torch.ops.aten.convolution_backward(grad, x, weight, None, [2, 2], [1, 1], [1, 1],
                                            False, [0, 0], 1, [False, True, False])

    def gemm():
        weight_grad(grad, x, weight.shape, (2, 2), (1, 1))

    times = {onednn: [], gemm: []}
    onednn(), gemm()
    for _ in range(repeats):
        for fn in times:
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return [statistics.median(times[fn]) * 1000 for fn in (onednn, gemm)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='800x1216', help='image HxW (default 800x1216)')
    parser.add_argument('--repeats', type=int, default=11)
    args = parser.parse_args(argv)
    h, w = map(int, args.size.lower().split('x'))
    cl = torch.channels_last
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; image {h}x{w}, '
          f'medians of {args.repeats}; GEMM path taken from {MIN_CHANNELS} channels')
    print('| conv | input | oneDNN ms | GEMM ms | GEMM speed-up | path taken |')
    print('|---|---|---|---|---|---|')
    rows = []
    for name, stride, c_in, c_out in CONVS:
        hi, wi = -(-h // stride), -(-w // stride)
        x = torch.randn(1, c_in, hi, wi).contiguous(memory_format=cl)
        weight = torch.randn(c_out, c_in, 3, 3).contiguous(memory_format=cl)
        grad = torch.randn(1, c_out, (hi + 1) // 2, (wi + 1) // 2).contiguous(memory_format=cl)
        onednn_ms, gemm_ms = time_pair(x, grad, weight, args.repeats)
        taken = 'GEMM' if min(c_in, c_out) >= MIN_CHANNELS else 'oneDNN'
        rows.append((name, onednn_ms, gemm_ms, taken))
        print(f'| {name} | {c_in}x{hi}x{wi} | {onednn_ms:.1f} | {gemm_ms:.1f} | '
              f'{onednn_ms / gemm_ms:.2f}x | {taken} |')
    return rows


if __name__ == '__main__':
    main()
