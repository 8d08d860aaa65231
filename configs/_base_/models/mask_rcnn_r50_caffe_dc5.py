# Mask R-CNN R-50-DC5: the DC5 Faster R-CNN plus a 4-conv FCN mask head that, like the
# box head, reads C5 at stride 16 (RoIAlign 14x14 on 2048 channels).
_base_ = './faster_rcnn_r50_caffe_dc5.py'
model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(pad_mask=True),
    roi_head=dict(
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
            out_channels=2048,
            featmap_strides=[16]),
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=4,
            in_channels=2048,
            conv_out_channels=256,
            num_classes=80,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    train_cfg=dict(rcnn=dict(mask_size=28)),
    test_cfg=dict(rcnn=dict(mask_thr_binary=0.5)))
