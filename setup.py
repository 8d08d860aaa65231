from setuptools import find_packages, setup

setup(
    name='resnet_backbone',
    version='0.1.0',
    description='A drop-in ResNet backbone family for MMDetection 3.x',
    packages=find_packages(include=['resnet_backbone', 'resnet_backbone.*']),
    python_requires='>=3.9',
    install_requires=[
        'torch>=2.0',
        'torchvision>=0.15',
        'mmengine>=0.10',
        'mmcv>=2.0.0,<2.2.0',
        'mmdet>=3.3.0',
        'numpy',
    ],
    extras_require={'eval': ['pycocotools'], 'timm': ['timm'], 'safetensors': ['safetensors']},
)
