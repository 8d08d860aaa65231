# Runtime shared by every config: our backbone and metric are imported, MMDetection's
# registries are the default scope.
custom_imports = dict(imports=['resnet_backbone', 'resnet_backbone.evaluation'],
                      allow_failed_imports=False)
default_scope = 'mmdet'
# before the run: atomic checkpoints, --resume only from complete files, safe loading of
# mmengine checkpoints on torch >= 2.6 (resnet_backbone.runtime.install); a resumed run
# draws the random numbers of an uninterrupted one (main process and dataloader
# workers); SyncBN that cannot synchronise runs as BN with a warning
custom_hooks = [dict(type='SafeCheckpointsHook'), dict(type='DeterministicResumeHook'),
                dict(type='SyncBNFallbackHook')]
# a fixed seed; add deterministic=True for bitwise-equal losses after a resume (CPU; on
# CUDA, cuDNN and atomic-add kernels are not bitwise repeatable)
randomness = dict(seed=0)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py and tools/test.py switch to gloo when there is no GPU
    dist_cfg=dict(backend='nccl'))

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)

log_level = 'INFO'
load_from = None
resume = False
