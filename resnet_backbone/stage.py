"""A ResNet stage (``layerN``): its blocks in order, checkpointed in pairs under with_cp."""
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.utils.checkpoint import checkpoint

CHECKPOINT_SPAN = 2  # blocks per with_cp checkpoint


def is_hooked(module):
    """Whether a forward (pre-)hook may keep ``module``'s input or output."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or module_hooks._global_forward_hooks
                or module_hooks._global_forward_pre_hooks)


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
    hooks on the blocks themselves do not fire there; hooks on the stage do.
    Hooks on a block's conv or norm modules fire only where those modules are
    called: on CPU a foldable conv + BN runs as one ``F.conv2d`` with the
    folded weight (``conv_norm``), inside a span or not.

    Where nothing needs gradients, a block's last conv writes its output into
    its input when that input is the previous block's output and no hook on
    either block can hold it (``input_is_scratch``; ``conv_norm``).
    """

    def forward(self, x):
        blocks = list(self)
        i = 0
        from_block = None  # the block of this call that produced x
        while i < len(blocks):
            if not blocks[i].checkpoints(x):
                scratch = from_block is not None and not (is_hooked(from_block)
                                                           or is_hooked(blocks[i]))
                x = blocks[i](x, input_is_scratch=scratch)
                from_block = blocks[i]
                i += 1
                continue
            from_block = None
            span = [blocks[i]]
            while (len(span) < CHECKPOINT_SPAN and i + len(span) < len(blocks)
                   and blocks[i + len(span)].with_cp):
                span.append(blocks[i + len(span)])
            x = checkpoint(_run_blocks, span, x, use_reentrant=False)
            i += len(span)
        return x
