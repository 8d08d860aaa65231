# MMDetection's COCO 2x schedule: 24 epochs, LR x0.1 after epochs 16 and 22.
_base_ = './schedule_1x.py'
train_cfg = dict(max_epochs=24)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=24, by_epoch=True, milestones=[16, 22], gamma=0.1),
]
