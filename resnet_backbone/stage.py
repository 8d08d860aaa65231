"""A ResNet stage (``layerN``): its blocks in order, checkpointed in pairs under with_cp."""
from torch import nn
from torch.utils.checkpoint import checkpoint

CHECKPOINT_SPAN = 2  # blocks per with_cp checkpoint


def _run_blocks(blocks, x):
    for block in blocks:
        x = block.residual_in_weight_layout(x)
    return x


class ResStage(nn.Sequential):
    """The blocks of one stage, under MMDetection's keys (``layer2.0.conv1`` ...).

    A with_cp checkpoint keeps only its input and recomputes the rest in the
    backward. Spanning two blocks, it keeps half the maps that one checkpoint
    per block (MMDetection) keeps, for the same single recompute of each block;
    the backward of a span then holds the activations of two blocks at once.
    Blocks run on their own (``block(x)``) still checkpoint one by one. Inside
    a span the blocks run through ``residual_in_weight_layout``, so forward
    hooks on the blocks themselves do not fire there (hooks on the stage and
    on the blocks' convs do).
    """

    def forward(self, x):
        blocks = list(self)
        i = 0
        while i < len(blocks):
            if not blocks[i].checkpoints(x):
                x = blocks[i](x)
                i += 1
                continue
            span = [blocks[i]]
            while (len(span) < CHECKPOINT_SPAN and i + len(span) < len(blocks)
                   and blocks[i + len(span)].with_cp):
                span.append(blocks[i + len(span)])
            x = checkpoint(_run_blocks, span, x, use_reentrant=False)
            i += len(span)
        return x
