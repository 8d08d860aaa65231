# MMDetection's COCO 20e schedule: 20 epochs, LR x0.1 after epochs 16 and 19.
_base_ = './schedule_1x.py'
train_cfg = dict(max_epochs=20)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=20, by_epoch=True, milestones=[16, 19], gamma=0.1),
]
