# The demo (make demo): Mask R-CNN on the synthetic shapes set, trained from scratch on
# CPU. It is configs/mask_rcnn_r50.py with
#   - a ResNet-18 backbone (this project's ResNetBackbone), random init: no download;
#     BN is trained (norm_eval=False) and no stage is frozen;
#   - 3 classes, 128x128 images (tools/make_demo_data.py writes them to data/shapes/);
#   - 128 instead of 256 channels in the FPN, RPN and RoI heads, fewer proposals (300)
#     and sampled RoIs (64 per image) than the COCO 1x config, and at most 50
#     detections per image, and torchvision's RoIAlign kernel: on CPU the heads dominate
#     the time of small-image training;
#   - an iteration schedule: batch 4, warm-up, two LR steps, validation every 250 iters.
_base_ = '../mask_rcnn_r50.py'

data_root = '{{$SHAPES_ROOT:data/shapes/}}'
classes = ('circle', 'triangle', 'square')
image_size = 128
max_iters = 1000
val_interval = 250
batch_size = 4

channels = 128
model = dict(
    backbone=dict(depth=18, frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        # torchvision's RoIAlign kernel: the same op (aligned), faster on CPU than mmcv's
        bbox_roi_extractor=dict(out_channels=channels, roi_layer=dict(use_torchvision=True)),
        bbox_head=dict(in_channels=channels, num_classes=3),
        mask_roi_extractor=dict(out_channels=channels, roi_layer=dict(use_torchvision=True)),
        mask_head=dict(in_channels=channels, conv_out_channels=channels, num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=300), rcnn=dict(max_per_img=50)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=0),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoAPMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric=['bbox', 'segm'])
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=val_interval)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.75), int(max_iters * 0.9)], gamma=0.1),
]
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=batch_size)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1))
log_processor = dict(by_epoch=False, window_size=10)
randomness = dict(seed=0)
